"""The Batch API's checks and the cost report, on BatchService with real SQLite and no
model: clear 4xx for loose input, paging, local vs upstream lines in the cost report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from keel.app import open_database
from keel.batch import store
from keel.batch.cost import report
from keel.batch.service import BatchService
from keel.config import ModelSpec, load_settings
from keel.errors import InvalidRequest, MissingField
from keel.gateway.context import Principal
from keel.providers.registry import ModelRegistry

P = Principal(key_id="k", tenant="acme", agent=None)


def line(cid: str) -> bytes:
    return orjson.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": "gemma-3-270m",
                                  "messages": [{"role": "user", "content": "hi"}]}})


@pytest.fixture
def svc(tmp_path: Path) -> BatchService:
    settings = load_settings(None, data_dir=str(tmp_path))
    s = BatchService(settings.batch, open_database(settings), ModelRegistry(settings))

    async def enqueue(batch_id: str, line_nos: list[int]) -> None:
        pass

    s.enqueue = enqueue
    return s


async def upload(svc: BatchService) -> str:
    return str((await svc.upload(P, "in.jsonl", "batch", line("a") + b"\n"))["id"])


async def test_empty_purpose_is_refused(svc: BatchService) -> None:
    with pytest.raises(MissingField, match="`purpose` field is empty"):
        await svc.upload(P, "in.jsonl", "", line("a"))


@pytest.mark.parametrize("field, message", [
    ("endpoint", "missing required field 'endpoint'"),
    ("completion_window", "completion_window is null"),
    ("input_file_id", "missing required field 'input_file_id'"),
])
async def test_missing_batch_fields_are_named(svc: BatchService, field: str,
                                              message: str) -> None:
    body: dict[str, Any] = {"input_file_id": await upload(svc),
                            "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    body[field] = None
    with pytest.raises(MissingField) as exc:
        await svc.create(P, body)
    assert message in exc.value.message and "None" not in exc.value.message


@pytest.mark.parametrize("metadata, message", [
    ({"k" * 65: "v"}, "the limit is 64"),
    ({"k": "v" * 513}, "the limit is 512"),
    ({f"k{i}": "v" for i in range(17)}, "17 pairs; the limit is 16"),
    ({"k": 1}, "must be a string"),
    (["k"], "must be an object"),
])
async def test_metadata_follows_openai_limits(svc: BatchService, metadata: Any,
                                              message: str) -> None:
    fid = await upload(svc)
    with pytest.raises(InvalidRequest, match=message):
        await svc.create(P, {"input_file_id": fid, "endpoint": "/v1/chat/completions",
                             "completion_window": "24h", "metadata": metadata})
    ok = await svc.create(P, {"input_file_id": fid, "endpoint": "/v1/chat/completions",
                              "metadata": {"k" * 64: "v" * 512}})
    assert ok["metadata"] == {"k" * 64: "v" * 512}


async def test_paging_after_an_unknown_batch_is_a_400(svc: BatchService) -> None:
    fid = await upload(svc)
    made = [(await svc.create(P, {"input_file_id": fid,
                                  "endpoint": "/v1/chat/completions"}))["id"]
            for _ in range(2)]
    first = await svc.list(P, None, 1)
    assert first["has_more"] and first["data"][0]["id"] == made[1]
    second = await svc.list(P, first["last_id"], 1)
    assert [b["id"] for b in second["data"]] == [made[0]] and not second["has_more"]
    with pytest.raises(InvalidRequest, match="after='batch_nope' is not the id"):
        await svc.list(P, "batch_nope", 20)
    other = Principal(key_id="k2", tenant="globex", agent=None)
    with pytest.raises(InvalidRequest):  # another tenant's id is unknown too
        await svc.list(other, made[0], 20)


def _totals(done: int, failed: int, tin: int, tout: int, usd: float, cpu: float
            ) -> store.Totals:
    return store.Totals(done, failed, tin, tout, usd, cpu, 0.0, 10.0, 0, 0)


def test_cost_report_keeps_upstream_lines_out_of_the_local_comparison() -> None:
    models = [ModelSpec(name="gemma", provider="local"),
              ModelSpec(name="gpt", input_usd_per_1m=1.0, output_usd_per_1m=2.0)]
    everything = _totals(2, 0, 300, 30, 0.0005, 2.1)
    local = _totals(1, 0, 100, 10, 0.0, 2.0)
    upstream = [("gpt", 1, 200, 20, 0.0005)]
    r = report(everything, local, upstream, [(100, 10, 2.0)], models, 3600.0)
    assert r["local"]["lines"] == 1 and r["local"]["input_tokens"] == 100
    assert r["local"]["usd"] == pytest.approx(2.0)  # 2 CPU-s at $1 per CPU-second
    assert r["upstream"] == {"lines": 1, "input_tokens": 200, "output_tokens": 20,
                             "usd": 0.0005, "models": [{"model": "gpt", "lines": 1,
                                                        "input_tokens": 200,
                                                        "output_tokens": 20,
                                                        "usd": 0.0005}]}
    # "same tokens" on gpt: the local line's tokens only, not the upstream line's
    assert r["models"][0]["usd"] == pytest.approx((100 * 1.0 + 10 * 2.0) / 1e6)
    assert r["cpu_s_per_document"] == 2.0
    assert r["models"][0]["break_even_input_tokens"] is None
    assert "1 local lines" in r["break_even_unavailable"]
    assert "at least 8" in r["break_even_unavailable"]


def test_cost_report_says_why_there_is_no_break_even() -> None:
    one_shape = [(100, 10, 1.0)] * 8
    r = report(_totals(8, 0, 800, 80, 0.0, 8.0), _totals(8, 0, 800, 80, 0.0, 8.0), [],
               one_shape, [ModelSpec(name="gpt", input_usd_per_1m=1.0)], 0.045)
    assert "one shape" in r["break_even_unavailable"]


def test_cli_cost_prints_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from keel.cli import batch as cli

    r = report(_totals(2, 0, 300, 30, 0.0005, 2.1), _totals(1, 0, 100, 10, 0.0, 2.0),
               [("gpt", 1, 200, 20, 0.0005)], [(100, 10, 2.0)],
               [ModelSpec(name="gpt", input_usd_per_1m=1.0)], 0.045)

    class Resp:
        def json(self) -> Any:
            return r

    monkeypatch.setattr(cli, "gateway_call", lambda *a, **k: Resp())
    out = CliRunner(env={"COLUMNS": "250"}).invoke(cli.build(), ["cost", "batch_x"])
    assert out.exit_code == 0, out.output
    assert "n/a (1 local lines with a model call; the fit needs at least 8)" in out.output
    assert "upstream models (paid to the upstream" in out.output
    assert "$0.000500 metered" in out.output
    assert "lines all of one shape" not in out.output

