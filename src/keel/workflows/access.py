"""Which workflows an agent key may start: Cedar, failing closed.

``permit(principal == Agent::"support-bot", action == Action::"StartExecution",
resource == Workflow::"refund");`` lets that agent start ``refund``. Agents are in
``Agent`` entities with a ``tenant`` attribute; no policy, a NoDecision or any Cedar
error is a deny. Keys that are not agent keys (apps, admins) are not asked about here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import cedarpy

from keel.errors import ConfigError

SCHEMA = json.dumps({"": {
    "entityTypes": {"Agent": {"shape": {"type": "Record", "attributes": {
        "tenant": {"type": "String"}}}}, "Workflow": {}},
    "actions": {"StartExecution": {"appliesTo": {"principalTypes": ["Agent"],
                                                 "resourceTypes": ["Workflow"],
                                                 "context": {"type": "Record",
                                                             "attributes": {}}}}},
}})


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str


class WorkflowAccess:
    def __init__(self, policy_text: str) -> None:
        self.text = policy_text
        if policy_text.strip():
            result = cedarpy.validate_policies(policy_text, SCHEMA)
            if not result.validation_passed:
                raise ConfigError("[workflows] agent_policy does not validate: " + "; ".join(
                    e.error for e in result.errors))

    def may_start(self, agent: str, tenant: str, workflow: str) -> Verdict:
        if not self.text.strip():
            return Verdict(False, "no [workflows] agent_policy permits agents to start "
                                  "workflows")
        entities = [{"uid": {"type": "Agent", "id": agent}, "attrs": {"tenant": tenant},
                     "parents": []}, {"uid": {"type": "Workflow", "id": workflow},
                                      "attrs": {}, "parents": []}]
        request = {"principal": f'Agent::{json.dumps(agent)}',
                   "action": 'Action::"StartExecution"',
                   "resource": f'Workflow::{json.dumps(workflow)}', "context": {}}
        try:
            r = cedarpy.is_authorized(request, self.text, entities, schema=SCHEMA)
        except Exception as exc:  # any Cedar failure is a deny
            return Verdict(False, f"policy evaluation failed: {exc}")
        if r.decision == cedarpy.Decision.Allow and not r.diagnostics.errors:
            return Verdict(True, "permitted")
        return Verdict(False, f"no policy permits agent {agent!r} to start {workflow!r}")
