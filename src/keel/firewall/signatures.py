"""All signature rules compiled once into one multi-pattern matcher.

Engines, best first: hyperscan (x86-64; one DFA-ish scan for all rules, flags
CASELESS | SINGLEMATCH | UTF8), google-re2 ``Set`` (one linear-time pass), then Python
``re`` (one alternation to decide "any hit", rules tried one by one only on a hit).

``match`` returns the first matching rule *in rule-set order*, so a rule set lists its most
specific rules first. Texts are expected to be normalised already
(:func:`keel.firewall.normalize.scan_variants`).

A matcher is not thread-safe with hyperscan (one scratch space per database): use it from
one event loop, or give each thread its own matcher. The compiled hyperscan database can be
kept on disk (``cache_dir``): compiling takes seconds, loading milliseconds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from keel.errors import ConfigError
from keel.firewall import hs_cache
from keel.firewall.rules import Rule

Engine = Literal["hyperscan", "re2", "re"]
ENGINES: tuple[Engine, ...] = ("hyperscan", "re2", "re")


def _hyperscan(patterns: Sequence[str], cache_dir: Path | None = None
               ) -> Callable[[str], list[int]]:
    import hyperscan

    flags = hyperscan.HS_FLAG_CASELESS | hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_UTF8
    mode = hyperscan.HS_MODE_BLOCK
    key = hs_cache.cache_key(patterns, flags, mode) if cache_dir is not None else ""
    db = hs_cache.load(cache_dir, key, mode) if cache_dir is not None else None
    if db is None:
        db = hyperscan.Database(mode=mode)
        db.compile(
            expressions=[p.encode("utf-8") for p in patterns],
            ids=list(range(len(patterns))),
            elements=len(patterns),
            flags=[flags] * len(patterns),
        )
        if cache_dir is not None:
            hs_cache.store(cache_dir, key, db)

    def scan(text: str) -> list[int]:
        hits: list[int] = []

        def on_match(rid: int, start: int, end: int, flags: int, ctx: Any) -> None:
            hits.append(rid)

        db.scan(text.encode("utf-8", "replace"), match_event_handler=on_match)
        return hits

    return scan


def _re2(patterns: Sequence[str], cache_dir: Path | None = None
         ) -> Callable[[str], list[int]]:
    import re2

    options = re2.Options()
    options.case_sensitive = False
    options.max_mem = 256 << 20  # a Set's DFA for a few dozen bounded repeats needs room
    rset = re2.Set.SearchSet(options)
    for i, p in enumerate(patterns):
        if rset.Add(p) != i:
            raise ValueError(f"re2 rejected pattern #{i}")
    rset.Compile()

    def scan(text: str) -> list[int]:
        hits = rset.Match(text)  # None when nothing matches
        return [] if hits is None else list(hits)

    return scan


def _python_re(patterns: Sequence[str], cache_dir: Path | None = None
               ) -> Callable[[str], list[int]]:
    compiled = [re.compile(p, re.IGNORECASE) for p in patterns]
    anyhit = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)

    def scan(text: str) -> list[int]:
        if anyhit.search(text) is None:
            return []
        return [i for i, c in enumerate(compiled) if c.search(text)]

    return scan


Builder = Callable[[Sequence[str], "Path | None"], Callable[[str], list[int]]]
_BUILDERS: dict[Engine, Builder] = {
    "hyperscan": _hyperscan,
    "re2": _re2,
    "re": _python_re,
}


class SignatureMatcher:
    """Match normalised texts against a rule list with the best available engine."""

    def __init__(self, rules: Sequence[Rule], *, engine: Engine | None = None,
                 cache_dir: Path | None = None) -> None:
        """``cache_dir``: keep the compiled hyperscan database there
        (:mod:`keel.firewall.hs_cache`), so the next process loads it instead."""
        if not rules:
            raise ConfigError("a signature matcher needs at least one rule")
        self.rules: tuple[Rule, ...] = tuple(rules)
        patterns = [r.pattern for r in self.rules]
        candidates: tuple[Engine, ...] = ENGINES if engine is None else (engine,)
        errors: list[str] = []
        for name in candidates:
            try:
                self._scan = _BUILDERS[name](patterns, cache_dir)
            except ImportError:
                errors.append(f"{name}: not installed")
                continue
            except Exception as exc:  # an engine rejecting a pattern: try the next one
                errors.append(f"{name}: {exc}")
                continue
            self.engine: Engine = name
            break
        else:
            raise ConfigError(
                "no regex engine could compile the rule set: " + "; ".join(errors)
            )

    def __repr__(self) -> str:
        return f"SignatureMatcher(engine={self.engine!r}, rules={len(self.rules)})"

    def hits(self, text: str) -> list[int]:
        """Indexes (in rule order) of every rule that matches ``text``."""
        return sorted(set(self._scan(text)))

    def match(self, texts: Iterable[str]) -> Rule | None:
        """The first rule (in rule order) that matches any of ``texts``, or None."""
        best: int | None = None
        for text in texts:
            hits = self._scan(text)
            if hits:
                low = min(hits)
                best = low if best is None else min(best, low)
                if best == 0:
                    break
        return None if best is None else self.rules[best]

    def match_all(self, text: str) -> list[Rule]:
        """Every rule that matches ``text``, in rule order."""
        return [self.rules[i] for i in sorted(set(self._scan(text)))]
