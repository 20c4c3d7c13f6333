"""Remediation building blocks: the anomaly rule, weighted routing, patch path checks,
traceback capture, SQLite clones and the sandbox (real subprocesses, real files)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from keel.remediation import sandbox
from keel.remediation.capture import last_traceback
from keel.remediation.clone import CloneTargetExists, SqliteCloner, cloner_for
from keel.remediation.detect import Detector
from keel.remediation.patching import PatchRejected, check_patch, write_test
from keel.remediation.router import ServiceRoute
from keel.remediation.settings import DetectionSettings, ServiceSpec
from keel.remediation.stats import Summary


def test_detector_fires_on_a_jump_not_on_a_steady_noisy_baseline() -> None:
    d = Detector(DetectionSettings(min_error_rate=0.05, z=4, min_requests=20))
    for rate in [0.01, 0.02, 0.0, 0.01, 0.03, 0.02] * 5:  # noisy but healthy
        assert d.observe(Summary(200, int(rate * 200), 20.0)) is None
    hit = d.observe(Summary(200, 30, 20.0))  # 15%
    assert hit is not None and hit.kind == "error_rate" and hit.threshold >= 0.05


def test_detector_floor_and_minimum_traffic() -> None:
    d = Detector(DetectionSettings(min_error_rate=0.05, min_requests=20))
    assert d.observe(Summary(10, 10, 5.0)) is None  # too few requests to judge
    assert d.observe(Summary(200, 8, 5.0)) is None  # 4% is under the absolute floor
    assert d.observe(Summary(200, 12, 5.0)) is None  # 6%: inside the band over a 4% baseline
    assert Detector(DetectionSettings()).observe(Summary(200, 12, 5.0)) is not None  # fresh
    slow = Detector(DetectionSettings(latency_p95_floor_ms=500))
    assert slow.observe(Summary(100, 0, 900.0)).kind == "latency"  # type: ignore[union-attr]


def test_anomalies_do_not_become_the_baseline() -> None:
    d = Detector(DetectionSettings())
    for _ in range(50):
        d.observe(Summary(100, 0, 10.0))
    for _ in range(50):
        assert d.observe(Summary(100, 20, 10.0)) is not None  # still anomalous


def spec(**kw: object) -> ServiceSpec:
    return ServiceSpec.model_validate({"name": "shop", "production_url": "http://127.0.0.1:1",
                                       "repo": "/nonexistent", **kw})


def test_weighted_routing_is_exact_and_rollback_is_instant() -> None:
    r = ServiceRoute(spec())
    r.add("candidate", "http://127.0.0.1:2")
    r.canary("candidate", 0.02)
    picks = Counter(r.pick().name for _ in range(1000))
    assert picks == {"production": 980, "candidate": 20}
    r.rollback()
    assert Counter(r.pick().name for _ in range(500)) == {"production": 500}
    r.set_weights({"candidate": 1.0})
    r.promote("candidate")
    assert [(v.name, v.role, v.weight) for v in r.versions.values()] == \
        [("candidate", "stable", 1.0)]


def test_weights_are_validated() -> None:
    from keel.errors import InvalidRequest, NotFound

    r = ServiceRoute(spec())
    with pytest.raises(NotFound):
        r.set_weights({"nope": 0.5})
    with pytest.raises(InvalidRequest):
        r.set_weights({"production": 0.0})
    with pytest.raises(InvalidRequest):
        r.set_weights({"production": 1.5})


DIFF = "--- a/{p}\n+++ b/{p}\n@@ -1 +1 @@\n-a\n+b\n"


@pytest.mark.parametrize("path,ok", [
    ("app/pricing.py", True), ("tests/test_x.py", True), ("../etc/passwd", False),
    ("/etc/passwd", False), ("deploy/prod.env", False), (".git/config", False),
    ("app/../../x.py", False),
])
def test_patch_paths_stay_inside_the_service(path: str, ok: bool) -> None:
    if ok:
        assert check_patch(DIFF.format(p=path), ["app/", "tests/"]) == [path]
    else:
        with pytest.raises(PatchRejected):
            check_patch(DIFF.format(p=path), ["app/", "tests/"])


def test_not_a_diff_and_test_paths(tmp_path: Path) -> None:
    with pytest.raises(PatchRejected, match="not a unified diff"):
        check_patch("just change line 3", [""])
    with pytest.raises(PatchRejected):
        write_test(tmp_path, "app/test_x.py", "x", "tests")
    with pytest.raises(PatchRejected):
        write_test(tmp_path, "tests/../../evil.py", "x", "tests")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_old.py").write_text("keep")
    with pytest.raises(PatchRejected, match="overwrite"):
        write_test(tmp_path, "tests/test_old.py", "x", "tests")
    assert write_test(tmp_path, "tests/test_new.py", "x = 1\n", "tests") == "tests/test_new.py"


def test_last_traceback_from_a_log(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text(
        "INFO started\nERROR first\nTraceback (most recent call last):\n"
        '  File "a.py", line 1, in f\n    x()\nValueError: old\n'
        "ERROR POST /checkout failed\nTraceback (most recent call last):\n"
        '  File "app/pricing.py", line 35, in cart_total\n'
        "    min(None, 1)\nTypeError: '<' not supported\nINFO later\n")
    tb = last_traceback(str(log))
    assert tb.startswith("ERROR POST /checkout failed")
    assert tb.endswith("TypeError: '<' not supported")
    assert "ValueError" not in tb
    assert last_traceback(str(tmp_path / "missing.log")) == ""


async def test_sqlite_clone_is_a_consistent_copy_and_never_overwrites(tmp_path: Path) -> None:
    import sqlite3

    src = tmp_path / "prod.db"
    con = sqlite3.connect(src)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE t (x)")
    con.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(1000)])
    con.commit()  # left open: a live database with a WAL
    cloner = cloner_for(f"sqlite:///{src}", tmp_path / "clones")
    assert isinstance(cloner, SqliteCloner)
    c = await cloner.clone("shop_1")
    copy = sqlite3.connect(c.url.removeprefix("sqlite:///"))
    assert copy.execute("SELECT count(*) FROM t").fetchone()[0] == 1000
    copy.close()
    with pytest.raises(CloneTargetExists):
        await cloner.clone("shop_1")
    with pytest.raises(Exception, match="lowercase"):
        await cloner.clone("../x")
    await cloner.drop(c)
    assert not Path(c.url.removeprefix("sqlite:///")).exists()
    con.close()


def test_unknown_clone_scheme_is_a_config_error(tmp_path: Path) -> None:
    from keel.errors import ConfigError

    with pytest.raises(ConfigError, match="mysql"):
        cloner_for("mysql://x/y", tmp_path)


def test_sandbox_refuses_network_and_processes_and_scrubs_secrets(tmp_path: Path,
                                                                  monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-keel-secret")
    (tmp_path / "test_probe.py").write_text(
        "import os, socket, subprocess, pytest\n"
        "def test_connect():\n"
        "    with pytest.raises(PermissionError):\n"
        "        socket.create_connection(('203.0.113.9', 443), timeout=1)\n"
        "def test_dns():\n"
        "    with pytest.raises(PermissionError):\n"
        "        socket.getaddrinfo('example.com', 443)\n"
        "def test_spawn():\n"
        "    with pytest.raises(PermissionError):\n"
        "        subprocess.run(['true'])\n"
        "def test_env():\n"
        "    assert 'OPENAI_API_KEY' not in os.environ\n"
        "    assert os.environ['PAYMENT_KEY'] == 'sk_test_sandbox'\n")
    r = sandbox.run_sync(["{python}", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "test_probe.py"], tmp_path, {"PAYMENT_KEY": "sk_test_sandbox"},
                         sandbox.Limits(timeout_s=120))
    assert r.passed, r.output
    assert r.cpu_s > 0


def _production_layout(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """A production SQLite database, keel's data dir with its admin key, a worktree and a
    clone inside the data dir (where keel puts them)."""
    import sqlite3

    prod, data = tmp_path / "prod", tmp_path / "data"
    wt, clones = data / "remediation" / "worktrees" / "inc_1", data / "remediation" / "clones"
    for d in (prod, wt, clones):
        d.mkdir(parents=True)
    (data / "admin.key").write_text("keel-admin-secret")
    for db in (prod / "prod.db", clones / "c.db"):
        with sqlite3.connect(db) as c:
            c.execute("CREATE TABLE orders (id INTEGER)")
        c.close()
    return prod / "prod.db", data / "admin.key", wt, clones / "c.db"


def _tables(db: Path) -> list[str]:
    import sqlite3

    c = sqlite3.connect(db)
    try:
        return [r[0] for r in c.execute("SELECT name FROM sqlite_master")]
    finally:
        c.close()


@pytest.mark.parametrize("hide", [True, False], ids=["mount-namespace", "audit-hook-only"])
def test_remediation_sandbox_test_cannot_touch_production_files(tmp_path: Path,
                                                                 hide: bool) -> None:
    """The reviewer's attack: a proposed test opens the production SQLite file (and the
    admin key) directly instead of the clone. Only the clone is writable."""
    prod, key, wt, clone = _production_layout(tmp_path)
    (wt / "test_attack.py").write_text(
        "import os, sqlite3, pytest\n"
        "def test_clone_is_writable():\n"
        "    c = sqlite3.connect(os.environ['DB'])\n"
        "    c.execute('INSERT INTO orders VALUES (1)')\n"
        "    c.commit()\n"
        f"def test_production_db():\n"
        f"    with pytest.raises((PermissionError, sqlite3.OperationalError)):\n"
        f"        c = sqlite3.connect({str(prod)!r})\n"
        f"        c.execute('CREATE TABLE pwned (x)')\n"
        f"        c.execute('INSERT INTO pwned VALUES (1)')\n"
        f"        c.commit()\n"
        f"def test_production_db_by_uri_and_attach():\n"
        f"    with pytest.raises((PermissionError, sqlite3.OperationalError)):\n"
        f"        sqlite3.connect('file:{prod}?mode=rw', uri=True)\n"
        f"    c = sqlite3.connect(os.environ['DB'])\n"
        f"    with pytest.raises((PermissionError, sqlite3.OperationalError)):\n"
        f"        c.execute(\"ATTACH {prod} AS p\")\n"
        f"        c.execute('CREATE TABLE p.pwned (x)')\n"
        f"def test_admin_key_and_data_dir():\n"
        f"    with pytest.raises(OSError):\n"
        f"        open({str(key)!r}).read()\n"
        f"    with pytest.raises(OSError):\n"
        f"        os.open({str(key)!r}, os.O_RDONLY)\n"
        f"    with pytest.raises(OSError):\n"
        f"        open({str(key.parent / 'planted')!r}, 'w').write('x')\n")
    if hide and not sandbox._can_unshare("-rm"):
        with pytest.raises(sandbox.SandboxUnavailable):  # fail closed
            sandbox.run_sync(["{python}", "-c", "pass"], wt, {}, sandbox.Limits(),
                             hide=[prod.parent, key.parent], writable=[clone])
        pytest.skip("no unprivileged mount namespace here: the run is refused")
    r = sandbox.run_sync(["{python}", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "test_attack.py"], wt, {"DB": str(clone)},
                         sandbox.Limits(timeout_s=120),
                         hide=[prod.parent, key.parent] if hide else [], writable=[clone])
    assert r.passed, r.output
    assert _tables(prod) == ["orders"]
    assert key.read_text() == "keel-admin-secret"
    assert not (key.parent / "planted").exists()
    assert any(layer.startswith("mountns:") for layer in r.isolation) is hide


def test_remediation_sandbox_mount_namespace_holds_without_the_hook(tmp_path: Path) -> None:
    """Native code does not pass the audit hook (simulated: ``python -S`` skips it): the
    mount namespace alone must keep production out of reach."""
    if not sandbox._can_unshare("-rm"):
        pytest.skip("no unprivileged mount namespace here (runs are refused instead)")
    prod, key, wt, clone = _production_layout(tmp_path)
    code = ("import os, sqlite3\n"
            "c = sqlite3.connect(os.environ['DB']); c.execute('INSERT INTO orders VALUES (2)')\n"
            "c.commit()\n"
            f"for f in ({str(prod)!r}, {str(key)!r}):\n"
            "    try:\n"
            "        print('READ', f, len(open(f, 'rb').read()))\n"
            "    except OSError as e:\n"
            "        print('HIDDEN', f, e.errno)\n"
            "try:\n"
            f"    c.execute(\"ATTACH '{prod}' AS p\"); c.execute('CREATE TABLE p.pwned (x)')\n"
            "    c.commit(); print('WROTE production')\n"
            "except sqlite3.Error as e:\n"
            "    print('ATTACH failed', e)\n"
            "print('PARENT', sorted(os.listdir('..')))\n")
    r = sandbox.run_sync(["{python}", "-S", "-c", code], wt, {"DB": str(clone)},
                         sandbox.Limits(timeout_s=60), hide=[prod.parent, key.parent],
                         writable=[clone])
    assert r.passed, r.output
    assert "READ" not in r.output and "WROTE" not in r.output, r.output
    assert r.output.count("HIDDEN") == 2, r.output
    assert "PARENT ['inc_1']" in r.output, r.output  # siblings in the data dir are gone
    assert _tables(prod) == ["orders"]
    assert _tables(clone) == ["orders"]


def test_remediation_sandbox_refuses_hiding_system_paths(tmp_path: Path) -> None:
    with pytest.raises(sandbox.SandboxUnavailable):
        sandbox.run_sync(["{python}", "-c", "pass"], tmp_path, {}, sandbox.Limits(),
                         hide=[Path("/")])


def test_sandbox_kills_on_timeout(tmp_path: Path) -> None:
    r = sandbox.run_sync(["{python}", "-c", "import time; time.sleep(60)"], tmp_path, {},
                         sandbox.Limits(timeout_s=1))
    assert r.timed_out and not r.passed and r.seconds < 30
    assert os.environ.get("KEEL_SANDBOX") is None


def test_the_approval_message_carries_the_remediation_buttons() -> None:
    """The Slack message for a remediation says what the reference's buttons say; other
    actions keep Approve / Deny."""
    import time as _time

    from keel.approvals.handlers import HandlerRegistry
    from keel.approvals.models import Approval
    from keel.approvals.notify import slack_message
    from keel.remediation.steps import ACTION

    registry = HandlerRegistry()
    registry.label(ACTION, approve="Shift 100% Traffic", deny="Rollback & Page On-Call")
    now = _time.time()

    def buttons(action: str) -> list[str]:
        a = Approval(id="apr_1", workflow_id="wf", kind="action", tenant="default",
                     action=action, arguments={}, args_hash="h", amount=None,
                     risk_level="HIGH", reason="r", requested_by="keel", policy="p",
                     status="pending", outcome=None, result=None, created_at=now,
                     expires_at=now + 60, decided_at=None, decided_by=None, decided_ip=None,
                     decided_via=None, reminders_sent=0, finished_at=None)
        msg = slack_message(a, "requested", "ref-1", None, registry.labels(action))
        return [el["text"]["text"] for b in msg["blocks"] if b["type"] == "actions"
                for el in b["elements"]]

    assert buttons(ACTION) == ["Shift 100% Traffic", "Rollback & Page On-Call"]
    assert buttons("refund") == ["Approve", "Deny"]
