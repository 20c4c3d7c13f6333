"""``keel qa``: suites, the swarm against a real loopback HTTP target with scripted answers
(seeded regressions), the gate's exit codes, reports, the judge and the review loop."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from typer.testing import CliRunner

from keel.cli.main import build
from qa_target import CANARY, QaTarget, ThreadedTarget

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("KEEL_SANITIZE_KEY", raising=False)
    models_dir = os.environ.get("KEEL_TEST_MODEL_DIR", str(REPO / ".keel" / "models"))
    path = tmp_path / "keel.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\nmodels_dir = "{models_dir}"\n')
    return path


def keel(cfg: Path, *args: str) -> tuple[int, str]:
    result = CliRunner(env={"COLUMNS": "250"}).invoke(build(), ["--config", str(cfg), "qa",
                                                                *args])
    return result.exit_code, result.stdout + " ".join(result.stderr.split())


def write_suite(path: Path, n: int = 60, *, json_every: int = 3, marker_every: int = 0) -> Path:
    lines = []
    for i in range(n):
        d: dict[str, object] = {"prompt": f"Question {i}: how do I change plan {i}?"}
        if json_every and i % json_every == 0:
            d["expect"] = {"json": True, "schema": {"type": "object", "required": ["answer"]}}
        if marker_every and i % marker_every == 0:
            d["prompt"] = str(d["prompt"]) + " WRONG-FACT"
        lines.append(json.dumps(d))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def clean_target() -> Iterator[ThreadedTarget]:
    with ThreadedTarget(QaTarget(seed=1)) as t:
        yield t


def test_clean_scripted_target_passes_and_leaking_one_is_blocked(
        cfg: Path, tmp_path: Path, clean_target: ThreadedTarget) -> None:
    suite = write_suite(tmp_path / "s.jsonl")
    junit, report = tmp_path / "j.xml", tmp_path / "r.html"
    code, out = keel(cfg, "run", "--suite", str(suite), "--target", clean_target.base_url,
                     "--canary", CANARY, "--sample", "all", "--quiet")
    assert code == 0, out
    assert "PASSED" in out and clean_target.target.calls == 60
    with ThreadedTarget(QaTarget(leak_rate=0.2, seed=3)) as leaky:
        code, out = keel(cfg, "run", "--suite", str(suite), "--target", leaky.base_url,
                         "--canary", CANARY, "--sample", "50", "--seed", "7", "--quiet",
                         "--junit", str(junit), "--report", str(report))
    assert code == 1, out
    assert "BLOCKED" in out and "system_prompt_leak" in out
    root = ET.parse(junit).getroot()
    suite_el = root.find("testsuite")
    assert suite_el is not None and suite_el.get("tests") == "50"
    assert int(suite_el.get("failures", "0")) >= 1
    assert "BLOCKED" in report.read_text() and "system_prompt_leak" in report.read_text()


def test_broken_json_is_a_hard_failure(cfg: Path, tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "s.jsonl", json_every=1)
    with ThreadedTarget(QaTarget(bad_json_rate=1.0, seed=1)) as broken:
        code, out = keel(cfg, "run", "--suite", str(suite), "--target", broken.base_url,
                         "--sample", "5", "--quiet", "--max-failure-rate", "1")
    assert code == 1 and "invalid_json" in out


@pytest.mark.parametrize(("content", "args", "message"), [
    ('{"prompt": "ok"}\n{"prompt": \n', (), "s.jsonl:2: malformed JSON"),
    ('{"prompt": ""}\n', (), 's.jsonl:1: "prompt" must be a non-empty string'),
    ("", (), "the suite is empty"),
    ('{"prompt": "a"}\n{"prompt": "b"}\n', ("--sample", "3"), "larger than the suite"),
    ('{"prompt": "a"}\n', ("--sample", "0"), "--sample must be at least 1"),
    ('{"prompt": "a"}\n', ("--sample", "many"), "a number of prompts or 'all'"),
    ('{"prompt": "a", "expect": {"schema": {"type": 7}}}\n', (), "not a valid JSON schema"),
])
def test_bad_input_exits_2_never_a_passed_gate(cfg: Path, tmp_path: Path,
                                               clean_target: ThreadedTarget, content: str,
                                               args: tuple[str, ...], message: str) -> None:
    suite = tmp_path / "s.jsonl"
    suite.write_text(content)
    code, out = keel(cfg, "run", "--suite", str(suite), "--target", clean_target.base_url,
                     "--quiet", *args)
    assert code == 2, out
    assert message in out


def test_target_down_or_not_openai_exits_2(cfg: Path, tmp_path: Path) -> None:
    from fakes import free_port

    suite = write_suite(tmp_path / "s.jsonl", n=3)
    code, out = keel(cfg, "run", "--suite", str(suite), "--quiet",
                     "--target", f"http://127.0.0.1:{free_port()}")
    assert code == 2 and "the target is down" in out
    with ThreadedTarget(QaTarget(status=500)) as failing:
        code, out = keel(cfg, "run", "--suite", str(suite), "--target", failing.base_url,
                         "--quiet")
    assert code == 2 and "HTTP 500" in out
    code, out = keel(cfg, "run", "--suite", str(suite), "--target", "ftp://x", "--quiet")
    assert code == 2 and "http(s) URL" in out


def test_missing_judge_model_exits_2(cfg: Path, tmp_path: Path,
                                     clean_target: ThreadedTarget) -> None:
    suite = write_suite(tmp_path / "s.jsonl", n=3)
    code, out = keel(cfg, "run", "--suite", str(suite), "--target", clean_target.base_url,
                     "--judge", "no-such-model", "--quiet")
    assert code == 2 and "no-such-model" in out


def test_scripted_judge_review_loop_fp_rate_and_replay(cfg: Path, tmp_path: Path,
                                                       clean_target: ThreadedTarget) -> None:
    suite = write_suite(tmp_path / "s.jsonl", n=30, json_every=0, marker_every=10)
    url = clean_target.base_url
    code, out = keel(cfg, "run", "--suite", str(suite), "--target", url, "--sample", "all",
                     "--judge", "judge-small", "--judge-url", url, "--quiet")
    assert code == 1, out  # 3 of 30 judged fail: 10% > 2%
    assert "judged fail 3" in out and "fail fail fail" not in out
    code, out = keel(cfg, "review")
    ids = [int(line.split("│")[1]) for line in out.splitlines()
           if "WRONG-FACT" in line]
    assert len(ids) == 3 and "fail fail fail" in out  # each fail re-judged: 3 votes
    assert keel(cfg, "review", "--mark", str(ids[0]), "--as", "fp")[0] == 0
    assert keel(cfg, "review", "--mark", str(ids[1]), "--as", "tp")[0] == 0
    code, out = keel(cfg, "review", "--stats")
    assert code == 0 and "50.0%" in out  # 1 FP of 2 reviewed
    code, out = keel(cfg, "review", "--mark", "999999", "--as", "fp")
    assert code == 2 and "no QA result" in out
    lenient = tmp_path / "rubric.txt"
    lenient.write_text("LENIENT: pass everything")
    code, out = keel(cfg, "replay", "--rubric", str(lenient), "--judge", "judge-small",
                     "--judge-url", url)
    assert code == 0, out
    assert "3 flipped" in out and "fixes 1 of 1 false positives" in out
    assert "misses 1 of 1 true failures" in out
    code, out = keel(cfg, "runs")
    assert "blocked" in out and "r-" in out


def test_suite_versions_are_content_hashes_with_diffs(cfg: Path, tmp_path: Path) -> None:
    a = tmp_path / "a.jsonl"
    a.write_text('{"prompt": "one"}\n{"prompt": "two"}\n')
    b = tmp_path / "b.jsonl"
    b.write_text('{"prompt": "one"}\n{"prompt": "three"}\n')
    _, out1 = keel(cfg, "suite", "import", str(a), "--name", "support")
    _, again = keel(cfg, "suite", "import", str(a), "--name", "support")
    v1 = out1.split("@")[1].split()[0]
    assert v1 in again  # the same prompts are the same version
    _, out2 = keel(cfg, "suite", "import", str(b), "--name", "support")
    v2 = out2.split("@")[1].split()[0]
    assert v2 != v1
    code, out = keel(cfg, "suite", "diff", f"support@{v1}", f"support@{v2}")
    assert code == 0 and "+1 -1 =1" in out and "three" in out and "two" in out
    code, out = keel(cfg, "suite", "list")
    assert v1 in out and v2 in out
    code, out = keel(cfg, "suite", "export", "support")
    assert [json.loads(line)["prompt"] for line in out.splitlines()] == ["one", "three"]
    code, out = keel(cfg, "suite", "show", "nope")
    assert code == 2 and "no suite 'nope'" in out


def test_suite_build_sanitizes_generates_and_dedupes_with_scripted_generator(
        cfg: Path, tmp_path: Path, clean_target: ThreadedTarget) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text(
        '{"text": "hi, I am Kevin Harrison, kevin.h@example.com, my card 4454794511390933", '
        '"user": "u-1"}\n'
        '{"text": "where is my invoice? call 0490 75 40 81", "user": "u-1"}\n'
        '{"text": "cancel my plan", "user": "u-2"}\n')
    url = clean_target.base_url
    code, out = keel(cfg, "suite", "build", "--name", "gen", "--from-jsonl", str(log),
                     "--generator", "gen-x", "--generator-url", url, "--per-user", "4")
    assert code == 0, out
    seen = "\n".join(clean_target.target.generator_inputs)
    for secret in ("Kevin", "kevin.h@example.com", "4454794511390933", "0490 75 40 81"):
        assert secret not in seen
    assert "<EMAIL_ADDRESS_" in seen
    # 2 users x 4 prompts; the reworded password question and user 2's repeats are dropped
    assert "2 users, 8 generated" in out and "added" in out
    code, exported = keel(cfg, "suite", "export", "gen")
    rows = [json.loads(line) for line in exported.splitlines()]
    texts = [r["prompt"] for r in rows]
    assert sum("reset" in t and "password" in t for t in texts) == 1
    assert all(r["provenance"]["generator"] == "gen-x" for r in rows)
    assert any(r.get("expect", {}).get("json") for r in rows)
    code, out = keel(cfg, "suite", "build", "--name", "gen", "--from-jsonl", str(log),
                     "--generator", "gen-x", "--generator-url", url)
    assert code == 0 and ("no new prompts" in out or "new version" in out)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"user": "x"}\n')
    code, out = keel(cfg, "suite", "build", "--name", "gen", "--from-jsonl", str(bad),
                     "--generator", "gen-x", "--generator-url", url)
    assert code == 2 and "bad.jsonl:2" in out


def test_durable_run_is_a_dbos_workflow_with_queued_batches(cfg: Path, tmp_path: Path) -> None:
    import sqlite3

    suite = write_suite(tmp_path / "s.jsonl", n=60)
    junit = tmp_path / "j.xml"
    with ThreadedTarget(QaTarget(leak_rate=0.3, seed=5)) as leaky:
        code, out = keel(cfg, "run", "--suite", str(suite), "--target", leaky.base_url,
                         "--canary", CANARY, "--sample", "all", "--durable", "--quiet",
                         "--junit", str(junit))
        calls = leaky.target.calls
    assert code == 1 and "system_prompt_leak" in out, out
    assert calls == 60  # each prompt once: batches are not re-run
    run_id = out.split("run ")[1].split()[0]
    root = ET.parse(junit).getroot()
    assert root.get("tests") == "60" and int(root.get("failures", "0")) > 0
    with sqlite3.connect(tmp_path / "data" / "dbos.sqlite") as con:
        rows = con.execute("select name, status from workflow_status").fetchall()
    names = {n for n, _ in rows}
    assert {"keel.qa.run", "keel.qa.batch"} <= names
    assert all(s == "SUCCESS" for n, s in rows if n.startswith("keel.qa"))
    assert sum(n == "keel.qa.batch" for n, _ in rows) == 3  # 60 prompts / 25 per batch
    code, out = keel(cfg, "runs")
    assert run_id in out and "blocked" in out
