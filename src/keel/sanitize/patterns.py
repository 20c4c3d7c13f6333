"""keel's pattern recognizers for identifiers presidio's defaults miss or over-match.

Each is a presidio ``PatternRecognizer`` (a regex plus a ``validate_result`` check), so
the analyzer runs them like its own:

* ``PHONE_NUMBER``: international and national formats with spaces, dots, dashes,
  brackets, a ``+CC``/``(0)`` prefix and an ``x123`` extension (7-15 digits). presidio's
  ``KeelPhoneRecognizer`` asks libphonenumber once per region (slow with every region, blind
  with a few) and misses short national formats such as ``467 3395``.
* ``CREDIT_CARD``: 12-19 digits, bare or in groups, Luhn-valid (any issuer prefix).
* ``IBAN_CODE``: country code, check digits, BBAN, either case, ISO 7064 mod-97 valid.
* ``ID``: keel's generic identifiers: UUIDs, ``user_123``/``acct-9f3a``-style keys, long
  digit runs that are nothing else, and credential-shaped secrets (``sk-...``, JWTs).
* ``EMAIL_ADDRESS``: presidio's pattern, validated offline (presidio's check downloads
  the public-suffix list at first use).
"""

from __future__ import annotations

import re
from typing import ClassVar

from presidio_analyzer import Pattern, PatternRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts
from presidio_analyzer.predefined_recognizers import EmailRecognizer

_NON_DIGIT = re.compile(r"\D")
_DATE_PREFIX = re.compile(r"^(?:19|20)\d\d[-./](?:0?[1-9]|1[0-2])[-./]\d{1,2}\b"
                          r"|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")
_STREET_AFTER = re.compile(r" +[^\W\d_]")
_SSN_SHAPE = re.compile(r"^\d{3}-\d{2}-\d{4}$")
_IPV4 = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")
_TLD = re.compile(r"\.[A-Za-z]{2,24}$")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    s = re.sub(r"\s", "", text).upper()
    if not (15 <= len(s) <= 34) or not s[:2].isalpha() or not s[2:4].isdigit():
        return False
    moved = s[4:] + s[:4]
    num = "".join(str(int(c, 36)) for c in moved)
    return int(num) % 97 == 1


class KeelPhoneRecognizer(PatternRecognizer):
    PATTERNS: ClassVar[list[Pattern]] = [
        Pattern(
            "phone (grouped)",
            r"(?<![\w+.\-/])(?:(?:\+|00)\d{1,3}[ .\-]?)?(?:\(0\)[ ]?)?"
            r"(?:\(\d{1,5}\)[ .\-]?)?\d{1,11}(?:[ .\-]\d{1,8}){0,5}(?:[ ]?x\d{1,5})?"
            r"(?!\w|-\d|/|\.\d|:\d)",
            0.55,
        ),
    ]
    CONTEXT: ClassVar[list[str]] = [
        "phone", "call", "tel", "mobile", "cell", "fax", "desk", "office", "number", "reach",
        "text", "sms", "whatsapp", "messages"]

    def __init__(self) -> None:
        super().__init__(supported_entity="PHONE_NUMBER", patterns=self.PATTERNS,
                         context=self.CONTEXT, name="KeelPhoneRecognizer")

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None,
                regex_flags: int | None = None) -> list[RecognizerResult]:
        found = super().analyze(text, entities, nlp_artifacts, regex_flags)
        return [r for r in found if not self._not_a_phone(text, r.start, r.end)]

    @staticmethod
    def _not_a_phone(text: str, start: int, end: int) -> bool:
        """A house number (``370 3911 Fourth Avenue``) or a licence/passport number."""
        before = text[max(0, start - 32):start].lower()
        if any(w in before for w in ("licen", "passport", "id number", "account")):
            return True
        value = text[start:end]
        if value.startswith(("+", "(")) or re.search(r"[.\-]", value):
            return False
        cued = any(w in before for w in ("phone", "call", "tel", "mobile", "fax", "desk"))
        return not cued and bool(_STREET_AFTER.match(text, end))

    def validate_result(self, pattern_text: str) -> bool | None:
        body = pattern_text.split("x")[0]
        digits = _NON_DIGIT.sub("", body)
        if not 7 <= len(digits) <= 15:
            return False
        if _DATE_PREFIX.match(body) or _SSN_SHAPE.match(body) or _IPV4.match(body):
            return False
        grouped = bool(re.search(r"[ .\-()]", body.strip()))
        if not grouped and not body.startswith("+"):
            # a bare digit run: a phone only at 10-11 digits; others are IDs or cards
            return (len(digits) in (10, 11) and not luhn_ok(digits)) or None
        # a grouped card number is not a phone
        return not (grouped and not body.startswith("+") and len(digits) >= 12
                    and luhn_ok(digits))


