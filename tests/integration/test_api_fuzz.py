"""schemathesis against keel's own /openapi.json, on a live gateway on 127.0.0.1, once with
an admin key and once with a tenant (agent) key: no 5xx, and every status code and JSON
body must match the document. The chat model is the scripted fake upstream (the test is
about keel's HTTP surface, not model quality).

Budget: ``KEEL_FUZZ_EXAMPLES`` cases per operation and phase (default 15, ~1-2 min per key
on 2 cores). The counts of each run are printed and written to ``KEEL_FUZZ_REPORT`` when
set (docs/security.md quotes them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import make_settings
from keel.app import build_services, create_app
from keel.gateway.services import Services

from fakes import FakeUpstream
from live import serve_app

CHECKS = ("not_a_server_error,status_code_conformance,response_schema_conformance,"
          "content_type_conformance,unsupported_method")


@pytest.fixture
def live(tmp_path: Path, fake_upstream: FakeUpstream,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Services]]:
    monkeypatch.chdir(tmp_path)
    settings = make_settings(tmp_path, fake_upstream)
    svc = build_services(settings)
    with serve_app(create_app(settings, services=svc)) as base:
        yield base, svc


def schemathesis(base: str, key: str, report: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert exe, "schemathesis is a dev dependency: `pip install -e '.[dev]'`"
    examples = os.environ.get("KEEL_FUZZ_EXAMPLES", "15")
    return subprocess.run(
        [exe, "run", f"{base}/openapi.json", "--checks", CHECKS, "-H",
         f"Authorization: Bearer {key}", "--max-examples", examples, "--seed", "13",
         "--phases", "examples,coverage,fuzzing", "--workers", "1", "--no-color",
         "--request-timeout", "30", "--generation-database", "none",
         "--suppress-health-check", "all",
         "--report", "ndjson", "--report-ndjson-path", str(report)],
        capture_output=True, text=True, timeout=600, check=False)


def counts(report: Path) -> dict[str, int]:
    """Cases tried, and responses with status >= 500, from the NDJSON event log."""
    cases = server_errors = 0
    for line in report.read_text().splitlines():
        event = json.loads(line)
        for name, body in event.items():
            if name != "ScenarioFinished":
                continue
            for interaction in (body.get("recorder") or {}).get("interactions", {}).values():
                cases += 1
                status = ((interaction.get("response") or {}).get("status_code")) or 0
                server_errors += status >= 500
    return {"cases": cases, "server_errors": server_errors}


@pytest.mark.parametrize("who", ["admin", "tenant"])
def test_openapi_fuzzing_finds_no_5xx_and_no_undocumented_answers(
    live: tuple[str, Services], tmp_path: Path, who: str
) -> None:
    base, svc = live
    key = (svc.keys.create("acme", admin=True) if who == "admin"
           else svc.keys.create("acme", agent="fuzz-bot")).secret
    report = tmp_path / "events.ndjson"
    proc = schemathesis(base, key, report)
    found = counts(report)
    print(who, found)
    (tmp_path / "schemathesis.txt").write_text(proc.stdout)
    if os.environ.get("KEEL_FUZZ_REPORT"):
        with open(os.environ["KEEL_FUZZ_REPORT"], "a") as f:
            f.write(json.dumps({"key": who, **found}) + "\n")
    assert proc.returncode == 0, proc.stdout[-12000:]
    assert found["cases"] > 100 and found["server_errors"] == 0
