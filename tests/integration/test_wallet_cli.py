"""``keel wallet`` on a real SQLite ledger: keygen, create, fund, balance, ledger --check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keel.cli.main import build


def run(cfg: Path, *args: str) -> tuple[int, str]:
    result = CliRunner(env={"COLUMNS": "250"}).invoke(build(), ["--config", str(cfg), *args])
    return result.exit_code, result.output


def test_wallet_cli_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "keel.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[wallets]\n'
                   'encryption_key = "${KEEL_WALLET_KEY}"\n')
    monkeypatch.delenv("KEEL_WALLET_KEY", raising=False)
    code, out = run(cfg, "wallet", "create", "-t", "acme", "-a", "bot")
    assert code == 1 and "KEEL_WALLET_KEY is not set" in out
    code, secret = run(cfg, "wallet", "keygen")
    assert code == 0 and len(secret.strip()) >= 32
    monkeypatch.setenv("KEEL_WALLET_KEY", secret.strip())
    code, out = run(cfg, "wallet", "create", "-t", "acme", "-a", "bot", "--json")
    assert code == 0, out
    address = json.loads(out)["address"]
    code, out = run(cfg, "wallet", "create", "-t", "acme", "-a", "bot")
    assert code == 1 and "already has wallet" in out
    code, out = run(cfg, "wallet", "fund", "-t", "acme", "-a", "bot", "2.50", "--memo", "po-1")
    assert code == 0 and "$2.50" in out
    code, out = run(cfg, "wallet", "fund", "-t", "acme", "-a", "bot", "0.0000001")
    assert code == 1 and "micro-dollar" in out
    for huge in ("9000000000000", "1e30"):  # used to overflow the books or print a traceback
        code, out = run(cfg, "wallet", "fund", "-t", "acme", "-a", "bot", huge)
        assert code == 1 and ("at most $1000000000.00 per amount" in out
                              or "plain decimal" in out), out
        assert "Traceback" not in out
    for odd in ("\u0663", "1e2", "1_000", "\uff13"):  # Arabic-Indic / fullwidth 3, exponent
        code, out = run(cfg, "wallet", "fund", "-t", "acme", "-a", "bot", odd)
        assert code == 1 and "plain decimal" in out, out
    code, out = run(cfg, "wallet", "balance", "-t", "acme", "--json")
    assert json.loads(out) == [{"agent": "bot", "address": address, "available": 2_500_000,
                                "held": 0}]
    code, out = run(cfg, "wallet", "ledger", "-t", "acme", "-a", "bot", "--check")
    assert code == 0 and "fund" in out and "books balance" in out
    code, out = run(cfg, "wallet", "balance", "-t", "acme", "-a", "ghost")
    assert code == 1 and "has no wallet" in out
    # budget sessions, opened by an operator from the CLI
    code, out = run(cfg, "wallet", "session-open", "-t", "acme", "-a", "bot", "--budget",
                    "0.50", "--id", "run-1", "--json")
    assert code == 0, out
    assert json.loads(out)["budget_micros"] == 500_000 and json.loads(out)["id"] == "run-1"
    code, out = run(cfg, "wallet", "session-open", "-t", "acme", "-a", "bot", "--id", "run-1")
    assert code == 1 and "already exists" in out
    code, out = run(cfg, "wallet", "session-open", "-t", "acme", "-a", "bot", "--budget", "x")
    assert code == 1 and "not an amount" in out
    code, out = run(cfg, "wallet", "session-close", "run-1", "-t", "acme")
    assert code == 0 and "closed session run-1" in out
    code, out = run(cfg, "wallet", "session-close", "nope", "-t", "acme")
    assert code == 1 and "no session 'nope'" in out
