"""Incidents and the remediation run: a deterministic state machine, not a free agent.

    detect (EWMA band / Alertmanager / API) -> incident (evidence captured)
      -> clone -> propose -> apply -> test (sandbox) -> deploy -> canary (auto-rollback)
      -> approval (a human) -> promote + commit | rollback + page

Any "no" (an unusable patch, failing tests, a bad canary, a denial or a timeout) ends the
run with production on the stable version and the on-call paged with the evidence. One
run at a time per service: later alerts attach to the active incident.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError

from keel.errors import KeelError
from keel.remediation import capture, store
from keel.remediation.deploy import Deployer
from keel.remediation.detect import Detector
from keel.remediation.router import TrafficRouter
from keel.remediation.steps import StepFailed, Steps

if TYPE_CHECKING:
    from keel.approvals.service import ApprovalsService
    from keel.config import Settings
    from keel.jobs.runtime import JobRuntime
    from keel.storage.sql import Database

log = logging.getLogger("keel.remediation")

# (incident id, step name, kwargs) -> step output: direct, or through a durable step
StepCall = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]


class Remediator:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.cfg = settings.remediation
        self.db = db
        self.router = TrafficRouter(self.cfg.services)
        self.deployer = Deployer()
        self.work_dir = Path(self.cfg.work_dir or Path(settings.data_dir) / "remediation")
        keel_paths = [Path(settings.data_dir)]
        if settings.db_url.startswith("sqlite:///"):
            keel_paths.append(Path(settings.db_url.removeprefix("sqlite:///")).parent)
        self.steps = Steps(self.cfg, db, self.router, self.deployer, self.work_dir,
                           keel_paths)
        self.detectors = {s.name: Detector(self.cfg.detection) for s in self.cfg.services}
        # starts a run: a DBOS workflow when the job runtime is there, else a task
        self.launcher: Callable[[str, str], Awaitable[None]] = self._launch_task
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._watch: asyncio.Task[None] | None = None
        self._prelaunch: asyncio.Task[None] | None = None
        self.runtime: JobRuntime | None = None
        self._workflow: Any = None
        self.busy: set[str] = set()  # services with a run in this process (detector skips)
        self.quiet_until: dict[str, float] = {}  # detector cool-down after a run ended

    @property
    def approvals(self) -> ApprovalsService | None:
        return self.steps.approvals

    @approvals.setter
    def approvals(self, value: ApprovalsService | None) -> None:
        self.steps.approvals = value

    # -- durable runs (DBOS through keel.jobs.JobRuntime) ------------------------------------

    def use_runtime(self, runtime: JobRuntime) -> None:
        """Runs become DBOS workflows: each step's output is recorded, so a run resumes
        after a crash at the step it was in (a candidate process does not survive a
        restart: the canary step then fails safely and pages)."""
        self.runtime = runtime
        runtime.on_launch(self._register)
        self.launcher = self._launch_workflow

    def _register(self) -> None:
        from dbos import DBOS

        @DBOS.step(name="keel.remediation.step")
        async def step(iid: str, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
            return await self.steps.run(iid, name, kwargs)

        @DBOS.workflow(name="keel.remediation.run")
        async def run(iid: str, service: str) -> dict[str, Any]:
            return await self.orchestrate(iid, service, step)

        self._workflow = run

    async def _launch_workflow(self, incident_id: str, service: str) -> None:
        from dbos import DBOS, SetWorkflowID

        assert self.runtime is not None
        await self.runtime.ensure_started()
        with SetWorkflowID(f"remediation-{incident_id}"):
            await DBOS.start_workflow_async(self._workflow, incident_id, service)

    # -- incidents ---------------------------------------------------------------------------

    async def open_incident(self, service: str, trigger: str, detail: dict[str, Any],
                            first_error_at: float | None = None) -> tuple[store.Incident, bool]:
        """Open an incident (and start its run) or attach to the service's active one."""
        r = self.router.route(service)  # NotFound for an unknown service
        detected_at = time.time()
        evidence = await capture.collect(r.spec, [f.public() for f in r.failures])
        evidence.update(trigger=detail, detected_at=detected_at)
        for attempt in range(2):
            try:
                inc, created = await self.db.run(lambda c: store.open_or_attach(
                    c, service, trigger, evidence, first_error_at))
                break
            except (IntegrityError, KeelError):
                if attempt:
                    raise
        if created:
            self.busy.add(service)
            log.warning("remediation: incident %s opened for %s (%s)", inc.id, service, trigger)
            await self.launcher(inc.id, service)
        return inc, created

    async def get(self, incident_id: str) -> tuple[store.Incident, list[dict[str, Any]]]:
        from keel.errors import NotFound

        inc = await self.db.run(lambda c: store.get(c, incident_id))
        if inc is None:
            raise NotFound(f"no incident {incident_id!r}")
        return inc, await self.db.run(lambda c: store.list_steps(c, incident_id))

    async def wait(self, incident_id: str, timeout_s: float) -> store.Incident:
        deadline = time.monotonic() + timeout_s
        while True:
            inc, _ = await self.get(incident_id)
            if not inc.active or time.monotonic() > deadline:
                return inc
            await asyncio.sleep(0.1)

    async def _launch_task(self, incident_id: str, service: str) -> None:
        async def direct(iid: str, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
            return await self.steps.run(iid, name, kwargs)

        t = asyncio.create_task(self.orchestrate(incident_id, service, direct),
                                name=f"keel-remediation-{incident_id}")
        self._tasks[incident_id] = t
        t.add_done_callback(lambda _: self._tasks.pop(incident_id, None))

    # -- the run -----------------------------------------------------------------------------

    async def _status(self, iid: str, status: str, outcome: dict[str, Any] | None = None
                      ) -> None:
        await self.db.run(lambda c: store.set_status(c, iid, status, outcome))

    async def orchestrate(self, iid: str, service: str, step: StepCall) -> dict[str, Any]:
        await self._status(iid, "running")
        clone: dict[str, Any] | None = None
        version: str | None = None
        shipped = False
        t: dict[str, float] = {}
        try:
            c = await step(iid, "clone", {"service": service})
            clone, t["clone"] = c["clone"], c["finished_at"]
            p = await step(iid, "propose", {"service": service})
            fix, t["patch"] = p["fix"], p["finished_at"]
            a = await step(iid, "apply", {"service": service, "fix": fix})
            tst = await step(iid, "test", {"service": service, "clone": clone["name"],
                                           "test": a["test"], "fix": fix})
            t["tests"] = tst["finished_at"]
            d = await step(iid, "deploy", {"service": service})
            version = d["version"]
            can = await step(iid, "canary", {"service": service, "version": version})
            t["canary_start"] = can["started_at"]
            t["canary_end"] = can["finished_at"]
            if self.approvals is None:
                raise StepFailed("the approvals capability is off: a fix never ships without "
                                 "a human ([approvals] enabled = true)", step="approval")
            ask = await step(iid, "request_approval", {
                "service": service, "version": version, "fix": fix, "applied": a,
                "canary": {k: can[k] for k in ("weight", "seconds", "canary", "stable")}})
            t["approval_requested"] = ask["finished_at"]
            await self._status(iid, "awaiting_approval")
            got = await step(iid, "await_decision", {"approval_id": ask["approval_id"]})
            decision = got["status"]
            t["decided"] = got["finished_at"]
            if decision in ("approved", "auto_approved"):
                await step(iid, "promote", {"service": service, "version": version,
                                            "summary": fix["summary"],
                                            "root_cause": fix["root_cause"]})
                shipped = True
                outcome = {"result": "shipped", "decision": decision, "branch": a["branch"]}
                status = store.RESOLVED
            else:
                await step(iid, "rollback", {"service": service, "version": version})
                version = None
                await step(iid, "page", {"service": service,
                                         "reason": f"the fix was not approved ({decision})"})
                outcome = {"result": "rolled_back", "decision": decision}
                status = store.ROLLED_BACK
        except StepFailed as exc:
            outcome, status = await self._fail(iid, service, version, exc)
            if exc.extra.get("step") == "canary":
                version = None  # the canary step already rolled back and stopped it
        except Exception as exc:  # a bug or a crash: still end safely
            log.exception("remediation %s: unexpected failure", iid)
            outcome, status = await self._fail(iid, service, version, exc)
        finally:
            await self.steps.cleanup(iid, service, clone, keep_branch=shipped)
        outcome.update(await self._accounting(iid, t))
        await self._status(iid, status, outcome)
        self.busy.discard(service)
        self.quiet_until[service] = time.monotonic() + self.cfg.detection.cooldown_s
        log.warning("remediation: incident %s %s", iid, status)
        return outcome

    async def _fail(self, iid: str, service: str, version: str | None, exc: Exception
                    ) -> tuple[dict[str, Any], str]:
        reason = str(exc)
        r = self.router.route(service)
        if version is not None and version in r.versions:
            with contextlib.suppress(StepFailed):
                await self.steps.run(iid, "rollback", {"service": service, "version": version})
        with contextlib.suppress(StepFailed):
            await self.steps.run(iid, "page", {"service": service, "reason": reason})
        return {"result": "failed", "reason": reason}, store.FAILED

    async def _accounting(self, iid: str, t: dict[str, float]) -> dict[str, Any]:
        inc, steps = await self.get(iid)
        cost = sum(s["cost_usd"] for s in steps)
        cpu = sum(s["cpu_s"] for s in steps)
        cpu_usd = cpu * self.cfg.cpu_usd_per_hour / 3600
        first = inc.first_error_at
        detected = float(inc.evidence.get("detected_at") or inc.opened_at)
        timeline = {"first_5xx": first, "detected": detected, **t}
        rel = {k: round(v - (first or detected), 3) for k, v in timeline.items()
               if v is not None}
        return {"model_usd": round(cost, 6), "sandbox_cpu_s": round(cpu, 3),
                "sandbox_usd": round(cpu_usd, 6), "total_usd": round(cost + cpu_usd, 6),
                "timeline": rel}

    # -- detection ---------------------------------------------------------------------------

    def start_watching(self) -> None:
        """Watch the routed services; DBOS launches now, in the background, so the first
        incident does not wait for it (an app with no services pays nothing)."""
        if self._watch is None and self.router.routes:
            self._watch = asyncio.create_task(self._detect_loop(), name="keel-remediation-watch")
            if self.runtime is not None:
                self._prelaunch = asyncio.create_task(self._launch_runtime(),
                                                      name="keel-remediation-launch")

    async def _launch_runtime(self) -> None:
        assert self.runtime is not None
        try:
            await self.runtime.ensure_started()
        except Exception:  # the first incident retries the launch and reports the error
            log.exception("remediation: launching the job runtime failed")

    async def _detect_loop(self) -> None:
        cfg = self.cfg.detection
        while True:
            await asyncio.sleep(cfg.tick_s)
            for name, r in self.router.routes.items():
                if name in self.busy or time.monotonic() < self.quiet_until.get(name, 0.0):
                    continue
                s = r.stable().stats.summary(cfg.window_s)
                anomaly = self.detectors[name].observe(s)
                if anomaly is None:
                    continue
                try:
                    await self.open_incident(name, "detector", anomaly.public(),
                                             first_error_at=s.first_error_at)
                except Exception:  # keep watching the other services
                    log.exception("remediation: opening an incident for %s failed", name)

    async def stop(self) -> None:
        for t in (self._watch, self._prelaunch):
            if t is not None:
                t.cancel()
        self._watch = self._prelaunch = None
        for task in list(self._tasks.values()):
            task.cancel()
        await self.deployer.stop_all()
        await self.router.aclose()
