"""``[qa]`` settings: synthetic QA suites, the swarm runner and its gate."""

from __future__ import annotations

from pydantic import SecretStr

from keel.settings_section import Section


class QaSettings(Section):
    enabled: bool = False
    # HMAC key for the sanitizer's pseudonyms (else $KEEL_SANITIZE_KEY or <data_dir>/sanitize.key)
    sanitize_key: SecretStr | None = None
