"""Wallet private keys at rest: AES-256-GCM, key derived (HKDF-SHA256) from configured material.

The wallet id is the associated data, so a ciphertext copied onto another wallet's row does
not decrypt. The key material comes from settings (normally ``${KEEL_WALLET_KEY}``) and is
never logged or shown in a repr.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keel.errors import ConfigError, StorageError

MIN_KEY_CHARS = 32
_VERSION = "v1"


class KeyCipher:
    def __init__(self, material: str) -> None:
        if len(material) < MIN_KEY_CHARS:
            raise ConfigError(
                f"wallets.encryption_key must be at least {MIN_KEY_CHARS} characters; "
                "generate one with `keel wallet keygen` and reference it as ${KEEL_WALLET_KEY}"
            )
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"keel-wallets",
                   info=b"wallet-key-encryption-v1").derive(material.encode())
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "KeyCipher(<redacted>)"

    def encrypt(self, plaintext: bytes, wallet_id: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext, wallet_id.encode())
        return f"{_VERSION}:" + base64.urlsafe_b64encode(nonce + sealed).decode()

    def decrypt(self, token: str, wallet_id: str) -> bytes:
        version, _, body = token.partition(":")
        if version != _VERSION:
            raise StorageError(f"wallet {wallet_id}: unknown key encryption format {version!r}")
        raw = base64.urlsafe_b64decode(body)
        try:
            return self._aead.decrypt(raw[:12], raw[12:], wallet_id.encode())
        except InvalidTag:
            raise StorageError(
                f"wallet {wallet_id}: its key does not decrypt with wallets.encryption_key "
                "(was the key changed?)"
            ) from None


def new_key_material() -> str:
    """A fresh random key for ``wallets.encryption_key`` (43 url-safe characters)."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
