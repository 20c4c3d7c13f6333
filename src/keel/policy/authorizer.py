"""Cedar authorization for tool calls, failing closed.

Everything Cedar parses is parsed once: the policy set (per applied version), the schema
(per tool registry) and the entities (tools once, each agent on first sight). A decision is
``allow`` only when Cedar answers Allow with no evaluation error; NoDecision, any error
(an argument of the wrong type, a missing field, an unknown tool, a policy that fails at
evaluation), an unusable policy store or an empty one are all deny. Policy reloads swap one
immutable snapshot reference, so requests in flight finish on the version they started with.

Decisions are remembered per snapshot: Cedar's answer is a pure function of the policies,
the schema, the entities (fixed per agent) and the request, so an identical (agent, tenant,
tool, context) under the same snapshot gets the same decision without asking Cedar again
(~200 us -> ~5 us). The key is the whole context except the clock fields (``now.minute``,
``now.epoch``, ...) that no policy of the snapshot can read: a field is left out only when
its name appears nowhere in the policy text and ``now`` is only ever read field by field.
A new snapshot (any policy change) starts an empty memo; replays against older snapshots
are never memoised.
"""

from __future__ import annotations

import difflib
import json
import re
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import cedarpy
import orjson

from keel.errors import InvalidPolicy
from keel.policy.decimals import (
    DecimalMisfit,
    compile_policy_text,
    decimal_shape,
    explain,
    to_cedar,
)
from keel.policy.schema import (
    ToolSignature,
    build_schema,
    drop_nulls,
    null_shape,
    record_type,
    untyped_arguments,
)

Outcome = Literal["allow", "deny", "approval"]
APPROVAL_KEY = "approval"
APPROVAL_VALUES = frozenset({"required"})
DEFAULT_DENY = "no permit policy matched (default deny)"
MEMO_SIZE = 4096  # decisions remembered per policy snapshot
# `now` read as a whole record (anything but `now.x`, `now["x"]` or `now has x`)
_WHOLE_NOW = re.compile(r"""\bnow\b(?!\s*(?:\.\s*\w|\[\s*"|has\b))""")


@dataclass(frozen=True)
class PolicySnapshot:
    """One parsed policy version. ``policies is None`` means unusable: deny everything."""

    version: int | None
    text: str
    policies: cedarpy.PolicySet | None
    labels: Mapping[str, str] = field(default_factory=dict)  # cedar id -> @id or cedar id
    approval: frozenset[str] = frozenset()  # cedar ids annotated @approval("required")
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class AuthzRequest:
    agent: str
    tenant: str
    tool: str
    arguments: Any  # the raw tool arguments (validated here, not trusted)
    now: Mapping[str, int]
    session_id: str = ""
    spend_cents: int = 0


@dataclass(frozen=True, slots=True)
class AuthzDecision:
    outcome: Outcome
    policy_ids: tuple[str, ...]
    reason: str
    latency_us: float
    version: int | None
    context: dict[str, Any] | None = None

    @property
    def allowed(self) -> bool:
        return self.outcome == "allow"


def principal_id(tenant: str, agent: str) -> str:
    """The Cedar id of an agent: ``<tenant>/<agent>``, so tenant A's ``bot`` and tenant B's
    ``bot`` are different principals (``%`` and ``/`` in the tenant are written ``%25`` and
    ``%2F``, so the first ``/`` always ends the tenant). ``tools.policy.roles`` uses it too."""
    return tenant.replace("%", "%25").replace("/", "%2F") + "/" + agent


def parse_policies(text: str, version: int | None = None) -> PolicySnapshot:
    """Parse Cedar text into a snapshot (raises InvalidPolicy with Cedar's own message).

    The snapshot keeps ``text`` as written; Cedar gets it with decimal comparisons as method
    calls (:func:`keel.policy.decimals.compile_policy_text`)."""
    compiled = compile_policy_text(text)
    try:
        policies = cedarpy.PolicySet.from_str(compiled)
        tree = cedarpy.policies_to_pst(compiled)
    except ValueError as exc:
        raise InvalidPolicy(f"the policy does not parse: {exc}") from None
    labels: dict[str, str] = {}
    approval: set[str] = set()
    for pid, node in {**tree.static_policies, **tree.templates}.items():
        labels[pid] = node.annotations.get("id") or pid
        if approval_annotation(labels[pid], node.annotations):
            approval.add(pid)
    return PolicySnapshot(version, text, policies, labels, frozenset(approval))


def approval_annotation(label: str, annotations: Mapping[str, str | None]) -> bool:
    """Whether a policy's annotations hold its calls for a human (``@approval("required")``).

    A misspelt approval annotation must never turn a permit meant to wait for a human into
    a plain allow, so a key that looks like ``approval`` but is not exactly it
    (``@Approval``, ``@aproval``, ``@approvals``) and any value other than ``"required"`` are
    refused with what to write instead."""
    for key in annotations:
        if key != APPROVAL_KEY and _looks_like_approval(key):
            raise InvalidPolicy(
                f"policy {label!r} has the annotation @{key}(...), which keel does not know; "
                f'write @{APPROVAL_KEY}("required") (lower case) to hold its calls for a '
                "human's approval")
    if APPROVAL_KEY not in annotations:
        return False
    value = annotations[APPROVAL_KEY]
    if value is None or value.strip().lower() not in APPROVAL_VALUES:
        raise InvalidPolicy(
            f"policy {label!r} has @{APPROVAL_KEY}({json.dumps(value or '')}); the only "
            f'supported value is @{APPROVAL_KEY}("required") (hold the call for a human); '
            "to allow without approval, remove the annotation")
    return True


