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


def test_real_local_model_builds_a_suite_from_sanitized_log_lines(tmp_path: Path) -> None:
    """`keel qa suite build` with the local model as the generator, through keel's
    pipeline and xllamacpp's JSON-schema grammar: every answer is usable, prompts and the
    persona are schema-valid and sanitized, near-duplicates are gone, each prompt carries
    its provenance, and the generation cost is metered."""
    import asyncio
    import json
    import re
    import sqlite3

    import numpy as np
    from typer.testing import CliRunner

    from keel.cli.main import build
    from keel.providers.embeddings import MiniLMEmbedder
    from keel.qa.builder import PERSONA_MAX_CHARS, PROMPT_MAX_CHARS

    models_dir = os.environ.get("KEEL_TEST_MODEL_DIR", str(REPO / ".keel" / "models"))
    cfg = tmp_path / "keel.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\nmodels_dir = "{models_dir}"\n'
                   "[firewall]\nsemantic = false\n")
    log = tmp_path / "log.jsonl"
    secrets = ("Kevin Harrison", "kevin.h@example.com", "4454794511390933", "0490 75 40 81")
    log.write_text(
        '{"text": "Hi, I am Kevin Harrison (kevin.h@example.com). Why was my card '
        '4454794511390933 charged twice for the Plus plan?", "user": "u-1"}\n'
        '{"text": "Export all my notes as JSON please. Call me on 0490 75 40 81.", '
        '"user": "u-1"}\n')

    def keel(*args: str) -> tuple[int, str]:
        r = CliRunner(env={"COLUMNS": "250"}).invoke(build(), ["--config", str(cfg), "qa",
                                                               *args])
        return r.exit_code, r.stdout + " ".join(r.stderr.split())

    code, out = keel("suite", "build", "--name", "gen", "--from-jsonl", str(log),
                     "--per-user", "2", "--max-users", "1")
    assert code == 0, out
    with sqlite3.connect(tmp_path / "data" / "keel.db") as c:
        (meta,), = c.execute("select meta from qa_suites where name = 'gen'")
    meta = json.loads(meta)
    assert meta["users"] == 1 and meta["unusable_answers"] == 0, meta
    assert 1 <= meta["generated"] <= 2 and meta["generated"] == meta["added"] + meta[
        "duplicates"]
    assert meta["generation_cost_usd"] > 0  # metered by keel on the [qa] tenant
    code, exported = keel("suite", "export", "gen")
    rows = [json.loads(line) for line in exported.splitlines()]
    assert len(rows) == meta["added"] >= 1
    def generated_len(text: str) -> int:
        # the schema bounds what the model wrote; sanitizing it again can only swap some
        # of those characters (at least one each) for a longer placeholder such as
        # <PERSON_1a2b3c4d>
        return len(re.sub(r"<[A-Z_]+_[0-9a-f]+>", "x", text))

    for r in rows:  # (a placeholder is longer than what it replaced: the lower bound holds)
        assert len(r["prompt"]) >= 3 and generated_len(r["prompt"]) <= PROMPT_MAX_CHARS, r
        assert len(r["persona"]) >= 3 and generated_len(r["persona"]) <= PERSONA_MAX_CHARS, r
        assert not any(s in r["prompt"] or s in r["persona"] for s in secrets), r
        prov = r["provenance"]
        assert prov["source"] == "jsonl:log.jsonl" and prov["generator"] == "gemma-3-270m"
        assert prov["user"].startswith("<USER_") and "u-1" not in prov["user"]
        assert prov["records"] == ["line 1", "line 2"]
    embedder = MiniLMEmbedder(Path(models_dir))
    try:
        vecs = np.asarray(asyncio.run(embedder.embed([r["prompt"] for r in rows])))
    finally:
        embedder.close()
    sims = vecs @ vecs.T - np.eye(len(rows)) * 2
    assert float(sims.max(initial=-1.0)) < 0.92  # no near-duplicates kept
