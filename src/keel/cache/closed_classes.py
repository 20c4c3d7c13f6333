"""Closed word classes whose members are not interchangeable, shared by both hit verifiers.

Cosine similarity puts "cost per month" next to "cost per year", "my phone number" next to
"your phone number" and "Fahrenheit in Celsius" next to "Celsius in Fahrenheit" (0.94 to
0.996 with MiniLM), and the content-word checks cannot see the difference: the words are
the same, or are stop words ("all" / "some", "should" / "can", "did" / "will"), or look
alike to an embedding. Each class below is small and closed, so a difference inside it is a
different question:

* units (temperature, length, weight, volume, data sizes, currencies): different units on
  both sides, or the same units with source and target swapped ("kilometers in a mile" /
  "miles in a kilometer");
* periods (hour, day, week, month, quarter, year and their -ly forms) and calendar names
  (weekdays, months; matched in any case, unlike entities);
* possessors (my/our, your, his/her/their, another/other): "reset my password" / "reset your
  password", "to my account" / "to another account";
* the order of personal pronouns: "Can you call me" / "Can I call you";
* a yes/no question's leading modal (should/must vs can/could/may), a universal vs an
  existential quantifier (all/every vs some/several), and past vs future ("Did my payment
  go through?" / "Will my payment go through?").

Each set check rejects only when *each* side has a member the other lacks: a member named on
one side only is an added word, which the verifiers judge as such. Every function takes the
lower-case word tokens of the two questions (``Features.words``) and returns a short reason,
or ``None``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

Words = Sequence[str]


def _groups(spec: str, *, plurals: bool = False) -> dict[str, str]:
    """``"a b c, d e"`` -> every word mapped to the first of its group (and ``word + "s"``
    too when ``plurals``)."""
    out: dict[str, str] = {}
    for group in spec.replace("\n", " ").split(","):
        words = group.split()
        for w in words:
            out.setdefault(w, words[0])
            if plurals and not w.endswith("s") and len(w) >= 3:
                out.setdefault(w + "s", words[0])
    return out


# Single letters (C, F, m, g, l) and words with an everyday sense ("bit", "cup", "stone",
# "in" for inch) are left out on purpose.
_UNITS = _groups("""
celsius centigrade, fahrenheit, kelvin,
millimeter millimetre mm, centimeter centimetre cm, meter metre, kilometer kilometre km kms,
inch inches, foot feet ft, yard yd yds, mile,
milligram mg, gram, kilogram kilo kg kgs, pound lb lbs sterling gbp, ounce oz, ton tonne,
milliliter millilitre ml, liter litre, gallon, quart, pint, teaspoon tsp, tablespoon tbsp,
byte, kilobyte kb, megabyte mb, gigabyte gb, terabyte tb, petabyte,
dollar usd bucks, euro eur, yen jpy, yuan rmb cny, rupee inr, peso, franc chf, bitcoin btc,
""", plurals=True)
_NUMBER_UNIT = re.compile(r"\$?[\d,.]+([a-z]+)")
_TARGET_BEFORE = frozenset({"in", "into", "to", "as"})
_HOW = frozenset({"many", "much"})

_PERIODS = _groups("""
minute, hour hourly, day daily, week weekly, fortnight biweekly, month monthly,
quarter quarterly, year yearly annual annually annum yr yrs, decade,
""", plurals=True)
# "may" is left out (a modal far more often than a month), and so are abbreviations
# ("sat", "sun", "mar", "dec" are everyday words).
_CALENDAR = _groups("""
monday, tuesday, wednesday, thursday, friday, saturday, sunday, january, february, march,
april, june, july, august, september, october, november, december,
""", plurals=True)

_POSSESSORS = {"my": "mine", "our": "mine", "mine": "mine", "ours": "mine",
               "your": "yours", "yours": "yours",
               "his": "theirs", "her": "theirs", "hers": "theirs", "their": "theirs",
               "theirs": "theirs",
               "another": "another's", "other": "another's", "others": "another's"}
_FIRST = frozenset({"i", "me", "my", "mine", "myself", "we", "us", "our", "ours",
                    "ourselves"})
_SECOND = frozenset({"you", "your", "yours", "yourself", "yourselves", "u"})
_AUXILIARIES = frozenset({"can", "could", "will", "would", "do", "did", "are", "were",
                          "have", "should", "may", "must", "shall"})
_PRONOUNS = {"i": "I", "me": "I", "myself": "I", "we": "we", "us": "we", "ourselves": "we",
             "you": "you", "yourself": "you", "yourselves": "you", "u": "you",
             "he": "they", "him": "they", "she": "they", "they": "they", "them": "they"}

_FUNCTION = frozenset({
    "a", "an", "the", "to", "of", "for", "from", "with", "by", "on", "at", "in", "into",
    "about", "and", "or", "please", "do", "does", "did", "can", "could", "will", "would",
    "shall", "should", "may", "might", "must", "is", "are", "am", "was", "were", "be", "been",
    "have", "has", "had"})
_MODALS = {"should": "should", "must": "should", "ought": "should",
           "can": "can", "could": "can", "may": "can", "cannot": "can"}
_UNIVERSAL = frozenset({"all", "every", "everything", "entire", "whole", "each"})
_EXISTENTIAL = frozenset({"some", "any", "few", "several", "part", "partial", "partially",
                          # one of many: "delete all my emails" / "delete one email"
                          "one", "single", "individual", "particular", "specific"})
# "any way to", "any tips", "each other", "at all": not a quantity of the thing asked about
_NOT_QUANTITY_AFTER = frozenset({"way", "ways", "chance", "idea", "ideas", "tips", "advice",
                                 "reason", "suggestions", "other", "right"})
_PAST = frozenset({"did", "was", "were", "had", "has", "have"})
_FUTURE = frozenset({"will", "shall"})
# words a question may start with before its first auxiliary ("How soon will...")
_LEAD = frozenset({"how", "what", "why", "when", "where", "who", "which", "many", "much",
                   "long", "soon", "often", "else", "exactly"})


def _unit(word: str) -> tuple[str | None, bool]:
    """(canonical unit, whether it was written on a number: "5km")."""
    if word in _UNITS:
        return _UNITS[word], False
    m = _NUMBER_UNIT.fullmatch(word)
    if m is not None and m.group(1) in _UNITS:
        return _UNITS[m.group(1)], True
    return None, False


def _unit_roles(words: Words) -> dict[str, str]:
    """Each unit's role: ``target`` after in/to/as or "how many" ("in Celsius", "how many
    miles"), else ``source`` ("100 degrees Fahrenheit", "in a mile", "5 km")."""
    roles: dict[str, str] = {}
    for i, w in enumerate(words):
        unit, on_number = _unit(w)
        if unit is None:
            continue
        before = words[max(0, i - 2):i]
        target = not on_number and bool(before) and (
            before[-1] in _TARGET_BEFORE or bool(_HOW & set(before)))
        roles.setdefault(unit, "target" if target else "source")
    return roles


