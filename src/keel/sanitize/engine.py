"""The sanitizer: presidio finds PII, keel replaces it with stable keyed pseudonyms.

``Sanitizer(key=...).sanitize(text)`` returns the text with every entity replaced by
``<TYPE_hhhhhhhhhh>``, where ``hhhhhhhhhh`` is an HMAC-SHA256 of the normalised value
under ``key``: the same email (or phone, card, name) gets the same pseudonym in every
record, so one user's records stay linked, and without the key the value cannot be
recovered or confirmed by guessing. Entity offsets refer to the input text.

Recognizers (presidio ``AnalyzerEngine`` with the no-op NLP engine: no spaCy model):
presidio's IP, US SSN, UK NHS/NINO and URL recognizers; keel's phone, card, IBAN, email
(offline), spelled-out emails and phone numbers ("x dot y at gmail dot com", "four one
five ..."), ID/secret patterns (:mod:`keel.sanitize.patterns`) and person names
(:mod:`keel.sanitize.names`). Overlaps are resolved by score, then length; the survivors
go through presidio's ``AnonymizerEngine`` with a keyed ``custom`` operator per type.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial

from presidio_analyzer import AnalyzerEngine, RecognizerRegistry, RecognizerResult
from presidio_analyzer.nlp_engine import NoOpNlpEngine
from presidio_analyzer.predefined_recognizers import (
    IpRecognizer,
    NhsRecognizer,
    UkNinoRecognizer,
    UrlRecognizer,
    UsSsnRecognizer,
)
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig

from keel.errors import InvalidRequest
from keel.sanitize.names import KeelNameRecognizer, NameLexicon
from keel.sanitize.patterns import (
    KeelCardRecognizer,
    KeelEmailRecognizer,
    KeelIbanRecognizer,
    KeelIdRecognizer,
    KeelPhoneRecognizer,
    KeelSpelledEmailRecognizer,
    KeelSpelledPhoneRecognizer,
    spelled_digits,
)

ENTITY_TYPES: tuple[str, ...] = (
    "PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS",
    "US_SSN", "UK_NHS", "UK_NINO", "URL", "ID",
)
# Ties between recognizers for the same characters: the more specific type wins.
_PRIORITY = {"US_SSN": 9, "CREDIT_CARD": 8, "IBAN_CODE": 8, "EMAIL_ADDRESS": 8,
             "IP_ADDRESS": 7, "UK_NINO": 7, "UK_NHS": 6, "PHONE_NUMBER": 5, "URL": 4,
             "ID": 2, "PERSON": 1}
MIN_KEY_BYTES = 16
HASH_HEX = 10
MIN_SCORE = 0.3


@dataclass(frozen=True)
class Entity:
    """One PII span of the input: ``text[start:end]`` became ``replacement``."""

    type: str
    start: int
    end: int
    replacement: str
    score: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {"type": self.type, "start": self.start, "end": self.end,
                "replacement": self.replacement, "score": round(self.score, 3)}


@dataclass(frozen=True)
class SanitizeResult:
    text: str
    entities: list[Entity] = field(default_factory=list)


def _normalise(entity_type: str, value: str) -> str:
    if entity_type == "PHONE_NUMBER":  # written or spelled out: keyed on its digits
        return spelled_digits(re.sub(r"\s*x\s*\d{1,5}$", "", value))
    if entity_type in ("CREDIT_CARD", "US_SSN", "UK_NHS"):
        return re.sub(r"\D", "", value.split("x")[0])
    if entity_type in ("IBAN_CODE", "UK_NINO"):
        return re.sub(r"\s", "", value).upper()
    return " ".join(value.split()).lower()


class Sanitizer:
    """Find and pseudonymise PII. Thread-safe after construction; build one per process
    (loading presidio and the name lexicon takes about a second)."""

    def __init__(self, key: bytes, *, entities: Sequence[str] | None = None,
                 min_score: float = MIN_SCORE) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) < MIN_KEY_BYTES:
            raise InvalidRequest(
                f"the sanitizer key must be at least {MIN_KEY_BYTES} random bytes")
        unknown = set(entities or ()) - set(ENTITY_TYPES)
        if unknown:
            raise InvalidRequest(f"unknown entity types {sorted(unknown)}; "
                                 f"known: {', '.join(ENTITY_TYPES)}")
        self._key = bytes(key)
        self.entities = list(entities or ENTITY_TYPES)
        self.min_score = min_score
        logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
        registry = RecognizerRegistry(supported_languages=["en"])
        for rec in (IpRecognizer(), UsSsnRecognizer(), NhsRecognizer(), UkNinoRecognizer(),
                    UrlRecognizer(), KeelEmailRecognizer(), KeelPhoneRecognizer(),
                    KeelCardRecognizer(), KeelIbanRecognizer(), KeelIdRecognizer(),
                    KeelSpelledEmailRecognizer(), KeelSpelledPhoneRecognizer(),
                    KeelNameRecognizer(NameLexicon())):
            registry.add_recognizer(rec)
        nlp = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
        self._analyzer = AnalyzerEngine(registry=registry, nlp_engine=nlp,
                                        supported_languages=["en"])
        self._anonymizer = AnonymizerEngine()  # type: ignore[no-untyped-call]
        self._operators = {t: OperatorConfig("custom", {"lambda": partial(self.pseudonym, t)})
                           for t in ENTITY_TYPES}

    def __repr__(self) -> str:  # never show the key
        return f"<Sanitizer entities={len(self.entities)}>"

    def pseudonym(self, entity_type: str, value: str) -> str:
        """The stable replacement for ``value``: ``<TYPE_hmac>``."""
        mac = hmac.new(self._key, f"{entity_type}\x00{_normalise(entity_type, value)}"
                       .encode(), hashlib.sha256).hexdigest()[:HASH_HEX]
        return f"<{entity_type}_{mac}>"

    def analyze(self, text: str) -> list[RecognizerResult]:
        """Non-overlapping findings, in text order."""
        found = self._analyzer.analyze(text=text, language="en", entities=self.entities,
                                       score_threshold=self.min_score)
        return _resolve(found)

    def sanitize(self, text: str) -> SanitizeResult:
        if not isinstance(text, str):
            raise InvalidRequest("sanitize() takes a str")
        if not text:
            return SanitizeResult(text, [])
        found = self.analyze(text)
        if not found:
            return SanitizeResult(text, [])
        out = self._anonymizer.anonymize(text=text,
                                         analyzer_results=found,  # type: ignore[arg-type]
                                         operators=self._operators,
                                         merge_entities_with_spaces=False)
        ents = [Entity(r.entity_type, r.start, r.end,
                       self.pseudonym(r.entity_type, text[r.start:r.end]), r.score)
                for r in found]
        return SanitizeResult(out.text, ents)

    def sanitize_many(self, texts: Iterable[str]) -> list[SanitizeResult]:
        return [self.sanitize(t) for t in texts]


def _resolve(found: list[RecognizerResult]) -> list[RecognizerResult]:
    """Keep the best of overlapping findings: score, then type priority, then length."""
    ranked = sorted(found, key=lambda r: (-r.score, -_PRIORITY.get(r.entity_type, 0),
                                          -(r.end - r.start), r.start))
    kept: list[RecognizerResult] = []
    for r in ranked:
        if all(r.end <= k.start or r.start >= k.end for k in kept):
            kept.append(r)
    return sorted(kept, key=lambda r: r.start)
