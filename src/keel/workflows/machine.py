"""The ASL state loop: input/output processing, Choice, Wait, Pass, Task, Map, Parallel,
Retry / Catch and the execution's own deadline, as the States Language defines them.

The loop is plain deterministic code; everything with a side effect or a clock (task
handlers, human waits, sleeps, child workflows, history events) goes through
:class:`Ports`, which :mod:`keel.workflows.interpreter` backs with DBOS steps, so a
workflow replayed after a crash takes the same path and does not run a finished task
again.

Errors follow Step Functions: ``States.Runtime`` (a path that matches nothing, a Choice on
a missing field, a ResultPath that cannot be written) and ``States.DataLimitExceeded``
fail the execution and are caught by no Retry or Catch, not even ``States.ALL``;
``States.TaskFailed`` in a rule matches every error except ``States.Timeout``.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from keel.workflows import choice, intrinsics, paths
from keel.workflows.resources import resolve_resource

UNCATCHABLE = frozenset({"States.Runtime", "States.DataLimitExceeded"})
MAX_PAYLOAD = 256 * 1024  # bytes of JSON in a state's input or output, as in Step Functions


class StateError(Exception):
    """An ASL error: ``error`` is its name (for Retry/Catch), ``cause`` says why."""

    def __init__(self, error: str, cause: str = "") -> None:
        super().__init__(f"{error}: {cause}")
        self.error = error
        self.cause = cause


class TaskFailed(StateError):
    """Raise from a handler to fail its task with an ASL error name (for Catch/Retry)."""


class ExecutionTimedOut(Exception):
    """The execution's ``TimeoutSeconds`` passed: not catchable, the execution ends."""


@dataclass
class Ports:
    run_task: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
    token_task: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
    sleep: Callable[[float], Awaitable[None]]
    start_child: Callable[[str, dict[str, Any], Any, dict[str, Any]], Awaitable[Any]]
    record: Callable[[str, str, str | None, Any], Awaitable[None]]
    now: Callable[[], float] = time.time


