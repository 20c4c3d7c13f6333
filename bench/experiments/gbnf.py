"""JSON schema -> llama.cpp GBNF grammar (an experiment; keel does not ship it).

llama.cpp (as xllamacpp builds it) enforces ``json_schema`` with llguidance, whose first
use in a process builds a table over the whole vocabulary: ~1.8 CPU-s for Gemma 3's 262k
tokens, on llama.cpp's scheduling thread, so nothing decodes meanwhile. That is most of a
batch worker's cold start for a structured line. llama.cpp's own GBNF engine has no such
cost, so the idea was to send a loaded model's first structured requests as GBNF.

:mod:`gbnf_vs_llguidance` measured why it is not done: GBNF lets the model spell forced
text (keys, punctuation, enum values) in any tokenization, and Gemma 3 270M then picks
odd splits ('s' 'enti' 'me' 'nt' for "sentiment") that change its answers. See that
script's docstring for the numbers.

:func:`to_gbnf` covers the common subset of JSON Schema and returns ``None`` otherwise;
what it emits accepts a subset of the values the schema allows: compact JSON (as keel's
llguidance requests), declared properties only and in their order, escapes only where JSON
needs them, bounded numbers of digits.
"""

from __future__ import annotations

import json
from typing import Any

from keel.providers.llama_requests import COMPACT

JSON = dict[str, Any]

# Keywords that annotate and never constrain.
_ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "$comment", "$schema", "$id",
    "deprecated", "readOnly", "writeOnly", "$defs", "definitions",
})
_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
_KEYWORDS: dict[str, frozenset[str]] = {
    "object": frozenset({"properties", "required", "additionalProperties"}),
    "array": frozenset({"items", "minItems", "maxItems"}),
    "string": frozenset({"minLength", "maxLength"}),
    "number": frozenset(),
    "integer": frozenset({"minimum", "exclusiveMinimum"}),
    "boolean": frozenset(),
    "null": frozenset(),
}
# A bounded repetition is expanded into one rule per step by llama.cpp's parser.
MAX_REPEAT = 1000
MAX_ITEMS = 100

_BASE = {
    # escapes only where JSON needs one, as llguidance's compact strings
    "char": r'[^"\\\x7F\x00-\x1F] | "\\" (["\\bfnrt] | "u00" ([01] [0-9a-fA-F] | "7" [fF]))',
    "string": r'"\"" char* "\""',
    "integer": r'"-"? ("0" | [1-9] [0-9]{0,15})',
    "number": r'"-"? ("0" | [1-9] [0-9]{0,15}) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?',
    "boolean": r'"true" | "false"',
    "null": r'"null"',
    "value": "object | array | string | number | boolean | null",
    "object": r'"{" (string ":" value ("," string ":" value)*)? "}"',
    "array": r'"[" (value ("," value)*)? "]"',
}
_BASE_DEPS = {"string": ("char",), "value": tuple(_TYPES),
              "object": ("string", "value"), "array": ("value",)}


class Unsupported(Exception):
    """The schema uses something this converter does not turn into GBNF."""


def literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _count(schema: JSON, key: str, default: int | None) -> int | None:
    value = schema.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Unsupported(f"{key} must be a non-negative integer")
    return value


def _repeat(item: str, lo: int, hi: int | None) -> str:
    if hi is not None and hi > MAX_REPEAT:
        raise Unsupported("repetition too long for a GBNF rule")
    if hi == 0:
        return ""
    if hi is None:
        return f"{item}{{{lo},}}" if lo else f"{item}*"
    if lo == hi:
        return f"{item}{{{lo}}}" if lo != 1 else item
    return f"{item}{{{lo},{hi}}}"


