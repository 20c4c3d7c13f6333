"""Named sets of signature rules (case-insensitive regexes over normalised text).

A rule set is a JSON file::

    {"name": "default", "rules": [
        {"id": "override.ignore-previous", "category": "instruction_override",
         "description": "ignore / disregard previous instructions",
         "pattern": "\\\\b(ignore|disregard)\\\\b.{0,40}\\\\binstructions\\\\b"}]}

Patterns are matched against :func:`keel.firewall.normalize.normalize` output (lowercase,
whitespace collapsed to single spaces, leetspeak folded), so they need not handle case,
newlines or zero-width tricks. They must compile with Python ``re`` *and* hyperscan: no
back-references and no look-around. ``"default"`` names the set shipped with keel.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from keel.errors import ConfigError

DEFAULT_NAME = "default"
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_UNSUPPORTED = re.compile(r"\(\?<?[=!]|\\[1-9]|\(\?P=")  # look-around, back-references


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    category: str
    description: str
    pattern: str


def validate_rule(raw: Any, index: int) -> Rule:
    """One rule from its JSON object; :class:`ConfigError` names the rule when it is bad."""
    where = f"rule #{index}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be an object with id, category, description, pattern")
    rid = raw.get("id")
    if isinstance(rid, str):
        where = f"rule {rid!r} (#{index})"
    for key in ("id", "category", "description", "pattern"):
        value = raw.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: {key!r} must be a non-empty string")
    extra = set(raw) - {"id", "category", "description", "pattern"}
    if extra:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(extra))}")
    rule = Rule(raw["id"], raw["category"], raw["description"], raw["pattern"])
    if not _ID.match(rule.id):
        raise ConfigError(
            f"{where}: id must be 1-64 lowercase letters, digits, '.', '_' or '-'"
        )
    if _UNSUPPORTED.search(rule.pattern):
        raise ConfigError(
            f"{where}: look-around and back-references are not supported (hyperscan)"
        )
    try:
        compiled = re.compile(rule.pattern, re.IGNORECASE)
    except re.error as exc:
        raise ConfigError(f"{where}: pattern does not compile: {exc}") from None
    if compiled.search("") is not None:
        raise ConfigError(f"{where}: pattern matches the empty string (it would block everything)")
    return rule


@dataclass(frozen=True, slots=True)
class RuleSet:
    name: str
    rules: tuple[Rule, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise ConfigError(f"rule set {self.name!r}: duplicate rule id {rule.id!r}")
            seen.add(rule.id)

    def get(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)

    @classmethod
    def from_dict(cls, data: Any, *, source: str) -> RuleSet:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a rule set is a JSON object with 'name' and 'rules'")
        name = data.get("name", Path(source).stem)
        rules = data.get("rules")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{source}: 'name' must be a non-empty string")
        if not isinstance(rules, list) or not rules:
            raise ConfigError(f"{source}: 'rules' must be a non-empty list")
        try:
            return cls(name, tuple(validate_rule(r, i) for i, r in enumerate(rules)))
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc.message}") from None

    @classmethod
    def load(cls, spec: str) -> RuleSet:
        """``"default"`` (shipped with keel) or the path of a rule-set JSON file."""
        if spec == DEFAULT_NAME:
            ref = resources.files("keel.firewall").joinpath("rulesets/default.json")
            text = ref.read_text(encoding="utf-8")
            source = "default rule set"
        else:
            path = Path(spec).expanduser()
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise ConfigError(
                    f"rule set {spec!r}: no such file (use 'default' or a JSON file path)"
                ) from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"rule set {spec!r}: cannot read it: {exc}") from None
            source = str(path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from None
        return cls.from_dict(data, source=source)
