"""The judge on the real local model (Gemma 3 270M) through keel's own pipeline: the
verdict is schema-valid JSON and its cost lands in keel's meter. (The tiny model is not a
good judge; this proves the wiring, not the judgement.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keel.app import build_services, running
from keel.config import load_settings
from keel.gateway.context import Principal
from keel.gateway.internal import InternalClient
from keel.qa.chat import KeelChat
from keel.qa.judge import Judge
from keel.qa.suites import SuitePrompt

pytestmark = pytest.mark.model
REPO = Path(__file__).resolve().parents[2]


async def test_real_local_model_judges_with_a_schema_valid_metered_verdict(
        tmp_path: Path) -> None:
    models_dir = os.environ.get("KEEL_TEST_MODEL_DIR", str(REPO / ".keel" / "models"))
    settings = load_settings(None, data_dir=str(tmp_path / "data"), models_dir=models_dir)
    svc = build_services(settings)
    async with running(svc):
        backend = KeelChat(InternalClient(svc), Principal(key_id="qa", tenant="qa"))
        judge = Judge(backend, "gemma-3-270m", max_tokens=60)
        vote, cost = await judge._vote(
            SuitePrompt(id="p", prompt="What is 2 + 2?"), "2 + 2 = 4.", "", 0.0)
    assert vote.verdict in ("pass", "fail"), vote.reasons  # never "error": constrained JSON
    assert cost >= 0.0
