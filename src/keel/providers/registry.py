"""The model table: public model names -> provider, upstream model, context and prices."""

from __future__ import annotations

from typing import TYPE_CHECKING

from keel.config import ModelSpec, Settings
from keel.errors import ConfigError, InvalidRequest, UnknownModel
from keel.ports.embedder import Embedder
from keel.ports.provider import ChatProvider

if TYPE_CHECKING:
    from keel.providers.openai_compat import OpenAICompatProvider


class ModelRegistry:
    """Routes a model name to its spec and provider; providers are built lazily."""

    def __init__(
        self,
        settings: Settings,
        *,
        providers: dict[str, ChatProvider] | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self.settings = settings
        self._specs = {m.name: m for m in settings.model_table()}
        self._providers: dict[str, ChatProvider] = dict(providers or {})
        self._embedder = embedder

    def add_virtual(self, spec: ModelSpec) -> None:
        """A model a capability answers itself with a pipeline stage (``provider =
        "virtual"``): routes validate it and /v1/models lists it like any other."""
        if spec.provider != "virtual":
            raise ConfigError(f"model {spec.name!r}: only virtual models can be added")
        if spec.name in self._specs:
            raise ConfigError(f"model {spec.name!r} is already in the model table")
        self._specs[spec.name] = spec

    def __contains__(self, name: str) -> bool:
        return name in self._specs

    def specs(self) -> list[ModelSpec]:
        return list(self._specs.values())

    def find(self, name: str) -> ModelSpec:
        spec = self._specs.get(name)
        if spec is None:
            raise UnknownModel(
                f"model {name!r} does not exist; available models: "
                f"{', '.join(sorted(self._specs))}",
                param="model",
            )
        return spec

    def get(self, name: str, *, kind: str = "chat") -> ModelSpec:
        spec = self._specs.get(name)
        if spec is None:
            known = ", ".join(sorted(n for n, s in self._specs.items() if s.kind == kind))
            raise UnknownModel(
                f"model {name!r} does not exist; available {kind} models: {known}",
                param="model",
            )
        if spec.kind != kind:
            raise InvalidRequest(
                f"model {name!r} is {'an' if spec.kind[:1] in 'aeiou' else 'a'} {spec.kind} "
                "model and cannot serve this endpoint",
                param="model",
            )
        return spec

    def provider(self, spec: ModelSpec) -> ChatProvider:
        existing = self._providers.get(spec.provider)
        if existing is not None:
            return existing
        if spec.provider == "virtual":  # its capability's stage answers before the provider
            raise InvalidRequest(f"model {spec.name!r} cannot be called directly here",
                                 param="model")
        if spec.provider != "local":
            return self.openai()
        from keel.providers.local import LocalProvider

        local = LocalProvider(self.settings)
        self._providers["local"] = local
        return local

    def openai(self) -> OpenAICompatProvider:
        from keel.providers.openai_compat import OpenAICompatProvider

        p = self._providers.get("openai")
        if not isinstance(p, OpenAICompatProvider):
            p = OpenAICompatProvider(self.settings.openai)
            self._providers["openai"] = p
        return p

    def embedder(self) -> Embedder:
        if self._embedder is None:
            # Load onnxruntime's native library here, on the thread that builds the app:
            # its first import from the embedder's worker thread, while other native
            # libraries ran on other threads, crashed a test process once (segfault in
            # dlopen). Weights still load lazily on first use.
            import onnxruntime  # noqa: F401

            from keel.providers.embeddings import MiniLMEmbedder

            local = self.settings.local
            self._embedder = MiniLMEmbedder(self.settings.model_dir,
                                            precision=local.embedder_precision,
                                            threads=local.embedder_threads)
        return self._embedder

    @property
    def built_embedder(self) -> Embedder | None:
        """The built-in embedder if a capability has asked for it (its weights may still
        be unloaded), else ``None``."""
        return self._embedder

    def embedder_for(self, name: str) -> Embedder:
        """The embedder named in the model table ("" or the built-in MiniLM: the default).

        Entries of kind ``embedding`` with the ``openai`` provider are called over HTTP
        (OpenAI, Ollama, vLLM, or a llama.cpp server with a GGUF embedding model)."""
        if not name or name == "all-minilm-l6-v2":
            return self.embedder()
        spec = self._specs.get(name)
        if spec is None or spec.kind != "embedding":
            known = ", ".join(sorted(n for n, s in self._specs.items() if s.kind == "embedding"))
            raise ConfigError(f"embedder {name!r} is not an embedding model in the model table "
                              f"(add it under [[models]] with kind = \"embedding\"); "
                              f"embedding models: {known}")
        if spec.provider != "openai":
            raise ConfigError(f"embedder {name!r}: only the built-in MiniLM runs in-process; "
                              "serve other local models through an OpenAI-compatible server "
                              "(llama-server --embedding) and set provider = \"openai\"")
        from keel.providers.upstream_embedder import UpstreamEmbedder

        return UpstreamEmbedder(self.openai(), spec)

    @property
    def local_loaded(self) -> bool:
        p = self._providers.get("local")
        return bool(getattr(p, "loaded", False))

    async def aclose(self) -> None:
        for p in self._providers.values():
            await p.aclose()
        self._providers.clear()
