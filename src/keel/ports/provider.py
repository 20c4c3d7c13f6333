"""Model providers.

Providers speak OpenAI-shaped dicts both ways: the gateway hands them the validated
request body (with ``model`` already mapped to the upstream name) and gets back a
``chat.completion`` / ``text_completion`` object, or for streams an async iterator of
chunk objects whose last chunk carries ``usage``. Keeping the wire shape avoids
re-encoding on the hot path.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Protocol

from keel.config import ModelSpec

JSON = dict[str, Any]


class ChatProvider(Protocol):
    kind: str

    async def chat(self, body: JSON, model: ModelSpec) -> JSON: ...

    def chat_stream(self, body: JSON, model: ModelSpec) -> AsyncGenerator[JSON, None]: ...

    async def complete(self, body: JSON, model: ModelSpec) -> JSON: ...

    def complete_stream(self, body: JSON, model: ModelSpec) -> AsyncGenerator[JSON, None]: ...

    async def aclose(self) -> None: ...