def units(a: Words, b: Words) -> str | None:
    ra, rb = _unit_roles(a), _unit_roles(b)
    if ra.keys() - rb.keys() and rb.keys() - ra.keys():
        return "units differ: " + " / ".join(sorted(ra.keys() ^ rb.keys())[:2])
    if ra.keys() == rb.keys() and ra != rb:
        return "direction swapped (unit converted from / to)"
    return None


def _both_sides_differ(a: set[str], b: set[str]) -> bool:
    return bool(a - b) and bool(b - a)


def _members(words: Words, table: dict[str, str]) -> set[str]:
    return {table[w] for w in words if w in table}


def periods(a: Words, b: Words) -> str | None:
    pa, pb = _members(a, _PERIODS), _members(b, _PERIODS)
    if _both_sides_differ(pa, pb):
        return "period differs: " + " / ".join(sorted(pa ^ pb)[:2])
    return None


def calendar(a: Words, b: Words) -> str | None:
    ca, cb = _members(a, _CALENDAR), _members(b, _CALENDAR)
    if _both_sides_differ(ca, cb):
        return "day or month differs: " + " / ".join(sorted(ca ^ cb)[:2])
    return None


def _person(words: Words) -> set[str]:
    return {"first" for w in words if w in _FIRST} | {"second" for w in words if w in _SECOND}


