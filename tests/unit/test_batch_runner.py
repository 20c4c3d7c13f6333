"""The line runner's own logic with a scripted fake model call (real SQLite): results
written once, retries with backoff, 4xx not retried, poison lines to the error file,
cancel, a revoked key stopping its batch, failed lines keeping their cost. The real model
and real workers are covered in tests/integration."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from keel.app import open_database
from keel.auth.keys import KeyStore
from keel.batch import store
from keel.batch.runner import CallFailed, CallResult, LineRunner
from keel.batch.settings import BatchSettings
from keel.config import ModelSpec, load_settings
from keel.errors import InvalidRequest, KeelError, UpstreamError
from keel.gateway.context import ANONYMOUS, Principal
from keel.storage.sql import Database

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


class ScriptedCall:
    """Fake LLM: answers per custom_id from a script (an exception, or the content)."""

    def __init__(self, script: dict[str, list[Any]]) -> None:
        self.script = script
        self.calls: list[str] = []

    async def __call__(self, p: Principal, endpoint: str, body: dict[str, Any]) -> CallResult:
        cid = body["messages"][0]["content"]
        self.calls.append(cid)
        step = self.script[cid].pop(0) if len(self.script[cid]) > 1 else self.script[cid][0]
        if isinstance(step, BaseException):
            raise step
        if step == "hang":
            await asyncio.sleep(60)
        if step == "burn":  # CPU spent by a call that then fails at the upstream
            end = time.process_time() + 0.05
            while time.process_time() < end:
                pass
            raise UpstreamError("boom after work")
        finish = "stop"
        if step.startswith("cut:"):  # the model hit max_tokens
            step, finish = step[4:], "length"
        return CallResult({"choices": [{"message": {"role": "assistant", "content": step},
                                        "finish_reason": finish}]}, "req_1", 10, 3, 0.0)


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return open_database(load_settings(None, data_dir=str(tmp_path)))


def key_of(db: Database) -> str:
    """The id of tenant t's key (created once per database)."""
    keys = KeyStore(db).list(tenant="t", include_revoked=True)
    return keys[0].id if keys else KeyStore(db).create("t").info.id


def make_batch(db: Database, cids: list[str], schema: bool = False,
               key_id: str | None = None) -> str:
    key_id = key_id or key_of(db)

    def body(cid: str) -> str:
        b: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": cid}]}
        if schema:
            b["response_format"] = {"type": "json_schema",
                                    "json_schema": {"name": "s", "schema": SCHEMA}}
        return orjson.dumps(b).decode()

    def tx(c: Any) -> str:
        f = store.insert_file(c, tenant="t", filename="f", content=b"x", n_lines=len(cids),
                              endpoint="/v1/chat/completions")
        return store.insert_batch(c, tenant="t", key_id=key_id, agent=None, input_file=f,
                                  completion_window="24h", metadata=None, expires_in_s=60,
                                  body_lines=[(i + 1, cid, body(cid))
                                              for i, cid in enumerate(cids)]).id
    return db.transaction(tx)


def runner(db: Database, call: ScriptedCall, **kw: Any) -> LineRunner:
    s = BatchSettings(retry_backoff_s=0.01, **kw)
    # a KeyStore of its own, as in a worker process: nothing cached is shared
    return LineRunner(db, s, call, key_active=KeyStore(db).active)


