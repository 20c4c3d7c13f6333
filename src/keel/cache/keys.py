"""What a request is cached under: its partition, exact key and semantic query text.

Entries are only ever matched within one partition: the same tenant, route, model, cache
namespace (and its flush generation), system prompt, earlier conversation, generation
parameters (everything in the body except the messages and transport fields such as
``stream``) and RAG index version. The exact key adds the normalised last turn; the
semantic layer embeds the last user turn and searches the partition for it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import orjson

from keel.gateway.validation import content_text

# Body fields that do not change the answer (transport, attribution).
_NEUTRAL = frozenset({"messages", "prompt", "stream", "stream_options", "user", "model",
                      "metadata", "store", "service_tier"})
_SPACE = re.compile(r"\s+")


def _h(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(len(p).to_bytes(4, "big"))
        h.update(p)
    return h.hexdigest()


def tenant_tag(tenant: str) -> str:
    """Tenants appear in storage keys only hashed, so no tenant name can prefix another."""
    return _h(b"tenant", tenant.encode())[:16]


def normalise(text: str) -> str:
    """Whitespace collapsed and trimmed; case and punctuation kept (they can matter)."""
    return _SPACE.sub(" ", text).strip()


def _canon_messages(messages: list[Any]) -> bytes:
    out = []
    for m in messages:
        if not isinstance(m, dict):
            continue
        item = {k: v for k, v in m.items() if k != "content"}
        content = m.get("content")
        item["content"] = normalise(content) if isinstance(content, str) else content
        out.append(item)
    return orjson.dumps(out, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True, slots=True)
class CacheKey:
    namespace: str
    tenant: str  # tenant_tag() of the tenant
    partition: str
    exact: str
    query: str | None  # text for the semantic layer; None: exact layer only


def cache_key(
    *, route: str, body: dict[str, Any], model: str, tenant: str, namespace: str,
    generation: str, rag: str = "",
) -> CacheKey:
    params = orjson.dumps({k: v for k, v in body.items() if k not in _NEUTRAL},
                          option=orjson.OPT_SORT_KEYS)
    query: str | None = None
    if route == "chat":
        messages = body.get("messages") or []
        system = [m for m in messages if isinstance(m, dict)
                  and m.get("role") in ("system", "developer")]
        rest = [m for m in messages if isinstance(m, dict)
                and m.get("role") not in ("system", "developer")]
        last = rest[-1] if rest else None
        before = rest[:-1]
        if last is not None and last.get("role") == "user" and not last.get("name"):
            text = normalise(content_text(last.get("content")))
            # only plain-text turns are matched by meaning; images, audio... exact only
            if text and (isinstance(last.get("content"), str) or all(
                    isinstance(p, dict) and p.get("type") == "text"
                    for p in last.get("content") or [])):
                query = text
        context = _h(_canon_messages(system), _canon_messages(before))
        turn = _canon_messages([last] if last is not None else [])
    else:
        prompt = body.get("prompt", "")
        context = _h(b"prompt")
        turn = orjson.dumps(normalise(prompt) if isinstance(prompt, str) else prompt)
        if isinstance(prompt, str) and prompt.strip():
            query = normalise(prompt)
    tag = tenant_tag(tenant)
    partition = _h(route.encode(), model.encode(), tag.encode(), namespace.encode(),
                   generation.encode(), rag.encode(), context.encode(), params)
    return CacheKey(namespace, tag, partition, _h(partition.encode(), turn), query)
