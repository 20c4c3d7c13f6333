"""Lexical relations for the cache's contradiction checks: opposites, rewordings, deixis.

No lexical database installable offline from a well-kept package ships antonyms for English
(WordNet's Python packages download their data at run time), so opposites come from two
sources kept here:

* a curated list of opposite pairs common in product and support questions (enable/disable,
  start/stop, include/exclude, before/after, maximum/minimum, public/private...), also
  matched through comparatives and superlatives (fastest/slowest, cheaper/more expensive);
* derived morphology: a word and the same word with a negating or reversing prefix are
  opposites (subscribe/unsubscribe, activate/deactivate, connect/disconnect, block/unblock,
  install/uninstall...), and so are two words that differ only in a reversing prefix pair
  (upload/download, import/export, include/exclude, increase/decrease, encrypt/decrypt).
  Both words must occur, one on each side, so a word that merely starts like a prefix
  (discount, display, detail) can only match its own un-prefixed form (count, play, tail),
  which then rejects a hit that was wrong anyway.

Rewordings (switch off = disable, get rid of = remove, a copy of = download) are not listed:
they are recognised by comparing embeddings of the words that differ (see
``keel.cache.contradiction``). The short multi-word rewrites below fold idioms into one word
before comparing, where an embedding of the separate words would mislead.
"""

from __future__ import annotations

import re
from functools import lru_cache

_PAIRS = """
enable disable, on off, in out, up down, start stop, begin end, open close, show hide,
include exclude, import export, upload download, increase decrease, increase reduce,
raise lower, add remove, add delete, create delete, buy sell, send receive, deposit withdraw,
debit credit, borrow lend, push pull, allow deny, allow block, accept reject,
accept decline, approve reject, approve deny, before after, before since, earlier later,
early late, first last, maximum minimum, max min, most least, more less, higher lower,
high low, upgrade downgrade, expand collapse, pause resume, public private, internal external,
online offline, visible invisible, valid invalid, legal illegal, possible impossible,
encrypt decrypt, lock unlock, win lose, gain lose, best worst, good bad, positive negative,
true false, success failure, succeed fail, login logout, signin signout, attach detach,
import export, inbound outbound, incoming outgoing, input output, join leave, arrive depart,
forward backward, next previous, new old, old young, big small, large small, long short,
fast slow, cheap expensive, easy hard, above below, inside outside, left right, north south,
east west, past future, yesterday tomorrow, male female, men women, man woman, boy girl,
husband wife, love hate, like dislike, agree disagree, advantage disadvantage, pros cons,
rich poor, strong weak, dead alive, harmful beneficial, harmful helpful,
safe unsafe, happy sad, hot cold, monthly annual, monthly yearly,
daily weekly, weekly monthly, personal business, sandbox production, staging production,
admin member, owner member, buyer seller, sender recipient, parent child, client server,
light dark, mute unmute, zoom unzoom, wholesale retail, domestic international, min max,
ascending descending, horizontal vertical, portrait landscape, front back, top bottom,
later now, soon late, today tomorrow, today yesterday, better worse, heavy light, thick thin,
wide narrow, near far, loud quiet, busy quiet, tall short, full empty, warm cool, quick slow,
over under, above under, over below, free paid, weekend weekday, weekends weekdays,
manual automatic, manually automatically, sale regular, sale full, discounted regular,
adult child,
adults children, adults kids, adult kid, inbound outbound,
"""
# Adjectives compared through their comparative and superlative forms: "fastest" / "slowest",
# "cheapest" / "most expensive", "larger" / "smaller" are opposites because fast / slow are.
_GRADABLE_WORDS = """
early late soon big small large long short fast quick slow cheap expensive easy hard high low old
new young strong weak rich poor hot cold warm cool safe happy sad light dark heavy thick
thin wide narrow near far loud quiet busy tall full empty
"""
_GRADABLE = frozenset(_GRADABLE_WORDS.split())
_IRREGULAR = {"better": "good", "best": "good", "worse": "bad", "worst": "bad"}
# Prefixes that reverse or negate the word they are attached to.
_NEGATING = ("un", "dis", "de", "non", "anti", "in", "im", "ir", "il", "mis", "an")
# Pairs of prefixes that reverse each other on the same root.
_REVERSING = (("up", "down"), ("im", "ex"), ("in", "ex"), ("in", "de"), ("en", "de"),
              ("in", "out"), ("im", "e"), ("over", "under"), ("pre", "post"), ("inc", "dec"))
