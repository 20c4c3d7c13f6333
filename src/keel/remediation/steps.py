"""The steps of one remediation run. Each takes and returns plain JSON (so a durable
workflow can record it) and is audited by :class:`Steps.run` with its input, output,
duration, model cost and sandbox CPU time."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from keel.errors import KeelError
from keel.remediation import patching, sandbox, store
from keel.remediation.clone import Clone, cloner_for
from keel.remediation.deploy import Deployer
from keel.remediation.fixer import Fixer, FixProposal
from keel.remediation.pager import page
from keel.remediation.router import TrafficRouter
from keel.remediation.settings import RemediationSettings, ServiceSpec

if TYPE_CHECKING:
    from keel.approvals.service import ApprovalsService
    from keel.storage.sql import Database


ACTION = "keel.remediation.promote"
LATENCY_MIN_SAMPLES = 20  # a p95 over fewer canary requests is noise (cold start, load)
LATENCY_SLACK_MS = 100.0  # and a few ms over a fast stable version is not a regression


class StepFailed(KeelError):
    """A step's verdict is "no": the run ends safely with this reason."""

    code = "remediation_step_failed"


def clone_name(service: str, incident_id: str) -> str:
    return f"{service.replace('-', '_')}_{incident_id.removeprefix('inc_')}"


