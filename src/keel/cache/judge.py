"""Judged hits: a model confirms a paraphrase hit the strict profile would not serve.

For namespaces with a ``judge`` (a chat model from the model table), a semantic candidate
that passes the balanced profile (cosine and contradiction checks) but not the strict one is
served only when the judge answers "yes" to "do these two questions ask for the same
answer?". The verdict is kept in the KV (both orders of the pair share it, for ``ttl_s``), so
each pair is judged once per tenant: a verdict remembered across tenants would tell one
tenant which questions another asked ("yes (remembered)"). The judge call's cost is reported
and subtracted from the savings.
A judge that fails or answers anything but yes/no counts as "no": the request is a miss.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from keel.config import ModelSpec
from keel.ports.kv import KV
from keel.providers.registry import ModelRegistry

log = logging.getLogger("keel.cache")
_PREFIX = "cache:j:"
PROMPT = (
    "You decide whether a cached answer may be reused. Question A: {a}\nQuestion B: {b}\n"
    "Do these two questions ask for the same answer? Reply with exactly one word: yes or no."
)


@dataclass(frozen=True, slots=True)
class Verdict:
    same: bool
    usd: float  # what this judge call cost (0 when the verdict came from the KV)
    cached: bool


class Judge:
    def __init__(self, models: ModelRegistry, kv: KV, ttl_s: float = 7 * 86400.0) -> None:
        self.models = models
        self.kv = kv
        self.ttl_s = ttl_s

    @staticmethod
    def _key(tenant: str, model: str, a: str, b: str) -> str:
        x, y = sorted((a, b))
        h = hashlib.blake2b(digest_size=16)
        for part in (tenant, model, x, y):
            h.update(len(part.encode()).to_bytes(4, "big"))
            h.update(part.encode())
        return _PREFIX + h.hexdigest()

    async def same(self, tenant: str, model: str, query: str, cached: str) -> Verdict:
        key = self._key(tenant, model, query, cached)
        known = await self.kv.get(key)
        if known in ("yes", "no"):
            return Verdict(known == "yes", 0.0, True)
        spec = self.models.get(model)
        usd = 0.0
        try:
            answer, usd = await self._ask(spec, query, cached)
        except Exception as exc:  # fail closed: no verdict, no hit
            log.warning("cache judge %s failed, serving a miss: %s", model,
                        f"{type(exc).__name__}: {exc}"[:200])
            return Verdict(False, usd, False)
        word = answer.strip().strip(".!\"' ").lower().split()
        verdict = word[0] if word and word[0] in ("yes", "no") else None
        if verdict is None:
            log.warning("cache judge %s answered neither yes nor no: %r", model, answer[:80])
            return Verdict(False, usd, False)
        await self.kv.set(key, verdict, ttl_s=self.ttl_s)
        return Verdict(verdict == "yes", usd, False)

    async def _ask(self, spec: ModelSpec, a: str, b: str) -> tuple[str, float]:
        body = {"model": spec.upstream_model, "temperature": 0, "max_tokens": 3,
                "messages": [{"role": "user", "content": PROMPT.format(a=a, b=b)}]}
        out = await self.models.provider(spec).chat(body, spec)
        usage = out.get("usage") or {}
        usd = spec.cost_usd(int(usage.get("prompt_tokens") or 0),
                            int(usage.get("completion_tokens") or 0))
        choices = out.get("choices") or [{}]
        return str((choices[0].get("message") or {}).get("content") or ""), usd
