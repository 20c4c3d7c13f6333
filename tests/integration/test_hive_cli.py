"""``keel hive ls|cat|tail -f|report|gc`` on the directory backend (real files, a real
``keel`` process for ``tail -f``)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from keel.cli.main import build
from keel.config import load_settings
from keel.gateway.context import Principal
from keel.hive.model import NewRecord
from keel.hive.service import HiveService, open_store

WRITER = Principal(key_id="k", tenant="acme", agent="researcher")


def _run(cfg: Path, *args: str) -> tuple[int, str]:
    res = CliRunner(env={"COLUMNS": "250"}).invoke(build(), ["--config", str(cfg), *args])
    return res.exit_code, res.output


def test_hive_cli(tmp_path: Path) -> None:  # sync: the CLI runs its own event loop
    run = asyncio.run
    cfg = tmp_path / "keel.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[hive]\nenabled = true\n')
    settings = load_settings(cfg)
    hive = HiveService(open_store(settings.hive, settings.data_dir), settings.hive)
    run(hive.create_task(WRITER, "job"))
    run(hive.create_task(WRITER, "old", ttl_s=1))
    run(hive.append(WRITER, "job", "researcher",
                    [NewRecord("tokens", "[draft] hello ", "researcher")]))

    code, out = _run(cfg, "hive", "ls", "--tenant", "acme")
    assert code == 0 and "job" in out and "old" in out
    code, out = _run(cfg, "hive", "ls", "job", "--tenant", "acme")
    assert code == 0 and "researcher" in out
    code, out = _run(cfg, "hive", "cat", "job/researcher", "--tenant", "acme")
    assert code == 0 and out == "[draft] hello \n"  # square brackets survive
    code, out = _run(cfg, "hive", "cat", "job/../x", "--tenant", "acme")
    assert code == 1 and "invalid stream name" in out

    # tail -f in its own process sees the next record as it is written, exits at the end
    proc = subprocess.Popen(
        [sys.executable, "-c", "from keel.cli.main import main; main()", "--config", str(cfg),
         "hive", "tail", "-f", "job/researcher", "--tenant", "acme"],
        stdout=subprocess.PIPE, text=True)
    time.sleep(1.5)  # start-up
    run(hive.append(WRITER, "job", "researcher", [NewRecord("tokens", "world", "researcher"),
                                                  NewRecord("end", "", "researcher")]))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out == "[draft] hello world\n"

    time.sleep(1.1)  # "old" is now idle past its 1 s TTL
    code, out = _run(cfg, "hive", "gc", "--dry-run")
    assert code == 0 and "would delete 1 task(s)" in out and "old" in out
    assert run(hive.store.task("acme", "old"))  # a dry run leaves it (expired, unreadable)
    code, out = _run(cfg, "hive", "gc")
    assert code == 0 and "deleted 1 task(s)" in out
    code, out = _run(cfg, "hive", "report")
    assert code == 0 and "acme" in out
    assert [t.name for t in run(hive.store.tasks("acme"))] == ["job"]


def test_hive_cli_shared_files(tmp_path: Path) -> None:
    cfg = tmp_path / "keel.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[hive]\nenabled = true\n')
    settings = load_settings(cfg)
    hive = HiveService(open_store(settings.hive, settings.data_dir), settings.hive)
    asyncio.run(hive.create_task(WRITER, "job"))
    src = tmp_path / "plan.md"
    src.write_bytes(b"[step] one\n")
    code, out = _run(cfg, "hive", "put", "job/files/plan.md", str(src), "--tenant", "acme",
                     "--create")
    assert code == 0 and "hive://job/files/plan.md@1" in out, out
    code, out = _run(cfg, "hive", "put", "job/files/plan.md", str(src), "--tenant", "acme",
                     "--create")
    assert code == 1 and "already exists" in out
    src.write_bytes(b"[step] two\n")
    code, out = _run(cfg, "hive", "put", "job/files/plan.md", str(src), "--tenant", "acme")
    assert code == 0 and "@2" in out
    code, out = _run(cfg, "hive", "put", "job/files/plan.md", str(src), "--tenant", "acme",
                     "--version", "1")
    assert code == 1 and "version 2, not 1" in out
    code, out = _run(cfg, "hive", "cat", "job/files/plan.md", "--tenant", "acme")
    assert code == 0 and out == "[step] two\n"
    code, out = _run(cfg, "hive", "ls", "job", "--tenant", "acme")
    assert code == 0 and "plan.md" in out and "cli" in out
    code, out = _run(cfg, "hive", "cat", "job/files/../x", "--tenant", "acme")
    assert code == 1 and "invalid file name" in out
    code, out = _run(cfg, "hive", "put", "job/plan.md", str(src), "--tenant", "acme")
    assert code != 0 and "TASK/files/NAME" in out
