"""Prompt suites: the JSONL format, versions by content hash, diffs between versions.

One line per prompt::

    {"prompt": "...", "id": "optional", "persona": "optional",
     "expect": {"json": true, "schema": {...}}, "context": "optional", "tags": [],
     "provenance": {"source": "...", "records": ["<pseudonymous ids>"], "generator": "..."}}

A suite version is the SHA-256 (first 12 hex) of its prompts in order: the same prompts
are the same version wherever they are built; a rebuilt suite that changed nothing is
not a new version. Versions are stored in the QA tables with their parent and metadata.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, select

from keel.errors import InvalidRequest, NotFound
from keel.qa import tables as t

MAX_PROMPT_CHARS = 20_000
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class SuitePrompt:
    id: str
    prompt: str
    persona: str = ""
    expect: dict[str, Any] = field(default_factory=dict)
    context: str = ""
    tags: tuple[str, ...] = ()
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def wants_json(self) -> bool:
        return bool(self.expect.get("json") or self.expect.get("schema"))

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "prompt": self.prompt}
        if self.persona:
            d["persona"] = self.persona
        if self.expect:
            d["expect"] = self.expect
        if self.context:
            d["context"] = self.context
        if self.tags:
            d["tags"] = list(self.tags)
        if self.provenance:
            d["provenance"] = self.provenance
        return d


def prompt_id(text: str) -> str:
    return "p_" + hashlib.sha256(text.encode()).hexdigest()[:10]


def parse_line(obj: Any, where: str) -> SuitePrompt:
    if not isinstance(obj, dict):
        raise InvalidRequest(f"{where}: each line must be a JSON object")
    text = obj.get("prompt")
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest(f"{where}: \"prompt\" must be a non-empty string")
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"{where}: the prompt is longer than {MAX_PROMPT_CHARS} chars")
    expect = obj.get("expect") or {}
    if not isinstance(expect, dict):
        raise InvalidRequest(f"{where}: \"expect\" must be an object")
    schema = expect.get("schema")
    if schema is not None:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise InvalidRequest(f"{where}: expect.schema is not a valid JSON schema: "
                                 f"{exc.message}") from None
    for key in ("persona", "context", "id"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise InvalidRequest(f"{where}: \"{key}\" must be a string")
    tags = obj.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(x, str) for x in tags):
        raise InvalidRequest(f"{where}: \"tags\" must be a list of strings")
    prov = obj.get("provenance") or {}
    if not isinstance(prov, dict):
        raise InvalidRequest(f"{where}: \"provenance\" must be an object")
    return SuitePrompt(id=obj.get("id") or prompt_id(text), prompt=text,
                       persona=obj.get("persona") or "", expect=expect,
                       context=obj.get("context") or "", tags=tuple(tags), provenance=prov)


def parse_jsonl(data: str, source: str) -> list[SuitePrompt]:
    """Every line parsed and checked; the first bad one is an error naming its line."""
    out: list[SuitePrompt] = []
    seen: set[str] = set()
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"{source}:{n}: malformed JSON ({exc})") from None
        p = parse_line(obj, f"{source}:{n}")
        if p.id in seen:
            raise InvalidRequest(f"{source}:{n}: duplicate prompt id {p.id!r}")
        seen.add(p.id)
        out.append(p)
    return out


def load_file(path: Path) -> list[SuitePrompt]:
    try:
        data = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidRequest(f"{path}: no such suite file") from None
    except UnicodeDecodeError:
        raise InvalidRequest(f"{path}: not UTF-8 text") from None
    return parse_jsonl(data, str(path))


def version_of(prompts: list[SuitePrompt]) -> str:
    h = hashlib.sha256()
    for p in prompts:
        h.update(orjson.dumps(p.as_dict(), option=orjson.OPT_SORT_KEYS))
        h.update(b"\n")
    return h.hexdigest()[:12]


def to_jsonl(prompts: list[SuitePrompt]) -> str:
    return "".join(orjson.dumps(p.as_dict()).decode() + "\n" for p in prompts)


@dataclass(frozen=True)
class SuiteVersion:
    name: str
    version: str
    parent: str | None
    created: float
    n_prompts: int
    meta: dict[str, Any]


@dataclass(frozen=True)
class SuiteDiff:
    added: list[SuitePrompt]
    removed: list[SuitePrompt]
    kept: int


def save(c: Connection, name: str, prompts: list[SuitePrompt], *,
         parent: str | None = None, meta: dict[str, Any] | None = None) -> SuiteVersion:
    """Store a version (idempotent: the same prompts are the same version)."""
    if not NAME.match(name):
        raise InvalidRequest(f"suite name {name!r}: letters, digits, '_', '.', '-' only")
    if not prompts:
        raise InvalidRequest(f"suite {name!r} has no prompts")
    version = version_of(prompts)
    row = c.execute(select(t.suites).where(t.suites.c.name == name,
                                           t.suites.c.version == version)).first()
    if row is None:
        c.execute(t.suites.insert().values(
            name=name, version=version, parent=parent, created=time.time(),
            n_prompts=len(prompts), meta=orjson.dumps(meta or {}).decode()))
        c.execute(t.prompts.insert(), [
            {"suite": name, "version": version, "idx": i, "prompt_id": p.id,
             "body": orjson.dumps(p.as_dict()).decode()} for i, p in enumerate(prompts)])
    return info(c, name, version)


def _version_row(row: Any) -> SuiteVersion:
    return SuiteVersion(row.name, row.version, row.parent, row.created, row.n_prompts,
                        orjson.loads(row.meta))


def versions(c: Connection, name: str | None = None) -> list[SuiteVersion]:
    q = select(t.suites).order_by(t.suites.c.created.desc())
    if name:
        q = q.where(t.suites.c.name == name)
    return [_version_row(r) for r in c.execute(q)]


def info(c: Connection, name: str, version: str | None = None) -> SuiteVersion:
    found = [v for v in versions(c, name) if version is None or v.version.startswith(version)]
    if not found:
        what = f"{name}@{version}" if version else name
        raise NotFound(f"no suite {what!r}: build one with `keel qa suite build` or "
                       "import a JSONL file with `keel qa suite import`")
    return found[0]


def prompts_of(c: Connection, name: str, version: str) -> list[SuitePrompt]:
    rows = c.execute(select(t.prompts.c.body).where(
        t.prompts.c.suite == name, t.prompts.c.version == version).order_by(t.prompts.c.idx))
    return [parse_line(orjson.loads(r.body), f"{name}@{version}") for r in rows]


def resolve(c: Connection | None, ref: str) -> tuple[str, str, list[SuitePrompt]]:
    """``NAME``, ``NAME@VERSION`` or a path to a ``.jsonl`` file -> (name, version, prompts)."""
    path = Path(ref)
    if ref.endswith(".jsonl") or path.exists():
        prompts = load_file(path)
        if not prompts:
            raise InvalidRequest(f"{ref}: the suite is empty")
        return path.stem, version_of(prompts), prompts
    if c is None:
        raise InvalidRequest(f"{ref!r} is not a suite file")
    name, _, version = ref.partition("@")
    v = info(c, name, version or None)
    return v.name, v.version, prompts_of(c, v.name, v.version)


def diff(old: list[SuitePrompt], new: list[SuitePrompt]) -> SuiteDiff:
    old_ids = {p.id for p in old}
    new_ids = {p.id for p in new}
    return SuiteDiff(added=[p for p in new if p.id not in old_ids],
                     removed=[p for p in old if p.id not in new_ids],
                     kept=len(old_ids & new_ids))
