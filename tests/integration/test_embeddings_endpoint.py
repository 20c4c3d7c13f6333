"""POST /v1/embeddings with the real MiniLM weights, through the openai client."""

from __future__ import annotations

import base64

import numpy as np
import openai

from keel.app import create_app
from keel.config import Settings
from keel.gateway.services import Services

from live import serve_app


def test_embeddings_via_openai_client(
    settings: Settings, services: Services, user_key: str
) -> None:
    with serve_app(create_app(settings, services=services)) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key=user_key, max_retries=0)
        texts = ["How do I reset my password?", "How can I change my password?",
                 "What is the capital of France?"]
        out = client.embeddings.create(model="all-minilm-l6-v2", input=texts)
        vecs = np.array([d.embedding for d in out.data], dtype=np.float32)
        assert vecs.shape == (3, 384)
        assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
        sims = vecs @ vecs.T
        assert sims[0, 1] > 0.8 > sims[0, 2]
        assert out.usage.prompt_tokens > 0
        # base64 encoding (the openai client's default for numpy users) decodes to the same
        b64 = client.embeddings.create(model="all-minilm-l6-v2", input=texts[0],
                                       encoding_format="base64")
        raw = base64.b64decode(str(b64.data[0].embedding))
        assert np.allclose(np.frombuffer(raw, dtype=np.float32), vecs[0], atol=1e-6)

        try:
            client.embeddings.create(model="gemma-3-270m", input="x")
            raise AssertionError("a chat model must not serve embeddings")
        except openai.BadRequestError as exc:
            assert "chat model" in str(exc)
        try:
            client.embeddings.create(model="all-minilm-l6-v2", input=[])
            raise AssertionError("empty input must be rejected")
        except openai.BadRequestError as exc:
            assert "input" in str(exc)
