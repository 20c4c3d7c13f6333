"""PII sanitizer shared by QA suites and the feedback loop: ``Sanitizer(key).sanitize``."""

from keel.sanitize.engine import ENTITY_TYPES, Entity, Sanitizer, SanitizeResult

__all__ = ["ENTITY_TYPES", "Entity", "SanitizeResult", "Sanitizer"]
