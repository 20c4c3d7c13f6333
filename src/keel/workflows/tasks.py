"""Running one Task's handler: a registered Python callable, an HTTP endpoint (POST of the
payload) or a registered tool (through the tool gateway, so Cedar decides as for any call).

Every outcome is a JSON-able dict (it is a DBOS step's recorded output):
``{"ok": True, "result": ...}`` or ``{"ok": False, "error": NAME, "cause": TEXT}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson

from keel.approvals.handlers import HandlerContext, HandlerRegistry, call
from keel.errors import KeelError
from keel.workflows.machine import StateError

# (execution id, tool name, arguments) -> the tool's JSON result; raises KeelError
ToolCaller = Callable[[str, str, Any], Awaitable[Any]]


def lambda_envelope(result: Any) -> dict[str, Any]:
    """What ``arn:aws:states:::lambda:invoke`` returns: the function's result as Payload."""
    return {"ExecutedVersion": "$LATEST", "Payload": result, "StatusCode": 200,
            "SdkHttpMetadata": {"HttpStatusCode": 200}}


def fail(error: str, cause: str) -> dict[str, Any]:
    return {"ok": False, "error": error, "cause": cause[:4000]}


async def _http(url: str, payload: Any, timeout_s: float | None) -> Any:
    try:
        async with httpx.AsyncClient(timeout=timeout_s or 60.0) as c:
            r = await c.post(url, content=orjson.dumps(payload),
                             headers={"content-type": "application/json"})
    except httpx.TimeoutException:
        raise StateError("States.Timeout", f"POST {url} did not answer in time") from None
    except httpx.HTTPError as exc:
        raise StateError("States.Http.Socket", f"POST {url} failed: {exc}") from None
    if r.status_code >= 400:
        raise StateError(f"States.Http.StatusCode.{r.status_code}",
                         f"POST {url} answered {r.status_code}: {r.text[:1000]}")
    try:
        return orjson.loads(r.content) if r.content else None
    except orjson.JSONDecodeError:
        return r.text


async def run(registry: HandlerRegistry, tools: ToolCaller | None, c: dict[str, Any]
              ) -> dict[str, Any]:
    """Run the handler ``c`` describes (see ``Machine._task``) within its timeout."""
    timeout = c.get("timeout_s")
    kind, target, payload = c["kind"], c["target"], c.get("payload")
    try:
        if kind == "python":
            if not registry.has(target):
                return fail("States.TaskFailed", f"no handler registered for {target!r}")
            ctx = HandlerContext(state=c["state"], execution_id=c.get("execution_id"))
            coro: Awaitable[Any] = call(registry.get(target), payload, ctx)  # type: ignore[arg-type]
        elif kind == "http":
            coro = _http(target, payload, timeout)
        else:
            if tools is None:
                return fail("States.TaskFailed", "tool tasks need the tool gateway ([tools] "
                            "enabled = true)")
            coro = tools(c.get("execution_id") or "", target, payload)
        result = await (asyncio.wait_for(coro, timeout) if timeout else coro)
    except TimeoutError:
        return fail("States.Timeout", f"task {c['state']!r} ran longer than {timeout:g} s")
    except StateError as exc:
        return fail(exc.error, exc.cause)
    except KeelError as exc:
        return fail(f"Keel.{exc.code}", exc.message)
    except Exception as exc:  # the handler's failure is the task's error, named by its type
        return fail(type(exc).__name__, str(exc))
    try:
        orjson.dumps(result)
    except TypeError as exc:
        return fail("States.Runtime", f"task {c['state']!r} returned a value that is not "
                    f"JSON: {exc}")
    return {"ok": True, "result": lambda_envelope(result) if c.get("lambda_invoke")
            else result}