class _Converter:
    def __init__(self, root: JSON) -> None:
        self.root = root
        self.rules: dict[str, str] = {}
        self.refs: dict[str, str] = {}

    def base(self, name: str) -> str:
        if name not in self.rules:
            self.rules[name] = _BASE[name]
            for dep in _BASE_DEPS.get(name, ()):
                self.base(dep)
        return name

    def rule(self, body: str) -> str:
        """A named rule for ``body`` (the same body shares one name)."""
        for name, existing in self.rules.items():
            if existing == body:
                return name
        name = f"r{len(self.rules)}"
        self.rules[name] = body
        return name

    def ref(self, ref: Any) -> str:
        if not isinstance(ref, str):
            raise Unsupported("$ref must be a string")
        if ref not in self.refs:
            for prefix in ("#/$defs/", "#/definitions/"):
                if ref.startswith(prefix):
                    defs = self.root.get(prefix[2:-1])
                    key = ref[len(prefix):]
                    if isinstance(defs, dict) and "/" not in key and "~" not in key \
                            and key in defs:
                        break
            else:
                raise Unsupported(f"$ref {ref!r}")
            name = f"d{len(self.refs)}"
            self.refs[ref] = name
            self.rules[name] = ""  # reserved: a recursive reference finds the name
            self.rules[name] = self.value(defs[key])
        return self.refs[ref]

    def value(self, schema: Any) -> str:
        """A GBNF expression for values valid against ``schema``."""
        if schema is True or schema == {}:
            return self.base("value")
        if not isinstance(schema, dict):
            raise Unsupported("a schema must be an object or true")
        keys = set(schema) - _ANNOTATIONS
        if "$ref" in keys:
            if keys != {"$ref"}:
                raise Unsupported("$ref next to other keywords")
            return self.ref(schema["$ref"])
        if "anyOf" in keys:
            branches = schema["anyOf"]
            if keys != {"anyOf"} or not isinstance(branches, list) or not branches:
                raise Unsupported("anyOf next to other keywords")
            return "(" + " | ".join(self.value(b) for b in branches) + ")"
        if "allOf" in keys:
            parts = schema["allOf"]
            if keys != {"allOf"} or not isinstance(parts, list) or len(parts) != 1:
                raise Unsupported("allOf with more than one schema")
            return self.value(parts[0])
        types = schema.get("type")
        if types is None:
            types = [t for t in _TYPES if keys & _KEYWORDS[t]] or list(_TYPES)
        elif isinstance(types, str):
            types = [types]
        if not isinstance(types, list) or not types or not all(t in _TYPES for t in types):
            raise Unsupported(f"type {schema.get('type')!r}")
        if "enum" in keys or "const" in keys:
            return self.choices(schema, keys, types)
        allowed = {"type"}.union(*(_KEYWORDS[t] for t in types))
        if "integer" in types and "number" not in types and len(types) > 1:
            allowed -= _KEYWORDS["integer"]  # bounds would apply to the other types' rules
        extra = keys - allowed
        if extra:
            raise Unsupported(f"keywords {sorted(extra)}")
        alts = [getattr(self, f"t_{t}")(schema) for t in types]
        return alts[0] if len(alts) == 1 else "(" + " | ".join(alts) + ")"

    def choices(self, schema: JSON, keys: set[str], types: list[str]) -> str:
        if keys - {"enum", "const", "type"}:
            raise Unsupported("enum or const next to other keywords")
        if "const" in keys:
            values = [schema["const"]]
        else:
            values = schema["enum"]
            if not isinstance(values, list):
                raise Unsupported("enum must be a list")
        if "enum" in keys and "const" in keys:
            values = [v for v in values if v == schema["const"]]

        def fits(v: Any) -> bool:
            t = _type_of(v)
            return t in types or (t == "integer" and "number" in types)

        kept = [_json(v) for v in values if fits(v)]
        if not kept:
            raise Unsupported("no enum value matches the type")
        return "(" + " | ".join(literal(v) for v in dict.fromkeys(kept)) + ")"

    # -- one rule per JSON type ---------------------------------------------------------

    def t_null(self, schema: JSON) -> str:
        return self.base("null")

    def t_boolean(self, schema: JSON) -> str:
        return self.base("boolean")

    def t_number(self, schema: JSON) -> str:
        return self.base("number")

    def t_integer(self, schema: JSON) -> str:
        lo = schema.get("minimum")
        if "exclusiveMinimum" in schema:
            ex = schema["exclusiveMinimum"]
            if isinstance(ex, bool) or not isinstance(ex, int | float):
                raise Unsupported("exclusiveMinimum must be a number")
            lo = max(lo, ex + 1) if isinstance(lo, int | float) else ex + 1
        if lo is None:
            return self.base("integer")
        if isinstance(lo, bool) or not isinstance(lo, int | float) or lo not in (0, 1):
            raise Unsupported("minimum other than 0 or 1")
        return self.rule('"0" | [1-9] [0-9]{0,15}' if lo == 0 else "[1-9] [0-9]{0,15}")

    def t_string(self, schema: JSON) -> str:
        lo = _count(schema, "minLength", 0) or 0
        hi = _count(schema, "maxLength", None)
        if hi is not None and hi < lo:
            raise Unsupported("maxLength below minLength")
        if lo == 0 and hi is None:
            return self.base("string")
        self.base("char")
        return self.rule(f'"\\"" {_repeat("char", lo, hi)} "\\""')

    def t_array(self, schema: JSON) -> str:
        item = self.value(schema.get("items", True))
        lo = _count(schema, "minItems", 0) or 0
        hi = _count(schema, "maxItems", None)
        if hi is not None and (hi < lo or hi > MAX_ITEMS):
            raise Unsupported("maxItems below minItems or too large")
        if hi == 0:
            return literal("[]")
        more = _repeat(f'("," {item})', max(lo - 1, 0), None if hi is None else hi - 1)
        body = f'{item} {more}' if more else item
        return self.rule(f'"[" {body} "]"' if lo else f'"[" ({body})? "]"')

    def t_object(self, schema: JSON) -> str:
        props = schema.get("properties")
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise Unsupported("required must be a list of names")
        extra = schema.get("additionalProperties", True)
        if props is None:
            if required:
                raise Unsupported("required without properties")
            if extra is False:
                return literal("{}")
            value = self.value(extra)
            self.base("string")
            pair = f'string ":" {value}'
            return self.rule(f'"{{" ({pair} ("," {pair})*)? "}}"')
        if not isinstance(props, dict) or set(required) - set(props):
            raise Unsupported("required names a property that is not declared")
        items = [(f'{literal(_json(k) + ":")} {self.value(v)}', k in required)
                 for k, v in props.items()]
        return self.rule(f'"{{" {self.members(items)} "}}"')

    def members(self, items: list[tuple[str, bool]]) -> str:
        """Members in order, each required one present, comma-separated. ``after[i]``: the
        members from ``i`` on once one has been written (each starts with a comma);
        ``first[i]``: the same when none has been written yet."""
        n = len(items)
        after = [""] * (n + 1)
        for i in range(n - 1, -1, -1):
            item, req = items[i]
            tail = after[i + 1]
            step = f'"," {item}'
            if req:
                after[i] = f"{step} {tail}".strip()
            else:
                after[i] = f"({step})? {tail}".strip()
            if after[i] and i > 0:
                after[i] = self.rule(after[i])
        first = ""
        for i in range(n - 1, -1, -1):
            item, req = items[i]
            now = f"{item} {after[i + 1]}".strip()
            first = now if req else (f"({now} | {first})" if first else f"({now})?")
        return first


def to_gbnf(schema: JSON) -> str | None:
    """The GBNF grammar (llama.cpp's ``grammar`` field) for ``schema`` as keel's
    llguidance requests would constrain it, or ``None`` where it cannot be expressed here
    (custom ``x-guidance`` options, patterns, formats, numeric ranges, ``oneOf``...)."""
    if not isinstance(schema, dict):
        return None
    if "x-guidance" in schema:  # keel's own compact option is what this grammar writes
        if schema["x-guidance"] != COMPACT:
            return None
        schema = {k: v for k, v in schema.items() if k != "x-guidance"}
    conv = _Converter(schema)
    try:
        root = conv.value(schema)
    except (Unsupported, RecursionError, TypeError, ValueError):
        return None
    lines = [f"root ::= {root}"]
    lines += [f"{name} ::= {body}" for name, body in conv.rules.items()]
    return "\n".join(lines) + "\n"
