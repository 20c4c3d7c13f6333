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
