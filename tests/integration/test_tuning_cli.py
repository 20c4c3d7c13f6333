"""``keel models versions|promote|rollback`` (and their ``keel train`` aliases) /
``keel feedback`` against a real SQLite database: promote and rollback
from the CLI are what the gateway serves next (the registry is shared through the DB)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from typer.testing import CliRunner

from keel.app import open_database
from keel.cli.main import build
from keel.config import load_settings
from keel.tuning.registry import VersionRegistry


def run(cfg: Path, *args: str) -> tuple[int, str]:
    result = CliRunner(env={"COLUMNS": "250"}).invoke(build(), ["--config", str(cfg), *args])
    return result.exit_code, result.output


def test_versions_promote_rollback_from_the_cli(tmp_path: Path):
    cfg = tmp_path / "keel.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[tuning]\nenabled = true\n')
    settings = load_settings(cfg)
    adapter = tmp_path / "a.gguf"
    adapter.write_bytes(b"GGUF")
    db = open_database(settings)
    reg = VersionRegistry(db)

    async def add(status: str) -> str:
        v = await reg.register(model="gemma-3-270m", base_model="base.gguf",
                               adapter=str(adapter), dataset_hash="d" * 64,
                               hyperparams={"lora_rank": 8}, metrics={"cost_usd": 0.01},
                               report={"passed": status != "refused", "reasons": ["worse"],
                                       "champion_eval": 0.1, "candidate_eval": 0.6},
                               status=status)
        return v.id

    good, bad = asyncio.run(add("candidate")), asyncio.run(add("refused"))
    code, out = run(cfg, "models", "rollback")
    assert code == 1 and "nothing to roll back" in out
    code, out = run(cfg, "models", "promote", bad)
    assert code == 1 and "refused by the evaluation gate" in out
    code, out = run(cfg, "models", "promote", good)
    assert code == 0 and f"now serves {good}" in out
    assert asyncio.run(reg.serving("gemma-3-270m")).id == good  # type: ignore[union-attr]
    code, out = run(cfg, "models", "versions", "--json")
    rows = {v["id"]: v["status"] for v in json.loads(out)}
    assert rows == {good: "promoted", bad: "refused"}
    code, out = run(cfg, "models", "versions")
    assert code == 0 and good in out and "promoted" in out
    code, out = run(cfg, "train", "versions", "--json")  # the old home stays an alias
    assert {v["id"] for v in json.loads(out)} == {good, bad}
    code, out = run(cfg, "models", "--json")  # the group still lists the model table
    assert code == 0 and "gemma-3-270m" in {m["name"] for m in json.loads(out)}
    code, out = run(cfg, "train", "rollback")
    assert code == 0 and "its base model" in out
    reg2 = VersionRegistry(db)
    assert asyncio.run(reg2.serving("gemma-3-270m")) is None
    code, out = run(cfg, "feedback", "export", "gemma-3-270m")
    assert code == 1 and "collect more corrections" in out
    db.dispose()
