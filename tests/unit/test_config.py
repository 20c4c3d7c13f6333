"""Settings: keel.toml, then KEEL_* env, then CLI flags; ${VAR} must be set."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel.config import load_settings
from keel.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "keel.toml"
    p.write_text(text)
    return p


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.data_dir == Path(".keel")
    assert s.db_url == "sqlite:///.keel/keel.db"
    assert s.kv == "sqlite:///.keel/kv.db"
    names = [m.name for m in s.model_table()]
    assert names == ["gemma-3-270m", "all-minilm-l6-v2"]


def test_precedence_toml_env_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path, '[server]\nport = 9000\nhost = "0.0.0.0"\n')
    assert load_settings(cfg).server.port == 9000
    monkeypatch.setenv("KEEL_SERVER__PORT", "9100")
    s = load_settings(cfg)
    assert (s.server.port, s.server.host) == (9100, "0.0.0.0")  # env merges, toml stays
    assert load_settings(cfg, **{"server.port": 9200}).server.port == 9200


def test_env_var_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path, '[[models]]\nname = "x"\napi_key = "${KEEL_TEST_UPSTREAM_KEY}"\n')
    with pytest.raises(ConfigError, match="KEEL_TEST_UPSTREAM_KEY is not set"):
        load_settings(cfg)
    monkeypatch.setenv("KEEL_TEST_UPSTREAM_KEY", "sk-live-123")
    s = load_settings(cfg)
    key = s.models[0].api_key
    assert key is not None and key.get_secret_value() == "sk-live-123"
    assert "sk-live-123" not in repr(s)  # secrets never in reprs


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("server = 3", "server"),
        ("[server]\nport = 'abc'", "server.port"),
        ("nonsense_key = 1", "nonsense_key"),
        ('[[models]]\nname = "a"\n[[models]]\nname = "a"', "defined twice"),
        ("[server\n", "not valid TOML"),
        ("[local]\nthreads = -3", "local.threads"),
    ],
)
def test_bad_config_says_what_to_fix(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_settings(write(tmp_path, text))


def test_missing_explicit_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("text", "key", "table"),
    [
        ("[cache]\nbar = 2", "'bar'", "[cache]"),
        ('[[models]]\nname = "a"\nfoo = 1', "'foo'", "[[models]] #1"),
        ('[[models]]\nname = "a"\n[[models]]\nname = "b"\nfoo = 1', "'foo'", "[[models]] #2"),
        ("[tools.policy]\nrolez = {}", "'rolez'", "[tools.policy]"),
        ('[[tools.servers]]\nname = "a"\nurl = "http://x"\nheader = {}', "'header'",
         "[[tools.servers]] #1"),
        ("[cache.namespaces.faq]\nttl = 5", "'ttl'", "[cache.namespaces.faq]"),
        ("[server]\nprot = 9000", "'prot'", "[server]"),
    ],
)
def test_unknown_key_in_a_nested_table_is_an_error(
    tmp_path: Path, text: str, key: str, table: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text))
    assert f"unknown key {key} in {table}" in err.value.message
    assert "known keys:" in err.value.message


def test_every_settings_table_forbids_unknown_keys() -> None:
    """Guards sections added later: each model reachable from Settings forbids extras."""
    from pydantic import BaseModel

    from keel.config import Settings

    seen: set[type] = set()
    todo: list[type] = [Settings]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        assert model.model_config.get("extra") == "forbid", model.__name__
        for field in model.model_fields.values():
            stack = [field.annotation]
            while stack:
                t = stack.pop()
                if isinstance(t, type) and issubclass(t, BaseModel):
                    todo.append(t)
                stack.extend(getattr(t, "__args__", ()))
    assert len(seen) > 15


def test_mode_pin_durations_are_the_apis() -> None:
    """`keel mode set --for` takes what PUT /v1/admin/degrade/mode takes: (0, 30 days]."""
    import typer

    from keel.cli.mode import parse_duration

    assert parse_duration("2h") == 7200 and parse_duration("30d") == 30 * 86400
    for bad in ("0s", "31d", "99999d", "soon"):
        with pytest.raises(typer.BadParameter):
            parse_duration(bad)
