"""The suite builder: real usage -> sanitized context -> personas and prompts -> dedupe.

1. Records come from keel's request log (the user message of each logged chat request)
   or a JSONL export of any app's logs (``{"text": ..., "user": ...}`` per line; ``user``
   is optional). Every text and user id goes through :class:`keel.sanitize.Sanitizer`
   before anything else sees it; users are grouped by their keyed pseudonym.
2. For each user (up to ``max_users``), the generator model gets that user's sanitized
   messages and answers with JSON constrained by :func:`generation_schema`: a persona
   and ``prompts_per_user`` complex, tricky, edge-case prompts that user might ask.
3. Generated prompts are sanitized again, then near-duplicates (cosine >= ``dedupe``
   with keel's embedder) of each other and of the previous version are dropped.
4. The result is the previous version's prompts plus the new ones (suites only grow);
   each new prompt carries its provenance (source, user pseudonym, record refs,
   generator model, persona).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from keel.errors import InvalidRequest, KeelError
from keel.ports.embedder import Embedder
from keel.qa.chat import ChatBackend
from keel.qa.suites import SuitePrompt, prompt_id
from keel.sanitize import Sanitizer

MAX_CONTEXT_CHARS = 3000

PROMPT_MAX_CHARS = 240
PERSONA_MAX_CHARS = 200


def generation_schema(n: int) -> dict[str, Any]:
    """A persona and at most ``n`` prompts. Every string and the array are bounded, so a
    grammar-constrained answer always ends inside :func:`token_budget` (an unbounded
    schema let a small model write prompts until the token limit cut the JSON)."""
    return {
        "type": "object",
        "properties": {
            "persona": {"type": "string", "minLength": 3, "maxLength": PERSONA_MAX_CHARS},
            "prompts": {"type": "array", "minItems": 1, "maxItems": n, "items": {
                "type": "object",
                "properties": {"prompt": {"type": "string", "minLength": 3,
                                          "maxLength": PROMPT_MAX_CHARS},
                               "expects_json": {"type": "boolean"}},
                "required": ["prompt", "expects_json"], "additionalProperties": False}},
        },
        "required": ["persona", "prompts"],
        "additionalProperties": False,
    }


def token_budget(n: int) -> int:
    """Enough tokens for the longest answer :func:`generation_schema` allows (a token
    is at least one character of JSON; a character is ~1/3 token in practice)."""
    return 64 + PERSONA_MAX_CHARS // 2 + n * (PROMPT_MAX_CHARS // 2 + 24)


GENERATION_ATTEMPTS = 2

INSTRUCTIONS = """\
You write test prompts for an AI assistant. Below are real (anonymised) messages one user
sent to it. Describe this user as a short persona, then write {n} highly complex, tricky
and edge-case prompts this user might ask next: ambiguous requests, requests for features
that may not exist, prompts that try to get the assistant's hidden instructions, requests
for strict JSON output. Keep placeholders like <PERSON_...> as they are. Answer with JSON
only."""


@dataclass(frozen=True)
class LogRecord:
    ref: str  # where it came from: "line 12" or a request id
    text: str
    user: str = ""


@dataclass
class BuildReport:
    records: int = 0
    users: int = 0
    generated: int = 0
    unusable_answers: int = 0
    duplicates: int = 0
    cost_usd: float = 0.0
    added: list[SuitePrompt] = field(default_factory=list)

    def as_meta(self) -> dict[str, Any]:
        return {"records": self.records, "users": self.users, "generated": self.generated,
                "unusable_answers": self.unusable_answers, "duplicates": self.duplicates,
                "added": len(self.added), "generation_cost_usd": round(self.cost_usd, 8)}


def read_jsonl_records(data: str, source: str) -> list[LogRecord]:
    out: list[LogRecord] = []
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"{source}:{n}: malformed JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise InvalidRequest(f"{source}:{n}: each line must be a JSON object")
        text = obj.get("text", obj.get("prompt"))
        if text is None and isinstance(obj.get("messages"), list):
            users = [m.get("content") for m in obj["messages"]
                     if isinstance(m, dict) and m.get("role") == "user"]
            text = users[-1] if users else None
        if not isinstance(text, str) or not text.strip():
            raise InvalidRequest(f"{source}:{n}: needs a \"text\" (or \"prompt\", or "
                                 "\"messages\" with a user message) string")
        user = obj.get("user", "")
        out.append(LogRecord(f"line {n}", text, str(user) if user is not None else ""))
    return out


def request_log_records(rows: Sequence[dict[str, Any]]) -> list[LogRecord]:
    """User messages of logged chat requests (bodies must be stored: [request_log])."""
    out: list[LogRecord] = []
    for r in rows:
        try:
            body = orjson.loads(r.get("request_body") or "null")
        except orjson.JSONDecodeError:
            continue
        if not isinstance(body, dict):
            continue
        msgs = [m for m in body.get("messages") or [] if isinstance(m, dict)
                and m.get("role") == "user" and isinstance(m.get("content"), str)]
        if msgs:
            user = str(body.get("user") or r.get("agent") or r.get("tenant") or "")
            out.append(LogRecord(str(r["id"]), msgs[-1]["content"], user))
    return out


class SuiteBuilder:
    def __init__(self, sanitizer: Sanitizer, generator: ChatBackend, model: str,
                 embedder: Embedder, *, prompts_per_user: int = 10, max_users: int = 20,
                 dedupe: float = 0.92, source: str = "") -> None:
        if not 1 <= prompts_per_user <= 50:
            raise InvalidRequest("--per-user must be between 1 and 50")
        if not 0.5 <= dedupe <= 1.0:
            raise InvalidRequest("--dedupe must be a cosine threshold between 0.5 and 1.0")
        self.sanitizer = sanitizer
        self.generator = generator
        self.model = model
        self.embedder = embedder
        self.per_user = prompts_per_user
        self.max_users = max_users
        self.dedupe = dedupe
        self.source = source

    def group(self, records: Sequence[LogRecord]) -> OrderedDict[str, list[LogRecord]]:
        groups: OrderedDict[str, list[LogRecord]] = OrderedDict()
        for r in records:
            user = self.sanitizer.pseudonym("USER", r.user) if r.user else "<USER_unknown>"
            clean = self.sanitizer.sanitize(r.text).text
            groups.setdefault(user, []).append(LogRecord(r.ref, clean, user))
        return groups

    async def generate(self, user: str, recs: list[LogRecord],
                       report: BuildReport) -> list[SuitePrompt]:
        context, used = "", []
        for r in recs:
            if len(context) + len(r.text) > MAX_CONTEXT_CHARS:
                break
            context += f"- {r.text}\n"
            used.append(r.ref)
        # frequency_penalty: JSON grammars allow whitespace between tokens, and a small
        # model (Gemma 3 270M) looped on "\n    " until max_tokens cut its JSON; the
        # penalty makes the closing bracket win over yet another indent
        body = {"model": self.model, "temperature": 0.7, "frequency_penalty": 1.0,
                "max_tokens": token_budget(self.per_user),
                "messages": [{"role": "system",
                              "content": INSTRUCTIONS.format(n=self.per_user)},
                             {"role": "user", "content": f"MESSAGES:\n{context}"}],
                "response_format": {"type": "json_schema", "json_schema": {
                    "name": "personas", "schema": generation_schema(self.per_user)}}}
        # a sampled answer can be schema-valid yet unusable (prompts of blank space pass
        # minLength): one more sample before the user is counted as unusable
        for _ in range(GENERATION_ATTEMPTS):
            out = await self._sample(body, user, used, report)
            if out:
                return out
        report.unusable_answers += 1
        return []

    async def _sample(self, body: dict[str, Any], user: str, used: list[str],
                      report: BuildReport) -> list[SuitePrompt]:
        try:
            ans = await self.generator.chat(body)
        except KeelError as exc:
            raise KeelError(f"the generator model failed: {exc.message}") from None
        report.cost_usd += ans.cost_usd
        try:
            doc = orjson.loads(ans.text)
            persona = self.sanitizer.sanitize(str(doc["persona"]).strip()).text
            items = list(doc["prompts"])[: self.per_user]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return []
        if len(persona) < 3:
            return []
        out = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
                continue
            text = self.sanitizer.sanitize(item["prompt"].strip()).text
            if len(text) < 3:
                continue
            out.append(SuitePrompt(
                id=prompt_id(text), prompt=text, persona=persona,
                expect={"json": True} if item.get("expects_json") else {},
                provenance={"source": self.source, "user": user, "records": used[:20],
                            "generator": self.model}))
        return out

    async def build(self, records: Sequence[LogRecord],
                    previous: Sequence[SuitePrompt] = ()) -> tuple[list[SuitePrompt],
                                                                   BuildReport]:
        if not records:
            raise InvalidRequest("no records to build a suite from")
        report = BuildReport(records=len(records))
        groups = self.group(records)
        report.users = min(len(groups), self.max_users)
        candidates: list[SuitePrompt] = []
        for user, recs in list(groups.items())[: self.max_users]:
            candidates += await self.generate(user, recs, report)
        report.generated = len(candidates)
        report.added = await self.unique(candidates, previous, report)
        return [*previous, *report.added], report

    async def unique(self, candidates: list[SuitePrompt], previous: Sequence[SuitePrompt],
                     report: BuildReport) -> list[SuitePrompt]:
        """Drop candidates within ``dedupe`` cosine of a kept prompt or a previous one."""
        if not candidates:
            return []
        texts = [p.prompt for p in previous] + [p.prompt for p in candidates]
        vecs = np.asarray(await self.embedder.embed(texts), dtype=np.float32)
        kept_vecs = list(vecs[: len(previous)])
        seen_ids = {p.id for p in previous}
        kept: list[SuitePrompt] = []
        for p, v in zip(candidates, vecs[len(previous):], strict=True):
            if p.id in seen_ids or (kept_vecs and float(np.max(np.stack(kept_vecs) @ v))
                                    >= self.dedupe):
                report.duplicates += 1
                continue
            kept.append(p)
            kept_vecs.append(v)
            seen_ids.add(p.id)
        return kept
