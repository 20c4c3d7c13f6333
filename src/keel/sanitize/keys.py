"""Where the sanitizer's HMAC key comes from: config, environment, or a private key file.

Order: ``$KEEL_SANITIZE_KEY``, then ``[qa] sanitize_key`` in keel.toml (write it as
``"${SOME_VAR}"`` to keep it out of the file), else ``<data_dir>/sanitize.key``: 32 random
bytes (hex) created on first use with mode 0600. Keep the key stable: pseudonyms made
under another key do not link to earlier ones.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from keel.config import Settings
from keel.errors import ConfigError
from keel.sanitize.engine import MIN_KEY_BYTES
from keel.storage.private_files import private_dir

KEY_FILE = "sanitize.key"
ENV = "KEEL_SANITIZE_KEY"


def key_path(settings: Settings) -> Path:
    return settings.data_dir / KEY_FILE


def sanitizer_key(settings: Settings) -> bytes:
    """The key bytes; creates the key file when neither env nor config sets one."""
    configured = os.environ.get(ENV) or (
        settings.qa.sanitize_key.get_secret_value() if settings.qa.sanitize_key else "")
    if configured:
        key = configured.encode()
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(f"the sanitizer key ({ENV} or [qa] sanitize_key) must be at "
                              f"least {MIN_KEY_BYTES} characters")
        return key
    path = key_path(settings)
    if not path.exists():
        private_dir(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
    key = path.read_text().strip().encode()
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"{path} holds a key shorter than {MIN_KEY_BYTES} characters: "
                          "delete it to make a new one (earlier pseudonyms will not link)")
    return key
