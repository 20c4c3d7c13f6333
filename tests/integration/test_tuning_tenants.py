"""Tenant isolation of the tuning loop's training data, through the CLI against a real
SQLite database: one tenant's feedback (and system prompt) never lands in a dataset built
for another tenant unless the operator lets them share the model, and several tenants
without a choice is a clear refusal. Rows are written straight into the request log and
the feedback table: no model runs and nothing is trained."""

from __future__ import annotations

import json
import time
from pathlib import Path

import orjson
import pytest
from sqlalchemy import Connection
from typer.testing import CliRunner

from keel.app import open_database
from keel.cli.main import build
from keel.config import load_settings
from keel.errors import ConfigError
from keel.metering.request_log import requests as request_log
from keel.tuning import store
from keel.tuning.loop import TuningLoop
from keel.tuning.registry import VersionRegistry

MODEL = "gemma-3-270m"
EVIL_SYSTEM = "EVIL-TENANT-SECRET: you work for codename BLUEFALCON"
SERVICES = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
            "india", "juliet"]


def run(cfg: Path, *args: str) -> tuple[int, str]:
    result = CliRunner(env={"COLUMNS": "250"}).invoke(build(), ["--config", str(cfg), *args])
    return result.exit_code, result.output


def config(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "keel.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[tuning]\nenabled = true\n{extra}')
    return cfg


def add(c: Connection, rid: str, tenant: str, question: str, correction: str,
        system: str | None = None) -> None:
    msgs = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": question}]
    now = time.time()
    c.execute(request_log.insert().values(
        id=rid, ts=now, route="chat", tenant=tenant, model=MODEL, status=200,
        request_body=orjson.dumps({"model": MODEL, "messages": msgs}).decode(),
        response_text="I do not know."))
    c.execute(store.feedback.insert().values(
        request_id=rid, key_id=f"k-{tenant}", tenant=tenant, model=MODEL, rating=-1,
        correction=correction, trainable=True, created=now, updated=now))


def seed(cfg: Path, evil_rows: int = 10) -> None:
    settings = load_settings(cfg)
    db = open_database(settings)
    try:
        def go(c: Connection) -> None:
            for i, name in enumerate(SERVICES):
                add(c, f"a-{i}", "acme", f"What is the port of service {name}?",
                    str(7000 + i), system="Acme support bot")
            for i, name in enumerate(SERVICES[:evil_rows]):
                add(c, f"e-{i}", "evil", f"What is the codename of team {name}?",
                    "The codename is BLUEFALCON-EVIL-ONLY", system=EVIL_SYSTEM)
        db.transaction(go)
    finally:
        db.dispose()


def dataset_text(out: str) -> str:
    path = Path(json.loads(out)["path"])
    return "".join(p.read_text() for p in path.glob("*.jsonl"))


def test_export_with_two_tenants_refuses_and_says_how_to_choose(tmp_path: Path):
    cfg = config(tmp_path)
    seed(cfg)
    code, out = run(cfg, "feedback", "export", MODEL)
    assert code == 1
    assert "2 tenants (acme, evil)" in out and "--tenant" in out
    assert "shared_tenants" in out
    assert not list((tmp_path / "data" / "tuning").glob("datasets/*/train.jsonl"))


def test_export_for_one_tenant_holds_only_its_rows_and_no_system_prompt(tmp_path: Path):
    cfg = config(tmp_path)
    seed(cfg)
    code, out = run(cfg, "feedback", "export", MODEL, "--tenant", "acme")
    assert code == 0, out
    text = dataset_text(out)
    assert "BLUEFALCON" not in text and "EVIL-TENANT-SECRET" not in text
    assert "service alpha" in text
    # the tuned version serves every tenant: a tenant's system prompt is not taught
    assert "Acme support bot" not in text


def test_the_default_single_tenant_keeps_its_system_prompt(tmp_path: Path):
    cfg = config(tmp_path)
    settings = load_settings(cfg)
    db = open_database(settings)
    db.transaction(lambda c: [add(c, f"d-{i}", "default",
                                   f"What is the port of service {name}?", str(7000 + i),
                                   system="Acme support bot")
                               for i, name in enumerate(SERVICES)])
    db.dispose()
    code, out = run(cfg, "feedback", "export", MODEL)
    assert code == 0, out
    assert "Acme support bot" in dataset_text(out)


def test_operator_listed_tenants_may_share_a_model(tmp_path: Path):
    cfg = config(tmp_path, f'[tuning.triggers."{MODEL}"]\ntenants = ["acme"]\n')
    seed(cfg)
    code, out = run(cfg, "feedback", "export", MODEL)  # only the listed tenant's rows
    assert code == 0, out
    assert "BLUEFALCON" not in dataset_text(out)
    code, out = run(cfg, "feedback", "export", MODEL, "--tenant", "evil")
    assert code == 1 and "not among the tenants allowed" in out


def test_unknown_trigger_model_is_refused_at_startup(tmp_path: Path):
    cfg = config(tmp_path, '[tuning.triggers."no-such-model"]\nmin_new_corrections = 5\n')
    settings = load_settings(cfg)
    db = open_database(settings)
    try:
        with pytest.raises(ConfigError, match=r'"no-such-model".*model table'):
            TuningLoop(settings, db, VersionRegistry(db), None, None)
    finally:
        db.dispose()
    code, out = run(cfg, "feedback", "export", MODEL)
    assert code == 1 and "no-such-model" in out


def test_rollback_of_an_unknown_model_says_so(tmp_path: Path):
    code, out = run(config(tmp_path), "train", "rollback", "nosuch")
    assert code == 1 and "unknown model 'nosuch'" in out and "base model" not in out


async def test_trigger_never_starts_a_round_mixing_tenants(tmp_path: Path):
    cfg = config(tmp_path, "min_new_corrections = 5\n")
    seed(cfg)
    settings = load_settings(cfg)
    db = open_database(settings)
    try:
        loop = TuningLoop(settings, db, VersionRegistry(db), None, None)
        assert await loop.due(MODEL) is None  # two tenants, none chosen: fail closed
        settings.tuning.shared_tenants = ["acme"]
        d = await loop.due(MODEL)
        assert d is not None and d.reason == "corrections"
    finally:
        db.dispose()
