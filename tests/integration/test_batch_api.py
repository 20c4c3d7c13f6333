"""The Batch API end to end: the official openai client against a real gateway on
127.0.0.1, real `keel worker` processes started by the scaler, the real local model."""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from conftest import MODELS_DIR
from keel.app import build_services, create_app
from keel.batch.capability import BatchCapability
from keel.batch.schemas import output_valid
from keel.config import Settings, load_settings
from keel.gateway.services import Services
from keel.jobs.runtime import JobRuntime

from live import serve_app

SCHEMA = {"type": "object", "properties": {"sentiment": {"enum": ["positive", "negative"]}},
          "required": ["sentiment"], "additionalProperties": False}
DEADLINE_S = 420  # the test machine is shared and slow; a line takes seconds


def chat_line(cid: str, text: str, **extra: Any) -> bytes:
    body = {"model": "gemma-3-270m", "temperature": 0, "max_tokens": 12,
            "messages": [{"role": "user", "content": text}], **extra}
    return orjson.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                         "body": body})


def jsonl(*lines: bytes) -> io.BytesIO:
    return io.BytesIO(b"\n".join(lines) + b"\n")


def sentiment(cid: str, text: str) -> bytes:
    return chat_line(cid, f"Is this review positive or negative? {text}", response_format={
        "type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}})


@pytest.fixture
def batch_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    cfg = tmp_path / "keel.toml"
    cfg.write_text(
        f'data_dir = "{tmp_path / "data"}"\nmodels_dir = "{MODELS_DIR}"\n'
        "[local]\ncontext = 512\n"
        "[firewall]\nsemantic = false\n"
        "[approvals]\npolling_interval_s = 0.2\n"
        "[batch]\nenabled = true\nidle_s = 3\nmax_workers = 1\nworker_slots = 2\n"
        "worker_threads = 2\nretry_backoff_s = 0.2\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KEEL_CONFIG", str(cfg))  # the workers read the same settings
    s = load_settings(cfg)
    s.request_log.flush_interval_s = 0.05
    yield s


def scaler_of(svc: Services) -> Any:
    cap = svc.capability("batch")
    assert isinstance(cap, BatchCapability) and cap.scaler is not None
    return cap.scaler


def wait_for(client: openai.OpenAI, batch_id: str, until: Any = None) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        b = client.batches.retrieve(batch_id)
        if (until or (lambda b: b.status in ("completed", "failed", "cancelled")))(b):
            return b
        assert time.monotonic() < deadline, f"batch still {b.status}: {b.request_counts}"
        time.sleep(0.2)


def results(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [orjson.loads(x) for x in client.files.content(file_id).text.splitlines()]


def test_bad_files_are_refused_with_nothing_queued(batch_settings: Settings) -> None:
    svc = build_services(batch_settings)
    key = svc.keys.create("acme").secret
    with serve_app(create_app(batch_settings, services=svc)) as base:
        # a batch-enabled gateway starts with what a batch needs (the job runtime), so a
        # first batch does not leave its memory behind: the idle baseline includes it
        assert svc.get(JobRuntime).launched
        client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.BadRequestError, match="line 2 is not valid JSON"):
            client.files.create(file=jsonl(chat_line("a", "x"), b"{oops"), purpose="batch")
        with pytest.raises(openai.NotFoundError, match="line 1: model 'gpt-9'"):
            client.files.create(file=jsonl(chat_line("a", "x", model="gpt-9")),
                                purpose="batch")
        with pytest.raises(openai.BadRequestError, match="repeats custom_id 'a'"):
            client.files.create(file=jsonl(chat_line("a", "x"), chat_line("a", "y")),
                                purpose="batch")
        with pytest.raises(openai.BadRequestError, match="cannot be compiled"):
            client.files.create(file=jsonl(chat_line("a", "x", response_format={
                "type": "json_schema", "json_schema": {"name": "s", "schema": {
                    "type": "object", "properties": {"a": {"$ref": "#/nope"}}}}})),
                purpose="batch")
        bad_url = orjson.loads(chat_line("a", "x"))
        bad_url["url"] = "/v1/embeddings"
        with pytest.raises(openai.BadRequestError, match="url '/v1/embeddings'"):
            client.files.create(file=jsonl(orjson.dumps(bad_url)), purpose="batch")
        with pytest.raises(openai.BadRequestError, match="purpose"):
            client.files.create(file=jsonl(chat_line("a", "x")), purpose="fine-tune")
        good = client.files.create(file=jsonl(chat_line("a", "x")), purpose="batch")
        with pytest.raises(openai.BadRequestError, match="must match"):
            client.batches.create(input_file_id=good.id, endpoint="/v1/completions",
                                  completion_window="24h")
        with pytest.raises(openai.NotFoundError):
            client.batches.create(input_file_id="file_nope", endpoint="/v1/chat/completions",
                                  completion_window="24h")
        assert [f.id for f in client.files.list()] == [good.id]
        assert client.batches.list().data == []
        other = openai.OpenAI(base_url=base + "/v1", max_retries=0,
                              api_key=svc.keys.create("globex").secret)
        with pytest.raises(openai.NotFoundError):  # another tenant's file does not exist
            other.files.retrieve(good.id)
        assert scaler_of(svc).started == 0  # nothing queued, no worker started


def test_openai_client_batch_with_workers_real_model(batch_settings: Settings) -> None:
    svc = build_services(batch_settings)
    key = svc.keys.create("acme").secret
    scaler = scaler_of(svc)
    with serve_app(create_app(batch_settings, services=svc)) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
        poison = chat_line("too-long", "word " * 700)  # over the 512-token context
        f = client.files.create(file=jsonl(
            sentiment("r1", "I love it, works perfectly."), poison,
            sentiment("r2", "Broke after a day. Awful.")), purpose="batch")
        assert f.purpose == "batch" and f.bytes > 0
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"job": "reviews"})
        assert b.status == "in_progress" and b.request_counts.total == 3
        running = wait_for(client, b.id, lambda b: scaler.alive() > 0 or
                           b.status == "completed")
        pids = [w.pid for w in scaler.workers]
        if pids:  # batch work runs below interactive requests on this machine
            nice = int(Path(f"/proc/{pids[0]}/stat").read_text().rsplit(")", 1)[1].split()[16])
            assert nice == batch_settings.batch.worker_nice
        done = wait_for(client, running.id)
        assert done.status == "completed", done
        assert done.request_counts.completed == 2 and done.request_counts.failed == 1
        out = results(client, done.output_file_id)
        assert sorted(o["custom_id"] for o in out) == ["r1", "r2"]
        for o in out:
            assert o["response"]["status_code"] == 200
            text = o["response"]["body"]["choices"][0]["message"]["content"]
            assert output_valid(SCHEMA, text), text  # grammar-constrained
        err = results(client, done.error_file_id)
        assert [e["custom_id"] for e in err] == ["too-long"]
        assert err[0]["response"]["status_code"] == 400
        assert "context" in err[0]["error"]["message"]
        assert done.id in [x.id for x in client.batches.list().data]
        assert done.usage is not None and done.usage.output_tokens > 0
        cost = openai.OpenAI(base_url=base, api_key=key).get(
            f"/v1/batches/{done.id}/cost", cast_to=object)
        assert isinstance(cost, dict) and cost["lines_done"] == 2 and cost["cpu_s"] > 0
        assert cost["schema"] == {"checked": 2, "failures": 0}
        # the workers go away by themselves: zero processes once idle
        deadline = time.monotonic() + 60
        while scaler.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert scaler.alive() == 0
        assert not svc.models.local_loaded  # the gateway never loaded the model