def _looks_like_approval(key: str) -> bool:
    k = key.strip().lower()
    return k.startswith("approv") or k.startswith("aprov") or \
        difflib.SequenceMatcher(None, k, APPROVAL_KEY).ratio() >= 0.75


def unusable(version: int | None, text: str, problem: str) -> PolicySnapshot:
    return PolicySnapshot(version, text, None, problem=problem)


class Authorizer:
    """Decides tool calls against the current policy snapshot."""

    def __init__(
        self, tools: Sequence[ToolSignature], *, roles: Mapping[str, Sequence[str]] | None = None,
        snapshot: PolicySnapshot | None = None, agent_cache_size: int = 10_000,
    ) -> None:
        self.tools = {t.name: t for t in tools}
        self.schema, self.schema_text = build_schema(tools)
        self.roles = {k: list(v) for k, v in (roles or {}).items()}
        # per tool: the arguments Cedar cannot type (a call sending one is denied: no
        # policy could see it), where nulls mean "absent", and where decimals sit
        self._decimals = {t.name: decimal_shape(record_type(t.input_schema)) for t in tools}
        self._untyped = {t.name: untyped_arguments(t.input_schema) for t in tools}
        self._nulls = {t.name: null_shape(t.input_schema) for t in tools}
        tool_entities = [{"uid": {"type": "Tool", "id": t.name},
                          "attrs": {"server": t.server}, "parents": []} for t in tools]
        self._base = cedarpy.Entities.from_json_str(json.dumps(tool_entities), self.schema)
        self._agents: dict[tuple[str, str], cedarpy.Entities] = {}
        self._agent_cache_size = agent_cache_size
        self.snapshot = snapshot or unusable(None, "", "no policy has been applied yet")
        # the decision memo: for which snapshot, the clock fields it ignores, the decisions
        self._memo_for: PolicySnapshot | None = None
        self._memo_skip: frozenset[str] = frozenset()
        self._memo: OrderedDict[bytes, AuthzDecision] = OrderedDict()
        self.memo_hits = 0  # decisions answered from the memo (metrics, tests)

    # -- policies -------------------------------------------------------------------------

    def validate(self, text: str) -> PolicySnapshot:
        """Parse and validate against this schema; raise InvalidPolicy with Cedar's message."""
        if not text.strip():
            raise InvalidPolicy("the policy file is empty; an empty policy set denies every "
                                "tool call, so keel refuses to apply it")
        snap = parse_policies(text)
        result = cedarpy.validate_policies(compile_policy_text(text), self.schema)
        if not result.validation_passed:
            problems = "; ".join(
                f"[{snap.labels.get(e.policy_id, e.policy_id)}] {explain(e.error)}"
                if e.policy_id else explain(e.error) for e in result.errors
            )
            raise InvalidPolicy(f"the policy does not validate against the tool schema: "
                                f"{problems}")
        return snap

    def load(self, text: str, version: int | None) -> PolicySnapshot:
        """Install a stored version; anything unusable installs deny-all (and says why)."""
        try:
            snap = self.validate(text)
            snap = PolicySnapshot(version, text, snap.policies, snap.labels, snap.approval)
        except InvalidPolicy as exc:
            snap = unusable(version, text, exc.message)
        self.snapshot = snap
        return snap

    # -- decisions -------------------------------------------------------------------------

    def _principal(self, agent: str, tenant: str) -> cedarpy.Entities:
        key = (agent, tenant)
        ents = self._agents.get(key)
        if ents is None:
            if len(self._agents) >= self._agent_cache_size:
                self._agents.clear()
            uid = principal_id(tenant, agent)
            delta = [{"uid": {"type": "Agent", "id": uid},
                      "attrs": {"tenant": tenant, "name": agent,
                                "roles": self.roles.get(uid, [])},
                      "parents": []}]
            ents = self._base.with_added_json_str(json.dumps(delta), self.schema)
            self._agents[key] = ents
        return ents

    def context_for(self, req: AuthzRequest) -> dict[str, Any] | str:
        """The Cedar context, or a reason to deny before asking Cedar."""
        if req.tool not in self.tools:
            return f"unknown tool {req.tool!r}"
        if not isinstance(req.arguments, dict):
            return "tool arguments must be a JSON object"
        untyped = sorted(k for k in req.arguments if k in self._untyped[req.tool])
        if untyped:  # never dropped: the tool would get a value no policy has seen
            return (f"argument {untyped[0]!r} of {req.tool!r} has a JSON schema type that "
                    "Cedar policies cannot see (e.g. a union of types or no type), so the "
                    "call is denied; give the argument one type (X or X | null) in the "
                    "tool's input schema, or leave it out of the call")
        ctx: dict[str, Any] = drop_nulls(self._nulls[req.tool], dict(req.arguments))
        shape = self._decimals[req.tool]
        if shape is not None:
            try:
                ctx = to_cedar(shape, ctx, "arguments")
            except DecimalMisfit as exc:  # never rounded: fail closed
                return str(exc)
        ctx["now"] = dict(req.now)
        ctx["session"] = {"id": req.session_id, "spend_cents": req.spend_cents}
        return ctx

    def authorize(self, req: AuthzRequest, snapshot: PolicySnapshot | None = None
                  ) -> AuthzDecision:
        t0 = time.perf_counter()
        snap = snapshot or self.snapshot
        ctx = self.context_for(req)
        if isinstance(ctx, str):
            return _deny(ctx, (), t0, snap.version, None)
        return self.decide(req.agent, req.tenant, req.tool, ctx, snap, t0)

    def _memo_key(self, agent: str, tenant: str, tool: str, ctx: dict[str, Any],
                   snap: PolicySnapshot) -> bytes | None:
        """The memo key for this request under the current snapshot; None: do not memoise."""
        if snap is not self.snapshot or snap.policies is None:
            return None
        if self._memo_for is not snap:
            compiled = compile_policy_text(snap.text)
            clock = ("hour", "minute", "weekday", "day", "month", "year", "epoch")
            self._memo_skip = frozenset() if _WHOLE_NOW.search(compiled) else frozenset(
                f for f in clock if not re.search(rf"\b{f}\b", compiled))
            self._memo.clear()
            self._memo_for = snap
        now = ctx.get("now")
        keyed = ctx
        if self._memo_skip and isinstance(now, dict):
            keyed = {**ctx, "now": {k: v for k, v in now.items() if k not in self._memo_skip}}
        try:
            return orjson.dumps([agent, tenant, tool, keyed], option=orjson.OPT_SORT_KEYS)
        except TypeError:  # a value JSON cannot spell exactly: ask Cedar every time
            return None

    def decide(self, agent: str, tenant: str, tool: str, ctx: dict[str, Any],
               snap: PolicySnapshot, t0: float | None = None) -> AuthzDecision:
        """Cedar's answer for a ready context (also used to replay logged decisions)."""
        t0 = time.perf_counter() if t0 is None else t0
        key = self._memo_key(agent, tenant, tool, ctx, snap)
        if key is not None:
            known = self._memo.get(key)
            if known is not None:
                self._memo.move_to_end(key)
                self.memo_hits += 1
                return AuthzDecision(known.outcome, known.policy_ids, known.reason, _us(t0),
                                     known.version, ctx)
        decision = self._decide(agent, tenant, tool, ctx, snap, t0)
        if key is not None:
            self._memo[key] = decision
            if len(self._memo) > MEMO_SIZE:
                self._memo.popitem(last=False)
        return decision

    def _decide(self, agent: str, tenant: str, tool: str, ctx: dict[str, Any],
                snap: PolicySnapshot, t0: float) -> AuthzDecision:
        if tool not in self.tools:
            return _deny(f"unknown tool {tool!r}", (), t0, snap.version, ctx)
        if snap.policies is None:
            return _deny(f"policy store unusable: {snap.problem}", (), t0, snap.version, ctx)
        try:
            result = cedarpy.is_authorized(
                {"principal": {"type": "Agent", "id": principal_id(tenant, agent)},
                 "action": {"type": "Action", "id": tool},
                 "resource": {"type": "Tool", "id": tool}, "context": ctx},
                snap.policies, self._principal(agent, tenant), self.schema,
            )
        except Exception as exc:  # any failure inside Cedar is a deny, never an allow
            return _deny(f"authorization failed: {exc}", (), t0, snap.version, ctx)
        diag = result.diagnostics
        ids = tuple(snap.labels.get(p, p) for p in diag.reasons)
        if diag.errors:
            return _deny("policy evaluation error (fail closed): " + "; ".join(diag.errors),
                         ids, t0, snap.version, ctx)
        if result.decision != cedarpy.Decision.Allow:
            if result.decision == cedarpy.Decision.Deny and ids:
                return _deny(f"forbidden by policy {', '.join(ids)}", ids, t0,
                             snap.version, ctx)
            reason = DEFAULT_DENY if result.decision == cedarpy.Decision.Deny else \
                "no decision (fail closed)"
            return _deny(reason, ids, t0, snap.version, ctx)
        if any(p in snap.approval for p in diag.reasons):
            held = tuple(snap.labels.get(p, p) for p in diag.reasons if p in snap.approval)
            return AuthzDecision("approval", held,
                                 f"policy {', '.join(held)} requires a human's approval",
                                 _us(t0), snap.version, ctx)
        return AuthzDecision("allow", ids, f"permitted by {', '.join(ids)}", _us(t0),
                             snap.version, ctx)


def _us(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e6


def _deny(reason: str, ids: tuple[str, ...], t0: float, version: int | None,
          ctx: dict[str, Any] | None) -> AuthzDecision:
    return AuthzDecision("deny", ids, reason, _us(t0), version, ctx)
