"""keel's person-name recognizer: a names lexicon plus capitalization and context cues.

No spaCy model can be installed here, so presidio has no NER. Names are found by:

1. **Lexicon**: the 1990 US Census first-name lists (5,163 names, public domain) and its
   20,000 most common surnames, shipped in ``data/``. A capitalized run of words that
   contains a lexicon first name (or ends in a lexicon surname after another capitalized
   word) is a name: ``Jaroslava P. Sedláčková`` (``jaroslava`` is listed) is taken whole.
2. **Context cues**: words that introduce a person (``my name is``, ``I'm``, ``called``,
   ``Dear``, ``Hi``, ``Mr.``/``Dr.``, ``Name:``, ``by``, ``with``, ``thanks``...) mark the
   next capitalized run as a name even when no word in it is listed (``My name is
   Akinori``), and a lowercase lexicon name after a cue (``i'm donna``).
3. **Shape cues**: a speaker label at the start of a line (``Danielle: ...``), a run
   followed by ``said``/``wrote``/``'s``, a lowercase ``first last`` pair where both are
   listed (``frank freud``).

Common words that are also names (``Will``, ``May``, ``Hope``, ``Art``) count only
with a cue. Misses: unlisted names with no cue (``have you heard nijito asano``);
false hits: capitalized organisations and places after a cue (``with Acme Corp``).
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources

from presidio_analyzer import EntityRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts

_WORD = re.compile(r"[^\W\d_](?:[^\W\d_]|['\u2019\-](?=[^\W\d_])(?!s\b))*\.?")

def _words(block: str) -> frozenset[str]:
    return frozenset(block.split())


# Cues before a name (lowercase, matched on the words right before the run).
_CUES_BEFORE = (
    "my name is", "name is", "calls me", "call me", "name:", "i'm", "i am", "im", "this is",
    "it's", "called", "named", "dear", "from:", "to:", "by:", "cc:", "founders:",
    "including", "hi", "hello", "hey", "mr", "mrs", "ms", "miss", "dr", "prof", "sir",
    "madam", "by", "with", "thanks", "thank you", "regards", "cheers", "contact", "ask",
    "meet", "met", "told", "tell", "married", "wife", "husband", "son", "daughter",
    "brother", "sister", "mother", "father", "friend", "boss", "colleague", "manager",
    "from", "to", "and", "cc", "attn", "signed", "sincerely", "for", "about", "of",
    "heard", "saw", "see", "call", "email", "emailed", "visited", "invited", "like",
)
# Strong cues: an unlisted single capitalized word after them is a name.
_STRONG = {"my name is", "name is", "i'm", "i am", "called", "named", "name:", "dear",
           "calls me", "call me", "from:", "to:", "by:", "cc:",
           "hi", "hello", "hey", "mr", "mrs", "ms", "miss", "dr", "prof", "attn", "signed",
           "sincerely", "regards", "cheers", "thanks", "thank you", "this is", "im",
           "married", "met", "meet", "ask", "contact", "told", "by", "with", "heard"}
# Cues that introduce a name however it is written.
_INTRO = {"my name is", "name is", "called", "named", "calls me", "call me", "name:"}
_CUES_AFTER = ("said", "says", "wrote", "writes", "replied", "asked", "told", "called",
               "'s", "\u2019s", "is", "was", "and", "has", "had", "will")
_TITLES = {"mr", "mrs", "ms", "miss", "dr", "prof", "sir", "madam", "mr.", "mrs.", "ms.",
           "dr.", "prof."}

# Words that are listed names but far more often ordinary words.
_COMMON = _words("""
i i'm i'll i've i'd a an and the in on at of to for by with from as is it its be are was
were will may can could would should shall might must do does did have has had not no
yes but or if so then than that this these those there here what when where who whom why
which whose whatever whichever
how all any each every some such only own same very just also now new old good great
best better first last next long young little big high low right left black white brown
green gray grey gold silver rose hope joy faith grace mark bill art will may june april
august summer autumn winter spring dawn sunny star king queen prince princess lord lady
major general page bell hall wood stone street road avenue house park hill lane church
mill mills field fields rich price love chance case cross day days long short way ways
sales bank banks card phone email name date time please thanks thank hello hi hey dear
sir madam mister office desk fax mobile suite apt apartment unit box po company inc ltd
llc corp group team service services support customer client user account order number
address city state country zip code bot help your you i me my we our us they them he she
him her his hers one two three four five six seven eight nine ten monday tuesday
wednesday thursday friday saturday sunday january february march july september october
november december north south east west new york london paris christian english french
german american british irish scottish spanish italian personal info mission about
contact home page welcome note notes
""")

# A run ending in one of these is a place or an organisation, not a person.
_NOT_PERSON_END = _words("""
street st road rd avenue ave lane ln drive dr way court ct place pl square boulevard
blvd close crescent terrace park beach bay hill hills island islands river lake mount
valley city town county state republic kingdom union states emirates orchestra band
choir corporation corp company co inc ltd llc plc gmbh group partners associates
holdings bank research labs lab systems solutions technologies technology software
services university college school institute hospital clinic foundation trust agency
ministry tv radio news times post weekly magazine journal records studios pictures info
statement pleasures suite apt apartment floor building centre center trail bridge
cliffs route pass str strasse straße gata utca rapids transit consulting incorporated
unlimited force act tales explorer business sons brothers greens lines airlines network
capital insurance motors energy media health pharma logistics
""")
# Field labels that look like a speaker label ("E-mail:", "Website:") but are not names.
_LABELS = _words("""
e-mail email website web phone fax tel mobile address company title patient business
position department subject
""")
# A house number, or a word that opens an address, right before a capitalized run; a
# number right after one ("Passauer Strasse 33"): the run is a street, not a person.
_ADDRESS_BEFORE = re.compile(
    r"(?:\b\d{1,6}[A-Za-z]?|\bul\.|\bRue(?: de| du| des)?|\bVia|\bAvenida|\bAPO|\bFPO"
    r"|\bDPO|\bUSNS|\bUSS|\bUSNV|\bUSCGC)[ \t]+$")
_ADDRESS_AFTER = re.compile(r"^[ \t]+\d{1,5}(?:[ \t]*[A-Za-z])?\b(?![\d\-./])")
_COUNTRIES = _words("""
afghanistan albania algeria argentina armenia australia austria belgium bolivia brazil
bulgaria canada chile china colombia croatia cuba cyprus czech denmark ecuador egypt
estonia ethiopia finland france georgia germany ghana greece hungary iceland india
indonesia iran iraq ireland israel italy jamaica japan jordan kenya korea latvia lebanon
lithuania luxembourg malaysia malta mexico moldova morocco nepal netherlands nigeria
norway pakistan peru philippines poland portugal romania russia serbia singapore
slovakia slovenia spain sweden switzerland syria taiwan thailand tunisia turkey uganda
ukraine uruguay venezuela vietnam zimbabwe africa europe asia america england scotland
wales britain
""")
_COMMON = _COMMON | _COUNTRIES

_LOWER_STOP = _COMMON | {"im", "am", "ok", "okay", "so", "too", "not", "sure", "here",
                         "going", "back", "done", "fine", "sorry", "happy", "glad"}


@dataclass(frozen=True)
class _Tok:
    text: str
    start: int
    end: int

    @property
    def key(self) -> str:
        return self.text.rstrip(".").lower()

    @property
    def capitalized(self) -> bool:
        t = self.text
        return t[0].isupper() and not (len(t) > 3 and t.isupper())

    @property
    def initial(self) -> bool:
        t = self.text.rstrip(".")
        return len(t) == 1 and t.isupper()


def _load(name: str) -> frozenset[str]:
    data = resources.files("keel.sanitize").joinpath("data", name).read_bytes()
    return frozenset(gzip.decompress(data).decode().split())


class NameLexicon:
    """First names and surnames, lowercase; loaded once per Sanitizer."""

    def __init__(self) -> None:
        self.first = _load("first_names.txt.gz")
        self.last = _load("last_names.txt.gz")

    def is_first(self, word: str) -> bool:
        return word in self.first and word not in _COMMON

    def is_last(self, word: str) -> bool:
        return word in self.last and word not in _COMMON


class KeelNameRecognizer(EntityRecognizer):
    """presidio recognizer for ``PERSON`` built on :class:`NameLexicon` and cues."""

    def __init__(self, lexicon: NameLexicon | None = None) -> None:
        self.lexicon = lexicon or NameLexicon()
        super().__init__(supported_entities=["PERSON"], name="KeelNameRecognizer",
                         supported_language="en")

    def load(self) -> None:
        """Nothing to load: the lexicon is read in ``__init__``."""

    def analyze(self, text: str, entities: list[str],
                nlp_artifacts: NlpArtifacts | None = None) -> list[RecognizerResult]:
        return [RecognizerResult("PERSON", s, e, score) for s, e, score in self.spans(text)]

    # -- the rules ----------------------------------------------------------------------

    def spans(self, text: str) -> Iterator[tuple[int, int, float]]:
        toks = [_Tok(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]
        i = 0
        while i < len(toks):
            run_end = self._cap_run(text, toks, i)
            if run_end > i:
                found = self._judge_run(text, toks, i, run_end)
                if found:
                    yield found
                i = run_end
                continue
            pair = self._lower_name(text, toks, i)
            if pair:
                yield pair[0]
                i = pair[1]
                continue
            i += 1

    def _cap_run(self, text: str, toks: list[_Tok], i: int) -> int:
        """End (exclusive) of the run of capitalized words/initials starting at ``i``."""
        j = i
        while j < len(toks):
            t = toks[j]
            if not (t.capitalized or t.initial) or t.key in _TITLES:
                break
            if j > i and not _joined(text, toks[j - 1], t):
                break
            j += 1
            if t.text.endswith(".") and not t.initial:
                break  # sentence end
        return j

    def _judge_run(self, text: str, toks: list[_Tok], i: int,
                   end: int) -> tuple[int, int, float] | None:
        lex = self.lexicon
        run = toks[i:end]
        # leading ordinary words ("The", "Thanks") are not part of the name
        while run and run[0].key in _COMMON and not lex.is_first(run[0].key):
            run = run[1:]
            i += 1
        if not run or len(run) > 4 or all(t.initial for t in run):
            return None
        keys = [t.key for t in run]
        if keys[-1] in _NOT_PERSON_END or any(k in _COUNTRIES for k in keys):
            return None
        if (_ADDRESS_BEFORE.search(text[max(0, run[0].start - 12):run[0].start])
                or _ADDRESS_AFTER.match(text[run[-1].end:run[-1].end + 12])):
            return None
        if all(t.text.isupper() and len(t.text.rstrip(".")) <= 3 for t in run):
            return None  # "APO AE", "AA": codes, not initials of a name
        cue = self._cue_before(text, toks, i)
        after = self._cue_after(text, run[-1])
        if len(run) == 1 and len(keys[0]) <= 2 and not (cue or after):
            return None  # "Fe", "Ok", "Al" alone: symbols and abbreviations far more often
        listed_first = any(lex.is_first(k) for k in keys)
        listed_last = lex.is_last(keys[-1]) and keys[0] not in _COMMON
        starts = _sentence_start(text, run[0].start)
        speaker = (_at_line_start(text, run[0].start) and len(run) <= 3
                   and text[run[-1].end:run[-1].end + 1] == ":"
                   and not any(k in _LABELS for k in keys))
        common = any(k in _COMMON for k in keys)
        words = [t for t in run if not t.initial]
        score = 0.0
        if listed_first or (listed_last and (len(run) >= 2 or not starts)):
            score = 0.85 if (len(run) >= 2 or cue or after) else 0.6
            if len(run) == 1 and starts and not (cue or after):
                score = 0.4
        elif cue in _STRONG or speaker:
            score = 0.7
        elif len(words) >= 2 and not common:
            score = 0.5  # two unlisted capitalized words in a row: a foreign name, often
        elif after and not common:
            score = 0.45
        elif not starts and not common and _foreign(run[0].text):
            score = 0.45  # a mid-sentence capitalized word with diacritics
        if score == 0.0 or (common and not listed_first and cue not in _STRONG):
            return None
        last = run[-1]
        end = last.end - 1 if last.text.endswith(".") and not last.initial else last.end
        return run[0].start, end, score  # a sentence's full stop is not part of the name

    def _lower_name(self, text: str, toks: list[_Tok],
                    i: int) -> tuple[tuple[int, int, float], int] | None:
        """Lowercase names: ``frank freud`` (both listed), a listed name after a cue or in
        a list of listed names, any word after ``my name is``."""
        lex = self.lexicon
        t = toks[i]
        if not t.text.islower() or t.key in _LOWER_STOP:
            return None
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        prv = toks[i - 1] if i > 0 else None
        cue = self._cue_before(text, toks, i)
        if lex.is_first(t.key):
            if (nxt and nxt.text.islower() and _joined(text, t, nxt)
                    and lex.is_last(nxt.key) and nxt.key not in _LOWER_STOP):
                return (t.start, nxt.end, 0.6), i + 2
            if cue in _STRONG:
                return (t.start, t.end, 0.6), i + 1
            listed = [o for o in (prv, nxt) if o is not None and _listed_with(text, t, o)
                      and o.text.islower() and lex.is_first(o.key)]
            if listed:
                return (t.start, t.end, 0.5), i + 1
        elif cue in _INTRO and len(t.text) > 1:
            end = t
            if (nxt and nxt.text.islower() and _joined(text, t, nxt)
                    and nxt.key not in _LOWER_STOP):
                end = nxt
            return (t.start, end.end, 0.5), toks.index(end) + 1
        return None

    @staticmethod
    def _cue_before(text: str, toks: list[_Tok], i: int) -> str | None:
        head = text[max(0, toks[i].start - 24):toks[i].start].lower()
        head = re.sub(r"[\s,;>\-\"]+$", "", head)
        head = re.sub(r"\s+:$", ":", head).rstrip(".")
        for cue in sorted(_CUES_BEFORE, key=len, reverse=True):
            if head.endswith(cue) and (len(head) == len(cue)
                                       or not head[-len(cue) - 1].isalnum()):
                return cue
        return None

    @staticmethod
    def _cue_after(text: str, last: _Tok) -> bool:
        tail = text[last.end:last.end + 12].lower()
        return any(tail.startswith(c) if c.startswith(("'", "\u2019"))
                   else re.match(rf" {c}\b", tail) is not None for c in _CUES_AFTER)


def _listed_with(text: str, a: _Tok, b: _Tok) -> bool:
    """``a`` and ``b`` are neighbours in a list: ``x, y`` or ``x and y``."""
    first, second = (a, b) if a.start < b.start else (b, a)
    return text[first.end:second.start] in (", ", " and ", ", and ", " & ", " or ")


def _foreign(word: str) -> bool:
    return any(ord(c) > 127 for c in word) and not word.isupper()


def _joined(text: str, a: _Tok, b: _Tok) -> bool:
    """Two words belong to one name: only spaces (not a newline or punctuation) between."""
    gap = text[a.end:b.start]
    return gap != "" and gap.strip(" ") == "" and len(gap) <= 2


def _at_line_start(text: str, pos: int) -> bool:
    before = text[:pos].rstrip(" >\t")
    return before == "" or before.endswith("\n")


def _sentence_start(text: str, pos: int) -> bool:
    before = text[:pos].rstrip(" \t\"'(")
    return before == "" or before[-1] in ".!?\n:"
