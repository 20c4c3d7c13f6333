"""Agent wallets: one EVM account per (tenant, agent), keel-generated or externally configured.

A keel-generated key is created with eth-account and stored only AES-GCM sealed
(:class:`KeyCipher`). An external signer is a reference (``env:VAR``) resolved when signing,
so the key never touches keel's database. Either way the signer is the x402 SDK's
``EthAccountSigner``; :class:`PaymentSigner` is the port other signers (KMS, HSM) implement.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from typing import Any, Protocol

from eth_account import Account
from eth_utils.address import is_hex_address, to_checksum_address
from sqlalchemy import Connection, select
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.mechanisms.evm.types import TypedDataDomain, TypedDataField

from keel.errors import ConfigError, Conflict, InvalidRequest, NotFound
from keel.wallets import ledger
from keel.wallets.crypto import KeyCipher
from keel.wallets.tables import wallets


class PaymentSigner(Protocol):
    """What the x402 client needs from a wallet (the SDK's ``ClientEvmSigner``)."""

    @property
    def address(self) -> str: ...

    def sign_typed_data(self, domain: TypedDataDomain, types: dict[str, list[TypedDataField]],
                        primary_type: str, message: dict[str, Any]) -> bytes: ...


@dataclass(frozen=True)
class Wallet:
    id: str
    tenant: str
    agent: str
    address: str
    external: bool
    created_at: float

    def __repr__(self) -> str:  # no key material lives here, but keep reprs boring anyway
        return f"Wallet(id={self.id!r}, tenant={self.tenant!r}, agent={self.agent!r}, " \
               f"address={self.address!r})"


def _wallet(row: Any) -> Wallet:
    return Wallet(row.id, row.tenant, row.agent, row.address, row.key_ref is not None,
                  row.created_at)


class WalletStore:
    def __init__(self, cipher: KeyCipher) -> None:
        self.cipher = cipher

    def create(self, conn: Connection, tenant: str, agent: str, *,
               key_ref: str | None = None) -> Wallet:
        if not tenant.strip() or not agent.strip():
            raise InvalidRequest("a wallet needs a tenant and an agent")
        existing = conn.execute(select(wallets.c.id).where(
            wallets.c.tenant == tenant, wallets.c.agent == agent)).first()
        if existing is not None:
            raise Conflict(f"agent {agent!r} of tenant {tenant!r} already has wallet "
                           f"{existing.id}")
        wallet_id = "w_" + secrets.token_hex(6)
        ciphertext = None
        if key_ref is not None:
            address = self._external(key_ref).address
        else:
            account = Account.create()
            address = account.address
            ciphertext = self.cipher.encrypt(bytes(account.key), wallet_id)
        now = time.time()
        conn.execute(wallets.insert().values(
            id=wallet_id, tenant=tenant, agent=agent, address=address,
            key_ciphertext=ciphertext, key_ref=key_ref, created_at=now))
        ledger.open_accounts(conn, tenant, wallet_id)
        return Wallet(wallet_id, tenant, agent, address, key_ref is not None, now)

    def get(self, conn: Connection, tenant: str, agent: str) -> Wallet:
        row = conn.execute(select(wallets).where(wallets.c.tenant == tenant,
                                                 wallets.c.agent == agent)).first()
        if row is None:
            raise NotFound(f"agent {agent!r} of tenant {tenant!r} has no wallet: create one "
                           f"with `keel wallet create --tenant {tenant} --agent {agent}`")
        return _wallet(row)

    def list(self, conn: Connection, tenant: str | None = None) -> list[Wallet]:
        q = select(wallets).order_by(wallets.c.created_at)
        if tenant:
            q = q.where(wallets.c.tenant == tenant)
        return [_wallet(r) for r in conn.execute(q)]

    def signer(self, conn: Connection, wallet_id: str) -> PaymentSigner:
        row = conn.execute(select(wallets).where(wallets.c.id == wallet_id)).one()
        if row.key_ref is not None:
            return self._external(row.key_ref)
        key = self.cipher.decrypt(row.key_ciphertext, wallet_id)
        return EthAccountSigner(Account.from_key(key))

    @staticmethod
    def _external(key_ref: str) -> EthAccountSigner:
        scheme, _, name = key_ref.partition(":")
        if scheme != "env" or not name:
            raise InvalidRequest(f"external signer {key_ref!r}: use env:VARIABLE_NAME")
        value = os.environ.get(name)
        if not value:
            raise ConfigError(f"external signer {key_ref}: ${name} is not set")
        try:
            return EthAccountSigner(Account.from_key(value))
        except (ValueError, TypeError):
            raise ConfigError(f"${name} is not a valid EVM private key") from None


def checked_address(address: str) -> str:
    if not is_hex_address(address):
        raise InvalidRequest(f"{address!r} is not an EVM address (0x + 40 hex digits)")
    return str(to_checksum_address(address))
