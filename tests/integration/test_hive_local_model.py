"""The hive tee with the real local model: the next agent reads the output before the
model has finished writing it."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keel.app import build_services, create_app
from keel.config import load_settings
from keel.gateway.services import Services

from live import serve_app

pytestmark = pytest.mark.model
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Services]]:
    monkeypatch.chdir(tmp_path)
    models_dir = os.environ.get("KEEL_TEST_MODEL_DIR", str(REPO / ".keel" / "models"))
    settings = load_settings(None, data_dir=str(tmp_path / "data"), models_dir=models_dir,
                             hive={"enabled": True})
    svc = build_services(settings)
    with serve_app(create_app(settings, services=svc)) as base:
        yield base, svc


async def test_coder_reads_researcher_tokens_before_the_model_finishes(
        stack: tuple[str, Services]) -> None:
    base, svc = stack
    researcher = svc.keys.create("acme", agent="researcher").secret
    coder = svc.keys.create("acme", agent="coder").secret
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        r = await http.post("/v1/hive/tasks", json={"name": "job"},
                            headers={"authorization": f"Bearer {researcher}"})
        assert r.status_code == 201
        first_seen: list[float] = []
        texts: list[str] = []

        async def coder_reads() -> None:
            async with http.stream(
                    "GET", "/v1/hive/tasks/job/streams/researcher/tail?wait=true",
                    headers={"authorization": f"Bearer {coder}"}) as resp:
                async for line in resp.aiter_lines():
                    if line.startswith("data: "):
                        rec = json.loads(line[6:])
                        if rec["kind"] == "tokens" and not first_seen:
                            first_seen.append(time.perf_counter())
                        texts.append(rec["data"])

        reader = asyncio.create_task(coder_reads())
        # The researcher's own chunks, timed as its client receives them: the coder must
        # see tokens while a good part of the answer is still to come (judged in chunks,
        # not seconds, so a fast model or a slow machine changes nothing).
        chunk_times: list[float] = []
        lines: list[str] = []
        async with http.stream(
                "POST", "/v1/chat/completions",
                headers={"authorization": f"Bearer {researcher}",
                         "x-keel-hive": "job/researcher"},
                json={"model": "gemma-3-270m", "stream": True, "max_tokens": 64,
                      "temperature": 0,
                      "messages": [{"role": "user", "content": "List facts about the sea."}]},
        ) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                lines.append(line)
                if line.startswith("data: {") and json.loads(line[6:])["choices"]:
                    chunk_times.append(time.perf_counter())
        await asyncio.wait_for(reader, 30)
    assert first_seen and len(chunk_times) >= 8
    still_to_come = sum(1 for t in chunk_times if t > first_seen[0])
    assert still_to_come >= len(chunk_times) // 4, (still_to_come, len(chunk_times))
    answer = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in lines
        if line.startswith("data: {") and json.loads(line[6:])["choices"])
    assert "".join(texts) == answer and answer.strip()