def test_kill_9_a_worker_mid_batch_each_line_once_real_model(
        batch_settings: Settings) -> None:
    svc = build_services(batch_settings)
    key = svc.keys.create("acme").secret
    scaler = scaler_of(svc)
    n = 8
    with serve_app(create_app(batch_settings, services=svc)) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
        f = client.files.create(file=jsonl(*(chat_line(f"c{i}", f"Count to {i}.")
                                             for i in range(n))), purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
        b = wait_for(client, b.id, lambda b: b.request_counts.completed >= 2)
        assert b.status == "in_progress", "the batch ended before the kill"
        victim = scaler.workers[0].pid
        os.kill(victim, signal.SIGKILL)
        done = wait_for(client, b.id)
        assert done.status == "completed"
        ids = [o["custom_id"] for o in results(client, done.output_file_id)]
        ids += [e["custom_id"] for e in results(client, done.error_file_id)]
        assert sorted(ids) == sorted(f"c{i}" for i in range(n))  # each exactly once
        assert done.request_counts.completed == n
        assert scaler.started >= 2  # a new worker took over


def test_cancel_stops_queued_lines_without_workers(batch_settings: Settings) -> None:
    batch_settings.batch.autoscale = False  # nobody serves the queue: lines stay queued
    svc = build_services(batch_settings)
    key = svc.keys.create("acme").secret
    with serve_app(create_app(batch_settings, services=svc)) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
        f = client.files.create(file=jsonl(*(chat_line(f"c{i}", "hi") for i in range(5))),
                                purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
        c = client.batches.cancel(b.id)
        assert c.status == "cancelled" and c.cancelled_at is not None
        assert c.output_file_id is None and c.error_file_id is None
        with pytest.raises(openai.BadRequestError, match="cancelled"):
            client.batches.cancel(b.id)


def test_cli_submit_list_cancel_results(batch_settings: Settings, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from keel.cli.main import build

    batch_settings.batch.autoscale = False  # keel logic only: no worker, no model
    svc = build_services(batch_settings)
    key = svc.keys.create("acme").secret
    good, bad = tmp_path / "in.jsonl", tmp_path / "bad.jsonl"
    good.write_bytes(jsonl(chat_line("a", "x"), chat_line("b", "[y]")).getvalue())
    bad.write_bytes(b'{"custom_id": "a"}\n')
    with serve_app(create_app(batch_settings, services=svc)) as base:
        cli = CliRunner(env={"KEEL_URL": base, "KEEL_API_KEY": key, "COLUMNS": "250"})

        def run(*args: str) -> Any:
            return cli.invoke(build(), ["batch", *args])

        r = run("submit", str(bad))
        assert r.exit_code == 1 and "line 1: missing required field 'method'" in r.output
        r = run("submit", str(good))
        assert r.exit_code == 0, r.output
        batch_id = r.output.split()[1]
        assert batch_id.startswith("batch_") and "2 lines" in r.output
        assert batch_id in run("list").output
        r = run("cancel", batch_id)
        assert r.exit_code == 0 and "cancelled" in r.output
        r = run("status", batch_id, "--wait")  # a final batch: the bar ends at once
        assert r.exit_code == 0 and "cancelled" in r.output
        r = run("results", batch_id)
        assert r.exit_code == 1 and "no output file" in r.output


@pytest.mark.model
def test_a_starting_worker_loads_the_queued_model_and_grammar_before_its_build(
    batch_settings: Settings,
) -> None:
    import asyncio

    from keel.batch.warm import preload_queued
    from keel.providers.local import LocalProvider

    batch_settings.batch.autoscale = False  # nobody serves the queue: lines stay queued
    svc = build_services(batch_settings)
    key = svc.keys.create("acme").secret
    with serve_app(create_app(batch_settings, services=svc)) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
        f = client.files.create(file=jsonl(sentiment("s1", "Lovely cafe, cheap coffee.")),
                                purpose="batch")
        client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                              completion_window="24h")

    async def start() -> None:
        providers = await preload_queued(batch_settings)
        local = providers["local"]
        assert isinstance(local, LocalProvider)
        spec = svc.models.find("gemma-3-270m")
        try:
            assert local.is_loaded(spec)
            # the grammar request is with llama.cpp, not awaited: the worker goes on
            assert local.in_flight == 1
            out = await local.chat({"model": spec.name, "temperature": 0, "max_tokens": 12,
                                    "messages": [{"role": "user", "content": "Great!"}],
                                    "response_format": {"type": "json_schema", "json_schema": {
                                        "name": "s", "schema": SCHEMA}}}, spec)
            assert output_valid(SCHEMA, out["choices"][0]["message"]["content"])
            assert local.in_flight == 0
        finally:
            await local.aclose()

    asyncio.run(start())


def test_revoked_key_stops_its_batch_and_files_report_their_size(
        batch_settings: Settings) -> None:
    """Revocation (the CLI's `keel keys revoke`) stops the batch at its next line: nothing
    is run or billed after it, the lines go to the error file, the batch ends failed."""
    import asyncio

    from typer.testing import CliRunner

    from keel.cli.main import build

    batch_settings.batch.autoscale = False  # the test runs the lines itself, no model
    svc = build_services(batch_settings)
    made = svc.keys.create("acme")
    admin = svc.keys.create("acme", admin=True).secret
    with serve_app(create_app(batch_settings, services=svc)) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key=made.secret, max_retries=0)
        f = client.files.create(file=jsonl(*(chat_line(f"c{i}", "hi") for i in range(3))),
                                purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
        r = CliRunner().invoke(build(), ["keys", "revoke", made.info.id])
        assert r.exit_code == 0, r.output
        cap = svc.capability("batch")
        assert isinstance(cap, BatchCapability)
        assert asyncio.run(cap.runner().run(b.id, 1)) == "failed"
        assert asyncio.run(cap.runner().run(b.id, 2)) == "skipped"
        boss = openai.OpenAI(base_url=base + "/v1", api_key=admin, max_retries=0)
        done = boss.batches.retrieve(b.id)
        assert done.status == "failed" and done.failed_at is not None
        assert done.errors is not None and done.errors.data
        assert done.errors.data[0].code == "key_revoked"
        assert done.request_counts.failed == 3 and done.request_counts.completed == 0
        err = boss.files.content(done.error_file_id or "").content
        assert [orjson.loads(x)["error"]["code"] for x in err.splitlines()] == \
            ["key_revoked"] * 3
        assert boss.files.retrieve(done.error_file_id or "").bytes == len(err)
        assert not svc.models.local_loaded  # no model call was made


def test_http_checks_name_what_to_fix(batch_settings: Settings) -> None:
    batch_settings.batch.autoscale = False
    batch_settings.batch.max_file_bytes = 20000
    svc = build_services(batch_settings)
    key = svc.keys.create("acme").secret
    with serve_app(create_app(batch_settings, services=svc)) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.APIStatusError) as big:
            client.files.create(file=io.BytesIO(b"x" * 300_000), purpose="batch")
        assert big.value.status_code == 413
        assert "the file limit is 20000 bytes (set by batch.max_file_bytes)" in str(big.value)
        with pytest.raises(openai.BadRequestError, match="`purpose` field is empty"):
            client.files.create(file=jsonl(chat_line("a", "x")), purpose="")  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError, match="after='batch_nope'"):
            client.batches.list(after="batch_nope")


