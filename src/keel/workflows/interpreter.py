"""Run an ASL definition as one durable DBOS workflow.

Task handlers run as DBOS steps (checkpointed: a restarted process does not run a finished
task again), Wait states are durable sleeps, and ``.waitForTaskToken`` tasks create an
approval whose one-time reference is the task token (``$$.Task.Token``), hand it to the
handler, and wait durably (reminders, timeout -> ``States.Timeout``) for the decision.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from keel.approvals import store
from keel.approvals.handlers import HandlerContext, call
from keel.approvals.models import APPROVED, TIMED_OUT, Proposal
from keel.workflows import choice, paths
from keel.workflows.definition import TASK_TOKEN, handler_name

if TYPE_CHECKING:
    from keel.approvals.engine import ApprovalEngine

WORKFLOW_NAME = "keel.workflows.asl"


class TaskFailed(Exception):
    """Raise from a handler to fail its task with an ASL error name (for Catch/Retry)."""

    def __init__(self, error: str, cause: str = "") -> None:
        super().__init__(cause or error)
        self.error = error
        self.cause = cause


class StateError(Exception):
    def __init__(self, error: str, cause: str) -> None:
        super().__init__(f"{error}: {cause}")
        self.error = error
        self.cause = cause


def _matches(names: list[str], error: str) -> bool:
    return error in names or "States.ALL" in names or (
        "States.TaskFailed" in names and error not in ("States.Timeout",))


def register(engine: ApprovalEngine) -> None:
    from dbos import DBOS

    @DBOS.step(name="keel.workflows.task")
    async def run_task(state: str, handler: str, payload: Any, timeout_s: float | None
                       ) -> dict[str, Any]:
        fn = engine.registry.get(handler)
        try:
            coro = call(fn, payload, HandlerContext(state=state))
            result = await (asyncio.wait_for(coro, timeout_s) if timeout_s else coro)
            return {"ok": True, "result": result}
        except TimeoutError:
            return {"ok": False, "error": "States.Timeout",
                    "cause": f"task {state} ran longer than {timeout_s} s"}
        except TaskFailed as exc:
            return {"ok": False, "error": exc.error, "cause": exc.cause}
        except Exception as exc:
            return {"ok": False, "error": type(exc).__name__, "cause": str(exc)}

    @DBOS.step(name="keel.workflows.token_task")
    async def start_token_task(wid: str, state: str, handler: str, payload: Any,
                               timeout_s: float) -> dict[str, Any]:
        """Create the approval + its one-time reference (the token) and call the handler.
        Only the reference's hash is stored; the token is not part of this step's output."""
        fn = engine.registry.get(handler)
        args = payload if isinstance(payload, dict) else {"input": payload}
        amount = args.get("amount") if isinstance(args.get("amount"), (int, float)) else None
        p = Proposal(action=state, arguments=args, amount=amount, risk_level="HIGH",
                     reason=str(args.get("reason", "")), requested_by=f"workflow:{state}")
        aid, now = store.new_id(), time.time()

        def create(c: Any) -> str:
            store.insert(c, p, approval_id=aid, workflow_id=wid, kind="asl", policy="asl",
                         status="pending", timeout_s=timeout_s, now=now)
            store.add_audit(c, aid, "requested", actor=p.requested_by, channel="asl",
                            now=now, detail=f"state={state} args_hash={p.arguments_hash()}")
            return store.new_ref(c, aid, "task_token", now + timeout_s, now)

        token = await engine.db.run(create)
        ctx = HandlerContext(approval_id=aid, task_token=token, state=state,
                             decision_url=engine.link(token))
        payload_with_token = paths.parameters(payload, payload, {"Task": {"Token": token}}) \
            if isinstance(payload, dict) else payload
        await call(fn, payload_with_token, ctx)
        return {"approval_id": aid, "created_at": now, "expires_at": now + timeout_s}

    @DBOS.step(name="keel.workflows.token_done")
    async def finish_token_task(aid: str, status: str) -> dict[str, Any]:
        a = await engine.get(aid)
        out = {"approved": status == APPROVED, "status": status, "approval_id": aid,
               "decided_by": a.decided_by}
        await engine.db.run(lambda c: store.finish(c, aid, status, out, time.time()))
        return out

    async def task(wid: str, name: str, st: dict[str, Any], data: Any) -> Any:
        ctx: dict[str, Any] = {"Execution": {"Input": data}, "State": {"Name": name}}
        handler = handler_name(st)
        if "Parameters" in st:
            params = st["Parameters"]
            if st["Resource"].startswith("arn:aws:states:::lambda:invoke"):
                params = params.get("Payload", data) if isinstance(params, dict) else params
            if st["Resource"].endswith(TASK_TOKEN):
                payload = params  # resolved inside the step, where the token exists
                ctx_payload = paths.parameters(_without_token(payload), data, ctx)
                payload = _merge_token_paths(payload, ctx_payload)
            else:
                payload = paths.parameters(params, data, ctx)
        else:
            payload = data
        timeout = st.get("TimeoutSeconds")
        if st["Resource"].endswith(TASK_TOKEN):
            t = float(timeout) if timeout else engine.cfg.timeout_s
            info = await start_token_task(wid, name, handler, payload, t)
            status = await engine.wait_for_decision(info["approval_id"], info["created_at"],
                                                    info["expires_at"],
                                                    list(engine.cfg.reminders))
            out = await finish_token_task(info["approval_id"], status)
            if status == TIMED_OUT:
                raise StateError("States.Timeout", f"no decision within {t:g} s")
            if status != APPROVED:
                raise StateError("Approval.Denied", f"denied by {out['decided_by']}")
            return out
        r = await run_task(name, handler, payload, float(timeout) if timeout else None)
        if not r["ok"]:
            raise StateError(r["error"], r["cause"])
        return r["result"]

    @DBOS.workflow(name=WORKFLOW_NAME)
    async def execution(defn: dict[str, Any], data: Any) -> dict[str, Any]:
        wid = DBOS.workflow_id
        assert wid is not None
        states: dict[str, Any] = defn["States"]
        name: str = defn["StartAt"]
        trail: list[str] = []
        while True:
            st = states[name]
            trail.append(name)
            kind = st["Type"]
            try:
                effective = paths.select(st.get("InputPath", "$"), data)
                if kind == "Succeed":
                    return {"status": "SUCCEEDED", "output": paths.select(
                        st.get("OutputPath", "$"), effective), "states": trail}
                if kind == "Fail":
                    return {"status": "FAILED", "error": st.get("Error", "States.Fail"),
                            "cause": st.get("Cause", ""), "states": trail}
                if kind == "Choice":
                    nxt = next((c["Next"] for c in st["Choices"]
                                if choice.evaluate(c, effective)), st.get("Default"))
                    if nxt is None:
                        raise StateError("States.NoChoiceMatched", f"no rule matched in {name}")
                    data, name = paths.select(st.get("OutputPath", "$"), effective), nxt
                    continue
                if kind == "Wait":
                    await DBOS.sleep_async(_wait_seconds(st, effective))
                    result: Any = effective
                    data = paths.select(st.get("OutputPath", "$"), effective)
                elif kind == "Pass":
                    if "Parameters" in st:
                        effective = paths.parameters(st["Parameters"], effective,
                                                     {"State": {"Name": name}})
                    result = st.get("Result", effective)
                    data = paths.select(st.get("OutputPath", "$"),
                                        paths.put(st.get("ResultPath", "$"), data, result))
                else:
                    result = await _with_retry(st, wid, name, effective)
                    if "ResultSelector" in st:
                        result = paths.parameters(st["ResultSelector"], result, {})
                    data = paths.select(st.get("OutputPath", "$"),
                                        paths.put(st.get("ResultPath", "$"), data, result))
            except (StateError, paths.PathError) as exc:
                err = exc if isinstance(exc, StateError) else StateError("States.Runtime",
                                                                         str(exc))
                catch = next((c for c in st.get("Catch", [])
                              if _matches(c["ErrorEquals"], err.error)), None)
                if catch is None:
                    return {"status": "FAILED", "error": err.error, "cause": err.cause,
                            "states": trail}
                data = paths.put(catch.get("ResultPath", "$"), data,
                                 {"Error": err.error, "Cause": err.cause})
                name = catch["Next"]
                continue
            if st.get("End"):
                return {"status": "SUCCEEDED", "output": data, "states": trail}
            name = st["Next"]

    async def _with_retry(st: dict[str, Any], wid: str, name: str, effective: Any) -> Any:
        tries: dict[int, int] = {}
        while True:
            try:
                return await task(wid, name, st, effective)
            except StateError as exc:
                idx, rule = next(((i, r) for i, r in enumerate(st.get("Retry", []))
                                  if _matches(r["ErrorEquals"], exc.error)), (-1, None))
                if rule is None:
                    raise
                n = tries.get(idx, 0)
                if n >= int(rule.get("MaxAttempts", 3)):
                    raise
                tries[idx] = n + 1
                delay = float(rule.get("IntervalSeconds", 1)) * float(
                    rule.get("BackoffRate", 2.0)) ** n
                await DBOS.sleep_async(delay)

    engine.bind_asl(execution)


def _without_token(payload: Any) -> Any:
    if isinstance(payload, dict):
        return {k: _without_token(v) for k, v in payload.items()
                if not (k.endswith(".$") and isinstance(v, str) and v.startswith("$$.Task"))}
    return payload


def _merge_token_paths(template: Any, resolved: Any) -> Any:
    """Resolved values plus the still-unresolved ``$$.Task.Token`` references."""
    if isinstance(template, dict) and isinstance(resolved, dict):
        out = dict(resolved)
        for k, v in template.items():
            if k.endswith(".$") and isinstance(v, str) and v.startswith("$$.Task"):
                out[k] = v
            elif isinstance(v, dict) and k in resolved:
                out[k] = _merge_token_paths(v, resolved[k])
        return out
    return resolved


def _wait_seconds(st: dict[str, Any], data: Any) -> float:
    if "Seconds" in st:
        return float(st["Seconds"])
    if "SecondsPath" in st:
        return float(paths.resolve(st["SecondsPath"], data))
    from datetime import datetime

    ts = st.get("Timestamp") or paths.resolve(st["TimestampPath"], data)
    when = datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp()
    return max(0.0, when - time.time())
