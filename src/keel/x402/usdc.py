"""An in-memory USDC token for the offline sandbox: the chain a local facilitator settles on.

It implements the x402 SDK's ``FacilitatorEvmSigner`` protocol, so the SDK's own
``ExactEvmScheme`` facilitator verifies signatures (EIP-712 / EIP-3009 ecrecover) and calls
this object where it would call a node: ``read_contract`` simulates
``transferWithAuthorization``, ``write_contract`` executes it. The replay and balance checks
are ours: a used ``(from, nonce)`` authorization or a short balance reverts with the same
messages the real FiatToken contract uses, which the SDK maps to its error codes.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from eth_account import Account
from eth_utils.address import to_checksum_address
from x402.mechanisms.evm.types import TransactionReceipt, TypedDataDomain, TypedDataField

USDC_DECIMALS = 6


class Revert(RuntimeError):
    """A simulated contract revert (the SDK recognises the word 'revert')."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"execution reverted: {reason}")


@dataclass
class Transfer:
    tx_hash: str
    payer: str
    payee: str
    amount: int
    nonce: str
    at: float


@dataclass
class InMemoryUSDC:
    """Balances, used authorization nonces and transfers of one USDC contract on one chain.

    ``faucet`` atomic units are credited once to any address the first time it is seen, so
    freshly created agent wallets can pay in the sandbox without a mint step.
    """

    token: str
    chain_id: int
    facilitator: str = field(default_factory=lambda: Account.create().address)
    faucet: int = 0
    balances: dict[str, int] = field(default_factory=dict)
    used_nonces: set[tuple[str, str]] = field(default_factory=set)
    transfers: list[Transfer] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- bookkeeping ----------------------------------------------------------------------

    def _account(self, address: str) -> str:
        addr = to_checksum_address(address)
        if addr not in self._seen:
            self._seen.add(addr)
            self.balances[addr] = self.balances.get(addr, 0) + self.faucet
        return addr

    def mint(self, address: str, amount: int) -> int:
        if amount <= 0:
            raise ValueError("mint amount must be positive")
        with self._lock:
            addr = self._account(address)
            self.balances[addr] += amount
            return self.balances[addr]

    def balance_of(self, address: str) -> int:
        with self._lock:
            return self.balances[self._account(address)]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "token": self.token, "chain_id": self.chain_id,
                "balances": dict(self.balances),
                "transfers": [t.__dict__ for t in self.transfers],
                "used_nonces": len(self.used_nonces),
            }

    # -- the token contract ------------------------------------------------------------------

    def _check(self, payer: str, payee: str, value: int, valid_after: int, valid_before: int,
               nonce: bytes) -> tuple[str, str, tuple[str, str]]:
        frm = self._account(payer)
        to = self._account(payee)
        key = (frm, "0x" + nonce.hex())
        now = int(time.time())
        if key in self.used_nonces:
            raise Revert("FiatTokenV2: authorization is used or canceled")
        if now <= valid_after:
            raise Revert("FiatTokenV2: authorization is not yet valid")
        if now >= valid_before:
            raise Revert("FiatTokenV2: authorization is expired")
        if value <= 0:
            raise Revert("FiatTokenV2: invalid value")
        if self.balances[frm] < value:
            raise Revert("ERC20: transfer amount exceeds balance")
        return frm, to, key

    def _transfer_args(self, function_name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
        if function_name != "transferWithAuthorization":
            raise Revert(f"function {function_name} is not implemented by the sandbox token")
        payer, payee, value, valid_after, valid_before, nonce = args[:6]
        return payer, payee, int(value), int(valid_after), int(valid_before), bytes(nonce)

    def read_contract(self, address: str, abi: list[dict[str, Any]], function_name: str,
                      *args: Any) -> Any:
        self._require_token(address)
        with self._lock:
            if function_name == "balanceOf":
                return self.balances[self._account(args[0])]
            if function_name == "authorizationState":
                return (to_checksum_address(args[0]), "0x" + bytes(args[1]).hex()) \
                    in self.used_nonces
            if function_name == "name":
                return "USDC"
            if function_name == "version":
                return "2"
            if function_name == "decimals":
                return USDC_DECIMALS
            self._check(*self._transfer_args(function_name, args))  # eth_call: simulate only
            return None

    def write_contract(self, address: str, abi: list[dict[str, Any]], function_name: str,
                       *args: Any, data_suffix: str | None = None) -> str:
        self._require_token(address)
        with self._lock:
            payer, payee, value, after, before, nonce = self._transfer_args(function_name, args)
            frm, to, key = self._check(payer, payee, value, after, before, nonce)
            self.used_nonces.add(key)
            self.balances[frm] -= value
            self.balances[to] += value
            tx = "0x" + hashlib.sha256(f"{self.chain_id}:{frm}:{key[1]}".encode()).hexdigest()
            self.transfers.append(Transfer(tx, frm, to, value, key[1], time.time()))
            return tx

    def _require_token(self, address: str) -> None:
        if to_checksum_address(address) != to_checksum_address(self.token):
            raise Revert(f"no contract at {address} in the sandbox")

    # -- the rest of FacilitatorEvmSigner -------------------------------------------------------

    def get_addresses(self) -> list[str]:
        return [self.facilitator]

    def get_chain_id(self) -> int:
        return self.chain_id

    def get_code(self, address: str) -> bytes:
        return b"\x60\x80" if to_checksum_address(address) == to_checksum_address(
            self.token) else b""

    def get_balance(self, address: str, token_address: str) -> int:
        self._require_token(token_address)
        return self.balance_of(address)

    def verify_typed_data(self, address: str, domain: TypedDataDomain,
                          types: dict[str, list[TypedDataField]], primary_type: str,
                          message: dict[str, Any], signature: bytes) -> bool:
        from x402.mechanisms.evm.verify import _hash_typed_data

        digest = _hash_typed_data(domain, dict(types), primary_type, message)  # type: ignore[arg-type]
        try:
            signer = Account._recover_hash(digest, signature=signature)
        except Exception:
            return False
        return bool(to_checksum_address(signer) == to_checksum_address(address))

    def send_transaction(self, to: str, data: bytes) -> str:
        raise Revert("raw transactions are not supported by the sandbox chain")

    def wait_for_transaction_receipt(self, tx_hash: str) -> TransactionReceipt:
        with self._lock:
            for i, t in enumerate(self.transfers):
                if t.tx_hash == tx_hash:
                    return TransactionReceipt(status=1, block_number=i + 1, tx_hash=tx_hash)
        raise RuntimeError(f"unknown transaction {tx_hash}")
