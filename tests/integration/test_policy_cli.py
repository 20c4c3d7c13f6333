"""``keel policy`` / ``keel tools`` against a real stdio MCP server; one draft with the real
local model (asserting a well-formed outcome either way)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keel.cli.main import build

REPO = Path(__file__).resolve().parents[2]
SERVER = str(REPO / "tests" / "tool_servers" / "crm_mcp.py")
POLICY = """@id("refunds") permit(principal, action == Action::"issue_refund", resource);
@id("no-refunds-over-50")
forbid(principal, action == Action::"issue_refund", resource) when { context.amount_cents > 5000 };
@id("read-business-hours")
permit(principal, action == Action::"read_customer", resource)
when { context.now.hour >= 9 && context.now.hour < 17 };
"""
CASES = """
- {name: small refund, tool: issue_refund, arguments: {customer_id: c1, amount_cents: 4999},
   expect: allow}
- {name: big refund, tool: issue_refund, arguments: {customer_id: c1, amount_cents: 5001},
   expect: deny}
- {name: late read, tool: read_customer, arguments: {customer_id: c1}, at: "2026-03-03T20:00",
   expect: deny}
- {name: string amount, tool: issue_refund, arguments: {customer_id: c1, amount_cents: "1"},
   expect: deny}
"""


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    models_dir = os.environ.get("KEEL_TEST_MODEL_DIR", str(REPO / ".keel" / "models"))
    path = tmp_path / "keel.toml"
    path.write_text(
        f'data_dir = "{tmp_path / "data"}"\nmodels_dir = "{models_dir}"\n'
        f'[tools]\ntimezone = "UTC"\n[[tools.servers]]\nname = "crm"\n'
        f'command = [{json.dumps(sys.executable)}, {json.dumps(SERVER)}]\n')
    (tmp_path / "policy.cedar").write_text(POLICY)
    (tmp_path / "cases.yaml").write_text(CASES)
    return path


def run(cfg: Path, *args: str) -> tuple[int, str]:
    result = CliRunner(env={"COLUMNS": "250"}).invoke(build(), ["--config", str(cfg), *args])
    return result.exit_code, result.output


def test_policy_lifecycle(cfg: Path, tmp_path: Path) -> None:
    code, out = run(cfg, "tools", "list")
    assert code == 0 and "issue_refund" in out and "amount_cents" in out
    code, out = run(cfg, "policy", "schema")
    assert code == 0 and 'action "issue_refund"' in out

    bad = tmp_path / "bad.cedar"
    bad.write_text('permit(principal, action == Action::"read_customer", resource) '
                   'when { context.amount_cents > 1 };')
    code, out = run(cfg, "policy", "apply", str(bad))
    assert code == 1 and "amount_cents" in out  # Cedar's own message; nothing changed
    code, out = run(cfg, "policy", "history")
    assert code == 0 and "sha256" in out and "│ 1" not in out

    assert run(cfg, "policy", "validate", str(tmp_path / "policy.cedar"))[0] == 0
    code, out = run(cfg, "policy", "apply", str(tmp_path / "policy.cedar"), "--note", "v1")
    assert code == 0 and "version 1" in out
    code, out = run(cfg, "policy", "test", str(tmp_path / "cases.yaml"), "--json")
    assert code == 0, out
    got = {c["name"]: c["got"] for c in json.loads(out)}
    assert got == {"small refund": "allow", "big refund": "deny", "late read": "deny",
                   "string amount": "deny"}

    (tmp_path / "wrong.yaml").write_text(CASES.replace("expect: deny}", "expect: allow}", 1))
    code, out = run(cfg, "policy", "test", str(tmp_path / "wrong.yaml"))
    assert code == 1 and "3/4 cases passed" in out

    stricter = tmp_path / "strict.cedar"
    stricter.write_text(POLICY.replace("> 5000", "> 100"))
    assert run(cfg, "policy", "apply", str(stricter))[0] == 0
    code, out = run(cfg, "policy", "rollback")
    assert code == 0 and "version 1" in out
    code, out = run(cfg, "policy", "rollback")
    assert code == 1 and "no earlier policy version" in out
    code, out = run(cfg, "policy", "shadow", str(stricter), "--json")
    assert code == 0 and json.loads(out)["replayed"] == 0


@pytest.mark.model
def test_draft_with_the_real_local_model(cfg: Path, tmp_path: Path) -> None:
    """The tiny default model rarely writes valid Cedar; either way the outcome is clear.
    (One repair round only, to keep the suite fast: the 3-round loop is tested with a
    scripted fake model in tests/unit/test_policy_store_and_draft.py.)"""
    cfg.write_text(cfg.read_text().replace("[tools]\n", "[tools]\npolicy.draft_repairs = 1\n"))
    out_file = tmp_path / "draft.cedar"
    code, out = run(cfg, "policy", "draft", "Agents can never issue refunds over $50",
                    "--out", str(out_file))
    assert "attempt 1:" in out
    if code == 0:
        assert out_file.exists() and "Nothing is enforced" not in out
        assert run(cfg, "policy", "validate", str(out_file))[0] == 0
    else:
        assert code == 1 and "did not produce a valid Cedar policy" in out
        assert "attempt 2:" in out and not out_file.exists()


def test_payment_policies_through_the_cli(cfg: Path, tmp_path: Path) -> None:
    """With wallets on, policies may name Action::"x402:pay" (validated against its schema)."""
    cfg.write_text(cfg.read_text() + '[wallets]\nenabled = true\n'
                   'encryption_key = "cli-test-wallet-key-0123456789abcdef"\n')
    code, out = run(cfg, "policy", "schema")
    assert code == 0 and 'action "x402:pay"' in out and "amount_micros" in out
    pay = tmp_path / "pay.cedar"
    pay.write_text(POLICY + '@id("small-payments")\n'
                   'permit(principal, action == Action::"x402:pay", resource)\n'
                   "when { context.amount_micros <= 50000 };\n")
    assert run(cfg, "policy", "apply", str(pay))[0] == 0
    typo = tmp_path / "typo.cedar"
    typo.write_text('permit(principal, action == Action::"x402:pay", resource) '
                    "when { context.amount_cents <= 5 };")
    code, out = run(cfg, "policy", "validate", str(typo))
    assert code == 1 and "amount_cents" in out
    cases = tmp_path / "pay.yaml"
    args = ('{payee: "0xabc", host: "api.example.com", port: 443, network: "eip155:8453", '
            'resource: "r"')
    cases.write_text(f"- {{name: cheap, tool: 'x402:pay', arguments: {args}, "
                     "amount_micros: 20000}, expect: allow}\n"
                     f"- {{name: dear, tool: 'x402:pay', arguments: {args}, "
                     "amount_micros: 90000}, expect: deny}\n")
    code, out = run(cfg, "policy", "test", str(cases), "--json")
    assert code == 0, out
    assert {c["name"]: c["got"] for c in json.loads(out)} == {"cheap": "allow", "dear": "deny"}