def _generic_you(a: Words, b: Words) -> bool:
    """"How do you control your anger?" asks "How do I control my anger?": one side speaks
    only in the second person with "you" as a subject, the other only in the first person
    with "I" / "we". A request to the other party ("Can you send your invoice?") is not
    generic."""
    second, first = (a, b) if _person(a) == {"second"} else (b, a)
    return (_person(second) == {"second"} and _person(first) == {"first"}
            and "you" in second and bool({"i", "we"} & set(first))
            and not (len(second) > 1 and second[1] == "you" and second[0] in _AUXILIARIES))


def possessors(a: Words, b: Words) -> str | None:
    """"my phone number" / "your phone number"; "my account" / "another account". One side
    adding a possessor ("my data" / "your app and my data") is not a contradiction."""
    pa, pb = _members(a, _POSSESSORS), _members(b, _POSSESSORS)
    if _both_sides_differ(pa, pb) and not _generic_you(a, b):
        return "possessor differs: " + " / ".join(sorted(pa ^ pb)[:2])
    return None


def _rest(words: Words) -> set[str]:
    """The words other than pronouns, possessives and function words, plural -s folded."""
    return {w[:-1] if w.endswith("s") and len(w) > 3 else w for w in words
            if w not in _PRONOUNS and w not in _POSSESSORS and w not in _FUNCTION}


def pronoun_order(a: Words, b: Words) -> str | None:
    """The same personal pronouns in another order around the same words: who does what to
    whom is swapped ("Can you call me" / "Will I call you"). With other words the verb may
    turn the roles round itself ("Can you send me a copy" / "Can I get a copy from you")."""
    sa = [_PRONOUNS[w] for w in a if w in _PRONOUNS]
    sb = [_PRONOUNS[w] for w in b if w in _PRONOUNS]
    if (len(set(sa)) >= 2 and Counter(sa) == Counter(sb) and sa != sb
            and _rest(a) == _rest(b)):
        return "direction swapped (who does what to whom: " + " / ".join(sa[:2]) + ")"
    return None


_SUBJECT_LEAD = _AUXILIARIES | {"does", "is", "was", "has", "might"}
_DETERMINERS = frozenset({"the", "a", "an", "this", "that", "these", "those"})
_PASSIVE = frozenset({"be", "been", "being", "get", "got", "gets"})
_EXPLETIVE = frozenset({"it", "there", "this", "that", "these", "those", "what"})


def _base(word: str) -> str:
    word = word.removesuffix("'s").removesuffix("\u2019s").rstrip("'\u2019")
    return word[:-1] if word.endswith("s") and len(word) > 3 else word


def _subject(words: Words, *, bare: bool = False) -> str | None:
    """Who a yes/no question asks about: "Can I see..." -> "first"; "Can my manager
    see..." -> "manager"; ``None`` when it does not start with an auxiliary, is passive
    ("Can my password be changed") or its subject is not a pronoun or a determined noun."""
    if len(words) < 3 or words[0] not in _SUBJECT_LEAD or _PASSIVE & set(words[2:5]):
        return None
    first = words[1]
    if first in _EXPLETIVE:  # "Is it possible to...", "Is there a way to..."
        return None
    if first in _POSSESSORS or first in _DETERMINERS:  # "my manager": the manager
        first = words[2]
    elif first in _FIRST:
        return "first"
    elif first in _SECOND:
        return "second"
    elif first in _PRONOUNS:
        return "third"
    elif not bare:  # a bare word may be the verb of a folded idiom ("can pause my plan")
        return None
    if first in _FUNCTION or first in _PRONOUNS:
        return None
    return _base(first)


def _mentions(words: Words, who: str) -> bool:
    if who == "first":
        return bool(_FIRST & set(words))
    if who == "second":
        return bool(_SECOND & set(words))
    return who in {_base(w) for w in words}


def _subject_against(words: Words, other: Words) -> str | None:
    """:func:`_subject`, or a bare noun followed by its verb ("Can admins see my notes")
    when the other question's subject is a person ("Can I see the admins' notes"). A bare
    word before "my" / "an" is the verb of a folded idiom ("can pause my plan")."""
    who = _subject(words)
    if who is None and _subject(other) in ("first", "second") and len(words) > 3 \
            and words[2] not in _FUNCTION and words[2] not in _POSSESSORS \
            and words[2] not in _DETERMINERS and words[2] not in _PRONOUNS:
        who = _subject(words, bare=True)
    return who