def matches(names: list[str], error: str) -> bool:
    if error in UNCATCHABLE:
        return False
    return error in names or "States.ALL" in names or (
        "States.TaskFailed" in names and error != "States.Timeout")


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class Machine:
    """One run of one state machine (the top level, a Parallel branch or a Map item)."""

    def __init__(self, defn: dict[str, Any], ports: Ports, opts: dict[str, Any]) -> None:
        self.defn = defn
        self.ports = ports
        self.opts = opts
        self.wid: str = opts["workflow_id"]
        self.prefix: str = opts.get("prefix", "")
        self.deadline: float | None = opts.get("deadline")
        self.limit: int = int(opts.get("max_payload", MAX_PAYLOAD))
        self.entries = 0
        self.events = 0
        self.trail: list[str] = []

    # -- helpers -----------------------------------------------------------------------------

    async def event(self, type_: str, state: str | None, detail: Any = None) -> None:
        self.events += 1
        await self.ports.record(f"{self.prefix}{self.events}", type_, state, detail)

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - self.ports.now()

    def _check_deadline(self) -> None:
        left = self.remaining()
        if left is not None and left <= 0:
            raise ExecutionTimedOut(f"the execution ran longer than its TimeoutSeconds "
                                    f"({self.opts.get('timeout_s')} s)")

    def _size(self, data: Any, what: str) -> None:
        n = len(orjson.dumps(data))
        if n > self.limit:
            raise StateError("States.DataLimitExceeded",
                             f"{what} is {n} bytes, over the {self.limit}-byte limit: pass a "
                             "reference (a URL, an object key, a row id) instead of the data")

    def context(self, name: str, retries: int = 0, **extra: Any) -> dict[str, Any]:
        started = float(self.opts.get("started_at", 0.0))
        ctx = {"Execution": {"Id": self.opts.get("execution_id", self.wid),
                             "Name": self.opts.get("execution_id", self.wid),
                             "Input": self.opts.get("execution_input"),
                             "StartTime": _iso(started)},
               "StateMachine": {"Id": self.opts.get("workflow", ""),
                                "Name": self.opts.get("workflow", "")},
               "State": {"Name": name, "EnteredTime": _iso(started), "RetryCount": retries}}
        ctx.update(extra)
        return ctx

    # -- the loop ---------------------------------------------------------------------------

    async def run(self, data: Any) -> dict[str, Any]:
        states: dict[str, Any] = self.defn["States"]
        name: str = self.defn["StartAt"]
        try:
            self._size(data, "the execution input")
            while True:
                self._check_deadline()
                st = states[name]
                self.trail.append(name)
                self.entries += 1
                await self.event(f"{st['Type']}StateEntered", name, {"input": data})
                try:
                    data, nxt, final = await self.step(name, st, data)
                except StateError as err:
                    catch = next((c for c in st.get("Catch", [])
                                  if matches(c["ErrorEquals"], err.error)), None)
                    if catch is None:
                        raise
                    await self.event("CatchTaken", name, {"error": err.error,
                                                          "cause": err.cause})
                    data = self._put(catch.get("ResultPath", "$"), data,
                                     {"Error": err.error, "Cause": err.cause})
                    nxt, final = catch["Next"], None
                self._size(data, f"the output of state {name!r}")
                await self.event(f"{st['Type']}StateExited", name, {"output": data})
                if final is not None:
                    return {**final, "states": self.trail}
                if nxt is None:
                    return {"status": "SUCCEEDED", "output": data, "states": self.trail}
                name = nxt
        except StateError as err:
            return {"status": "FAILED", "error": err.error, "cause": err.cause,
                    "states": self.trail}
        except ExecutionTimedOut as exc:
            return {"status": "TIMED_OUT", "error": "States.Timeout", "cause": str(exc),
                    "states": self.trail}

    def _put(self, path: str | None, data: Any, result: Any) -> Any:
        try:
            return paths.put(path, data, result)
        except paths.PathError as exc:
            raise StateError("States.Runtime", str(exc)) from None

    def _select(self, path: str | None, data: Any, name: str) -> Any:
        try:
            return paths.select(path, data, self.context(name))
        except paths.PathError as exc:
            raise StateError("States.Runtime", str(exc)) from None

    def _params(self, template: Any, data: Any, ctx: dict[str, Any], seed: str) -> Any:
        try:
            return paths.parameters(template, data, ctx, random.Random(seed))
        except paths.PathError as exc:
            raise StateError("States.Runtime", str(exc)) from None
        except intrinsics.IntrinsicFailure as exc:
            raise StateError("States.IntrinsicFailure", str(exc)) from None

    async def step(self, name: str, st: dict[str, Any], data: Any
                   ) -> tuple[Any, str | None, dict[str, Any] | None]:
        """One state: (its output, the next state or None at the end, a final result)."""
        kind = st["Type"]
        eff = self._select(st.get("InputPath", "$"), data, name)
        if kind == "Fail":
            error, cause = st.get("Error", "States.Fail"), st.get("Cause", "")
            if "ErrorPath" in st:
                error = str(self._select(st["ErrorPath"], eff, name))
            if "CausePath" in st:
                cause = str(self._select(st["CausePath"], eff, name))
            return eff, None, {"status": "FAILED", "error": error, "cause": cause}
        if kind == "Succeed":
            out = self._select(st.get("OutputPath", "$"), eff, name)
            return out, None, {"status": "SUCCEEDED", "output": out}
        if kind == "Choice":
            try:
                nxt = next((c["Next"] for c in st["Choices"] if choice.evaluate(c, eff)),
                           st.get("Default"))
            except paths.PathError as exc:
                raise StateError("States.Runtime", f"in Choice state {name!r}: {exc}"
                                 ) from None
            if nxt is None:
                raise StateError("States.NoChoiceMatched",
                                 f"no rule of Choice state {name!r} matched and it has no "
                                 "Default")
            return self._select(st.get("OutputPath", "$"), eff, name), nxt, None
        if kind == "Wait":
            await self._wait(st, eff, name)
            return self._select(st.get("OutputPath", "$"), eff, name), st.get("Next"), None
        seed = f"{self.wid}:{self.entries}"
        if kind == "Pass":
            if "Parameters" in st:
                eff = self._params(st["Parameters"], eff, self.context(name), seed)
            result = st.get("Result", eff)
        else:
            result = await self._with_retry(name, st, eff, seed)
            if "ResultSelector" in st:
                result = self._params(st["ResultSelector"], result, self.context(name), seed)
        # ResultPath writes into the state's raw input (before InputPath), as in the spec
        out = self._put(st.get("ResultPath", "$"), data, result)
        return self._select(st.get("OutputPath", "$"), out, name), st.get("Next"), None

    async def _wait(self, st: dict[str, Any], eff: Any, name: str) -> None:
        if "Seconds" in st:
            seconds = float(st["Seconds"])
        elif "SecondsPath" in st:
            v = self._select(st["SecondsPath"], eff, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise StateError("States.Runtime", f"SecondsPath of {name!r} is not a "
                                 f"non-negative number: {v!r}")
            seconds = float(v)
        else:
            from datetime import datetime

            ts = st.get("Timestamp") or self._select(st["TimestampPath"], eff, name)
            try:
                when = datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp()
            except ValueError:
                raise StateError("States.Runtime", f"{ts!r} is not an ISO 8601 timestamp"
                                 ) from None
            seconds = max(0.0, when - self.ports.now())
        left = self.remaining()
        if left is not None and left < seconds:
            await self.ports.sleep(max(left, 0.0))
            self._check_deadline()
        await self.ports.sleep(seconds)

    # -- Task / Map / Parallel with Retry ------------------------------------------------------

    async def _with_retry(self, name: str, st: dict[str, Any], eff: Any, seed: str) -> Any:
        tries: dict[int, int] = {}
        retries = 0
        while True:
            try:
                return await self._work(name, st, eff, f"{seed}:{retries}", retries)
            except StateError as exc:
                found = next(((i, r) for i, r in enumerate(st.get("Retry", []))
                              if matches(r["ErrorEquals"], exc.error)), None)
                if found is None:
                    raise
                idx, rule = found
                n = tries.get(idx, 0)
                if n >= int(rule.get("MaxAttempts", 3)):
                    raise
                tries[idx] = n + 1
                retries += 1
                delay = float(rule.get("IntervalSeconds", 1)) * float(
                    rule.get("BackoffRate", 2.0)) ** n
                if "MaxDelaySeconds" in rule:
                    delay = min(delay, float(rule["MaxDelaySeconds"]))
                if rule.get("JitterStrategy") == "FULL":
                    delay = random.Random(f"{seed}:jitter:{retries}").uniform(0, delay)
                await self.event("RetryScheduled", name, {"error": exc.error,
                                                          "cause": exc.cause,
                                                          "attempt": retries, "delay": delay})
                left = self.remaining()
                await self.ports.sleep(delay if left is None else max(min(delay, left), 0))
                self._check_deadline()

    async def _work(self, name: str, st: dict[str, Any], eff: Any, seed: str,
                    retries: int) -> Any:
        if st["Type"] == "Parallel":
            if "Parameters" in st:
                eff = self._params(st["Parameters"], eff, self.context(name, retries), seed)
            return await self._fan_out(name, [(b, eff) for b in st["Branches"]], 0)
        if st["Type"] == "Map":
            return await self._map(name, st, eff, seed)
        return await self._task(name, st, eff, seed, retries)

    def _task_timeout(self, st: dict[str, Any]) -> tuple[float | None, bool]:
        """(seconds, whether the execution deadline is what bounds it)."""
        own = st.get("TimeoutSeconds")
        left = self.remaining()
        if left is None:
            return (float(own) if own else None), False
        if own is None or left < float(own):
            return max(left, 0.001), True
        return float(own), False

    async def _task(self, name: str, st: dict[str, Any], eff: Any, seed: str,
                    retries: int) -> Any:
        res = resolve_resource(st, f"state {name!r}")
        ctx = self.context(name, retries)
        template = st.get("Parameters")
        timeout, by_deadline = self._task_timeout(st)
        call = {"state": name, "kind": res.kind, "target": res.target,
                "lambda_invoke": res.lambda_invoke, "timeout_s": timeout,
                "execution_id": self.opts.get("execution_id", self.wid),
                "tenant": self.opts.get("tenant", "default")}
        if res.token:
            # Resolve once with a placeholder so path errors surface here, as States.Runtime;
            # the step resolves again with the real token, which never leaves it.
            self._params(template, eff, {**ctx, "Task": {"Token": "-"}}, seed)
            call.update(template=template, data=eff, context=ctx, seed=seed,
                        heartbeat_s=st.get("HeartbeatSeconds"))
            await self.event("TaskScheduled", name, {"resource": st["Resource"],
                                                     "waits_for_token": True})
            r = await self.ports.token_task(call)
        else:
            params = self._params(template, eff, ctx, seed) if template is not None else eff
            payload = params.get("Payload", eff) if res.lambda_invoke and isinstance(
                params, dict) else params
            self._size(payload, f"the payload of task {name!r}")
            call["payload"] = payload
            await self.event("TaskScheduled", name, {"resource": st["Resource"]})
            r = await self.ports.run_task(call)
        if r["ok"]:
            await self.event("TaskSucceeded", name, {"output": r["result"]})
            return r["result"]
        await self.event("TaskTimedOut" if r["error"] == "States.Timeout" else "TaskFailed",
                         name, {"error": r["error"], "cause": r["cause"]})
        if r["error"] == "States.Timeout" and by_deadline:
            self._check_deadline()
        raise StateError(r["error"], r["cause"])

    async def _map(self, name: str, st: dict[str, Any], eff: Any, seed: str) -> list[Any]:
        items = self._select(st.get("ItemsPath", "$"), eff, name)
        if not isinstance(items, list):
            raise StateError("States.Runtime", f"ItemsPath of Map state {name!r} must select "
                             f"an array, got {type(items).__name__}")
        selector = st.get("ItemSelector", st.get("Parameters"))
        proc: dict[str, Any] = st.get("ItemProcessor") or st["Iterator"]
        inputs: list[tuple[dict[str, Any], Any]] = []
        for i, item in enumerate(items):
            if selector is None:
                inputs.append((proc, item))
            else:
                ctx = self.context(name, Map={"Item": {"Index": i, "Value": item}})
                inputs.append((proc, self._params(selector, eff, ctx, f"{seed}:{i}")))
        mode = (proc.get("ProcessorConfig") or {}).get("Mode", "INLINE")
        return await self._fan_out(name, inputs, int(st.get("MaxConcurrency", 0) or 0),
                                   distributed=mode == "DISTRIBUTED")

    async def _fan_out(self, name: str, runs: list[tuple[dict[str, Any], Any]],
                       max_concurrency: int, *, distributed: bool = False) -> list[Any]:
        """Each branch / item is a child workflow with a deterministic id; at most
        ``max_concurrency`` run at once (0: all). The first failure fails the state.
        Distributed items go on a DBOS queue that every keel process serves (gateway
        workers and ``keel workflows worker`` processes)."""
        limit = max_concurrency or len(runs) or 1
        results: list[Any] = [None] * len(runs)
        running: deque[tuple[int, Any]] = deque()

        async def collect() -> None:
            i, handle = running.popleft()
            r = await handle.get_result()
            if r["status"] == "TIMED_OUT":
                raise ExecutionTimedOut(r["cause"])
            if r["status"] != "SUCCEEDED":
                raise StateError(r["error"], r["cause"])
            results[i] = r["output"]

        for i, (defn, data) in enumerate(runs):
            if len(running) >= limit:
                await collect()
            opts = {**self.opts, "workflow_id": f"{self.wid}.{self.entries}.{i}",
                    "prefix": f"{self.prefix}{name}#{self.entries}[{i}]/", "branch": True,
                    "queued": distributed}
            running.append((i, await self.ports.start_child(opts["workflow_id"], defn, data,
                                                            opts)))
        while running:
            await collect()
        return results

