"""What a Task's ``Resource`` names, and how a Lambda ARN maps to a keel handler.

=====================================================================  =====================
Resource                                                               runs
=====================================================================  =====================
``arn:aws:states:::lambda:invoke`` + ``Parameters.FunctionName: F``    python handler ``F``;
                                                                       result wrapped as
                                                                       ``{Payload, StatusCode,
                                                                       ExecutedVersion, ...}``
``arn:aws:lambda:REGION:ACCOUNT:function:F[:alias]``                   python handler ``F``,
                                                                       raw result
``F`` or ``keel:F``                                                    python handler ``F``
``http://...`` / ``https://...``                                       POST of the payload
``keel:tool:T``                                                        registered tool ``T``
=====================================================================  =====================

A ``FunctionName`` may itself be an ARN (its function part is used). ``.waitForTaskToken``
on any of these waits for a human decision (see :mod:`keel.workflows.interpreter`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keel.errors import InvalidRequest

TASK_TOKEN = ".waitForTaskToken"
LAMBDA_INVOKE = "arn:aws:states:::lambda:invoke"


@dataclass(frozen=True)
class Resource:
    kind: str  # "python" | "http" | "tool"
    target: str  # handler name, URL or tool name
    token: bool = False  # .waitForTaskToken
    lambda_invoke: bool = False  # the optimized Lambda integration (envelope, Payload)


def _function(name: str) -> str:
    if name.startswith("arn:"):
        parts = name.split(":")
        # arn:aws:lambda:region:account:function:NAME[:alias]
        return parts[6] if len(parts) > 6 and parts[5] == "function" else parts[-1]
    return name


def resolve_resource(state: dict[str, Any], where: str = "Task") -> Resource:
    raw: str = state["Resource"]
    token = raw.endswith(TASK_TOKEN)
    res = raw.removesuffix(TASK_TOKEN)
    if res == LAMBDA_INVOKE:
        params = state.get("Parameters")
        fn = params.get("FunctionName") if isinstance(params, dict) else None
        if not isinstance(fn, str) or not fn:
            raise InvalidRequest(f"{where}: lambda:invoke needs Parameters.FunctionName (the "
                                 "handler's name or a Lambda ARN ending in function:NAME)")
        return Resource("python", _function(fn), token, lambda_invoke=True)
    if res.startswith("arn:aws:states:::"):
        raise InvalidRequest(f"{where}: the service integration {res!r} is not supported; "
                             "use lambda:invoke, a Lambda ARN, an http(s) URL or keel:tool:NAME")
    if res.startswith(("http://", "https://")):
        return Resource("http", res, token)
    if res.startswith("keel:tool:"):
        return Resource("tool", res.removeprefix("keel:tool:"), token)
    name = _function(res).removeprefix("keel:")
    if not name:
        raise InvalidRequest(f"{where}: Resource {raw!r} names no handler")
    return Resource("python", name, token)