def subject_swap(a: Words, b: Words) -> str | None:
    """The same people or things with the roles turned round: "Can I see my manager's
    calendar?" / "Can my manager see my calendar?". Both questions name both, but each
    asks what a different one may do."""
    sa, sb = _subject_against(a, b), _subject_against(b, a)
    if sa and sb and sa != sb and _mentions(a, sb) and _mentions(b, sa):
        return f"direction swapped: who it is about differs ({sa} / {sb})"
    return None


# prepositions that change what is asked when they are the only difference: "a refund for
# a gift card" (buying one) / "a refund with a gift card" (paid out as one)
_CONTRASTING_PREPOSITIONS = frozenset({frozenset({"for", "with"}), frozenset({"for", "from"}),
                                       frozenset({"for", "by"}), frozenset({"into", "from"})})


# opposites among the short words both verifiers treat as function words
_SMALL_OPPOSITES = (("over", "under"), ("above", "below"), ("before", "after"),
                    ("more", "less"), ("more", "fewer"), ("on", "off"), ("in", "out"),
                    ("up", "down"), ("with", "without"))


def small_opposites(a: Words, b: Words) -> str | None:
    """"orders over $50" / "orders under $50": each side has one word of the pair and not
    the other."""
    sa, sb = set(a), set(b)
    for x, y in _SMALL_OPPOSITES:
        if (x in sa and y not in sa and y in sb and x not in sb) or \
                (y in sa and x not in sa and x in sb and y not in sb):
            return f"opposites: {x} / {y}"
    return None


def preposition(a: Words, b: Words) -> str | None:
    diff = set(a) ^ set(b)
    if frozenset(diff) in _CONTRASTING_PREPOSITIONS:
        return "preposition differs (" + " / ".join(sorted(diff)) + ")"
    return None


def _lead_modal(words: Words) -> str | None:
    """The modal a yes/no question starts with; "Do I need/have to" counts as "should".
    "How can I" / "How should I" ask the same thing and are not looked at."""
    if not words:
        return None
    if (words[0] in ("do", "does") and len(words) > 3 and words[2] in ("need", "have")
            and words[3] == "to"):
        return "should"
    return _MODALS.get(words[0])


def modality(a: Words, b: Words) -> str | None:
    ma, mb = _lead_modal(a), _lead_modal(b)
    if ma and mb and ma != mb:
        return f"modality differs ({ma} / {mb})"
    return None


def _quantifiers(words: Words, kind: frozenset[str]) -> bool:
    for i, w in enumerate(words):
        if w not in kind:
            continue
        after = words[i + 1] if i + 1 < len(words) else ""
        before = words[i - 1] if i else ""
        if after in _NOT_QUANTITY_AFTER or (w == "all" and before == "at"):
            continue
        return True
    return False


def quantifier(a: Words, b: Words) -> str | None:
    """"delete all of my messages" / "delete some of my messages"."""
    ua, ub = _quantifiers(a, _UNIVERSAL), _quantifiers(b, _UNIVERSAL)
    ea, eb = _quantifiers(a, _EXISTENTIAL), _quantifiers(b, _EXISTENTIAL)
    if (ua and not ub and eb and not ea) or (ub and not ua and ea and not eb):
        return "quantifier differs (all / some)"
    return None


def _tense(words: Words) -> str | None:
    for w in words[:4]:
        if w in _PAST:
            return "past"
        if w in _FUTURE:
            return "future"
        if w not in _LEAD:
            return None
    return None


def tense(a: Words, b: Words) -> str | None:
    """A question led by a past auxiliary vs one led by a future one ("Did my payment go
    through?" / "Will my payment go through?")."""
    ta, tb = _tense(a), _tense(b)
    if ta and tb and ta != tb:
        return f"tense differs ({ta} / {tb})"
    return None


CHECKS: tuple[Callable[[Words, Words], str | None], ...] = (
    units, periods, calendar, possessors, pronoun_order, subject_swap, small_opposites,
    preposition, modality, quantifier, tense)


def closed_class_difference(a: Words, b: Words) -> str | None:
    """The first closed-class difference between the two questions' words, else ``None``."""
    for check in CHECKS:
        reason = check(a, b)
        if reason is not None:
            return reason
    return None
