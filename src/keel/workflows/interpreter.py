"""Run an ASL definition as durable DBOS workflows.

The execution is one DBOS workflow; each Parallel branch and Map item is a child workflow
with a deterministic id. Task handlers run as DBOS steps (checkpointed: a recovered
workflow does not run a finished task again; a task interrupted mid-run runs again, so
handlers with side effects should be idempotent on ``ctx.execution_id`` + state), Wait
states and retry delays are durable sleeps, and ``.waitForTaskToken`` tasks create an
approval whose one-time reference is the task token (``$$.Task.Token``), hand it to the
handler and wait durably (reminders; ``TimeoutSeconds`` -> ``States.Timeout``,
``HeartbeatSeconds`` -> ``States.HeartbeatTimeout``) for the decision. Approving
completes the task with the decider's output (SendTaskSuccess); denying fails it with the
decider's error and cause (SendTaskFailure; default ``Approval.Denied`` with the note).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from keel.approvals import store
from keel.approvals.handlers import HandlerContext, call
from keel.approvals.models import APPROVED, TIMED_OUT, Proposal
from keel.workflows import paths, tasks
from keel.workflows import store as wstore
from keel.workflows.machine import Machine, Ports, StateError, TaskFailed

if TYPE_CHECKING:
    from keel.approvals.engine import ApprovalEngine

WORKFLOW_NAME = "keel.workflows.asl"
BRANCH_NAME = "keel.workflows.asl.branch"
DENIED_ERROR = "Approval.Denied"
MAP_QUEUE = "keel.workflows.map"  # distributed Map items (see keel.approvals.runtime)
# Its threads poll this rarely (items enqueued by other processes, recovery): a local
# enqueue wakes this process's thread, and a local item's end frees a slot at once.
MAP_QUEUE_POLL_S = 1.0

__all__ = ["BRANCH_NAME", "WORKFLOW_NAME", "StateError", "TaskFailed", "register"]


def register(engine: ApprovalEngine, tool_caller: tasks.ToolCaller | None = None,
             wake_queue: Callable[[str], None] | None = None) -> None:
    from dbos import DBOS, SetWorkflowID

    @DBOS.step(name="keel.workflows.task")
    async def run_task(c: dict[str, Any]) -> dict[str, Any]:
        return await tasks.run(engine.registry, tool_caller, c)

    @DBOS.step(name="keel.workflows.token_task")
    async def start_token_task(wid: str, c: dict[str, Any], expires_in: float
                               ) -> dict[str, Any]:
        """Create the approval and its one-time reference (the token), resolve the
        Parameters with it and call the handler. Only the token's hash is stored; the token
        is not part of this step's recorded output."""
        ctx_obj = c["context"]
        aid, now = store.new_id(), time.time()
        args_preview = _preview(c)
        p = Proposal(action=c["state"], arguments=args_preview,
                     amount=_amount(args_preview), risk_level="HIGH",
                     reason=str(args_preview.get("reason", ""))[:4000],
                     tenant=str(c.get("tenant") or "default"),
                     requested_by=f"workflow:{c['execution_id']}:{c['state']}")

        def create_all(conn: Any) -> str:
            store.insert(conn, p, approval_id=aid, workflow_id=wid, kind="asl", policy="asl",
                         status="pending", timeout_s=expires_in, now=now)
            store.add_audit(conn, aid, "requested", actor=p.requested_by, channel="asl",
                            now=now, detail=f"state={c['state']} args_hash={p.arguments_hash()}")
            return store.new_ref(conn, aid, "task_token", now + expires_in, now)

        token = await engine.db.run(create_all)
        full_ctx = {**ctx_obj, "Task": {"Token": token}}
        template = c.get("template")
        try:
            params = (paths.parameters(template, c["data"], full_ctx, random.Random(c["seed"]))
                      if template is not None else c["data"])
        except Exception as exc:  # checked with a placeholder before; keep the step total
            return tasks.fail("States.Runtime", str(exc))
        payload = params.get("Payload", c["data"]) if c.get("lambda_invoke") and isinstance(
            params, dict) else params
        hctx = HandlerContext(approval_id=aid, task_token=token, state=c["state"],
                              decision_url=engine.link(token),
                              execution_id=c.get("execution_id"))
        if c["kind"] == "python":
            if not engine.registry.has(c["target"]):
                return tasks.fail("States.TaskFailed", f"no handler {c['target']!r}")
            try:
                await call(engine.registry.get(c["target"]), payload, hctx)
            except Exception as exc:
                return tasks.fail(type(exc).__name__, str(exc))
        else:
            r = await tasks.run(engine.registry, tool_caller, {**c, "payload": payload,
                                                              "lambda_invoke": False})
            if not r["ok"]:
                return r
        return {"ok": True, "approval_id": aid, "created_at": now,
                "expires_at": now + expires_in}

    @DBOS.step(name="keel.workflows.token_done")
    async def finish_token_task(aid: str, status: str, heartbeat: bool) -> dict[str, Any]:
        a = await engine.get(aid)
        note, given = await engine.db.run(lambda conn: store.decision_detail(conn, aid))
        given = given if isinstance(given, dict) else {}
        if status == APPROVED:
            out = given.get("output", {"approved": True, "status": status,
                                       "approval_id": aid, "decided_by": a.decided_by,
                                       "note": note})
            r: dict[str, Any] = {"ok": True, "result": out}
        elif status == TIMED_OUT:
            r = tasks.fail("States.HeartbeatTimeout" if heartbeat else "States.Timeout",
                           "no decision before the task's "
                           + ("HeartbeatSeconds" if heartbeat else "TimeoutSeconds"))
        else:
            r = tasks.fail(str(given.get("error") or DENIED_ERROR),
                           str(given.get("cause") or note or f"denied by {a.decided_by}"))
        await engine.db.run(lambda conn: store.finish(conn, aid, status, r, time.time()))
        return r

    async def token_task(c: dict[str, Any]) -> dict[str, Any]:
        wid = DBOS.workflow_id
        assert wid is not None
        timeout = float(c["timeout_s"]) if c.get("timeout_s") else engine.cfg.timeout_s
        hb = float(c.get("heartbeat_s") or 0.0)
        heartbeat = 0 < hb < timeout
        expires_in = hb if heartbeat else timeout
        info = await start_token_task(wid, c, expires_in)
        if not info["ok"]:
            return info
        status = await engine.wait_for_decision(info["approval_id"], info["created_at"],
                                                info["expires_at"], list(engine.cfg.reminders))
        return await finish_token_task(info["approval_id"], status, heartbeat)

    async def start_child(child_id: str, defn: dict[str, Any], data: Any,
                          opts: dict[str, Any]) -> Any:
        with SetWorkflowID(child_id):
            if opts.get("queued"):  # a distributed Map item: any keel process may run it
                queue = await DBOS.retrieve_queue_async(MAP_QUEUE)
                assert queue is not None, "registered at launch (DbosRuntime.launch)"
                handle = await queue.enqueue_async(branch, defn, data, opts)
                if wake_queue is not None:
                    wake_queue(MAP_QUEUE)  # the queue polls rarely; local items start now
                return handle
            return await DBOS.start_workflow_async(branch, defn, data, opts)

    def ports(opts: dict[str, Any]) -> Ports:
        eid = opts["execution_id"]

        async def record(key: str, type_: str, state: str | None, detail: Any) -> None:
            # Idempotent by key: not a step (a step per event would double the writes).
            await engine.db.run(lambda conn: wstore.add_event(conn, eid, key, type_, state,
                                                              detail, time.time()))

        return Ports(run_task=run_task, token_task=token_task, sleep=DBOS.sleep_async,
                     start_child=start_child, record=record)

    @DBOS.workflow(name=BRANCH_NAME)
    async def branch(defn: dict[str, Any], data: Any, opts: dict[str, Any]
                     ) -> dict[str, Any]:
        return await Machine(defn, ports(opts), opts).run(data)

    @DBOS.step(name="keel.workflows.finish")
    async def finish(eid: str, result: dict[str, Any]) -> None:
        now = time.time()

        def write(conn: Any) -> None:
            if wstore.finish_execution(conn, eid, result["status"], output=result.get("output"),
                                       error=result.get("error"), cause=result.get("cause"),
                                       now=now):
                wstore.add_event(conn, eid, "end", "Execution" + {
                    "SUCCEEDED": "Succeeded", "FAILED": "Failed", "TIMED_OUT": "TimedOut"
                }.get(result["status"], result["status"].title()), None,
                    {k: result.get(k) for k in ("output", "error", "cause") if k in result},
                    now)

        await engine.db.run(write)

    @DBOS.workflow(name=WORKFLOW_NAME)
    async def execution(defn: dict[str, Any], data: Any, opts: dict[str, Any] | None = None
                        ) -> dict[str, Any]:
        wid = DBOS.workflow_id
        assert wid is not None
        o = {"execution_id": wid, "started_at": 0.0, **(opts or {}), "workflow_id": wid}
        o.setdefault("execution_input", data)
        if defn.get("TimeoutSeconds") and "deadline" not in o:
            o["deadline"] = float(o["started_at"] or time.time()) + float(defn["TimeoutSeconds"])
            o["timeout_s"] = defn["TimeoutSeconds"]
        p = ports(o)
        await p.record("start", "ExecutionStarted", None, {"input": data})
        result = await Machine(defn, p, o).run(data)
        await finish(o["execution_id"], result)
        return result

    engine.bind_asl(execution)


def _preview(c: dict[str, Any]) -> dict[str, Any]:
    """The task's arguments as the approval shows them (without the token)."""
    template, data = c.get("template"), c["data"]
    if template is None:
        return data if isinstance(data, dict) else {"input": data}
    try:
        v = paths.parameters(template, data, {**c["context"], "Task": {"Token": "(token)"}},
                             random.Random(c["seed"]))
    except Exception:
        v = data
    if c.get("lambda_invoke") and isinstance(v, dict):
        v = v.get("Payload", data)
    if isinstance(v, dict):
        return {k: val for k, val in v.items() if val != "(token)"}
    return {"input": v}


def _amount(args: dict[str, Any]) -> float | None:
    v = args.get("amount")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
