"""ASL intrinsic functions (``"x.$": "States.Format('Hi {}', $.name)"``).

Arguments are string literals in single quotes (``\\'``, ``\\{``, ``\\}``, ``\\\\`` escape),
numbers, ``true`` / ``false`` / ``null``, paths and nested intrinsic calls. Any failure
at run time is ``States.IntrinsicFailure``; a call that does not parse or names an unknown
function is refused when the definition is loaded. ``States.UUID`` and
``States.MathRandom`` draw from a per-execution seeded generator, so a recovered workflow
computes the same values it computed before the crash.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import uuid
from dataclasses import dataclass
from typing import Any

from keel.errors import InvalidRequest
from keel.workflows import paths


class IntrinsicFailure(Exception):
    """``States.IntrinsicFailure``."""


@dataclass(frozen=True)
class Call:
    name: str
    args: list[Any]  # literals, Path or Call


@dataclass(frozen=True)
class Path:
    path: str


_NUM = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")
_NAME = re.compile(r"States\.[A-Za-z0-9]+")
_PATH = re.compile(r"\$\$?(\.[A-Za-z_][A-Za-z0-9_\-]*|\[\d+\]|\['[^']*'\])*")


def _parse(src: str) -> Call:
    pos = 0

    def ws() -> None:
        nonlocal pos
        while pos < len(src) and src[pos] == " ":
            pos += 1

    def call() -> Call:
        nonlocal pos
        m = _NAME.match(src, pos)
        if m is None:
            raise ValueError(f"expected States.Name( at {pos}")
        name, pos = m.group(0), m.end()
        if src[pos:pos + 1] != "(":
            raise ValueError(f"expected ( after {name}")
        pos += 1
        args: list[Any] = []
        ws()
        if src[pos:pos + 1] == ")":
            pos += 1
            return Call(name, args)
        while True:
            ws()
            args.append(arg())
            ws()
            ch = src[pos:pos + 1]
            pos += 1
            if ch == ")":
                return Call(name, args)
            if ch != ",":
                raise ValueError(f"expected , or ) at {pos - 1}")

    def arg() -> Any:
        nonlocal pos
        if src.startswith("States.", pos):
            return call()
        ch = src[pos:pos + 1]
        if ch == "'":
            out, pos = [], pos + 1
            while pos < len(src):
                c = src[pos]
                if c == "\\" and pos + 1 < len(src):
                    out.append(src[pos:pos + 2])  # keep escapes; Format needs \{ \}
                    pos += 2
                elif c == "'":
                    pos += 1
                    return _Lit("".join(out))
                else:
                    out.append(c)
                    pos += 1
            raise ValueError("unterminated string literal")
        if ch == "$":
            m = _PATH.match(src, pos)
            assert m is not None
            pos = m.end()
            return Path(m.group(0))
        for word, value in (("true", True), ("false", False), ("null", None)):
            if src.startswith(word, pos):
                pos += len(word)
                return value
        m = _NUM.match(src, pos)
        if m is None:
            raise ValueError(f"unexpected {src[pos:pos + 10]!r} at {pos}")
        pos = m.end()
        return float(m.group(0)) if m.group(1) or m.group(2) else int(m.group(0))

    c = call()
    ws()
    if pos != len(src):
        raise ValueError(f"unexpected text after the call at {pos}")
    return c


class _Lit(str):
    """A quoted literal with its escapes still in it (see :func:`_unescape`)."""


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s)


def _value(a: Any) -> Any:
    return _unescape(a) if isinstance(a, _Lit) else a


def _walk(c: Call, where: str) -> None:
    if c.name not in FUNCTIONS:
        raise InvalidRequest(f"{where}: unknown intrinsic function {c.name} (keel knows "
                             f"{', '.join(sorted(FUNCTIONS))})")
    lo, hi = FUNCTIONS[c.name][1]
    if not lo <= len(c.args) <= hi:
        raise InvalidRequest(f"{where}: {c.name} takes {lo}" + (f" to {hi}" if hi != lo else "")
                             + f" arguments, got {len(c.args)}")
    for a in c.args:
        if isinstance(a, Call):
            _walk(a, where)
        elif isinstance(a, Path):
            paths.check(a.path, where, nullable=False)


def check(src: str, where: str) -> None:
    try:
        c = _parse(src)
    except ValueError as exc:
        raise InvalidRequest(f"{where}: intrinsic function {src!r} does not parse: {exc}"
                             ) from None
    _walk(c, where)


def evaluate(src: str, data: Any, context: Any, rng: random.Random | None = None) -> Any:
    try:
        c = _parse(src)
    except ValueError as exc:
        raise IntrinsicFailure(f"{src!r} does not parse: {exc}") from None
    gen = rng or random.Random()

    def ev(node: Any) -> Any:
        if isinstance(node, Call):
            fn = FUNCTIONS.get(node.name)
            if fn is None:
                raise IntrinsicFailure(f"unknown intrinsic function {node.name}")
            args = [ev(a) for a in node.args]
            raw = [a for a in node.args]
            try:
                return fn[0](args, raw, gen)
            except IntrinsicFailure:
                raise
            except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError) as exc:
                raise IntrinsicFailure(f"{node.name}: {exc}") from None
        if isinstance(node, Path):
            try:
                return paths.resolve(node.path, data, context)
            except paths.PathError as exc:
                raise IntrinsicFailure(str(exc)) from None
        return _value(node)

    return ev(c)


# -- the functions: (args evaluated, args as parsed, rng) -> value --------------------------


def _format(args: list[Any], raw: list[Any], _r: random.Random) -> str:
    if not isinstance(raw[0], _Lit):
        raise IntrinsicFailure("States.Format's first argument must be a string literal")
    parts = re.split(r"(?<!\\)\{\}", raw[0])
    if len(parts) - 1 != len(args) - 1:
        raise IntrinsicFailure(f"States.Format: the template has {len(parts) - 1} {{}} but "
                               f"{len(args) - 1} values were given")
    out = [_unescape(parts[0])]
    for value, part in zip(args[1:], parts[1:], strict=True):
        if isinstance(value, (dict, list)):
            raise IntrinsicFailure("States.Format takes strings, numbers, booleans or null")
        out.append(json.dumps(value) if not isinstance(value, str) else value)
        out.append(_unescape(part))
    return "".join(out)


def _num(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
        raise IntrinsicFailure(f"{what} must be an integer, got {v!r}")
    return int(v)


def _array_range(a: list[Any], _raw: list[Any], _r: random.Random) -> list[int]:
    start, end, step = (_num(x, "ArrayRange argument") for x in a)
    if step == 0:
        raise IntrinsicFailure("States.ArrayRange: step must not be 0")
    out = list(range(start, end + (1 if step > 0 else -1), step))
    if len(out) > 1000:
        raise IntrinsicFailure("States.ArrayRange: at most 1000 items")
    return out


def _partition(a: list[Any], _raw: list[Any], _r: random.Random) -> list[Any]:
    arr, size = a[0], _num(a[1], "chunk size")
    if not isinstance(arr, list) or size <= 0:
        raise IntrinsicFailure("States.ArrayPartition takes an array and a positive size")
    return [arr[i:i + size] for i in range(0, len(arr), size)]


def _hash(a: list[Any], _raw: list[Any], _r: random.Random) -> str:
    algos = {"MD5": "md5", "SHA-1": "sha1", "SHA-256": "sha256", "SHA-384": "sha384",
             "SHA-512": "sha512"}
    if a[1] not in algos:
        raise IntrinsicFailure(f"States.Hash algorithm must be one of {', '.join(algos)}")
    data = a[0] if isinstance(a[0], str) else json.dumps(a[0], separators=(",", ":"))
    return hashlib.new(algos[a[1]], data.encode()).hexdigest()


def _merge(a: list[Any], _raw: list[Any], _r: random.Random) -> dict[str, Any]:
    if not (isinstance(a[0], dict) and isinstance(a[1], dict)):
        raise IntrinsicFailure("States.JsonMerge takes two objects")
    if a[2] is not False:
        raise IntrinsicFailure("States.JsonMerge supports only a shallow merge (false)")
    return {**a[0], **a[1]}


def _random(a: list[Any], _raw: list[Any], r: random.Random) -> int:
    lo, hi = _num(a[0], "start"), _num(a[1], "end")
    rr = random.Random(_num(a[2], "seed")) if len(a) > 2 else r
    return rr.randint(lo, hi)


def _array(a: list[Any], _raw: list[Any], _r: random.Random) -> Any:
    return list(a)


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise IntrinsicFailure(f"{what} must be a string, got {type(v).__name__}")
    return v


FUNCTIONS: dict[str, tuple[Any, tuple[int, int]]] = {
    "States.Format": (_format, (1, 100)),
    "States.StringToJson": (lambda a, _raw, _r: json.loads(_str(a[0], "StringToJson")),
                            (1, 1)),
    "States.JsonToString": (lambda a, _raw, _r: json.dumps(a[0], separators=(",", ":")),
                            (1, 1)),
    "States.Array": (_array, (0, 100)),
    "States.ArrayPartition": (_partition, (2, 2)),
    "States.ArrayContains": (lambda a, _raw, _r: a[1] in a[0], (2, 2)),
    "States.ArrayRange": (_array_range, (3, 3)),
    "States.ArrayGetItem": (lambda a, _raw, _r: a[0][_num(a[1], "index")], (2, 2)),
    "States.ArrayLength": (lambda a, _raw, _r: len(a[0]) if isinstance(a[0], list)
                           else _fail("ArrayLength takes an array"), (1, 1)),
    "States.ArrayUnique": (lambda a, _raw, _r: [x for i, x in enumerate(a[0])
                                                if x not in a[0][:i]], (1, 1)),
    "States.Base64Encode": (lambda a, _raw, _r: base64.b64encode(
        _str(a[0], "Base64Encode").encode()).decode(), (1, 1)),
    "States.Base64Decode": (lambda a, _raw, _r: base64.b64decode(
        _str(a[0], "Base64Decode"), validate=True).decode(), (1, 1)),
    "States.Hash": (_hash, (2, 2)),
    "States.JsonMerge": (_merge, (3, 3)),
    "States.MathRandom": (_random, (2, 3)),
    "States.MathAdd": (lambda a, _raw, _r: _num(a[0], "MathAdd argument")
                       + _num(a[1], "MathAdd argument"), (2, 2)),
    "States.StringSplit": (lambda a, _raw, _r: [p for p in re.split(
        "[" + re.escape(_str(a[1], "delimiters")) + "]", _str(a[0], "StringSplit")) if p],
        (2, 2)),
    "States.UUID": (lambda _a, _raw, r: str(uuid.UUID(int=r.getrandbits(128), version=4)),
                    (0, 0)),
}


def _fail(msg: str) -> Any:
    raise IntrinsicFailure(msg)
