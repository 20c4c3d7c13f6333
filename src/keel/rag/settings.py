"""Settings of the RAG capability (``[rag]`` in keel.toml)."""

from __future__ import annotations

from pydantic import Field, field_validator

from keel.settings_section import Section


class RagSettings(Section):
    enabled: bool = True
    # embedded:// (usearch files under <data_dir>/vectors) or redis://host:port/0
    vector_url: str = "embedded://"
    chunk_tokens: int = Field(default=200, ge=16, le=256)  # MiniLM reads <= 256 pieces
    chunk_overlap: int = Field(default=32, ge=0)
    # used when no degradation level sets the depth
    top_k: int = Field(default=5, ge=1, le=1000)
    context_tokens: int = Field(default=2000, ge=1)
    # opt-in: requests for these model names get context from the named index...
    models: dict[str, str] = Field(default_factory=dict)
    # ... and any request naming an index in this header does
    header: str = "x-keel-rag"
    catalog_refresh_s: float = 1.0

    @field_validator("header")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()
