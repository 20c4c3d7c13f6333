"""The terminal stage: hand the request to the model's provider.

Every answer leaves here with keel's own configured secrets (upstream API keys of the
model table, tool headers, tokens) masked: an upstream that echoes the Authorization
header it received must not hand the key to the client, and this happens before any
later stage caches or logs the answer.
"""

from __future__ import annotations

import time
from typing import Any

from keel.errors import InvalidRequest
from keel.gateway.context import RequestContext
from keel.providers.registry import ModelRegistry
from keel.redaction import AnswerStreamRedactor, Redactor, configured_secrets, redact_answer


class ProviderCall:
    """Calls the provider chosen by the model table; sets ``ctx.response`` or ``ctx.chunks``."""

    def __init__(self, models: ModelRegistry) -> None:
        self.models = models
        secrets = configured_secrets(models.settings, models.specs())
        redactor = Redactor(secrets)
        # nothing configured: answers pass through untouched, at no cost
        self._redactor = redactor if redactor.active else None

    async def __call__(self, ctx: RequestContext) -> None:
        spec = ctx.model
        if ctx.route == "embeddings":
            ctx.response = await self._embed(ctx)
            return
        provider = self.models.provider(spec)
        if ctx.route == "chat":
            if ctx.stream:
                ctx.chunks = provider.chat_stream(ctx.body, spec)
            else:
                ctx.response = await provider.chat(ctx.body, spec)
        elif ctx.stream:
            ctx.chunks = provider.complete_stream(ctx.body, spec)
        else:
            ctx.response = await provider.complete(ctx.body, spec)
        if self._redactor is not None:
            if ctx.chunks is not None:
                ctx.chunks = AnswerStreamRedactor(self._redactor).wrap(ctx.chunks)
            if ctx.response is not None:
                ctx.response = redact_answer(ctx.response, self._redactor)

    async def _embed(self, ctx: RequestContext) -> dict[str, Any]:
        spec = ctx.model
        if spec.provider == "openai":
            return await self.models.openai().embed(ctx.body, spec)
        inp = ctx.body["input"]
        texts = [inp] if isinstance(inp, str) else inp
        if not all(isinstance(t, str) for t in texts):
            raise InvalidRequest(
                f"model {spec.name!r} takes text input, not token ids", param="input"
            )
        emb = self.models.embedder()
        dims = ctx.body.get("dimensions")
        if dims is not None and dims != emb.dim:  # MiniLM vectors cannot be shortened
            raise InvalidRequest(
                f"model {spec.name!r} returns {emb.dim}-dimensional embeddings and cannot "
                f"produce {dims}; omit 'dimensions' or set it to {emb.dim}",
                param="dimensions")
        vectors = await emb.embed(texts)
        tokens = sum(emb.count_tokens(t) for t in texts)
        if ctx.body.get("encoding_format") == "base64":
            import base64

            data = [{"object": "embedding", "index": i,
                     "embedding": base64.b64encode(v.tobytes()).decode()}
                    for i, v in enumerate(vectors)]
        else:
            data = [{"object": "embedding", "index": i, "embedding": v.tolist()}
                    for i, v in enumerate(vectors)]
        return {
            "object": "list", "data": data, "model": spec.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "created": int(time.time()),
        }