class Steps:
    def __init__(self, cfg: RemediationSettings, db: Database, router: TrafficRouter,
                 deployer: Deployer, work_dir: Path, keel_paths: list[Path] | None = None
                 ) -> None:
        self.cfg = cfg
        self.db = db
        self.router = router
        self.deployer = deployer
        self.work_dir = work_dir
        self.fixer: Fixer | None = None
        self.approvals: ApprovalsService | None = None
        self.clone_urls: dict[str, str] = {}  # incident -> clone URL (never audited)
        # keel's own directories (data dir, its SQLite database's): hidden from the sandbox
        self.keel_paths = [*(keel_paths or []), work_dir]

    def spec(self, service: str) -> ServiceSpec:
        return self.router.route(service).spec

    def worktree(self, incident_id: str) -> Path:
        return self.work_dir / "worktrees" / incident_id

    async def run(self, incident_id: str, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Run step ``name`` and audit it; a failure is recorded and raised as StepFailed."""
        fn = getattr(self, f"step_{name}")
        started = time.time()
        t0 = time.perf_counter()
        try:
            out: dict[str, Any] = await fn(incident_id, **kwargs)
            status = "ok"
        except Exception as exc:  # every failure ends the run safely, with the evidence
            err = exc if isinstance(exc, KeelError) else None
            out = {"error": str(exc) if isinstance(exc, KeelError)
                   else f"{type(exc).__name__}: {exc}",
                   "code": err.code if err is not None else "unexpected_error",
                   **(err.extra if err is not None else {})}
            status = "failed"
        duration = time.perf_counter() - t0
        cost = float(out.get("cost_usd") or 0.0)
        cpu = float(out.get("cpu_s") or 0.0)
        await self.db.run(lambda c: store.add_step(c, incident_id, name, status, started,
                                                   duration, kwargs, out, cost, cpu))
        out["finished_at"] = started + duration
        if status == "failed":
            raise StepFailed(f"{name}: {out['error']}", step=name, evidence=out)
        return out

    # -- steps ------------------------------------------------------------------------------

    async def step_clone(self, incident_id: str, service: str) -> dict[str, Any]:
        spec = self.spec(service)
        cloner = cloner_for(spec.database_url, self.work_dir / "clones")
        c = await cloner.clone(clone_name(service, incident_id))
        self.clone_urls[incident_id] = c.url  # may hold a password: kept out of the audit
        return {"clone": {"name": c.name, "method": c.method, "seconds": c.seconds,
                          "bytes": c.bytes}, **c.public()}

    def clone_url(self, incident_id: str, spec: ServiceSpec, name: str) -> str:
        url = self.clone_urls.get(incident_id)
        if url is None:  # after a restart: derivable for SQLite and PostgreSQL clones
            cloner = cloner_for(spec.database_url, self.work_dir / "clones")
            url_for = getattr(cloner, "url_for", None)
            if url_for is None:
                raise StepFailed("the clone's address was lost in a restart")
            url = str(url_for(name))
        return url

    async def step_propose(self, incident_id: str, service: str) -> dict[str, Any]:
        if self.fixer is None:
            raise StepFailed("no fixer is configured")
        inc = await self.db.run(lambda c: store.get(c, incident_id))
        assert inc is not None
        spec = self.spec(service)
        p = await self.fixer.propose(inc.evidence, {"tests_dir": spec.tests_dir,
                                                    "database_env": spec.database_env})
        return {"fixer": self.fixer.name, "model": p.model, "request_id": p.request_id,
                "usage": p.usage, "cost_usd": p.cost_usd, "fix": p.fix.model_dump()}

    async def step_apply(self, incident_id: str, service: str, fix: dict[str, Any]
                         ) -> dict[str, Any]:
        spec = self.spec(service)
        f = FixProposal.model_validate(fix)
        files = patching.check_patch(f.patch, spec.paths)  # before touching any checkout
        branch = self.cfg.branch_prefix + incident_id
        wt = self.worktree(incident_id)
        wt.parent.mkdir(parents=True, exist_ok=True)
        await patching.add_worktree(Path(spec.repo), wt, branch)
        try:
            await patching.apply(wt, f.patch)
            test = patching.write_test(wt, f.test_path, f.test_code, spec.tests_dir)
        except Exception:
            await patching.remove_worktree(Path(spec.repo), wt, keep_branch=False)
            raise
        return {"worktree": str(wt), "branch": branch, "files": files, "test": test}

    def _sandbox_env(self, spec: ServiceSpec, clone_url: str) -> tuple[dict[str, str],
                                                                       list[str]]:
        env = {**spec.sandbox_env, spec.database_env: clone_url}
        allow: list[str] = []
        if clone_url.startswith("postgresql://"):
            u = urlsplit(clone_url)
            allow.append(f"{u.hostname}:{u.port or 5432}")
        return env, allow

    def _sandbox_files(self, spec: ServiceSpec, clone_url: str) -> tuple[list[Path],
                                                                         list[Path]]:
        """(directories hidden from the sandbox, files it may write besides the worktree).
        Hidden: keel's data, and for every routed service its repository (the production
        checkout), its SQLite database's directory and its log's directory. Refuses a
        clone that is not isolated from production (fail closed)."""
        hide = list(self.keel_paths)
        for s in self.cfg.services:
            hide.append(Path(s.repo))
            if s.database_url.startswith("sqlite:///"):
                hide.append(Path(s.database_url.removeprefix("sqlite:///")).parent)
            if s.log_path:
                hide.append(Path(s.log_path).parent)
        writable: list[Path] = []
        if clone_url.startswith("sqlite:///"):
            path = Path(clone_url.removeprefix("sqlite:///"))
            prod = spec.database_url.removeprefix("sqlite:///")
            if (not spec.database_url.startswith("sqlite:///")
                    or path.resolve() == Path(prod).resolve()):
                raise StepFailed("the clone is not isolated from the production database; "
                                 "refusing to run the tests")
            writable.append(path)
        elif spec.database_url and clone_url == spec.database_url:
            raise StepFailed("the clone is the production database; refusing to run the tests")
        return hide, writable

    async def step_test(self, incident_id: str, service: str, clone: str, test: str,
                        fix: dict[str, Any]) -> dict[str, Any]:
        """The service's tests plus the new one must pass on the patched code, and the new
        test must fail on the current code (else it proves nothing)."""
        spec = self.spec(service)
        wt = self.worktree(incident_id)
        clone_url = self.clone_url(incident_id, spec, clone)
        env, allow = self._sandbox_env(spec, clone_url)
        hide, writable = self._sandbox_files(spec, clone_url)
        limits = sandbox.Limits(timeout_s=self.cfg.sandbox_timeout_s, cpu_s=self.cfg.sandbox_cpu_s,
                                memory_mb=self.cfg.sandbox_memory_mb)
        patched = await sandbox.run(spec.test, wt, env, limits, allow=allow, hide=hide,
                                    writable=writable)
        out: dict[str, Any] = {"patched": patched.public(), "cpu_s": patched.cpu_s}
        if not patched.passed:
            out["verdict"] = "tests fail with the patch"
            raise StepFailed("the tests fail with the patch", **out)
        patch = FixProposal.model_validate(fix).patch
        await patching.apply(wt, patch, reverse=True)
        try:
            old = await sandbox.run([*spec.test, test], wt, env, limits, allow=allow,
                                    hide=hide, writable=writable)
        finally:
            await patching.apply(wt, patch)
        out["unpatched_new_test"] = old.public()
        out["cpu_s"] = patched.cpu_s + old.cpu_s
        if old.passed:
            raise StepFailed("the regression test passes without the patch: it does not "
                             "reproduce the incident", **out)
        out["verdict"] = "tests pass with the patch; the new test fails without it"
        return out

    async def step_deploy(self, incident_id: str, service: str) -> dict[str, Any]:
        spec = self.spec(service)
        name = f"candidate-{incident_id.removeprefix('inc_')}"
        cand = await self.deployer.start(spec, self.worktree(incident_id), name)
        self.router.route(service).add(name, cand.url, 0.0)
        return {"version": name, "url": cand.url, "pid": cand.proc.pid,
                "log": str(cand.log_path)}

    async def step_canary(self, incident_id: str, service: str, version: str
                          ) -> dict[str, Any]:
        """``canary_weight`` of the traffic for ``canary_s``; rolled back at the first sign
        of a regression (checked every 50 ms)."""
        r = self.router.route(service)
        if version not in r.versions or self.deployer.get(version) is None:
            raise StepFailed(f"candidate {version!r} is not running (keel restarted?)")
        cfg = self.cfg
        cand, stable = r.versions[version], r.stable()
        r.canary(version, cfg.canary_weight)
        started, t0 = time.time(), time.monotonic()
        verdict = "healthy"
        while True:
            await asyncio.sleep(0.05)
            elapsed = time.monotonic() - t0
            c = cand.stats.summary(elapsed + 0.1)
            s = stable.stats.summary(elapsed + 0.1)
            if c.errors and c.error_rate > cfg.canary_max_error_rate:
                verdict = f"error rate {c.error_rate:.1%} > {cfg.canary_max_error_rate:.1%}"
            elif (c.requests >= max(cfg.canary_min_requests, LATENCY_MIN_SAMPLES)
                  and s.p95_ms > 0 and c.p95_ms > max(cfg.canary_latency_factor * s.p95_ms,
                                                      s.p95_ms + LATENCY_SLACK_MS)):
                verdict = f"p95 {c.p95_ms:.0f} ms > {cfg.canary_latency_factor}x stable"
            elif elapsed >= cfg.canary_s:
                if c.requests < cfg.canary_min_requests:
                    verdict = (f"only {c.requests} canary requests in {cfg.canary_s:.0f}s "
                               f"(need {cfg.canary_min_requests})")
                break
            if verdict != "healthy":
                break
        numbers = {"weight": cfg.canary_weight, "seconds": round(elapsed, 3),
                   "canary": c.public(), "stable": s.public(), "started_at": started}
        if verdict != "healthy":
            t_rb = time.monotonic()
            r.rollback()
            numbers["rollback_s"] = time.monotonic() - t_rb
            numbers["detected_after_s"] = round(elapsed, 3)
            await self.deployer.stop(version)
            r.remove(version)
            raise StepFailed(f"canary rolled back: {verdict}", **numbers)  # type: ignore[arg-type]
        return {"verdict": verdict, **numbers}

    async def step_promote(self, incident_id: str, service: str, version: str,
                           summary: str, root_cause: str) -> dict[str, Any]:
        r = self.router.route(service)
        r.promote(version)
        sha = await patching.commit(self.worktree(incident_id),
                                    f"{summary}\n\nRoot cause: {root_cause}\n\n"
                                    f"Remediated by keel ({incident_id}); approved by a human.")
        return {"version": version, "weight": 1.0, "commit": sha,
                "branch": self.cfg.branch_prefix + incident_id}

    async def step_rollback(self, incident_id: str, service: str, version: str | None
                            ) -> dict[str, Any]:
        r = self.router.route(service)
        t0 = time.monotonic()
        r.rollback()
        took = time.monotonic() - t0
        if version:
            await self.deployer.stop(version)
            r.remove(version)
        return {"rollback_s": took, "stable": r.stable().name}

    async def step_request_approval(self, incident_id: str, service: str, version: str,
                                    fix: dict[str, Any], applied: dict[str, Any],
                                    canary: dict[str, Any]) -> dict[str, Any]:
        """A human decides through the approvals capability (Slack, webhook, web page)."""
        from keel.approvals.models import Proposal

        if self.approvals is None:
            raise StepFailed("the approvals capability is off")
        c, s = canary["canary"], canary["stable"]
        reason = (
            f"Root cause: {fix['root_cause']}\n"
            f"Actions: patched {', '.join(applied['files'])} on branch {applied['branch']} "
            f"({fix['summary']}); the service's tests and the new regression test "
            f"{applied['test']} pass against a clone of production, and the new test fails "
            f"on the current code.\n"
            f"Canary: {canary['weight']:.0%} of traffic for {canary['seconds']:.0f}s: "
            f"{c['errors']}/{c['requests']} errors, p95 {c['p95_ms']:.0f} ms (stable: "
            f"{s['errors']}/{s['requests']} errors, p95 {s['p95_ms']:.0f} ms).\n"
            "Shift 100% Traffic = send all traffic to the fix and commit it on the branch. "
            "Rollback & Page On-Call = roll back the canary and page the on-call.")
        p = Proposal(action=ACTION, risk_level="HIGH", reason=reason[:4000],
                     requested_by="keel remediation", tenant=self.cfg.tenant,
                     timeout_s=self.cfg.approval_timeout_s,
                     arguments={"incident": incident_id, "service": service,
                                "version": version, "branch": applied["branch"],
                                "canary": {"canary": c, "stable": s}})
        # The approval is a workflow of its own; DBOS does not start workflows from inside a
        # step, so it is requested from a clean context (a top-level workflow).
        handle = await asyncio.get_running_loop().create_task(
            self.approvals.engine.request(p), context=contextvars.Context())
        return {"approval_id": handle.id, "status": handle.approval.status,
                "decision_page": "/approvals (console) or the link in the notification",
                "reason": reason}

    async def step_await_decision(self, incident_id: str, approval_id: str
                                  ) -> dict[str, Any]:
        """Until the approval is decided or times out (its own expiry auto-denies)."""
        assert self.approvals is not None
        engine = self.approvals.engine
        a = await engine.wait(approval_id, None)
        return {"status": a.status, "decided_by": a.decided_by, "via": a.decided_via}

    async def step_page(self, incident_id: str, service: str, reason: str) -> dict[str, Any]:
        inc = await self.db.run(lambda c: store.get(c, incident_id))
        steps = await self.db.run(lambda c: store.list_steps(c, incident_id))
        assert inc is not None
        body = {"event": "remediation.page", "reason": reason, "incident": inc.public(),
                "steps": steps}
        return await page(self.cfg.page_webhook_url, body)

    async def cleanup(self, incident_id: str, service: str, clone: dict[str, Any] | None,
                      keep_branch: bool) -> None:
        """Drop the clone and the worktree (the branch stays when the fix was shipped)."""
        spec = self.spec(service)
        if clone is not None:
            # best effort: a leftover clone must not hide the outcome
            with contextlib.suppress(Exception):
                url = self.clone_url(incident_id, spec, clone["name"])
                c = Clone(url, clone["name"], clone["method"], clone["seconds"])
                await cloner_for(spec.database_url, self.work_dir / "clones").drop(c)
        self.clone_urls.pop(incident_id, None)
        wt = self.worktree(incident_id)
        if wt.exists():
            await patching.remove_worktree(Path(spec.repo), wt, keep_branch=keep_branch)
