"""``keel qa sanitize``: files in, one sanitized line (or JSON object) out, exit 2 on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keel.cli.main import build


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("KEEL_SANITIZE_KEY", raising=False)
    path = tmp_path / "keel.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    return path


def run(cfg: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(build(), ["--config", str(cfg), "qa", *args])
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


def test_sanitize_json_lines_with_a_key_file_made_once(cfg: Path, tmp_path: Path) -> None:
    src = tmp_path / "log.jsonl"
    src.write_text('{"text": "My name is Akinori, mail EmilHenriksson@rhyta.com [x]"}\n'
                   "plain line: EmilHenriksson@rhyta.com wrote again\n")
    code, out, _ = run(cfg, "sanitize", str(src), "--json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["line"] for r in rows] == [1, 2]
    assert "Akinori" not in rows[0]["text"] and "rhyta" not in out
    assert rows[0]["text"].endswith("[x]")  # square brackets survive
    mail = next(e for e in rows[0]["entities"] if e["type"] == "EMAIL_ADDRESS")
    assert mail["replacement"] in rows[1]["text"]  # the same user, linked
    key_file = tmp_path / "data" / "sanitize.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    # a second run reuses the key: the same pseudonym
    code, out2, _ = run(cfg, "sanitize", str(src))
    assert code == 0 and mail["replacement"] in out2.splitlines()[1]


def test_env_key_changes_the_pseudonyms(cfg: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "a.txt"
    src.write_text("EmilHenriksson@rhyta.com\n")
    _, first, _ = run(cfg, "sanitize", str(src))
    monkeypatch.setenv("KEEL_SANITIZE_KEY", "another-key-0123456789abcdef")
    _, second, _ = run(cfg, "sanitize", str(src))
    assert first != second and "rhyta" not in second


@pytest.mark.parametrize(("content", "message"), [
    ('{"text": "ok"}\n{"text": \n', "bad.jsonl:2: malformed JSON"),
    ('{"body": "no text"}\n', 'needs a string field "text"'),
])
def test_bad_input_names_the_line_and_exits_2(cfg: Path, tmp_path: Path, content: str,
                                              message: str) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text(content)
    code, out, err = run(cfg, "sanitize", str(src))
    assert code == 2 and message in err and out == ""


def test_missing_file_exits_2(cfg: Path, tmp_path: Path) -> None:
    code, _, err = run(cfg, "sanitize", str(tmp_path / "nope.txt"))
    assert code == 2 and "no such file" in err
