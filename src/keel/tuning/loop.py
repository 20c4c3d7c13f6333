"""One round of the loop for one model: feedback -> dataset -> train -> evaluate -> register
-> promote (when the gate passes). A failed round changes nothing that is served.

Training runs in a child process (``keel train run SPEC``): the server never imports torch,
a crash or kill of the trainer cannot take the gateway down, and rerunning the same spec
resumes from its last checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, select

from keel.config import ModelSpec, Settings
from keel.errors import ConfigError, InvalidRequest, KeelError
from keel.metering.request_log import requests as request_log
from keel.providers.model_files import resolve_model_path
from keel.storage.sql import Database
from keel.tuning import store
from keel.tuning.dataset import Dataset, Example, Scrubber, build, prompt_messages, read_split
from keel.tuning.gate import evaluate
from keel.tuning.registry import Version, VersionRegistry
from keel.tuning.settings import TuningSettings
from keel.tuning.spec import TrainSpec
from keel.tuning.trigger import Due, TriggerLoop, due, rule

log = logging.getLogger("keel.tuning")


@dataclass
class RoundResult:
    status: str  # promoted | refused | failed
    version: Version | None
    reason: str = ""
    dataset_hash: str = ""


class LocalAnswerer:
    """Greedy answers from the local provider with an optional adapter (the gate's judge-free
    scorer: exact match needs deterministic output)."""

    def __init__(self, provider: Any, spec: ModelSpec, max_tokens: int) -> None:
        self.provider = provider
        self.spec = spec
        self.max_tokens = max_tokens

    async def answer(self, messages: list[dict[str, Any]], adapter: str | None) -> str:
        spec = self.spec.model_copy(update={"lora": adapter})
        body = {"model": spec.name, "messages": messages, "temperature": 0.0,
                "max_tokens": self.max_tokens, "seed": 0}
        resp = await self.provider.chat(body, spec)
        return str(resp["choices"][0]["message"]["content"] or "")


DEFAULT_TENANT = "default"  # the one tenant of an install without per-tenant keys


@dataclass(frozen=True)
class Scope:
    """Whose feedback one model's round trains on, and whether their system prompts may
    stay in the training prompts."""

    tenants: tuple[str, ...]
    keep_system_prompts: bool


def feedback_tenants(c: Connection, model: str, *, trainable_only: bool = False) -> list[str]:
    """The tenants with feedback (or trainable corrections) for ``model``, sorted."""
    f = store.feedback
    q = select(f.c.tenant).where(f.c.model == model).distinct()
    if trainable_only:
        q = q.where(f.c.trainable.is_(True))
    return sorted(str(t) for t in c.execute(q).scalars())


def allowed_tenants(settings: TuningSettings, model: str) -> list[str]:
    """The tenants the operator lets share ``model``'s training data (empty: none
    configured, so one tenant at a time)."""
    own = settings.triggers.get(model)
    if own is not None and own.tenants is not None:
        return list(own.tenants)
    return list(settings.shared_tenants)


def scope(settings: TuningSettings, model: str, present: list[str],
          tenant: str | None = None) -> Scope:
    """Fail closed: a tuned version serves every tenant that calls ``model``, so its
    training data is one tenant's feedback unless the operator listed tenants that may
    share it. ``present`` are the tenants with feedback for the model; ``tenant`` is an
    explicit choice (``--tenant``). Several tenants and no choice is a clear error."""
    allowed = allowed_tenants(settings, model)
    own = settings.triggers.get(model)
    keep_cfg = (own.keep_system_prompts if own is not None
                and own.keep_system_prompts is not None else settings.keep_system_prompts)
    if tenant is not None:
        if allowed and tenant not in allowed:
            raise InvalidRequest(
                f"tenant {tenant!r} is not among the tenants allowed to train {model!r} "
                f"({', '.join(allowed)}); add it to tenants of [tuning.triggers.\"{model}\"] "
                "or [tuning] shared_tenants", param="tenant")
        chosen: tuple[str, ...] = (tenant,)
    elif allowed:
        chosen = tuple(sorted(set(allowed)))
    elif len(present) > 1:
        raise InvalidRequest(
            f"feedback for {model!r} comes from {len(present)} tenants "
            f"({', '.join(present)}); a tuned version serves every tenant, so a round uses "
            "one tenant's feedback: choose it with --tenant TENANT, or list the tenants "
            f"that may share its training data in tenants of [tuning.triggers.\"{model}\"] "
            "(or [tuning] shared_tenants)", param="tenant")
    else:
        chosen = tuple(present) or (DEFAULT_TENANT,)
    keep = keep_cfg or chosen == (DEFAULT_TENANT,)
    return Scope(chosen, keep)


def collect(c: Connection, model: str, tenants: tuple[str, ...] | None = None, *,
            keep_system_prompts: bool = True) -> tuple[list[Example], list[Example]]:
    """(corrections, approved answers) of ``model`` from feedback joined to the request log,
    only ``tenants``' feedback when given; without ``keep_system_prompts`` the system (and
    developer) messages of the logged prompts are left out."""
    f, r = store.feedback, request_log
    q = (select(f.c.rating, f.c.correction, r.c.request_body, r.c.route, r.c.response_text)
         .join(r, r.c.id == f.c.request_id).where(f.c.model == model)
         .order_by(f.c.updated))
    if tenants is not None:
        q = q.where(f.c.tenant.in_(tenants))
    corrections, approved = [], []
    for row in c.execute(q):
        msgs = prompt_messages(row.request_body, row.route)
        if msgs is None:
            continue
        if not keep_system_prompts:
            msgs = [m for m in msgs if m.get("role") not in ("system", "developer")]
            if not msgs:
                continue
        if row.rating == -1 and row.correction:
            corrections.append(Example(msgs, row.correction))
        elif row.rating == 1 and row.response_text:
            approved.append(Example(msgs, row.response_text))
    return corrections, approved


def check_triggers(settings: Settings) -> None:
    """Refuse ``[tuning.triggers."<model>"]`` tables that name no local chat model: a typo
    would otherwise leave the intended model on the defaults without a word."""
    tunable = {m.name for m in settings.model_table()
               if m.provider == "local" and m.kind == "chat"}
    unknown = sorted(set(settings.tuning.triggers) - tunable)
    if unknown:
        raise ConfigError(
            "[tuning.triggers] names " + ", ".join(f'"{m}"' for m in unknown)
            + ", not a local chat model of the model table; tunable models: "
            + (", ".join(sorted(tunable)) or "none"))


def cost(metrics: dict[str, Any], cpu_usd_per_hour: float, gpu_usd_per_hour: float) -> float:
    gpu_s = float(metrics["train_seconds"]) if metrics.get("device") == "cuda" else 0.0
    return round(float(metrics.get("cpu_seconds") or 0.0) / 3600 * cpu_usd_per_hour
                 + gpu_s / 3600 * gpu_usd_per_hour, 6)


async def run_spec_subprocess(spec_path: Path, *, timeout_s: float | None = None) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "keel.tuning.run", str(spec_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise KeelError(f"training {spec_path} ran past {timeout_s:g}s") from None
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        raise KeelError(f"training {spec_path} failed (exit {proc.returncode}): "
                        + " | ".join(tail))


async def _wait(handle: Any) -> RoundResult:
    out = await handle.get_result()
    return RoundResult(out.get("status", "failed"), None, out.get("reason", ""),
                       out.get("dataset", ""))


class TuningLoop:
    def __init__(self, settings: Settings, db: Database, registry: VersionRegistry,
                 provider_for: Any, scrubber: Scrubber) -> None:
        check_triggers(settings)
        self.settings = settings
        self.tuning = settings.tuning
        self.db = db
        self.registry = registry
        self._provider_for = provider_for  # ModelSpec -> ChatProvider
        self.scrubber = scrubber
        self.root = settings.data_dir / "tuning"
        self._running: dict[str, asyncio.Task[RoundResult]] = {}
        self.runtime: Any = None  # keel.jobs.JobRuntime once bound: rounds are durable
        self._workflow: Any = None

    # -- the durable round: a DBOS workflow on the app's job runtime ----------------------

    def bind(self, runtime: Any) -> None:
        """Run rounds as the DBOS workflow ``keel.tuning.round`` on ``runtime``: a process
        killed mid-round resumes it at the step it was in when DBOS recovers it (training
        resumes from its last checkpoint)."""
        self.runtime = runtime
        runtime.on_launch(self._register)

    def _register(self) -> None:
        from dbos import DBOS

        loop = self

        async def guarded(fn: Any) -> dict[str, Any]:
            try:
                return {"ok": await fn()}
            except KeelError as exc:  # a clear reason, recorded as the step's result
                return {"error": exc.message}

        @DBOS.step(name="keel.tuning.dataset")
        async def dataset_step(model: str, tenant: str | None = None) -> dict[str, Any]:
            return await guarded(lambda: loop._dataset_dir(model, tenant))

        @DBOS.step(name="keel.tuning.plan")
        async def plan_step(model: str, ds_dir: str, overrides: dict[str, Any]
                            ) -> dict[str, Any]:
            async def go() -> str:
                champion = await loop.registry.serving(model)
                return str(loop.plan(model, Path(ds_dir), champion.id if champion else "",
                                     **overrides))
            return await guarded(go)

        # a crash or kill of the trainer is retried; each retry resumes from the checkpoint
        @DBOS.step(name="keel.tuning.train", retries_allowed=True, max_attempts=3,
                   interval_seconds=5.0)
        async def train_step(spec_path: str) -> dict[str, Any]:
            return await guarded(lambda: run_spec_subprocess(Path(spec_path)))

        @DBOS.step(name="keel.tuning.register")
        async def register_step(spec_path: str) -> dict[str, Any]:
            async def go() -> dict[str, Any]:
                r = await loop.register_run(Path(spec_path))
                return {"status": r.status, "reason": r.reason,
                        "version": r.version.id if r.version else None}
            return await guarded(go)

        @DBOS.workflow(name="keel.tuning.round")
        async def round_workflow(model: str, overrides: dict[str, Any]) -> dict[str, Any]:
            # the tenant whose feedback the round trains on travels with the overrides
            # (the workflow's inputs stay the same shape for recovery)
            overrides = dict(overrides)
            tenant = overrides.pop("tenant", None)
            ds = await dataset_step(model, tenant)
            if "error" in ds:
                return {"status": "failed", "reason": ds["error"]}
            spec = await plan_step(model, ds["ok"], overrides)
            if "error" in spec:
                return {"status": "failed", "reason": spec["error"]}
            trained = await train_step(spec["ok"])
            if "error" in trained:
                return {"status": "failed", "reason": trained["error"], "spec": spec["ok"]}
            done = await register_step(spec["ok"])
            if "error" in done:
                return {"status": "failed", "reason": done["error"], "spec": spec["ok"]}
            return {**done["ok"], "spec": spec["ok"], "dataset": Path(ds["ok"]).name}

        self._workflow = round_workflow

    async def _dataset_dir(self, model: str, tenant: str | None = None) -> str:
        _, path = await self.build_dataset(model, tenant)
        return str(path)

    async def start_round(self, model: str, tenant: str | None = None,
                          **overrides: Any) -> Any:
        """Start the durable round for ``model`` (on ``tenant``'s feedback when given);
        returns the DBOS workflow handle."""
        from dbos import DBOS

        if self.runtime is None:
            raise KeelError("no job runtime: rounds run durably only inside an app")
        self._spec(model)  # a model that cannot be tuned fails here, before any work
        await self.runtime.ensure_started()
        if tenant is not None:
            overrides["tenant"] = tenant
        return await DBOS.start_workflow_async(self._workflow, model, overrides)

    def dataset(self, corrections: list[Example], approved: list[Example]) -> Dataset:
        return build(corrections, approved, self.scrubber,
                     eval_fraction=self.tuning.eval_fraction,
                     min_rows=self.tuning.min_dataset_rows,
                     replay_fraction=self.tuning.replay_fraction)

    async def scope(self, model: str, tenant: str | None = None) -> Scope:
        """Whose feedback ``model``'s next round uses (see :func:`scope`)."""
        present = await self.db.run(lambda c: feedback_tenants(c, model))
        return scope(self.tuning, model, present, tenant)

    async def build_dataset(self, model: str, tenant: str | None = None
                            ) -> tuple[Dataset, Path]:
        sc = await self.scope(model, tenant)
        corrections, approved = await self.db.run(
            lambda c: collect(c, model, sc.tenants, keep_system_prompts=sc.keep_system_prompts))
        ds = self.dataset(corrections, approved)
        path = await asyncio.to_thread(ds.write, self.root / "datasets")
        return ds, path

    def plan(self, model: str, dataset_dir: Path, parent: str, **overrides: Any) -> Path:
        spec_model = self._spec(model)
        run_dir = self.root / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        run_dir.mkdir(parents=True, exist_ok=True)
        t = self.tuning
        fields: dict[str, Any] = {
            "lora_rank": t.lora_rank, "lora_alpha": 2.0 * t.lora_rank,
            "learning_rate": t.learning_rate, "epochs": t.epochs,
            "checkpoint_every": t.checkpoint_every, "threads": t.threads} | overrides
        spec = TrainSpec(model=model, base=str(resolve_model_path(spec_model, self.settings)),
                         dataset=str(dataset_dir), output=str(run_dir / "out"), parent=parent,
                         chat_format=spec_model.chat_format, **fields)
        spec.save(run_dir / "spec.json")
        return run_dir / "spec.json"

    def _spec(self, model: str) -> ModelSpec:
        spec = next((m for m in self.settings.model_table() if m.name == model), None)
        if spec is None or spec.provider != "local" or spec.kind != "chat":
            raise InvalidRequest(f"{model!r} is not a local chat model; only local GGUF "
                                 "models can be tuned here")
        return spec

    async def register_run(self, spec_path: Path, *, promote: bool = True) -> RoundResult:
        """Evaluate a finished run's adapter against the serving champion, register it and
        promote it when the gate passes (also for runs trained on another machine)."""
        spec = TrainSpec.load(spec_path)
        out = Path(spec.output)
        result = orjson.loads((out / "result.json").read_bytes())
        adapter = result.get("adapter") or str(out / "adapter.gguf")
        model_spec = self._spec(spec.model)
        champion = await self.registry.serving(spec.model)
        answerer = LocalAnswerer(self._provider_for(model_spec), model_spec,
                                 self.tuning.gate.max_new_tokens)
        ds_dir = Path(spec.dataset)
        report = await evaluate(answerer, champion=champion.adapter if champion else None,
                                candidate=adapter, held_out=read_split(ds_dir / "eval.jsonl"),
                                regression=read_split(ds_dir / "regression.jsonl"),
                                settings=self.tuning.gate)
        metrics = {k: result.get(k) for k in ("steps", "resumed_from", "examples", "device",
                                               "train_seconds", "cpu_seconds", "peak_rss_mb")}
        metrics["final_loss"] = (result.get("losses") or [None])[-1]
        metrics["cost_usd"] = cost(metrics, self.tuning.cpu_usd_per_hour,
                                   self.tuning.gpu_usd_per_hour)
        hyper = spec.model_dump(include={"lora_rank", "lora_alpha", "lora_dropout",
                                         "target_modules", "learning_rate", "epochs",
                                         "max_steps", "batch_size", "seed"})
        version = await self.registry.register(
            model=spec.model, base_model=spec.base, adapter=adapter,
            dataset_hash=ds_dir.name, hyperparams=hyper, metrics=metrics,
            report=report.to_json(), status="candidate" if report.passed else "refused",
            parent=champion.id if champion else "")
        if not report.passed:
            return RoundResult("refused", version, "; ".join(report.reasons), ds_dir.name)
        if promote:
            version = await self.registry.promote(version.id)
            return RoundResult("promoted", version, dataset_hash=ds_dir.name)
        return RoundResult("candidate", version, dataset_hash=ds_dir.name)

    async def run_round(self, model: str, tenant: str | None = None,
                        **overrides: Any) -> RoundResult:
        """dataset -> train (child process) -> evaluate -> register -> promote."""
        try:
            _, ds_dir = await self.build_dataset(model, tenant)
            champion = await self.registry.serving(model)
            spec_path = self.plan(model, ds_dir, champion.id if champion else "", **overrides)
            await run_spec_subprocess(spec_path)
            return await self.register_run(spec_path)
        except KeelError as exc:
            log.warning("tuning round for %s failed: %s", model, exc.message)
            return RoundResult("failed", None, exc.message)

    def tuned_models(self) -> list[str]:
        """The models whose triggers are checked: every local chat model."""
        return [m.name for m in self.settings.model_table()
                if m.provider == "local" and m.kind == "chat"]

    async def due(self, model: str, now: float | None = None) -> Due | None:
        """The round ``model``'s trigger asks for now (new corrections or its schedule)."""
        from keel.tuning.feedback import count_trainable

        versions = await self.registry.list(model)
        last = versions[0] if versions else None
        since = last.created if last else 0.0
        present = await self.db.run(lambda c: feedback_tenants(c, model))
        try:
            sc = scope(self.tuning, model, present)
        except InvalidRequest as exc:  # several tenants, none chosen: never mix them
            log.warning("tuning trigger for %s not started: %s", model, exc.message)
            return None
        n = await self.db.run(lambda c: count_trainable(c, model, since, sc.tenants))
        return due(model, rule(self.tuning, model), last, n,
                   time.time() if now is None else now)

    async def start_due(self, d: Due) -> bool:
        """Start the round ``d`` unless one of ``d.model`` runs already (here or, through
        the shared system database, in any process). The workflow id comes from the
        trigger, so every process that sees the same trigger starts the same one round."""
        from dbos import DBOS, SetWorkflowID

        mine = self._running.get(d.model)
        if mine is not None and not mine.done():
            return False
        if self.runtime is None:  # an embedding app without a job runtime: in process
            self._running[d.model] = asyncio.create_task(self.run_round(d.model),
                                                         name=f"keel-tuning-{d.model}")
            return True
        self._spec(d.model)
        await self.runtime.ensure_started()
        running = await DBOS.list_workflows_async(
            workflow_id_prefix=f"keel.tuning.round:{d.model}:",
            status=["PENDING", "ENQUEUED"], load_input=False, load_output=False)
        if any(w.workflow_id != d.workflow_id for w in running):
            return False
        with SetWorkflowID(d.workflow_id):  # the same id again: DBOS returns the existing one
            handle = await DBOS.start_workflow_async(self._workflow, d.model, {})
        log.info("tuning round %s started (%s)", d.workflow_id, d.reason)
        self._running[d.model] = asyncio.create_task(_wait(handle),
                                                     name=f"keel-tuning-{d.model}")
        return True

    async def maybe_trigger(self, model: str) -> bool:
        """Start ``model``'s round when its trigger is due (one round per model at a
        time, across processes)."""
        if model not in self.tuned_models():
            return False
        d = await self.due(model)
        return d is not None and await self.start_due(d)

    def trigger_loop(self) -> TriggerLoop:
        """The timer that checks every tuned model's trigger (started by the capability)."""
        return TriggerLoop(self.tuned_models, self.due, self.start_due,
                           self.tuning.check_every_s)

    async def aclose(self) -> None:
        for task in self._running.values():
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)
