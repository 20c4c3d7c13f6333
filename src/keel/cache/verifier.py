"""Hit verifier: reject semantic hits whose wording differs in ways cosine similarity misses.

Sentence embeddings put "reset my password" next to "reset my database", "enable" next to
"disable" and "$50" next to "$500". Before a semantic hit is served, the cached question and
the new one are compared on cheap lexical signals; any mismatch rejects the hit:

* numbers (digits, number words, ordinals, amounts with units or currency) must be the same set;
* negation must agree (``not``, ``never``, ``no``, ``without``, ``-n't``...);
* named entities and identifiers (capitalised words inside a sentence, acronyms, words
  with digits, quoted strings) on one side must appear on the other;
* antonyms (enable/disable, increase/decrease, buy/sell, before/after...) must not split;
* the question's intent word (why / when / where / who / how many) must agree;
* direction must not swap ("convert A to B" vs "convert B to A");
* closed classes must agree (:mod:`keel.cache.closed_classes`): units and which one is
  converted to, periods, weekdays and months, possessors, the order of personal pronouns
  ("Can you call me" / "Can I call you"), leading modal, all / some, past / future;
* content words: an unmatched content word on either side is allowed only when the other
  side has a word with the same stem or a known synonym; more than ``max_unmatched``
  unmatched content words reject the hit.

Every check is a pure function of the two strings, costs a few microseconds, and returns the
reason so the gateway can count and log why a hit was refused.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np
import numpy.typing as npt

from keel.cache.closed_classes import closed_class_difference
from keel.cache.lexicon import DEICTIC, speaker_role_swapped

_WORD = re.compile(r"[A-Za-z][A-Za-z'\u2019\-]*|\$?\d[\d,]*(?:\.\d+)?[A-Za-z%]*|\"[^\"]{1,80}\"")
_NUMBER = re.compile(r"\$?(\d[\d,]*(?:\.\d+)?)([A-Za-z%]*)")

_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000,
    "million": 10**6, "billion": 10**9, "first": 1, "second": 2, "third": 3, "fourth": 4,
    "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8, "ninth": 9, "tenth": 10,
    "half": 0.5, "twice": 2, "double": 2, "triple": 3, "dozen": 12,
}
_ORDINAL = re.compile(r"^(\d+)(st|nd|rd|th)$")
_NEGATIONS = {"not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "cannot",
              "without", "nowhere", "non", "nope", "dont", "cant", "wont", "isnt", "arent",
              "doesnt", "didnt", "shouldnt", "wouldnt", "couldnt", "hasnt", "havent", "wasnt",
              "werent", "mustnt", "neednt", "aint"}
_INTENT = {"why": "why", "when": "when", "where": "where", "who": "who", "whom": "who",
           "whose": "who"}
# "this video", "that error", "the attached file": the answer depends on context the question
# only points at, so another user's cached answer cannot be right for it.
_DEICTIC = re.compile(
    r"\b(?:this|these|that|those|attached|above|below|following|my|our)\s+(?:\w+\s+)?"
    r"(?:video|image|picture|photo|screenshot|file|attachment|code|snippet|document|pdf|"
    r"text|error|message|email|link|page|article|song|problem|sentence|paragraph|chart|"
    r"graph|table|diagram|log|output|script|function|query|spreadsheet)s?\b",
    re.IGNORECASE,
)
_DIRECTION = {"to", "into", "from", "than", "vs", "versus", "over"}
_ANTONYM_PAIRS = [
    ("enable", "disable"), ("increase", "decrease"), ("buy", "sell"), ("add", "remove"),
    ("start", "stop"), ("open", "close"), ("before", "after"), ("upload", "download"),
    ("import", "export"), ("encrypt", "decrypt"), ("lock", "unlock"), ("install", "uninstall"),
    ("subscribe", "unsubscribe"), ("connect", "disconnect"), ("activate", "deactivate"),
    ("win", "lose"), ("gain", "lose"), ("maximum", "minimum"), ("max", "min"),
    ("best", "worst"), ("good", "bad"), ("positive", "negative"), ("true", "false"),
    ("legal", "illegal"), ("possible", "impossible"), ("up", "down"), ("in", "out"),
    ("on", "off"), ("import", "export"), ("include", "exclude"), ("allow", "deny"),
    ("accept", "reject"), ("push", "pull"), ("debit", "credit"), ("deposit", "withdraw"),
    ("borrow", "lend"), ("rise", "fall"), ("hot", "cold"), ("fast", "slow"),
    ("cheap", "expensive"), ("easy", "hard"), ("advantage", "disadvantage"),
    ("pros", "cons"), ("male", "female"), ("men", "women"), ("man", "woman"),
    ("boy", "girl"), ("husband", "wife"), ("old", "new"), ("old", "young"), ("big", "small"),
    ("large", "small"), ("high", "low"), ("more", "less"), ("most", "least"),
    ("above", "below"), ("inside", "outside"), ("import", "export"), ("love", "hate"),
    ("like", "dislike"), ("agree", "disagree"), ("success", "failure"), ("succeed", "fail"),
    ("create", "delete"), ("send", "receive"), ("login", "logout"), ("sign", "unsign"),
    ("first", "last"), ("early", "late"), ("past", "future"), ("yesterday", "tomorrow"),
    ("north", "south"), ("east", "west"), ("left", "right"), ("internal", "external"),
    ("public", "private"), ("online", "offline"), ("rich", "poor"), ("strong", "weak"),
    ("safe", "unsafe"), ("healthy", "unhealthy"), ("happy", "sad"), ("increase", "reduce"),
    ("visible", "invisible"), ("valid", "invalid"), ("before", "since"),
]
_ANTONYMS: dict[str, frozenset[str]] = {}
for _a, _b in _ANTONYM_PAIRS:
    _ANTONYMS[_a] = _ANTONYMS.get(_a, frozenset()) | {_b}
    _ANTONYMS[_b] = _ANTONYMS.get(_b, frozenset()) | {_a}

def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Function words and question scaffolding: they may differ between paraphrases.
_STOP = _wordset("""
a an the this that these those some any each every all both either of in on at by for
with about as into through during to from up down out over under again further then once
here there and but or so if because while until than too very can could should would
will shall may might must do does did doing done be is am are was were been being have
has had having i me my mine myself we us our ours you your yours yourself he him his she
her hers it its they them their what which who whom whose when where why how whats hows
whys wheres is it possible way ways best good tips some one ones thing things really
actually also just get got getting make makes making go going know want need use using
used like people someone somebody anyone anybody something anything everyone please tell
explain give show let find help much many more most other such own same s t don't isn't
can't ever even still yet already always often usually now today kind sort type types
lot lots possible possibly exactly mean means meaning whats difference differences
between vs
""")
_SYNONYMS: dict[str, str] = {}
for _group in (
    "buy purchase", "begin start commence", "big large huge", "small little tiny",
    "fast quick rapid", "car automobile vehicle", "job career work occupation",
    "money cash funds", "film movie", "smart intelligent clever", "cheap inexpensive",
    "learn study", "choose pick select", "happy glad", "quit stop", "earn make",
    "mobile phone cellphone smartphone", "laptop notebook", "website site web",
    "shows series show", "rid remove eliminate", "improve enhance better",
    "lose losing lost reduce", "weight fat", "quickly fast", "travel trip",
    "kid child children kids", "doctor physician", "book novel", "internet web online",
    "math maths mathematics", "gf girlfriend", "bf boyfriend", "usa us america american",
    "uk britain england british", "tv television", "pc computer", "app application",
):
    _words = _group.split()
    for _w in _words:
        _SYNONYMS[_w] = _words[0]


def _fold(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'")
    text = re.sub(r"\b(can)'t\b|\b(won)'t\b", lambda m: "cannot" if m.group(1) else "will not",
                  text, flags=re.IGNORECASE)
    text = re.sub(r"(\w)n't\b", r"\1 not", text)
    text = re.sub(r"(\w)'(re|ve|ll|d|m)\b",
                  lambda m: m.group(1) + " " + _CONTRACTIONS[m.group(2).lower()], text)
    text = re.sub(r"(\w)'s\b", r"\1", text)  # what's -> what, Trump's -> Trump
    # non-refundable -> nonrefundable, un-archive -> unarchive: one word, so the negation and
    # prefix checks see it
    return _HYPHENATED_PREFIX.sub(r"\1", text)


_HYPHENATED_PREFIX = re.compile(r"\b(non|un|anti|dis|de|mis)-(?=[A-Za-z])", re.IGNORECASE)


_CONTRACTIONS = {"re": "are", "ve": "have", "ll": "will", "d": "would", "m": "am"}


@lru_cache(maxsize=8192)
def _content_order(f: Features) -> list[str]:
    """The content words (stemmed) in the order they first appear: strict serves only a
    rewording that keeps them in place ("from my account to my wife's account" / "from my
    wife's account to my account" has the same words in another order)."""
    seen: dict[str, None] = {}
    for w in f.words:
        s = _stem(w)
        if s in f.content:
            seen.setdefault(s, None)
    return list(seen)


def _stem(word: str) -> str:
    w = word.lower().strip("'-.")
    w = _SYNONYMS.get(w, w)
    for suffix, repl in (("ies", "y"), ("ying", "y"), ("ing", ""), ("ied", "y"), ("ed", ""),
                         ("es", ""), ("s", ""), ("ly", ""), ("ment", ""), ("ness", ""),
                         ("ation", "ate"), ("ity", "")):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            w = w[: len(w) - len(suffix)] + repl
            break
    if len(w) > 3 and w[-1] == "e":
        w = w[:-1]
    return _SYNONYMS.get(w, w)


def _number(token: str) -> str | None:
    m = _NUMBER.fullmatch(token)
    if m is None:
        return None
    value = m.group(1).replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    unit = m.group(2).lower()
    if _ORDINAL.match(value + unit):
        unit = ""
    return value + unit


@dataclass(frozen=True)
class Features:
    words: tuple[str, ...]  # lower-case word tokens, in order
    stems: frozenset[str]
    content: frozenset[str]  # stems of content words
    numbers: frozenset[str]
    negated: bool
    entities: frozenset[str]
    intent: frozenset[str]
    directions: tuple[tuple[str, str, str], ...]  # (left stem, preposition, right stem)
    negated_aux: frozenset[str]  # auxiliaries that carry a negation: "do" in "don't"
    deictic: bool  # points at context the text does not contain ("this video", "the above code")


@lru_cache(maxsize=4096)
def features(text: str) -> Features:
    text = _fold(text)
    raw = _WORD.findall(text)
    words: list[str] = []
    numbers: set[str] = set()
    entities: set[str] = set()
    sentence_start = True
    for tok in raw:
        if tok.startswith('"'):
            entities.add(tok.strip('"').lower())
            continue
        num = _number(tok)
        if num is not None:
            numbers.add(num)
            words.append(tok.lower())
            sentence_start = False
            continue
        low = tok.lower().strip("'-")
        if low in _NUMBER_WORDS and low not in ("one", "second"):
            numbers.add(str(_NUMBER_WORDS[low]))
        elif (tok.isupper() and len(tok) >= 2) or any(c.isdigit() for c in tok) or (
            tok[0].isupper() and not sentence_start and low not in _STOP
        ):
            entities.add(low)
        words.append(low)
        sentence_start = False
    for m in re.finditer(r"[.!?]\s+([A-Z][a-z]+)", text):  # entities can start sentences too
        entities.discard(m.group(1).lower()) if m.group(1).lower() in _STOP else None
    stems = frozenset(_stem(w) for w in words)
    content = frozenset(_stem(w) for w in words
                        if w not in _STOP and len(w) > 2 and _number(w) is None
                        and w not in _NEGATIONS and w not in _NUMBER_WORDS)
    negated = any(w in _NEGATIONS for w in words)
    intent = frozenset(_INTENT[w] for w in words if w in _INTENT)
    if "how" in words:
        for i, w in enumerate(words[:-1]):
            if w == "how" and words[i + 1] in ("many", "much", "long", "often", "old", "far"):
                intent = intent | {"how " + words[i + 1]}
    directions = []
    content_idx = [i for i, w in enumerate(words) if _stem(w) in content]
    for i, w in enumerate(words):
        if w in _DIRECTION:
            left = [j for j in content_idx if j < i]
            right = [j for j in content_idx if j > i]
            if left and right:
                directions.append((_stem(words[left[-1]]), w, _stem(words[right[0]])))
    negated_aux = frozenset(
        "can" if w == "cannot" else words[i - 1] for i, w in enumerate(words)
        if w == "cannot" or (w == "not" and i > 0 and words[i - 1] in _NEG_AUX))
    return Features(tuple(words), stems, content, frozenset(numbers), negated,
                    frozenset(entities), intent, tuple(directions), negated_aux,
                    _DEICTIC.search(text) is not None)


_PERSONS = {"i": "1", "me": "1", "my": "1", "mine": "1", "myself": "1", "we": "1", "us": "1",
            "our": "1", "ours": "1", "ourselves": "1", "you": "2", "your": "2", "yours": "2",
            "yourself": "2", "yourselves": "2", "u": "2", "he": "3", "him": "3", "his": "3",
            "she": "3", "her": "3", "hers": "3", "they": "3", "them": "3", "their": "3"}
_NEG_AUX = frozenset({"do", "does", "did", "can", "cannot", "could", "will", "would", "should",
                      "must", "may", "might", "shall", "need"})


def persons(f: Features) -> frozenset[str]:
    return frozenset(_PERSONS[w] for w in f.words if w in _PERSONS)




def _pairs(f: Features) -> list[tuple[str, str]]:
    stems = [_stem(w) for w in f.words]
    return [(x, y) for x, y in itertools.pairwise(stems)
            if x in f.content and y in f.content]


def _swapped_modifier(a: Features, b: Features) -> str | None:
    """"Mexican girls ... black guys" vs "black girls ... Mexican guys": the same words,
    attached to different heads."""
    heads_b = {y: x for x, y in _pairs(b)}
    for x, y in _pairs(a):
        z = heads_b.get(y)
        if z is not None and z != x and z in a.content and x in b.content:
            return f"{x} {y} / {z} {y}"
    return None


class Verifier(Protocol):
    """Decides whether a cached question's answer may be served for a new question."""

    def needs(self, query: str, cached: str) -> list[str]:
        """Texts whose embeddings :meth:`check` needs (the caller embeds them)."""
        ...

    def check(self, query: str, cached: str,
              vectors: Mapping[str, npt.NDArray[np.float32]] | None = None) -> str | None:
        """``None`` when the hit may be served, else a short reason for rejecting it."""
        ...


class HitVerifier:
    """The ``strict`` profile: rejects a semantic hit when the two texts differ in any
    meaning-changing detail, including any unmatched content word."""

    def __init__(self, *, max_unmatched: int = 0) -> None:
        self.max_unmatched = max_unmatched

    def needs(self, query: str, cached: str) -> list[str]:
        return []

    def check(self, query: str, cached: str,
              vectors: Mapping[str, npt.NDArray[np.float32]] | None = None) -> str | None:
        """``None`` when the hit may be served, else a short reason for rejecting it."""
        a, b = features(query), features(cached)
        if a.numbers != b.numbers:
            return "numbers differ"
        if a.negated != b.negated or a.negated_aux != b.negated_aux:
            return "negation differs"
        pa, pb = persons(a), persons(b)
        if pa and pb and pa != pb:
            return "grammatical person differs (I / you)"
        if a.deictic or b.deictic or DEICTIC.search(query) or DEICTIC.search(cached):
            return "refers to context outside the text (this video, my code, attached file)"
        if speaker_role_swapped(query, cached):
            return "direction swapped (who does what to whom)"
        if a.intent != b.intent:
            return "question intent differs"
        reason = closed_class_difference(a.words, b.words)
        if reason is not None:
            return reason
        missing = {e for e in a.entities if _stem(e) not in b.stems and e not in b.words}
        missing |= {e for e in b.entities if _stem(e) not in a.stems and e not in a.words}
        if missing:
            return "entity or keyword differs: " + ", ".join(sorted(missing)[:3])
        for w in a.stems - b.stems:
            if _ANTONYMS.get(w, frozenset()) & (b.stems - a.stems):
                return f"antonym: {w}"
        for left, prep, right in a.directions:
            for l2, p2, r2 in b.directions:
                if p2 == prep and left != l2 and (left == r2 or right == l2):
                    return f"direction swapped around {prep!r}"
        swapped = _swapped_modifier(a, b)
        if swapped:
            return f"modifiers swapped: {swapped}"
        unmatched = (a.content - b.content) | (b.content - a.content)
        if len(unmatched) > self.max_unmatched:
            return "content differs: " + ", ".join(sorted(unmatched)[:3])
        if _content_order(a) != _content_order(b):  # the same words, other roles
            return "word order differs (" + " / ".join(_content_order(a)[:3]) + " ...)"
        return None