def test_upstream_lines_cost_report_and_upstream_errors(
        tmp_path: Path, fake_upstream: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines on an upstream model (a scripted OpenAI-compatible server, no local model):
    the cost report shows them as upstream spend, not local work; an upstream 401 is
    final at once; an upstream 500 is sent max_attempts x (1 + [openai] retries) times."""
    import asyncio

    from conftest import make_settings

    monkeypatch.chdir(tmp_path)
    s = make_settings(tmp_path, fake_upstream, batch={
        "enabled": True, "autoscale": False, "retry_backoff_s": 0.01, "max_attempts": 2})
    svc = build_services(s)
    key = svc.keys.create("acme").secret
    cap = svc.capability("batch")
    assert isinstance(cap, BatchCapability)

    def run_batch(client: openai.OpenAI, n: int) -> Any:
        f = client.files.create(file=jsonl(*(chat_line(f"u{i}", "hi", model="fake-gpt")
                                             for i in range(n))), purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
        for i in range(1, n + 1):  # one loop: the provider's HTTP session lives in it
            loop.run_until_complete(cap.runner().run(b.id, i))
        return client.batches.retrieve(b.id)

    loop = asyncio.new_event_loop()
    with serve_app(create_app(s, services=svc)) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
        done = run_batch(client, 2)
        assert done.status == "completed" and done.request_counts.completed == 2
        cost = openai.OpenAI(base_url=base, api_key=key).get(
            f"/v1/batches/{done.id}/cost", cast_to=object)
        assert isinstance(cost, dict)
        assert cost["local"]["lines"] == 0 and cost["models"] == []
        up = cost["upstream"]
        assert up["lines"] == 2 and up["input_tokens"] == 22 and up["usd"] > 0
        assert up["models"][0]["model"] == "fake-gpt"
        assert up["usd"] == pytest.approx(cost["metered_usd"])

        fake_upstream.status = 401
        before = len(fake_upstream.calls)
        failed = run_batch(client, 1)
        assert len(fake_upstream.calls) - before == 1  # final at once
        err = results(client, failed.error_file_id)
        assert "credentials (HTTP 401)" in err[0]["error"]["message"]

        fake_upstream.status = 500
        before = len(fake_upstream.calls)
        run_batch(client, 1)
        assert len(fake_upstream.calls) - before == 2 * (1 + s.openai.retries)
    loop.run_until_complete(svc.models.openai().aclose())
    loop.close()
