"""Reasoning runs against a scripted upstream on 127.0.0.1 (keel's orchestration logic:
fan-out, retries, early stop, tournaments, citations, budgets, metering; not model
quality, which bench/reasoning_quality.py measures with the real model)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import make_settings
from keel.app import build_services, create_app
from keel.config import Settings
from keel.gateway.services import Services
from keel.reasoning.service import ReasoningService
from reasoning_upstream import ReasoningUpstream


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def reasoner(**kw: Any) -> dict[str, Any]:
    base = {"name": "deep", "workers": ["cheap"], "judge": "strong", "n": 6,
            "max_concurrency": 4, "retries": 2, "retry_base_s": 0.01, "retry_max_s": 0.02,
            "worker_max_tokens": 64, "judge_max_tokens": 256}
    return base | kw


@pytest.fixture
def upstream() -> Iterator[ReasoningUpstream]:
    up = ReasoningUpstream(answers=["alpha", "beta", "gamma"]).start()
    yield up
    up.stop()


def settings_for(tmp_path: Path, up: ReasoningUpstream, reasoners: list[dict[str, Any]],
                 judge_context: int = 8192) -> Settings:
    models = [
        {"name": "cheap", "provider": "openai", "base_url": up.base_url, "api_key": "sk-x",
         "input_usd_per_1m": 1.0, "output_usd_per_1m": 2.0, "context": 4096},
        {"name": "strong", "provider": "openai", "base_url": up.base_url, "api_key": "sk-x",
         "input_usd_per_1m": 3.0, "output_usd_per_1m": 15.0, "context": judge_context},
    ]
    s = make_settings(tmp_path, None, models=models, reasoners=reasoners)
    s.request_log.flush_interval_s = 0.02
    s.firewall.semantic = False
    return s


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.svc: Services = build_services(settings)
        self.key = self.svc.keys.create("acme", agent="bot-1").secret

    @property
    def reasoning(self) -> ReasoningService:
        return self.svc.get(ReasoningService)


@asynccontextmanager
async def _client(gw: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(gw.settings, services=gw.svc)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://keel",
                                     headers=auth(gw.key), timeout=30) as c:
            yield c


async def log_rows(svc: Services, at_least: int) -> list[dict[str, Any]]:
    from keel.metering.request_log import LogFilter, query_requests

    rows: list[dict[str, Any]] = []
    for _ in range(200):
        await svc.request_log.flush()
        rows = await svc.db.run(lambda c: query_requests(c, LogFilter(limit=1000)))
        if len(rows) >= at_least:
            return rows
        await asyncio.sleep(0.02)
    return rows


async def test_chat_reasoner_runs_samples_and_a_judge_with_checked_citations(
        tmp_path: Path, upstream: ReasoningUpstream) -> None:
    gw = Gateway(settings_for(tmp_path, upstream, [reasoner()]))
    async with _client(gw) as c:
        models = (await c.get("/v1/models")).json()["data"]
        assert "reasoner/deep" in {m["id"] for m in models}
        r = await c.post("/v1/chat/completions", json={
            "model": "reasoner/deep", "messages": [{"role": "user", "content": "Q?"}]})
        assert r.status_code == 200, r.text
        data = r.json()
        info = data["keel_reasoning"]
        assert data["choices"][0]["message"]["content"].startswith("synthesised: ")
        # the judge cited two real ids and one made-up one: only the real ones are kept
        assert [c["id"] for c in info["citations"]] == data["choices"][0]["message"][
            "content"].removeprefix("synthesised: ").split(" + ")
        assert all(c["model"] == "cheap" for c in info["citations"])
        assert upstream.worker_calls == 6 and upstream.calls["judge"] == 1
        # every worker got a different seed; the judge saw ids, never worker models
        seeds = sorted(b["seed"] for b in upstream.bodies if "seed" in b)
        assert seeds == list(range(6))
        judge_prompt = json.dumps([b for b in upstream.bodies if "response_format" in b])
        assert "cheap" not in judge_prompt
        run = (await c.get(f"/v1/reasoning/runs/{info['run_id']}")).json()
        verdicts = {s["id"]: s["verdict"] for s in run["samples"]}
        assert sorted(verdicts.values()).count("cited") == 2
        assert "rejected" in verdicts.values()
        assert any(e["kind"] == "citations_invalid" and e["ids"] == ["zz9"]
                   for e in run["events"])
        # metering: 6 samples + 1 judge in the request log, each tagged with the run, and
        # the run's cost is exactly their sum; the outer request itself costs nothing
        rows = await log_rows(gw.svc, 8)
        inner = [r for r in rows if info["run_id"] in (r["decisions"] or "")
                 and r["model"] != "reasoner/deep"]
        assert len(inner) == 7 and all(r["tenant"] == "acme" and r["agent"] == "bot-1"
                                       for r in inner)
        assert sum(r["cost_usd"] for r in inner) == pytest.approx(info["cost_usd"])
        assert float(r.headers["x-keel-cost-usd"]) == pytest.approx(info["cost_usd"])
        outer = [r for r in rows if r["model"] == "reasoner/deep"]
        assert len(outer) == 1 and outer[0]["cost_usd"] == 0


async def test_streaming_sends_progress_then_the_answer(
        tmp_path: Path, upstream: ReasoningUpstream) -> None:
    gw = Gateway(settings_for(tmp_path, upstream, [reasoner(n=3)]))
    async with _client(gw) as c:
        chunks = []
        async with c.stream("POST", "/v1/chat/completions", json={
                "model": "reasoner/deep", "stream": True,
                "messages": [{"role": "user", "content": "Q?"}]}) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunks.append(json.loads(line[6:]))
        kinds = [ch["keel_reasoning"]["kind"] for ch in chunks
                 if not ch["choices"] and "keel_reasoning" in ch]
        assert kinds.count("sample") == 3 and "judge" in kinds and kinds[-1] == "succeeded"
        text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks
                       if ch["choices"])
        assert text.startswith("synthesised: ")


async def test_async_resource_202_get_and_sse_events(
        tmp_path: Path, upstream: ReasoningUpstream) -> None:
    gw = Gateway(settings_for(tmp_path, upstream, [reasoner(n=4)]))
    async with _client(gw) as c:
        r = await c.post("/v1/reasoning/runs", json={"reasoner": "deep", "question": "Q?"})
        assert r.status_code == 202, r.text
        run_id = r.json()["id"]
        assert r.headers["location"] == f"/v1/reasoning/runs/{run_id}"
        kinds = []
        async with c.stream("GET", f"/v1/reasoning/runs/{run_id}/events") as ev:
            async for line in ev.aiter_lines():
                if line.startswith("event: "):
                    kinds.append(line[7:])
        assert kinds[0] == "created" and kinds[-1] == "succeeded"
        assert kinds.count("sample") == 4
        got = (await c.get(f"/v1/reasoning/runs/{run_id}")).json()
        assert got["status"] == "succeeded" and len(got["samples"]) == 4
        listed = (await c.get("/v1/reasoning/runs")).json()["data"]
        assert [x["id"] for x in listed] == [run_id]
        other = gw.svc.keys.create("globex").secret  # another tenant cannot see it
        r = await c.get(f"/v1/reasoning/runs/{run_id}", headers=auth(other))
        assert r.status_code == 404


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({"reasoner": "nope", "question": "Q"}, 404, "configured reasoners: deep"),
    ({"reasoner": "deep", "question": "Q", "n": 0}, 400, "n must be"),
    ({"reasoner": "deep", "question": "Q", "n": 11}, 400, "max_n"),
    ({"reasoner": "deep", "question": "Q", "budget_usd": 0.000001}, 400,
     "cannot pay for one sample"),
    ({"reasoner": "deep", "question": "Q", "budget_usd": -1}, 400, "budget_usd"),
    ({"reasoner": "deep"}, 400, "exactly one of"),
    ({"reasoner": "deep", "question": "Q", "bogus": 1}, 400, "unknown fields"),
    ({"reasoner": "tiny", "question": "Q"}, 400, "cannot hold even one answer"),
])
async def test_bad_input_is_refused_before_any_model_call(
        tmp_path: Path, upstream: ReasoningUpstream, body: dict[str, Any], status: int,
        needle: str) -> None:
    tiny = reasoner(name="tiny", judge="cheap", worker_max_tokens=2000,
                    judge_max_tokens=2000)
    gw = Gateway(settings_for(tmp_path, upstream, [reasoner(max_n=10), tiny]))
    async with _client(gw) as c:
        r = await c.post("/v1/reasoning/runs", json=body)
        assert r.status_code == status, r.text
        assert needle in r.json()["error"]["message"]
        same_via_chat = "question" in body and set(body) <= {
            "reasoner", "question", "n", "budget_usd"}
        if same_via_chat:  # the same refusal through /v1/chat/completions
            r = await c.post("/v1/chat/completions", json={
                "model": "reasoner/" + body["reasoner"], "keel_reasoning": {
                    k: v for k, v in body.items() if k in ("n", "budget_usd")},
                "messages": [{"role": "user", "content": "Q"}]})
            assert r.status_code == status, r.text
            if body["reasoner"] != "nope":  # an unknown model: the route's own 404
                assert needle in r.json()["error"]["message"]
    assert sum(upstream.calls.values()) == 0
    assert not await gw.reasoning.store.recent()


async def test_failing_upstream_ends_failed_with_reasons_after_retries(
        tmp_path: Path, upstream: ReasoningUpstream) -> None:
    upstream.fail_status = 503
    gw = Gateway(settings_for(tmp_path, upstream, [reasoner(n=3, retries=2)]))
    async with _client(gw) as c:
        r = await asyncio.wait_for(c.post("/v1/chat/completions", json={
            "model": "reasoner/deep", "messages": [{"role": "user", "content": "Q"}]}), 20)
        assert r.status_code == 502
        assert "0 of 3 samples succeeded" in r.json()["error"]["message"]
        run = (await gw.reasoning.store.recent())[0]
        assert run.status == "failed" and upstream.calls["judge"] == 0
        full = await gw.reasoning.store.get(run.id)
        assert full is not None and all(s["attempts"] == 3 and s["status"] == "failed"
                                        for s in full.samples)
    # the gateway itself retries 5xx too (openai.retries): each sample attempt is >= 1 call
    assert upstream.worker_calls >= 9


async def test_transient_failures_are_retried_with_backoff_and_the_run_succeeds(
        tmp_path: Path, upstream: ReasoningUpstream) -> None:
    upstream.fail_first = 2  # two 503s per sample, then answers
    s = settings_for(tmp_path, upstream, [reasoner(n=3, retries=3)])
    s.openai.retries = 0  # keel's sample retry, not the HTTP provider's, absorbs them
    gw = Gateway(s)
    async with _client(gw) as c:
        r = await c.post("/v1/chat/completions", json={
            "model": "reasoner/deep", "messages": [{"role": "user", "content": "Q"}]})
        assert r.status_code == 200, r.text
    run = (await gw.reasoning.store.recent())[0]
    full = await gw.reasoning.store.get(run.id)
    assert full is not None
    assert [s["attempts"] for s in full.samples] == [3, 3, 3]
    assert upstream.worker_calls == 9
    retries = [e for e in await gw.reasoning.store.events(run.id) if e["kind"] == "retry"]
    assert len(retries) == 6 and all(0.005 <= e["delay_s"] <= 0.02 for e in retries)


@pytest.mark.parametrize("max_concurrency", [10, 7])
async def test_concurrent_runs_never_exceed_max_concurrency(
        tmp_path: Path, max_concurrency: int) -> None:
    # lanes run several samples each (10 -> 2 lanes of 5; 7, a prime, -> 7 lanes of 1):
    # two runs of one reasoner together still sample at most max_concurrency at once
    up = ReasoningUpstream(answers=["alpha", "beta"], delay_s=0.1).start()
    try:
        gw = Gateway(settings_for(tmp_path, up, [reasoner(n=20,
                                                          max_concurrency=max_concurrency)]))
        async with _client(gw) as c:
            rs = await asyncio.gather(*(c.post("/v1/reasoning/runs", json={
                "reasoner": "deep", "question": f"Q{i}?"}) for i in range(2)))
            runs = [await gw.reasoning.wait(r.json()["id"]) for r in rs]
        assert [r.status for r in runs] == ["succeeded", "succeeded"], [r.error for r in runs]
        assert up.worker_calls == 40
        assert up.peak_in_flight == max_concurrency  # the limit is reached, never passed
        for run in runs:  # every sample ran once, under a slot number below the limit
            assert sorted(s["index"] for s in run.samples) == list(range(20))
            assert {s["lane"] for s in run.samples} <= set(range(max_concurrency))
    finally:
        up.stop()


async def test_early_stop_cancels_the_rest_when_the_first_answers_agree(
        tmp_path: Path) -> None:
    up = ReasoningUpstream(answers=["Paris."], delay_s=0.05).start()
    try:
        gw = Gateway(settings_for(tmp_path, up, [reasoner(n=20, max_concurrency=2,
                                                          early_stop=3)]))
        async with _client(gw) as c:
            r = await c.post("/v1/chat/completions", json={
                "model": "reasoner/deep", "messages": [{"role": "user", "content": "Q"}]})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == "Paris."
        assert up.worker_calls < 10 and up.calls["judge"] == 0
        run = (await gw.reasoning.store.recent())[0]
        full = await gw.reasoning.store.get(run.id)
        assert full is not None
        statuses = [s["status"] for s in full.samples]
        assert statuses.count("cancelled") >= 10
    finally:
        up.stop()


async def test_tournament_when_answers_do_not_fit_the_judge(
        tmp_path: Path, upstream: ReasoningUpstream) -> None:
    # judge context 1200: 1200 - 256 out - prompt ~190 -> room for ~10 answers of 64 tokens
    upstream.completion_tokens = 60
    gw = Gateway(settings_for(tmp_path, upstream, [reasoner(n=40, max_n=40, survivors=2)],
                              judge_context=1200))
    async with _client(gw) as c:
        r = await c.post("/v1/reasoning/runs", json={"reasoner": "deep", "question": "Q?"})
        assert r.status_code == 202, r.text
        run = await gw.reasoning.wait(r.json()["id"])
    assert run.status == "succeeded", run.error
    events = await gw.reasoning.store.events(run.id)
    rounds = [e for e in events if e["kind"] == "round"]
    judges = [e for e in events if e["kind"] == "judge"]
    assert len(rounds) >= 1 and judges[-1]["key"] == "final"
    assert run.judge_calls == len(judges) == upstream.calls["judge"]
    assert all(len(j["presented"]) <= 10 for j in judges)
    verdicts = [s["verdict"] for s in run.samples]
    assert verdicts.count("cited") == 2
    assert all(s["reason"] for s in run.samples if s["verdict"] == "rejected")


async def test_budget_limits_samples_before_they_are_requested(
        tmp_path: Path, upstream: ReasoningUpstream) -> None:
    gw = Gateway(settings_for(tmp_path, upstream, [reasoner(n=10)]))
    engine = gw.reasoning.engine
    spec = engine.reasoner("deep")
    room = engine.room(spec, "Q")
    # enough for the final judge and 3 samples at worst case
    budget = 3 * engine._worst_sample(spec, "Q") + engine._worst_judge(spec, room) * 1.0001
    async with _client(gw) as c:
        r = await c.post("/v1/reasoning/runs", json={"reasoner": "deep", "question": "Q",
                                                     "budget_usd": budget})
        assert r.status_code == 202, r.text
        run = await gw.reasoning.wait(r.json()["id"])
    assert run.status == "succeeded"
    assert [s["status"] for s in run.samples].count("skipped") == 7
    assert upstream.worker_calls == 3
    assert run.cost_usd <= budget


async def test_a_resumed_run_never_requests_finished_samples_again(
        tmp_path: Path, upstream: ReasoningUpstream) -> None:
    gw = Gateway(settings_for(tmp_path, upstream, [reasoner(n=6)]))
    svc = gw.reasoning
    from keel.gateway.context import Principal
    from keel.reasoning.calls import Reply

    run = svc.engine.plan(Principal("k", "acme"), "deep", [{"role": "user", "content": "Q"}])
    await svc.engine.create(run)
    # a crashed process left 4 samples done
    fresh = await svc.store.get(run.id)
    assert fresh is not None
    for s in fresh.samples[:4]:
        await svc.store.finish_sample(run.id, s["index"], Reply("beta", 1, 1, 0.0, "r"), 1,
                                      1.0, s["id"])
    await svc.store.update_run(run.id, status="running")
    async with _client(gw):  # start(): resumes unfinished runs
        done = await svc.wait(run.id)
    assert done.status == "succeeded"
    assert sorted(k for k in upstream.calls if k.startswith("worker:")) == ["worker:4",
                                                                           "worker:5"]


async def test_cli_show_prints_attempts_verdicts_and_judges_offline(
        tmp_path: Path, upstream: ReasoningUpstream) -> None:
    from typer.testing import CliRunner

    from keel.cli.main import build

    gw = Gateway(settings_for(tmp_path, upstream, [reasoner(n=4)]))
    async with _client(gw) as c:
        r = await c.post("/v1/reasoning/runs", json={"reasoner": "deep", "question": "Q?"})
        run = await gw.reasoning.wait(r.json()["id"])
    assert run.status == "succeeded"
    cfg = tmp_path / "keel.toml"
    cfg.write_text(f'data_dir = "{gw.settings.data_dir}"\n')
    cli = CliRunner(env={"COLUMNS": "250"})

    async def keel(*args: str) -> Any:
        return await asyncio.to_thread(cli.invoke, build(), ["--config", str(cfg), *args])

    out = await keel("reason", "show", run.id)
    assert out.exit_code == 0, out.output
    assert "synthesised: " in out.output and "cited" in out.output
    assert "rejected" in out.output and "contradicts the others" in out.output
    assert "final" in out.output  # the judge call table
    listed = await keel("reason", "runs")
    assert run.id in listed.output
    missing = await keel("reason", "show", "rsn_nope")
    assert missing.exit_code == 1 and "does not exist" in missing.output
    # `keel reason "QUESTION"` is the ask command (no gateway here: a clear error)
    ask = await keel("reason", "What?", "--reasoner", "deep", "--url",
                     "http://127.0.0.1:9")
    assert ask.exit_code == 1 and "no keel gateway answers" in ask.output