def files(db: Database, batch_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return (db.transaction(lambda c: store.result_lines(c, batch_id, store.DONE)),
            db.transaction(lambda c: store.result_lines(c, batch_id, store.FAILED)))


async def test_results_are_written_once_and_the_batch_completes_fake_llm(db: Database) -> None:
    bid = make_batch(db, ["a", "b"], schema=True)
    r = runner(db, ScriptedCall({"a": ['{"n": 1}'], "b": ['{"n": "x"}']}))
    assert await r.run(bid, 1) == store.DONE
    assert await r.run(bid, 1) == "skipped"  # a re-run (recovered job) changes nothing
    assert await r.run(bid, 2) == store.DONE
    out, err = files(db, bid)
    assert [o["custom_id"] for o in out] == ["a", "b"] and err == []
    b = db.transaction(lambda c: store.get_batch(c, bid, None))
    assert b is not None and b.status == store.COMPLETED and b.output_file_id
    t = db.transaction(lambda c: store.totals(c, bid))
    assert (t.schema_checked, t.schema_failures) == (2, 1)  # counted, not hidden
    assert (t.prompt_tokens, t.completion_tokens) == (20, 6)


async def test_json_cut_by_max_tokens_goes_to_the_error_file_fake_llm(db: Database) -> None:
    bid = make_batch(db, ["a", "b", "c"], schema=True)
    call = ScriptedCall({"a": ['cut:{"n": 1'], "b": ['cut:{"n": 2}'], "c": ['{"n": 3}']})
    r = runner(db, call)
    assert [await r.run(bid, n) for n in (1, 2, 3)] == [store.FAILED, store.DONE, store.DONE]
    out, err = files(db, bid)
    assert call.calls == ["a", "b", "c"]  # not retried: the same request is cut the same way
    # a complete answer that hit the limit exactly is still an answer
    assert [o["custom_id"] for o in out] == ["b", "c"]
    assert err[0]["custom_id"] == "a" and err[0]["response"]["status_code"] == 422
    assert err[0]["error"]["code"] == "output_truncated"
    assert "raise max_tokens" in err[0]["error"]["message"]
    t = db.transaction(lambda c: store.totals(c, bid))
    assert (t.schema_checked, t.schema_failures) == (2, 0)


async def test_5xx_is_retried_then_succeeds_fake_llm(db: Database) -> None:
    bid = make_batch(db, ["a"])
    call = ScriptedCall({"a": [UpstreamError("boom"), UpstreamError("boom"), "ok"]})
    assert await runner(db, call).run(bid, 1) == store.DONE
    assert call.calls == ["a", "a", "a"]


async def test_4xx_is_not_retried_and_goes_to_the_error_file_fake_llm(db: Database) -> None:
    bid = make_batch(db, ["a", "b"])
    call = ScriptedCall({"a": [InvalidRequest("prompt too long")], "b": ["fine"]})
    r = runner(db, call)
    assert await r.run(bid, 1) == store.FAILED
    assert await r.run(bid, 2) == store.DONE
    out, err = files(db, bid)
    assert call.calls == ["a", "b"] and [o["custom_id"] for o in out] == ["b"]
    assert err[0]["custom_id"] == "a" and err[0]["response"]["status_code"] == 400
    assert err[0]["error"]["message"] == "prompt too long"


async def test_timeouts_retry_up_to_max_attempts_fake_llm(db: Database) -> None:
    bid = make_batch(db, ["a"])
    call = ScriptedCall({"a": ["hang"]})
    assert await runner(db, call, line_timeout_s=0.05, max_attempts=2).run(bid, 1) == "failed"
    _, err = files(db, bid)
    assert call.calls == ["a", "a"] and err[0]["error"]["code"] == "timeout"


async def test_a_line_that_kills_its_workers_ends_in_the_error_file_fake_llm(
        db: Database) -> None:
    bid = make_batch(db, ["poison", "b"])
    for _ in range(3):  # three workers claimed it and died (no result written)
        assert db.transaction(lambda c: store.claim_line(c, bid, 1)) is not None
    call = ScriptedCall({"poison": ["never"], "b": ["ok"]})
    r = runner(db, call, max_attempts=3)
    assert await r.run(bid, 1) == store.FAILED
    assert await r.run(bid, 2) == store.DONE
    out, err = files(db, bid)
    assert call.calls == ["b"] and err[0]["error"]["code"] == "worker_died"
    assert [o["custom_id"] for o in out] == ["b"]


async def test_cancel_skips_queued_lines_fake_llm(db: Database) -> None:
    bid = make_batch(db, ["a", "b", "c"])
    call = ScriptedCall({"a": ["ok"], "b": ["ok"], "c": ["ok"]})
    r = runner(db, call)
    assert await r.run(bid, 1) == store.DONE
    db.transaction(lambda c: store.request_cancel(c, bid))
    assert await r.run(bid, 2) == "skipped" and await r.run(bid, 3) == "skipped"
    b = db.transaction(lambda c: store.get_batch(c, bid, None))
    assert b is not None and b.status == store.BATCH_CANCELLED and call.calls == ["a"]
    assert db.transaction(lambda c: store.counts(c, bid)) == {"done": 1, "cancelled": 2}


def test_workers_get_a_one_thread_embedder_unless_configured(tmp_path: Path) -> None:
    """llama.cpp's threads fill a worker's cores; the embedder must not take them too."""
    from keel.batch.scaler import worker_env
    from keel.providers.registry import ModelRegistry

    settings = load_settings(None, data_dir=str(tmp_path))
    env = worker_env(settings)
    assert env["KEEL_LOCAL__EMBEDDER_THREADS"] == "1"
    worker_settings = load_settings(None, data_dir=str(tmp_path),
                                    local={"embedder_threads": 1})
    assert ModelRegistry(worker_settings).embedder().threads == 1  # type: ignore[attr-defined]
    mine = load_settings(None, data_dir=str(tmp_path), local={"embedder_threads": 3})
    assert worker_env(mine)["KEEL_LOCAL__EMBEDDER_THREADS"] == "3"


def test_workers_embed_in_int8_unless_told_otherwise(tmp_path: Path) -> None:
    """The firewall screens every document in a worker; int8 halves that CPU (which comes
    out of llama.cpp's decoding). "inherit" leaves [local] embedder_precision to decide."""
    from keel.batch.scaler import worker_env
    from keel.providers.registry import ModelRegistry

    env = worker_env(load_settings(None, data_dir=str(tmp_path)))
    assert env["KEEL_LOCAL__EMBEDDER_PRECISION"] == "int8"
    worker = load_settings(None, data_dir=str(tmp_path), local={"embedder_precision": "int8"})
    assert ModelRegistry(worker).embedder().precision == "int8"  # type: ignore[attr-defined]
    fp32 = load_settings(None, data_dir=str(tmp_path), batch={"worker_embedder_precision": "fp32"})
    assert worker_env(fp32)["KEEL_LOCAL__EMBEDDER_PRECISION"] == "fp32"
    inherit = load_settings(None, data_dir=str(tmp_path),
                            batch={"worker_embedder_precision": "inherit"})
    assert "KEEL_LOCAL__EMBEDDER_PRECISION" not in worker_env(inherit) or \
        worker_env(inherit)["KEEL_LOCAL__EMBEDDER_PRECISION"] == os.environ.get(
            "KEEL_LOCAL__EMBEDDER_PRECISION")


def batch(db: Database, bid: str) -> store.BatchRow:
    b = db.transaction(lambda c: store.get_batch(c, bid, None))
    assert b is not None
    return b


async def test_a_revoked_key_stops_its_batch_fake_llm(db: Database) -> None:
    bid = make_batch(db, ["a", "b", "c", "d"])
    call = ScriptedCall({cid: ["ok"] for cid in "abcd"})
    r = runner(db, call)
    assert await r.run(bid, 1) == store.DONE
    # line 3 is running in another worker when the key is revoked
    assert db.transaction(lambda c: store.claim_line(c, bid, 3)) is not None
    KeyStore(db).revoke(key_of(db))  # `keel keys revoke`, from another process
    assert await r.run(bid, 2) == store.FAILED
    assert await r.run(bid, 4) == "skipped"  # its line already went to the error file
    assert call.calls == ["a"]  # nothing ran after the revocation
    assert batch(db, bid).status == store.CANCELLING  # line 3 is still running
    db.transaction(lambda c: store.finish_line(c, bid, 3, status=store.DONE, status_code=200,
                                               response={}, error=None, request_id="r"))
    await r.finalize(bid)
    b = batch(db, bid)
    assert b.status == store.BATCH_FAILED and b.failed_at is not None
    assert b.errors is not None and b.errors["data"][0]["code"] == "key_revoked"
    out, err = files(db, bid)
    assert [o["custom_id"] for o in out] == ["a", "c"]
    assert [e["custom_id"] for e in err] == ["b", "d"]
    for e in err:
        assert e["error"]["code"] == "key_revoked" and e["response"]["status_code"] == 401
        assert "revoked" in e["error"]["message"]


async def test_a_deleted_key_or_another_tenant_runs_nothing_fake_llm(db: Database) -> None:
    gone = make_batch(db, ["a"], key_id="no-such-key")
    other = make_batch(db, ["a"], key_id=KeyStore(db).create("globex").info.id)
    call = ScriptedCall({"a": ["ok"]})
    r = runner(db, call)
    assert await r.run(gone, 1) == store.FAILED and await r.run(other, 1) == store.FAILED
    assert call.calls == []
    assert batch(db, gone).status == batch(db, other).status == store.BATCH_FAILED


async def test_revocation_during_a_retry_stops_the_line_fake_llm(db: Database) -> None:
    bid = make_batch(db, ["a"])
    key = key_of(db)

    class RevokeOnFirstCall(ScriptedCall):
        async def __call__(self, p: Principal, endpoint: str,
                           body: dict[str, Any]) -> CallResult:
            KeyStore(db).revoke(key)
            return await super().__call__(p, endpoint, body)

    call = RevokeOnFirstCall({"a": [UpstreamError("boom"), "ok"]})
    assert await runner(db, call).run(bid, 1) == store.FAILED
    assert call.calls == ["a"]  # the retry found the key revoked
    _, err = files(db, bid)
    assert err[0]["error"]["code"] == "key_revoked"


async def test_failed_lines_keep_their_tokens_cost_and_cpu_fake_llm(db: Database) -> None:
    bid = make_batch(db, ["good", "cut", "billed", "burn"], schema=True)
    billed = CallFailed(KeelError("the output firewall blocked it"), request_id="req_b",
                        prompt_tokens=7, completion_tokens=5, cost_usd=0.25, model="m",
                        on_local=False)
    call = ScriptedCall({"good": ['{"n": 1}'], "cut": ['cut:{"n": 2'], "billed": [billed],
                         "burn": ["burn"]})
    r = runner(db, call, max_attempts=2)
    assert [await r.run(bid, n) for n in (1, 2, 3, 4)] == [
        store.DONE, store.FAILED, store.FAILED, store.FAILED]
    t = db.transaction(lambda c: store.totals(c, bid))
    # 10 + 3 for each of good and cut; billed's 7 + 5 twice (a 500 is retried once)
    assert (t.prompt_tokens, t.completion_tokens) == (10 + 10 + 14, 3 + 3 + 10)
    assert t.cost_usd == pytest.approx(0.5)
    per_line = db.transaction(lambda c: c.execute(
        store.lines.select().where(store.lines.c.batch_id == bid)
        .order_by(store.lines.c.line_no)).mappings().all())
    assert per_line[1]["prompt_tokens"] == 10 and per_line[1]["completion_tokens"] == 3
    assert per_line[3]["cpu_s"] >= 0.09  # two attempts of 0.05 CPU-s each, both counted
    assert t.cpu_s >= per_line[3]["cpu_s"]
    assert per_line[2]["model"] == "m" and per_line[2]["on_local"] == 0
    assert per_line[2]["request_id"] == "req_b"


async def test_output_and_error_files_report_their_size_fake_llm(db: Database) -> None:
    bid = make_batch(db, ["a", "b", "c"])
    r = runner(db, ScriptedCall({"a": ["ok"], "b": [InvalidRequest("no")], "c": ["fine"]}))
    for n in (1, 2, 3):
        await r.run(bid, n)
    b = batch(db, bid)
    for fid, status in ((b.output_file_id, store.DONE), (b.error_file_id, store.FAILED)):
        assert fid is not None
        row = db.transaction(lambda c, fid=fid: store.get_file(c, fid, None))
        content, after = b"", 0
        while True:
            part, nxt = db.transaction(
                lambda c, s=status, a=after: store.render_chunk(c, bid, s, a, limit=1))
            content += part
            if nxt is None:
                break
            after = nxt
        assert row is not None and row.bytes == len(content) > 0
        assert row.public()["bytes"] == len(content)


def upstream_error(status: int) -> KeelError:
    """The error keel's OpenAI-compatible provider raises for an upstream's answer."""
    from keel.providers.openai_compat import _upstream_error
    from keel.redaction import Redactor

    class Resp:
        def __init__(self) -> None:
            self.status = status

        async def read(self) -> bytes:
            return b'{"error": {"message": "no"}}'

        def release(self) -> None:
            pass

    spec = ModelSpec(name="up", provider="openai", upstream="gpt")
    return asyncio.run(_upstream_error(Resp(), spec, Redactor([])))  # type: ignore[arg-type]


@pytest.mark.parametrize("status, retried", [(401, False), (403, False), (404, False),
                                             (429, True), (500, True)])
def test_upstream_4xx_is_final_5xx_and_429_retried_fake_llm(
        db: Database, status: int, retried: bool) -> None:
    bid = make_batch(db, ["a"])
    call = ScriptedCall({"a": [upstream_error(status), "ok"]})
    got = asyncio.run(runner(db, call).run(bid, 1))
    assert call.calls == (["a", "a"] if retried else ["a"])
    assert got == (store.DONE if retried else store.FAILED)


async def test_a_batch_made_without_auth_runs_fake_llm(db: Database) -> None:
    # auth_required = false: the batch belongs to the anonymous principal, which has no
    # key to revoke; its lines must run, not fail as "key_revoked"
    bid = make_batch(db, ["a", "b"], key_id=ANONYMOUS.key_id)
    call = ScriptedCall({"a": ["ok"], "b": ["ok"]})
    r = runner(db, call)
    assert await r.run(bid, 1) == store.DONE and await r.run(bid, 2) == store.DONE
    assert call.calls == ["a", "b"]
