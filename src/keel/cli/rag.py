"""``keel rag``: ingest documents into versioned indexes, list them, search them."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from keel.cli.common import console, fail, new_table, settings_from, styled
from keel.config import Settings
from keel.errors import KeelError
from keel.storage.private_files import private_dir

T = TypeVar("T")


def _run(settings: Settings, fn: Callable[[Any, Any], Awaitable[T]]) -> T:
    """Run ``fn(db, retriever)`` against the configured stores."""
    # native runtimes load on the main thread before any worker thread uses them (a first
    # import from a worker thread has crashed in dlopen)
    import onnxruntime  # noqa: F401
    import usearch.index  # noqa: F401

    from keel.app import open_database
    from keel.providers.embeddings import MiniLMEmbedder
    from keel.rag.retrieve import Retriever

    async def go() -> T:
        private_dir(settings.data_dir)
        db = open_database(settings)
        retriever = Retriever(db, settings.rag, settings.data_dir,
                              MiniLMEmbedder(settings.model_dir,
                                             precision=settings.local.embedder_precision))
        try:
            return await fn(db, retriever)
        finally:
            await retriever.aclose()
            db.dispose()

    try:
        return asyncio.run(go())
    except KeelError as exc:
        fail(exc.message)


def build() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True)

    @app.command("ingest")
    def ingest_cmd(
        ctx: typer.Context,
        source: Path = typer.Argument(..., help="A directory of .txt/.md/.rst/.jsonl files "
                                      "or one .jsonl file (rows with text, id, title)."),
        index: str = typer.Option(..., "--index", "-i", help="Index name."),
        tenant: str = typer.Option("default", "--tenant", "-t",
                                   help="The tenant that owns the index: only its API keys "
                                        "can read it (\"default\" when auth is off)."),
        replace: bool = typer.Option(False, "--replace",
                                     help="Build a fresh generation and swap it in."),
        encoding: str = typer.Option("utf-8", "--encoding",
                                     help="Encoding of the .txt/.md/.rst files (.jsonl is "
                                          "always UTF-8); a file that does not decode is "
                                          "refused by name."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Chunk, embed and index documents; every ingest publishes a new index version."""
        from keel.rag import catalog
        from keel.rag.ingest import ingest, read_documents

        settings = settings_from(ctx)

        async def go(db: Any, retriever: Any) -> Any:
            docs = read_documents(source, encoding)
            catalog.check_index_name(index)
            vectors = retriever.open_vectors(
                await db.run(lambda c: catalog.vector_for(c, tenant, index)))
            columns = (TextColumn("{task.description}", markup=False, style="bold"), BarColumn(),
                       MofNCompleteColumn(), TimeElapsedColumn())
            try:
                with Progress(*columns, console=console, disable=as_json) as bar:
                    task = bar.add_task(f"embedding {len(docs)} documents", total=None)

                    def step(done: int, total: int) -> None:
                        bar.update(task, completed=done, total=total)

                    return await ingest(db, vectors, retriever.embedder, tenant, index,
                                        docs, settings.rag, replace=replace, progress=step)
            finally:
                await vectors.aclose()

        info = _run(settings, go)
        out = {"tenant": info.tenant, "index": info.name, "version": info.version,
               "generation": info.generation, "documents": info.documents,
               "chunks": info.chunks}
        if as_json:
            typer.echo(json.dumps(out))
        else:
            console.print(styled(("indexed", "green"), f" {info.tenant}/{info.name} "
                                 f"v{info.version}: {info.documents} documents, "
                                 f"{info.chunks} chunks"))

    @app.command("list")
    def list_cmd(
        ctx: typer.Context,
        tenant: str | None = typer.Option(None, "--tenant", "-t",
                                          help="Only this tenant's indexes."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """List RAG indexes (every tenant's, or one tenant's) with version and size."""
        from keel.rag import catalog

        settings = settings_from(ctx)

        async def go(db: Any, _r: Any) -> Any:
            return await db.run(lambda c: catalog.list_indexes(c, tenant))

        rows = _run(settings, go)
        if as_json:
            typer.echo(json.dumps([dataclasses.asdict(r) for r in rows]))
            return
        table = new_table("tenant", "index", "version", "documents", "chunks")
        for r in rows:
            table.add_row(r.tenant, r.name, str(r.version), str(r.documents),
                          str(r.chunks))
        console.print(table)

    @app.command("search")
    def search_cmd(
        ctx: typer.Context,
        query: str = typer.Argument(...),
        index: str = typer.Option(..., "--index", "-i"),
        tenant: str = typer.Option("default", "--tenant", "-t",
                                   help="The tenant whose index to search."),
        k: int = typer.Option(5, "-k", min=1, max=1000),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Show the top-k chunks the RAG stage would add for QUERY."""
        settings = settings_from(ctx)

        async def go(_db: Any, retriever: Any) -> Any:
            return await retriever.search(tenant, index, query, k)

        info, passages = _run(settings, go)
        if as_json:
            typer.echo(json.dumps({"index": info.name, "version": info.version,
                                   "passages": [{"id": p.id, "doc": p.doc, "score": p.score,
                                                 "title": p.title, "text": p.text}
                                                for p in passages]}))
            return
        table = new_table("score", "doc", "text", title=f"{info.name} v{info.version}")
        for p in passages:
            table.add_row(f"{p.score:.3f}", p.doc, p.text[:120])
        console.print(table)

    return app
