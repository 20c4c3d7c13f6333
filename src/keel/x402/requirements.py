"""Reading a 402: decode ``PAYMENT-REQUIRED`` and pick the one option keel can pay.

Everything wrong with a 402 answer is a :class:`PaymentRequirementsInvalid` that names the
problem (malformed header, x402 v1, unknown scheme/network/asset, expiring too soon); it is
raised before any reservation, so nothing is held or charged.
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from x402.http.utils import decode_payment_required_header
from x402.mechanisms.evm.default_assets import find_default_asset
from x402.schemas import PaymentRequired, PaymentRequirements

from keel.errors import PaymentRequirementsInvalid
from keel.wallets.money import MAX_AMOUNT_MICROS, atomic_to_micros, fmt_usd
from keel.wallets.settings import X402ClientSettings
from keel.wallets.store import checked_address

PAYMENT_REQUIRED = "payment-required"
PAYMENT_SIGNATURE = "payment-signature"
PAYMENT_RESPONSE = "payment-response"
_ATOMIC = re.compile(r"0|[1-9][0-9]*")  # ASCII only: [0-9], not \d


@dataclass(frozen=True)
class Offer:
    required: PaymentRequired  # the whole 402 answer (resource, extensions)
    chosen: PaymentRequirements
    micros: int  # the price in micro-USD
    payee: str  # checksummed payTo


def parse_payment_required(headers: Mapping[str, str], host: str) -> PaymentRequired:
    raw = headers.get(PAYMENT_REQUIRED)
    if not raw:
        raise PaymentRequirementsInvalid(
            f"{host} answered 402 without a PAYMENT-REQUIRED header: not an x402 v2 resource "
            "(keel does not pay x402 v1 or other schemes)")
    try:
        required = decode_payment_required_header(raw.strip())
    except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError, ValueError,
            ValidationError) as exc:
        first = str(exc).splitlines()[0][:200]
        raise PaymentRequirementsInvalid(
            f"{host} sent a malformed PAYMENT-REQUIRED header (base64 JSON expected): "
            f"{first}") from None
    if not isinstance(required, PaymentRequired) or required.x402_version != 2:
        raise PaymentRequirementsInvalid(
            f"{host} asks for x402 version {getattr(required, 'x402_version', '?')}; "
            "keel pays x402 v2 only")
    if not required.accepts:
        raise PaymentRequirementsInvalid(f"{host} sent a 402 that accepts no payment option")
    return required


def payment_required_from_object(obj: Any, where: str) -> PaymentRequired | None:
    """The ``PaymentRequired`` inside an MCP tool result's structured content, or None when
    the object is not an x402 answer at all (an ordinary tool error)."""
    if not isinstance(obj, dict) or not ({"x402Version", "x402_version"} & obj.keys()):
        return None
    if not isinstance(obj.get("accepts"), list):
        return None
    version = obj.get("x402Version", obj.get("x402_version"))
    if version != 2:
        raise PaymentRequirementsInvalid(
            f"{where} asks for x402 version {version}; keel pays x402 v2 only")
    try:
        required = PaymentRequired.model_validate(obj)
    except ValidationError as exc:
        first = str(exc).splitlines()[0][:200]
        raise PaymentRequirementsInvalid(
            f"{where} sent malformed payment requirements: {first}") from None
    if not required.accepts:
        raise PaymentRequirementsInvalid(f"{where} asked for a payment but accepts no option")
    return required


def choose(required: PaymentRequired, cfg: X402ClientSettings, host: str) -> Offer:
    """The cheapest option on a configured scheme and network in a known USD stablecoin."""
    payable: list[Offer] = []
    problems: list[str] = []
    for req in required.accepts:
        what = f"{req.scheme} on {req.network}"
        if req.scheme not in cfg.schemes:
            problems.append(f"{what}: unknown scheme (keel pays {cfg.schemes})")
            continue
        if req.network not in cfg.networks:
            problems.append(f"{what}: network not enabled (wallets.x402.networks = "
                            f"{cfg.networks})")
            continue
        asset = find_default_asset(req.asset, req.network)
        if asset is None:
            problems.append(f"{what}: unknown asset {req.asset} (USD stablecoins only)")
            continue
        method = (req.extra or {}).get("assetTransferMethod", "eip3009")
        if method != "eip3009":
            problems.append(f"{what}: transfer method {method!r} is not supported")
            continue
        if not isinstance(req.amount, str) or not _ATOMIC.fullmatch(req.amount):
            # int() would also take " 2000", "+2000", "2_000" and non-ASCII digits, and the
            # string as sent is what gets signed: only the canonical spelling is paid
            problems.append(f"{what}: amount {req.amount!r} is not a plain integer of "
                            "atomic units (ASCII digits 0-9, no sign, spaces, separators or "
                            "leading zeros)")
            continue
        try:
            amount = int(req.amount)
            payee = checked_address(req.pay_to)
        except (ValueError, TypeError):
            problems.append(f"{what}: amount {req.amount!r} or payTo {req.pay_to!r} invalid")
            continue
        except Exception as exc:
            problems.append(f"{what}: {exc}")
            continue
        if amount <= 0:
            problems.append(f"{what}: amount must be positive, got {amount}")
            continue
        if req.max_timeout_seconds < cfg.min_validity_s:
            problems.append(
                f"{what}: the requirements expire in {req.max_timeout_seconds} s; keel needs "
                f"at least {cfg.min_validity_s} s to sign, retry and settle")
            continue
        if req.max_timeout_seconds > cfg.max_validity_s:
            problems.append(
                f"{what}: the requirements stay valid for {req.max_timeout_seconds} s; keel "
                f"signs authorizations valid for at most {cfg.max_validity_s} s "
                "(wallets.x402.max_validity_s)")
            continue
        micros = atomic_to_micros(amount, asset["decimals"])
        if micros > MAX_AMOUNT_MICROS:  # would not fit the books (64-bit integers)
            problems.append(f"{what}: amount {amount} is over keel's limit of "
                            f"{fmt_usd(MAX_AMOUNT_MICROS)} per payment")
            continue
        payable.append(Offer(required, req, micros, payee))
    if not payable:
        raise PaymentRequirementsInvalid(
            f"no payment option from {host} can be paid: " + "; ".join(problems))
    return min(payable, key=lambda o: o.micros)
