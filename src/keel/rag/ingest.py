"""``keel rag ingest``: read documents, chunk them, embed the chunks, publish a version.

Sources: a directory (``*.txt``, ``*.md``, ``*.rst`` files, one document each, and
``*.jsonl`` files) or one ``.jsonl`` file whose rows have ``text`` and optionally ``id``
and ``title``. Every ingest bumps the index version. Without ``replace`` documents are
added to the live generation (a re-ingested document id replaces its old chunks); with
``replace`` a complete new generation is written and swapped in atomically, and the old
one is deleted afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from keel.errors import InvalidRequest
from keel.ports.embedder import Embedder
from keel.ports.vector_index import Metadata, VectorIndex
from keel.rag import catalog
from keel.rag.catalog import IndexInfo
from keel.rag.chunking import chunk_text
from keel.rag.settings import RagSettings
from keel.storage.sql import Database

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst"}
BATCH = 128

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    title: str
    text: str


@dataclass(frozen=True, slots=True)
class Chunk:
    doc: str
    title: str
    n: int
    text: str


def read_jsonl(path: Path) -> Iterator[Document]:
    with path.open("rb") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path.name} line {line_no}"
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise InvalidRequest(f"{where} is not valid JSON: {exc}") from None
            if not isinstance(row, dict):
                raise InvalidRequest(f"{where}: each line must be a JSON object")
            text = row.get("text")
            if not isinstance(text, str) or not text.strip():
                raise InvalidRequest(f"{where}: needs a non-empty string field 'text'")
            doc_id = row.get("id", f"{path.stem}:{line_no}")
            title = row.get("title") or ""
            if not isinstance(doc_id, str | int) or not isinstance(title, str):
                raise InvalidRequest(f"{where}: 'id' must be a string and 'title' a string")
            yield Document(str(doc_id), title, text)


def read_text(path: Path, encoding: str, where: str) -> str:
    """A text file's contents, decoded strictly: a file that is not ``encoding`` text, or
    is binary (NUL bytes), is refused by name instead of indexed as replacement
    characters."""
    data = path.read_bytes()
    if b"\0" in data[:65_536]:
        raise InvalidRequest(f"{where} looks binary (it holds NUL bytes), not text; convert it "
                             "to .txt/.md first or leave it out")
    try:
        return data.decode(encoding).removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"{where} is not {encoding} text (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}); convert it (e.g. `iconv -f latin1 -t utf-8`) or pass its "
            "encoding with --encoding") from None
    except LookupError:
        raise InvalidRequest(f"unknown encoding {encoding!r}; use a Python codec name such "
                             "as utf-8, latin-1 or cp1252", param="encoding") from None


def read_documents(source: Path, encoding: str = "utf-8") -> list[Document]:
    """Every document under ``source``; InvalidRequest when there is none or it is bad
    (``encoding``: of the .txt/.md/.rst files; .jsonl is always UTF-8)."""
    if not source.exists():
        raise InvalidRequest(f"{source} does not exist: pass a directory or a .jsonl file")
    if source.is_file():
        if source.suffix == ".jsonl":
            docs = list(read_jsonl(source))
        elif source.suffix in TEXT_SUFFIXES:
            text = read_text(source, encoding, source.name)
            if not text.strip():
                raise InvalidRequest(f"{source.name} is empty: there is nothing to index")
            docs = [Document(source.name, source.stem, text)]
        else:
            raise InvalidRequest(
                f"{source.name}: unsupported file type; use .jsonl, .txt, .md or .rst"
            )
    else:
        docs = []
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            rel = str(path.relative_to(source))
            if path.suffix == ".jsonl":
                docs.extend(read_jsonl(path))
            elif path.suffix in TEXT_SUFFIXES:
                text = read_text(path, encoding, rel)
                if text.strip():  # an empty file in a tree is skipped
                    docs.append(Document(rel, path.stem, text))
    if not docs:
        raise InvalidRequest(f"{source} holds no documents (.jsonl rows or .txt/.md/.rst files)")
    seen: set[str] = set()
    for d in docs:
        if d.id in seen:
            raise InvalidRequest(f"document id {d.id!r} appears twice in {source}")
        seen.add(d.id)
    return docs


def chunk_documents(docs: list[Document], embedder: Embedder, settings: RagSettings
                    ) -> list[Chunk]:
    out: list[Chunk] = []
    for d in docs:
        text = f"{d.title}. {d.text}" if d.title and not d.text.startswith(d.title) else d.text
        for n, piece in enumerate(chunk_text(text, embedder.count_tokens, settings.chunk_tokens,
                                             settings.chunk_overlap)):
            out.append(Chunk(d.id, d.title, n, piece))
    return out


async def ingest(
    db: Database,
    vectors: VectorIndex,
    embedder: Embedder,
    tenant: str,
    name: str,
    docs: list[Document],
    settings: RagSettings,
    *,
    replace: bool = False,
    progress: Progress | None = None,
) -> IndexInfo:
    """Ingest into ``tenant``'s index ``name``; ``vectors`` must be the index that
    :func:`catalog.vector_for` names for it."""
    if not tenant.strip():
        raise InvalidRequest("a RAG index belongs to a tenant: pass --tenant NAME", param="tenant")
    catalog.check_index_name(name)
    chunks = chunk_documents(docs, embedder, settings)
    if not chunks:
        raise InvalidRequest("the documents produced no text to index")
    info = await db.run(lambda c: catalog.get_index(c, tenant, name))
    live = info.generation if info else 0
    gen = live + 1 if (replace or info is None) else live
    g = str(gen)
    await vectors.create(embedder.dim)
    if gen != live:
        await vectors.delete_where({"gen": g})  # leftovers of a crashed run
    else:  # adding to the live generation: drop the old chunks of re-ingested documents
        for d in docs:
            await vectors.delete_where({"gen": g, "doc": d.id})
    done = 0
    try:
        for start in range(0, len(chunks), BATCH):
            batch = chunks[start:start + BATCH]
            matrix = await embedder.embed([c.text for c in batch])
            metas: list[Metadata] = [
                {"gen": g, "doc": c.doc, "title": c.title, "text": c.text, "chunk": c.n,
                 "head": "1" if c.n == 0 else "0"} for c in batch
            ]
            await vectors.upsert([f"{g}:{c.doc}#{c.n}" for c in batch], matrix, metas)
            done += len(batch)
            if progress is not None:
                progress(done, len(chunks))
    except BaseException:
        if gen != live:  # nothing half-written: the new generation never goes live
            await vectors.delete_where({"gen": g})
        raise
    n_chunks = await vectors.count({"gen": g})
    n_docs = await vectors.count({"gen": g, "head": "1"})
    published = await db.run(lambda c: catalog.publish(c, tenant, name, gen, n_docs, n_chunks))
    if live and gen != live:
        await vectors.delete_where({"gen": str(live)})
    return published