_MIN_ROOT = 3  # the prefixed word's root must be at least this long ("unit" is not un+it)


def base_form(word: str) -> str:
    """The base of a comparative or superlative of a gradable adjective ("fastest": fast,
    "larger": large, "biggest": big, "easiest": easy, "better": good), else the word."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    for suffix in ("est", "er"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 2:
            root = word[: -len(suffix)]
            for cand in (root, root + "e", root[:-1] if root[-1:] == root[-2:-1] else "",
                         root[:-1] + "y" if root.endswith("i") else ""):
                if cand in _GRADABLE:
                    return cand
    return word


def _pairs() -> dict[str, frozenset[str]]:
    out: dict[str, set[str]] = {}
    for pair in _PAIRS.replace("\n", " ").split(","):
        words = pair.split()
        if len(words) == 2:
            a, b = words
            out.setdefault(a, set()).add(b)
            out.setdefault(b, set()).add(a)
    return {k: frozenset(v) for k, v in out.items()}


class Opposites:
    """``opposite(a, b)``: are the two (lower-case) words opposites? Built once per verifier;
    answers are memoised (bounded) because the same words recur in every comparison."""

    def __init__(self) -> None:
        self.pairs = _pairs()
        self._memo: dict[tuple[str, str], bool] = {}

    def opposite(self, a: str, b: str) -> bool:
        key = (a, b) if a <= b else (b, a)
        known = self._memo.get(key)
        if known is None:
            if len(self._memo) >= 65536:
                self._memo.clear()
            known = self._memo[key] = self._opposite(a, b)
        return known

    def _opposite(self, a: str, b: str) -> bool:
        if a == b:
            return False
        if b in self.pairs.get(a, ()) or base_form(b) in self.pairs.get(base_form(a), ()):
            return True
        for x, y in ((a, b), (b, a)):
            if x.endswith(y) and len(y) >= _MIN_ROOT and x[: len(x) - len(y)] in _NEGATING:
                return True
        for p, q in _REVERSING:
            for x, y in ((a, b), (b, a)):
                if (x.startswith(p) and y.startswith(q) and x[len(p):] == y[len(q):]
                        and len(x) - len(p) >= 3):
                    return True
        return False


# Idioms folded into one word before comparing (both sides get the same rewrite).
_IDIOMS = [
    (r"\bget(?:ting)? rid of\b", "remove"), (r"\bswitch(?:ed|ing)? off\b", "disable"),
    (r"\bturn(?:ed|ing|s)? off\b", "disable"), (r"\bswitch(?:ed|ing)? on\b", "enable"),
    (r"\bturn(?:ed|ing|s)? on\b", "enable"), (r"\bsign(?:ed|ing|s)? (?:in|on)\b", "login"),
    (r"\blog(?:ged|ging|s)? (?:in|on)\b", "login"), (r"\blog(?:ged|ging|s)? out\b", "logout"),
    (r"\bsign(?:ed|ing|s)? out\b", "logout"),
    (r"\bforg[oe]t(?:ten)? (?:my |the )?password\b", "reset password"),
    (r"\bsign(?:ed|ing|s)? up\b", "register"),
    (r"\b(?:get|obtain|receive)(?:ting)? (?:a |an )?cop(?:y|ies) of\b", "download"),
    (r"\bset(?:ting|s)? up\b", "configure"), (r"\bopt(?:ed|ing|s)? out(?: of)?\b", "unsubscribe"),
    (r"\bopt(?:ed|ing|s)? in(?:to)?\b", "subscribe"), (r"\bzoom(?:ed|ing|s)? in\b", "magnify"),
    (r"\bzoom(?:ed|ing|s)? out\b", "unmagnify"), (r"\bget in touch with\b", "contact"),
    (r"\breach out to\b", "contact"), (r"\bgo back\b", "return"), (r"\bsend (\w+) back\b",
                                                                      r"return \1"),
    (r"\bmoney back\b", "refund"), (r"\bis (?:it )?possible to\b", "can"),
    (r"\bunable to\b", "cannot"), (r"\bnot able to\b", "cannot"),
    (r"\bdo not\b", "not"), (r"\bdoes not\b", "not"), (r"\bdid not\b", "not"),
    (r"\bcheck out\b", "checkout"), (r"\bsign-?in\b", "login"), (r"\blog-?in\b", "login"),
    (r"\blog-?out\b", "logout"),
]
_IDIOM_RE = [(re.compile(p, re.IGNORECASE), r) for p, r in _IDIOMS]
# every idiom contains one of these words: texts without any skip the substitutions
_IDIOM_WORDS = re.compile(r"\b(?:rid|off|on|in|out|up|touch|back|possible|able|unable|not|"
                          r"copy|copies|forgot|forget|forgotten|check|sign|log|login|logout|"
                          r"signin)\b", re.IGNORECASE)


@lru_cache(maxsize=4096)
def fold_idioms(text: str) -> str:
    if _IDIOM_WORDS.search(text) is None:
        return text
    for pattern, repl in _IDIOM_RE:
        text = pattern.sub(repl, text)
    return text


# Questions that point at something only the asker can see: "this order", "that payment",
# "the file I sent", "the attached document". Another user's cached answer cannot be right.
DEICTIC = re.compile(
    r"\b(?:this|these|those)\s+(?!is\b|are\b|was\b|will\b|can\b|does\b|do\b|mean\b)[a-z]+"
    r"|\bthat\s+(?:\w+\s+)?(?:order|payment|charge|invoice|receipt|file|document|error|"
    r"message|email|link|page|item|product|package|parcel|transaction|account|ticket|"
    r"image|photo|picture|screenshot|video|code|issue|problem|bug|refund|subscription|user)s?\b"
    r"|\b(?:attached|above|below|following|aforementioned)\b"
    r"|\b(?:file|document|image|photo|screenshot|message|email|code|link|attachment|"
    r"picture|video)s?\s+(?:I|we)\s+(?:just\s+)?(?:sent|uploaded|attached|shared|pasted|"
    r"posted|mentioned|gave)\b",
    re.IGNORECASE,
)


# Rewordings common in support questions that single-word embeddings score too low
# ("change" vs "update" is 0.5): each group folds to its first word before comparing. Near
# synonyms that ask something else stay out: muting a recording is not stopping it, and
# deleting a profile is not deleting the account.
_REWORDINGS = """
change update modify edit switch set, remove delete erase, download export copy save,
upload import, contact reach talk call, get receive obtain, package parcel shipment,
subscription membership plan, appointment booking reservation meeting, schedule book arrange,
picture photo image avatar, buy purchase, cancel terminate, problem issue bug trouble,
fix solve resolve, see view find check, ship deliver send, shipping delivery, refund reimburse,
allowed permitted, fee charge cost, price cost, support service help, start begin,
verify confirm, error failure, code coupon voucher, discount promo,
connect link, disconnect unlink, disable stop, mobile phone phones smartphone,
"""


# Words that embed close together but name different things in support questions (account /
# profile is 0.54 with MiniLM, above the substitution threshold): never a rewording.
_DISTINCT = """
account profile, account username, password username, password pin, email username,
"""


def distinct_pairs() -> frozenset[frozenset[str]]:
    return frozenset(frozenset(g.split()) for g in _DISTINCT.replace("\n", " ").split(",")
                     if len(g.split()) == 2)


# Words that do not change what a support question asks when one side adds them
# ("Do you offer a free trial?" / "Is there a free trial?", "block a user" / "block someone").
FILLER = frozenset({
    "offer", "offers", "accept", "ask", "another", "other", "others", "new", "someone",
    "somebody", "user", "across", "placed", "available", "provide", "there", "exist", "exists",
    "currently", "actually", "possible", "option", "options"})


def rewordings() -> dict[str, str]:
    out: dict[str, str] = {}
    for group in _REWORDINGS.replace("\n", " ").split(","):
        words = group.split()
        for w in words:
            out.setdefault(w, words[0])
    return out


_SPEAKER_TARGET = re.compile(r"\b(?:to|from|for|with|by)\s+(?:me|us)\b", re.IGNORECASE)
_SPEAKER_AGENT = re.compile(r"\b(?:I|we)\b", re.IGNORECASE)


def speaker_role_swapped(x: str, y: str) -> bool:
    """"Can I send an invoice to a customer?" vs "Can a customer send an invoice to me?":
    the asker acts on one side and is acted on on the other."""
    tx, ty = bool(_SPEAKER_TARGET.search(x)), bool(_SPEAKER_TARGET.search(y))
    return tx != ty and bool(_SPEAKER_AGENT.search(y if tx else x))
