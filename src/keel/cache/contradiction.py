"""The ``balanced`` hit verifier: reject contradictions, not wording.

The ``strict`` verifier (:class:`keel.cache.verifier.HitVerifier`) refuses a hit as soon as
one content word is unmatched, so "turn off" vs "disable" or "mobile app" vs "app for phones"
never hit. This one looks only for differences that change the answer:

* numbers, amounts, dates and versions (the same set on both sides);
* negation (one side negated, the other not);
* opposites: a word on one side whose opposite is on the other (curated pairs, also through
  comparatives and superlatives, and derived prefix morphology, :mod:`keel.cache.lexicon`),
  and a few near synonyms that name different things (account / profile);
* named entities, plan and product names, acronyms and identifiers;
* swapped direction ("from A to B" vs "from B to A") and swapped modifiers;
* question intent (why / who / when / how many...) and a third party (they / them) on one
  side only;
* closed classes (:mod:`keel.cache.closed_classes`): units and conversion direction, periods,
  weekdays and months, possessors (my / your / another), the order of personal pronouns,
  a yes/no question's leading modal, all / some, past / future;
* deictic references to context the text does not contain ("this order", "the file I sent");
* and then the words that still differ: when both sides have unmatched content words (a
  substitution: "password" vs "database"), the unmatched words of each side are embedded as
  a phrase and must be close (cosine of the two phrases >= ``substitution``); words added on
  one side only must be few (<= ``max_added``) and close to the other question as a whole
  (cosine >= ``addition``) or, for one added word in front of a shared word, close to that
  word (``modifier``: "saved card" vs "saved payment card" hits, "reset my password" vs
  "reset my router password" does not).

The phrase embeddings come from the same embedder as the cache (one small batched call, only
when words differ); the stage passes them in through ``vectors``. :meth:`needs` says which
texts to embed. Everything else is a pure function of the two strings.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from keel.cache.closed_classes import closed_class_difference
from keel.cache.lexicon import (
    DEICTIC,
    FILLER,
    Opposites,
    distinct_pairs,
    fold_idioms,
    rewordings,
    speaker_role_swapped,
)
from keel.cache.verifier import Features, _stem, _swapped_modifier, features

Vector = npt.NDArray[np.float32]
_QUANTITY = {"how many", "how much", "how long", "how often", "how old", "how far"}
# Words the strict verifier treats as scaffolding but that change what is asked ("be a good
# roommate" / "find a good roommate", "talk to people" / "get people to talk to you").
_MEANINGFUL = frozenset({
    "best", "good", "know", "need", "like", "people", "someone", "somebody", "find",
    "make", "makes", "making", "get", "got", "getting", "go", "going", "use", "using", "used",
    "show", "give", "tell", "help", "thing", "things"})
_THIRD = frozenset({"he", "him", "his", "she", "her", "hers", "they", "them", "their"})


def _intent(f: Features) -> frozenset[str]:
    """why / who stay distinct; when / how long / how many ask for a time or an amount
    ("how long is the trial" / "how many days does the trial last"); where is dropped (support
    questions say "where can I download" and "how do I download" for the same thing)."""
    out = set()
    for i in f.intent:
        if i in ("why", "who"):
            out.add(i)
        elif i == "when" or i in _QUANTITY:
            out.add("time or amount")
    return frozenset(out)


def _unmatched_words(f: Features, other: Features, canon: dict[str, str]) -> list[str]:
    """The content words of ``f`` (original forms, in order) that ``other`` lacks, modulo
    stems and rewordings."""
    theirs = {canon.get(_stem(w), _stem(w)) for w in other.words
              if _stem(w) in other.content or w in _MEANINGFUL}
    seen: set[str] = set()
    out = []
    for w in f.words:
        s = _stem(w)
        c = canon.get(s, s)
        if ((s in f.content or w in _MEANINGFUL) and c not in theirs and c not in seen
                and w not in FILLER):
            seen.add(c)
            out.append(w)
    return out


class ContradictionVerifier:
    """Rejects a semantic hit only when the two questions contradict each other."""

    def __init__(self, *, substitution: float = 0.5, addition: float = 0.25,
                 modifier: float = 0.45, max_added: int = 1) -> None:
        self.substitution = substitution
        self.modifier = modifier
        self.addition = addition
        self.max_added = max_added
        self.opposites = Opposites()
        self.canon = {_stem(w): _stem(c) for w, c in rewordings().items()}
        self.distinct = frozenset(frozenset(_stem(w) for w in pair) for pair in distinct_pairs())

    # -- what the check needs embedded ------------------------------------------------------

    def _diff(self, query: str, cached: str) -> tuple[Features, Features, list[str], list[str]]:
        a, b = features(fold_idioms(query)), features(fold_idioms(cached))
        ua, ub = _unmatched_words(a, b, self.canon), _unmatched_words(b, a, self.canon)
        return a, b, ua, ub

    def needs(self, query: str, cached: str) -> list[str]:
        """Texts whose embeddings :meth:`check` needs (empty when no content word differs)."""
        a, b, ua, ub = self._diff(query, cached)
        if (not ua and not ub) or self.contradiction(query, cached, a, b) is not None:
            return []  # decided without embeddings
        if ua and ub:
            return [" ".join(ua), " ".join(ub)]
        if len(ua or ub) <= self.max_added:
            added = " ".join(ua or ub)
            head = _head(a if ua else b, ua or ub)
            return [added, cached if ua else query] + ([head] if head else [])
        return []

    # -- the check --------------------------------------------------------------------------

    def check(self, query: str, cached: str,
              vectors: Mapping[str, Vector] | None = None) -> str | None:
        """``None`` when the hit may be served, else a short reason for rejecting it."""
        a, b, ua, ub = self._diff(query, cached)
        reason = self.contradiction(query, cached, a, b)
        if reason is not None:
            return reason
        if not ua and not ub:
            return None
        vectors = vectors or {}
        if ua and ub:
            sim = _cos(vectors, " ".join(ua), " ".join(ub))
            if sim is None or sim < self.substitution:
                return f"content differs: {' '.join(ua)[:40]} / {' '.join(ub)[:40]}"
            return None
        added = ua or ub
        if len(added) > self.max_added:
            return "content added: " + " ".join(added)[:60]
        sim = _cos(vectors, " ".join(added), cached if ua else query)
        head = _head(a if ua else b, added)
        modifier = _cos(vectors, added[0], head) if head else None
        if (sim is None or sim < self.addition) and (modifier is None
                                                     or modifier < self.modifier):
            return "content added: " + " ".join(added)[:60]
        return None

    def contradiction(self, query: str, cached: str, a: Features | None = None,
                      b: Features | None = None) -> str | None:
        """A reason when the two questions contradict each other (numbers, negation, deixis,
        intent, person, closed classes, entities, opposites, direction), else ``None``;
        wording differences are not looked at."""
        a = a or features(fold_idioms(query))
        b = b or features(fold_idioms(cached))
        if a.numbers != b.numbers:
            return "numbers differ"
        if a.negated != b.negated:
            return "negation differs"
        if DEICTIC.search(query) or DEICTIC.search(cached):
            return "refers to context outside the text (this order, the file I sent)"
        if _intent(a) != _intent(b):
            return "question intent differs"
        if (set(a.words) & _THIRD) != (set(b.words) & _THIRD) and (
                not (set(a.words) & _THIRD) or not (set(b.words) & _THIRD)):
            return "grammatical person differs (I / they)"
        reason = closed_class_difference(a.words, b.words)
        if reason is not None:
            return reason
        missing = {e for e in a.entities if _stem(e) not in b.stems and e not in b.words}
        missing |= {e for e in b.entities if _stem(e) not in a.stems and e not in a.words}
        if missing:
            return "entity or keyword differs: " + ", ".join(sorted(missing)[:3])
        only_a = set(a.words) - set(b.words)
        only_b = set(b.words) - set(a.words)
        lowered_a, lowered_b = _lowered(a.words), _lowered(b.words)
        for x in sorted(only_a):
            for y in sorted(only_b):
                if (x in lowered_a) != (y in lowered_b):
                    continue  # "cheapest" / "least expensive" say the same
                if self.opposites.opposite(x, y) or self.opposites.opposite(_stem(x), _stem(y)):
                    return f"opposites: {x} / {y}"
                if frozenset((_stem(x), _stem(y))) in self.distinct:
                    return f"different things: {x} / {y}"
        for left, prep, right in a.directions:
            for l2, p2, r2 in b.directions:
                if p2 == prep and left != l2 and (left == r2 or right == l2):
                    return f"direction swapped around {prep!r}"
        if speaker_role_swapped(query, cached):
            return "direction swapped (who does what to whom)"
        if _order_swapped(a, b):
            return "direction swapped (from / to)"
        swapped = _swapped_modifier(a, b)
        if swapped:
            return f"modifiers swapped: {swapped}"
        return None


def _lowered(words: tuple[str, ...]) -> frozenset[str]:
    """Words after "less" / "least", whose sense is turned round ("least expensive")."""
    return frozenset(w for prev, w in itertools.pairwise(words) if prev in ("less", "least"))


def _order_swapped(a: Features, b: Features) -> bool:
    """Two content words that both sides share, in the opposite order around from/to:
    "transfer from checking to savings" vs "from savings to checking"."""
    def roles(f: Features) -> dict[str, str]:
        out: dict[str, str] = {}
        role = ""
        for w in f.words:
            if w in ("from", "to", "into", "onto", "away"):
                role = "src" if w in ("from", "away") else "dst"
                continue
            s = _stem(w)
            if role and s in f.content and s not in out:
                out[s] = role
        return out
    ra, rb = roles(a), roles(b)
    return any(rb.get(w) not in (None, r) for w, r in ra.items())


def _head(f: Features, added: list[str]) -> str | None:
    """The word a single added word modifies, when it is followed by a content word both
    sides share ("saved payment card": card)."""
    if len(added) != 1:
        return None
    words = f.words
    for i, w in enumerate(words[:-1]):
        if w == added[0] and _stem(words[i + 1]) in f.content:
            return words[i + 1]
    return None


def _cos(vectors: Mapping[str, Vector], x: str, y: str) -> float | None:
    vx, vy = vectors.get(x), vectors.get(y)
    if vx is None or vy is None:
        return None
    return float(np.dot(vx, vy))
