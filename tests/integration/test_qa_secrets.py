"""``keel qa run`` never stores the target's or the judge's credentials: not in DBOS
workflow inputs (durable runs), not in ``qa_runs.target``; bad URLs and report paths are
refused (exit 2) before a run exists."""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import sqlite3
from pathlib import Path

import pytest
from test_qa_run import keel, write_suite

from qa_target import QaTarget, ThreadedTarget

REPO = Path(__file__).resolve().parents[2]
TARGET_KEY = "sk-DURABLETARGETSECRET"
JUDGE_KEY = "sk-DURABLEJUDGESECRET"


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("KEEL_SANITIZE_KEY", raising=False)
    models_dir = os.environ.get("KEEL_TEST_MODEL_DIR", str(REPO / ".keel" / "models"))
    path = tmp_path / "keel.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\nmodels_dir = "{models_dir}"\n')
    return path


def _every_cell(db: Path) -> list[bytes]:
    """Every value of every table, also base64-decoded where it decodes (DBOS stores
    workflow inputs as base64 pickles)."""
    out: list[bytes] = []
    with sqlite3.connect(db) as con:
        tables = [r[0] for r in con.execute("select name from sqlite_master "
                                            "where type = 'table'")]
        for t in tables:
            for row in con.execute(f'select * from "{t}"'):
                for v in row:
                    raw = v.encode() if isinstance(v, str) else v
                    if not isinstance(raw, bytes):
                        continue
                    out.append(raw)
                    with contextlib.suppress(binascii.Error, ValueError):
                        out.append(base64.b64decode(raw, validate=True))
    return out


def _runs(tmp_path: Path) -> list[tuple[object, ...]]:
    db = tmp_path / "data" / "keel.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        try:
            return list(con.execute("select id, status, target from qa_runs"))
        except sqlite3.OperationalError:
            return []


def test_durable_run_keeps_keys_out_of_workflow_inputs(
        cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEL_QA_TARGET_KEY", TARGET_KEY)
    monkeypatch.setenv("KEEL_QA_JUDGE_KEY", JUDGE_KEY)
    suite = write_suite(tmp_path / "s.jsonl", n=4, json_every=0)
    with ThreadedTarget(QaTarget(seed=1)) as target:
        code, out = keel(cfg, "run", "--suite", str(suite), "--target", target.base_url,
                         "--sample", "all", "--durable", "--quiet", "--judge", "judge-a",
                         "--judge-url", target.base_url)
        seen = target.target.authorizations
    assert code == 0, out
    # the keys are still used: read from the environment when each batch runs
    assert f"Bearer {TARGET_KEY}" in seen and f"Bearer {JUDGE_KEY}" in seen
    cells = _every_cell(tmp_path / "data" / "dbos.sqlite")
    assert any(b"keel.qa.run" in c for c in cells)
    for secret in (TARGET_KEY, JUDGE_KEY):
        assert not any(secret.encode() in c for c in cells), secret


@pytest.mark.parametrize("url_tail,message", [
    ("bob:PASSW0RD@{host}/v1", "user:password@host"),
    ("{host}/v1?api_key=QSECRET", "api_key"),
    ("bob:PASSW0RD@{host}/v1?api_key=QSECRET", "KEEL_QA_TARGET_KEY"),
])
def test_target_url_with_credentials_is_refused_and_no_run_is_left(
        cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url_tail: str,
        message: str) -> None:
    monkeypatch.setenv("KEEL_QA_TARGET_KEY", TARGET_KEY)
    suite = write_suite(tmp_path / "s.jsonl", n=2)
    with ThreadedTarget(QaTarget(seed=1)) as target:
        host = f"127.0.0.1:{target.port}"
        code, out = keel(cfg, "run", "--suite", str(suite), "--quiet",
                         "--target", "http://" + url_tail.format(host=host))
    assert code == 2, out
    assert message in out and "KEEL_QA_TARGET_KEY" in out
    assert "PASSW0RD" not in out and "QSECRET" not in out
    assert _runs(tmp_path) == []


def test_unwritable_junit_path_is_refused_before_the_swarm(
        cfg: Path, tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "s.jsonl", n=2)
    a_dir = tmp_path / "reports"
    a_dir.mkdir()
    with ThreadedTarget(QaTarget(seed=1)) as target:
        code, out = keel(cfg, "run", "--suite", str(suite), "--quiet",
                         "--target", target.base_url, "--junit", str(a_dir))
        calls = target.target.calls
    assert code == 2, out
    assert "--junit" in out and "directory" in out
    assert calls == 0 and _runs(tmp_path) == []


def test_judge_url_query_string_stays_after_the_path() -> None:
    from keel.qa.chat import completions_url

    assert (completions_url("https://judge.example/v1?api-version=2024-06-01")
            == "https://judge.example/v1/chat/completions?api-version=2024-06-01")
    assert (completions_url("https://judge.example/?x=1")
            == "https://judge.example/v1/chat/completions?x=1")
    assert completions_url("http://h:8/v1/") == "http://h:8/v1/chat/completions"


def test_judge_url_with_a_query_reaches_the_judge(
        cfg: Path, tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "s.jsonl", n=2, json_every=0)
    with ThreadedTarget(QaTarget(seed=1)) as target:
        code, out = keel(cfg, "run", "--suite", str(suite), "--quiet",
                         "--target", target.base_url, "--judge", "judge-a",
                         "--judge-url", target.base_url + "?api-version=1")
        judged = target.target.judge_calls
    assert code == 0, out
    assert judged > 0