class KeelCardRecognizer(PatternRecognizer):
    PATTERNS: ClassVar[list[Pattern]] = [
        Pattern("card (bare)", r"(?<![\w\-+])\d{12,19}(?![\w\-])", 0.6),
        Pattern("card (4-groups)", r"(?<![\w\-])\d{4}(?:[ \-]\d{4}){2}[ \-]\d{1,7}(?![\w\-])",
                0.7),
        Pattern("card (amex)", r"(?<![\w\-])\d{4}[ \-]\d{6}[ \-]\d{4,5}(?![\w\-])", 0.7),
    ]
    CONTEXT: ClassVar[list[str]] = ["card", "credit", "visa", "mastercard", "amex", "debit", "pay"]

    def __init__(self) -> None:
        super().__init__(supported_entity="CREDIT_CARD", patterns=self.PATTERNS,
                         context=self.CONTEXT, name="KeelCardRecognizer")

    def validate_result(self, pattern_text: str) -> bool:
        digits = _NON_DIGIT.sub("", pattern_text)
        return 12 <= len(digits) <= 19 and luhn_ok(digits)


class KeelIbanRecognizer(PatternRecognizer):
    PATTERNS: ClassVar[list[Pattern]] = [
        Pattern("iban", r"\b[A-Za-z]{2}\d{2}[A-Za-z0-9]{11,30}\b", 0.8),
        Pattern("iban (grouped)",
                r"\b[A-Za-z]{2}\d{2}(?: [A-Za-z0-9]{4}){2,7}(?: [A-Za-z0-9]{1,3})?\b", 0.8),
    ]

    def __init__(self) -> None:
        super().__init__(supported_entity="IBAN_CODE", patterns=self.PATTERNS,
                         context=["iban", "bank", "account", "transfer"],
                         name="KeelIbanRecognizer")

    def validate_result(self, pattern_text: str) -> bool:
        return iban_ok(pattern_text)


class KeelIdRecognizer(PatternRecognizer):
    """Identifiers that link records to a person: hashed, never shown."""

    PATTERNS: ClassVar[list[Pattern]] = [
        Pattern("uuid", r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}"
                        r"-[0-9a-fA-F]{12}\b", 0.9),
        Pattern("prefixed id",
                r"(?i)\b(?:user|usr|uid|customer|cust|client|account|acct|member|order"
                r"|invoice|ticket|patient|employee|emp|session|device)[_\-#:]"
                r"(?=[A-Za-z0-9\-]*\d)[A-Za-z0-9][A-Za-z0-9\-]{2,40}\b", 0.8),
        Pattern("labelled id",
                r"(?i)(?<=\b(?:id|no|number|#|licen[cs]e|passport)(?::|\sis)\s)"
                r"(?=[A-Za-z0-9\-]*\d)[A-Za-z0-9\-]{4,40}\b",
                0.5),
        Pattern("secret", r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{12,}|\bkeel_[A-Za-z0-9_\-]{16,}"
                          r"|\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"
                          r"|\bAKIA[0-9A-Z]{16}\b|\bgh[pousr]_[A-Za-z0-9]{30,}", 0.95),
        Pattern("digit run", r"(?<![\w\-.])\d{7,}(?![\w\-]|\.\d)", 0.3),
    ]

    def __init__(self) -> None:
        super().__init__(supported_entity="ID", patterns=self.PATTERNS,
                         name="KeelIdRecognizer")


class KeelEmailRecognizer(EmailRecognizer):
    """presidio's email pattern; the domain check needs no public-suffix download."""

    def __init__(self) -> None:
        super().__init__(name="KeelEmailRecognizer")

    def validate_result(self, pattern_text: str) -> bool:
        return bool(_TLD.search(pattern_text))


# Spelled-out contact details ("priya dot r at gmail dot com", "four one five five five
# five zero one nine nine"): people write them this way to dodge filters, and a model
# trained on them learns them all the same.
_TLDS = ("com|org|net|edu|gov|io|co|ai|dev|app|me|info|biz|us|uk|ca|de|fr|es|it|nl|be|ch|"
         "at|se|no|dk|fi|pl|pt|ie|in|jp|cn|au|nz|br|mx|ru|eu")
