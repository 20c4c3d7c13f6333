"""The trainer's tokenizer is rebuilt from the GGUF so that it produces the token ids
llama.cpp feeds the served model (transformers' own GGUF conversion split words into single
letters and dropped <bos>; a model trained on those ids learned nothing llama.cpp could
use). Checked against the real llama.cpp engine: same prompt token counts, and the text
round-trips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keel.config import load_settings
from keel.providers.llama_requests import chat_prompt
from keel.providers.registry import ModelRegistry
from keel.tuning.gguf_tokenizer import build_tokenizer

pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parents[2]
MODELS = Path(os.environ.get("KEEL_TEST_MODEL_DIR", str(REPO / ".keel" / "models")))
GGUF = MODELS / "gemma-3-270m-q4_k_m.gguf"

PROMPTS = ["What port does Quillon listen on?", "quillon config file name?",
           "Héllo  wörld\t😀, 1234567 — naïve café?", "Line one\n\nline two:  spaced",
           "What is the capital of France?"]


async def test_tokenizer_from_the_gguf_matches_llama_cpp(tmp_path: Path):
    tok = build_tokenizer(GGUF)
    ids = tok("Question: What port?\nAnswer:")["input_ids"]
    assert ids[0] == tok.bos_token_id  # llama.cpp adds <bos> for this model
    assert tok.convert_ids_to_tokens(ids[1:3]) == ["Question", ":"]  # not one letter each
    settings = load_settings(None, data_dir=str(tmp_path / "data"), models_dir=str(MODELS))
    settings.local.slots = 1
    models = ModelRegistry(settings)
    spec = next(m for m in settings.model_table() if m.name == "gemma-3-270m")
    provider = models.provider(spec)
    try:
        for q in PROMPTS:
            msgs = [{"role": "user", "content": q}]
            prompt = chat_prompt(msgs, spec.chat_format)[0]
            r = await provider.chat({"model": spec.name, "messages": msgs, "max_tokens": 1,
                                     "temperature": 0}, spec)
            mine = tok(prompt)["input_ids"]
            assert r["usage"]["prompt_tokens"] == len(mine), q
            assert tok.decode(mine, skip_special_tokens=True) == prompt
    finally:
        await models.aclose()