_SP_DOT = r"(?:\s*[\[(]\s*dot\s*[\])]\s*|\s+dot\s+)"
_SP_AT = r"(?:\s*[\[(]\s*at\s*[\])]\s*|\s+at\s+)"
_LABEL = r"[a-z0-9](?:[a-z0-9_\-]{0,62})"


class KeelSpelledEmailRecognizer(PatternRecognizer):
    """``x at y dot com``, ``x dot y at gmail dot com``, ``x [at] y [dot] org``, and
    ``priya.r at gmail.com``. The domain must end in ``dot <tld>`` (or ``.tld``) from a
    list of common TLDs, so "meet at 10" or "look at the docs" never match."""

    PATTERNS: ClassVar[list[Pattern]] = [
        Pattern("spelled email",
                rf"(?i)\b{_LABEL}(?:(?:{_SP_DOT}|[._\-]){_LABEL}){{0,4}}{_SP_AT}"
                rf"{_LABEL}(?:(?:{_SP_DOT}|\.){_LABEL}){{0,3}}(?:{_SP_DOT}|\.)(?:{_TLDS})\b",
                0.7),
    ]

    def __init__(self) -> None:
        super().__init__(supported_entity="EMAIL_ADDRESS", patterns=self.PATTERNS,
                         context=["email", "mail", "address", "contact", "write"],
                         name="KeelSpelledEmailRecognizer")

    def validate_result(self, pattern_text: str) -> bool:
        # "look at example.com" is prose: a real-dotted domain counts only after an
        # address-like local part ("priya.r at gmail.com") or a bracketed "[at]"
        if re.search(r"(?i)\s+dot\s+|[\[(]\s*(?:dot|at)\s*[\])]", pattern_text):
            return True
        local = re.split(r"(?i)\s+at\s+", pattern_text, maxsplit=1)[0]
        return bool(re.search(r"[._\d]", local))


_DIGIT_WORDS = {"zero": "0", "oh": "0", "o": "0", "nought": "0", "one": "1", "two": "2",
                "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
                "eight": "8", "nine": "9"}
_DIGIT_WORD = r"(?:zero|oh|o|nought|one|two|three|four|five|six|seven|eight|nine)"
_PHONE_TOKEN = rf"(?:(?:double|triple)[ \-]+{_DIGIT_WORD}|{_DIGIT_WORD}|\d{{1,4}})"


class KeelSpelledPhoneRecognizer(PatternRecognizer):
    """Phone numbers written as digit words: 7 to 15 digits in a row, spelled ("four one
    five five five five zero one nine nine", "oh seven seven double nine ...") or mixed
    with digit groups ("four one five 555 0199"). "one or two" or "meet at 10" never
    reach 7 digits; a run of plain digits is :class:`KeelPhoneRecognizer`'s."""

    PATTERNS: ClassVar[list[Pattern]] = [
        Pattern("spelled phone",
                rf"(?i)(?<![\w\-]){_PHONE_TOKEN}(?:[ ,\-]+{_PHONE_TOKEN}){{3,20}}(?![\w])",
                0.6),
    ]

    def __init__(self) -> None:
        super().__init__(supported_entity="PHONE_NUMBER", patterns=self.PATTERNS,
                         context=KeelPhoneRecognizer.CONTEXT,
                         name="KeelSpelledPhoneRecognizer")

    def validate_result(self, pattern_text: str) -> bool:
        digits = spelled_digits(pattern_text)
        # at least one spelled digit: "4 5 6 7 8 9 0" is the digit recognizers' business
        return 7 <= len(digits) <= 15 and bool(re.search(r"[a-z]", pattern_text.lower()))


def spelled_digits(text: str) -> str:
    """The digits a phone number spells: "oh seven double nine 12" -> "079912" (what its
    pseudonym is keyed on, so the spelled and the written number link up)."""
    out: list[str] = []
    repeat = 1
    for tok in re.findall(r"[a-z]+|\d+", text.lower()):
        if tok in ("double", "triple"):
            repeat = 2 if tok == "double" else 3
            continue
        if tok.isdigit():
            out.append(tok * repeat if len(tok) == 1 else tok)
        elif tok in _DIGIT_WORDS:
            out.append(_DIGIT_WORDS[tok] * repeat)
        repeat = 1
    return "".join(out)
