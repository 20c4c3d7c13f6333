"""A reasoning run: N samples (fan-out with bounded concurrency, retries, early stop),
then judges (optional vote, tournament rounds while the answers do not fit, one final
judge that cites the samples it used).

The store is the source of truth: a sample that finished is never requested again, and a
judge call whose verdict is recorded is never repeated, so :meth:`ReasoningEngine.execute`
can be run again on a run after a crash and picks up where it stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from keel.errors import BudgetExceeded, InvalidRequest, KeelError, UnknownModel
from keel.gateway.context import Principal
from keel.ports.embedder import Embedder
from keel.providers.registry import ModelRegistry
from keel.reasoning import plan, prompts
from keel.reasoning.calls import ModelCaller, Reply
from keel.reasoning.settings import ReasonerSpec
from keel.reasoning.store import UNFINISHED, Run, RunStore, new_run_id

log = logging.getLogger("keel.reasoning")
JSON = dict[str, Any]
PROMPT_SLACK_TOKENS = 64  # chat template tokens the estimate does not see


class BudgetTooSmall(InvalidRequest):
    code = "reasoning_budget_too_small"


class RunFailed(KeelError):
    http_status = 502
    code = "reasoning_failed"


@dataclass
class SampleResult:
    index: int
    ok: bool
    text: str = ""
    claimed: JSON | None = None  # the lane's next sample, claimed with this result


class Fanout(Protocol):
    """Runs the pending samples of a run with at most ``max_concurrency`` at once, calling
    ``on_done`` as each one finishes; ``on_done`` returning True cancels the rest."""

    async def __call__(self, run: Run, spec: ReasonerSpec, indices: Sequence[int],
                       on_done: Callable[[SampleResult], Awaitable[bool]]) -> None: ...


class ReasoningEngine:
    def __init__(self, reasoners: Sequence[ReasonerSpec], models: ModelRegistry,
                 store: RunStore, call: ModelCaller,
                 embedder: Callable[[], Embedder] | None = None) -> None:
        self.reasoners = {r.name: r for r in reasoners}
        self.models = models
        self.store = store
        self.call = call
        self._embedder = embedder
        self.fanout: Fanout = LocalFanout(self)

    # -- planning (no model call) ------------------------------------------------------

    def reasoner(self, name: str) -> ReasonerSpec:
        spec = self.reasoners.get(name)
        if spec is None:
            raise UnknownModel(f"reasoner {name!r} does not exist; configured reasoners: "
                               f"{', '.join(sorted(self.reasoners)) or '(none)'}",
                               param="model")
        return spec

    def room(self, spec: ReasonerSpec, question: str) -> plan.JudgeRoom:
        judge = self.models.get(spec.judge_model)
        instructions = prompts.final_prompt(spec.judge_prompt, question, [], {})
        text = "".join(str(m["content"]) for m in instructions)
        return plan.JudgeRoom(judge.context, spec.judge_max_tokens,
                              plan.estimate_tokens(text) + PROMPT_SLACK_TOKENS)

    def _worst_sample(self, spec: ReasonerSpec, question: str) -> float:
        tokens = plan.estimate_tokens(question) + PROMPT_SLACK_TOKENS
        return max(plan.worst_cost(m.input_usd_per_1m, m.output_usd_per_1m, tokens,
                                   spec.worker_max_tokens)
                   for m in (self.models.get(w) for w in spec.workers))

    def _worst_judge(self, spec: ReasonerSpec, room: plan.JudgeRoom) -> float:
        judge = self.models.get(spec.judge_model)
        return plan.worst_cost(judge.input_usd_per_1m, judge.output_usd_per_1m,
                               room.context - room.max_tokens, room.max_tokens)

    def judge_calls(self, spec: ReasonerSpec, n: int, room: plan.JudgeRoom) -> int:
        rounds = plan.simulate_bracket(min(n, spec.vote_keep) if spec.vote_k else n,
                                       spec.worker_max_tokens, room, spec.survivors,
                                       spec.group_size)
        return sum(rounds) + spec.vote_k

    def affordable(self, spec: ReasonerSpec, n: int, budget: float, question: str) -> int:
        """How many samples the budget pays for at worst case, judges held back."""
        if not budget:
            return n
        room = self.room(spec, question)
        sample, judge = self._worst_sample(spec, question), self._worst_judge(spec, room)
        while n > 0 and n * sample + self.judge_calls(spec, n, room) * judge > budget:
            n -= 1
        return n

    def plan(self, principal: Principal, name: str, messages: list[JSON],
             n: int | None = None, budget_usd: float | None = None,
             end_user: str | None = None) -> Run:
        """Validate a request and build its run; every refusal happens here, before any
        model call. ``end_user``: who asked (the firewall's end-user id), carried into
        every sample and judge call."""
        spec = self.reasoner(name)
        if n is None:
            n = spec.n
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= spec.max_n:
            raise InvalidRequest(f"n must be a whole number from 1 to {spec.max_n} "
                                 f"(max_n of reasoner {name!r}), got {n!r}", param="n")
        budget = spec.budget_usd if budget_usd is None else budget_usd
        if isinstance(budget, bool) or not isinstance(budget, int | float) or budget < 0:
            raise InvalidRequest("budget_usd must be a number >= 0 (0: no limit)",
                                 param="budget_usd")
        if spec.budget_usd and (not budget or budget > spec.budget_usd):
            budget = spec.budget_usd  # a request may lower the reasoner's budget, not lift it
        if not messages:
            raise InvalidRequest("the question is empty", param="messages")
        question = prompts.question_text(messages)
        room = self.room(spec, question)
        if not room.holds_one(spec.worker_max_tokens):
            raise InvalidRequest(
                f"the judge model {spec.judge_model!r} (context {room.context} tokens) cannot "
                f"hold even one answer of worker_max_tokens = {spec.worker_max_tokens} with "
                f"this question and judge_max_tokens = {spec.judge_max_tokens}; use a judge "
                "with a larger context, a shorter question or lower worker_max_tokens",
                param="model")
        self.judge_calls(spec, n, room)  # BracketError (400) when no bracket can shrink
        if budget:
            one = self._worst_sample(spec, question) + self._worst_judge(spec, room)
            if budget < one:
                raise BudgetTooSmall(
                    f"budget_usd = {budget:g} cannot pay for one sample and the final judge "
                    f"(up to ${one:.6f} at max_tokens); raise the budget", param="budget_usd")
        return Run(id=new_run_id(), reasoner=name, tenant=principal.tenant,
                   agent=principal.agent, key_id=principal.key_id, messages=messages, n=n,
                   budget_usd=float(budget), status="queued", phase="sampling", answer=None,
                   citations=[], error=None, cost_usd=0.0, prompt_tokens=0,
                   completion_tokens=0, judge_calls=0, created_at=time.time(),
                   finished_at=None, end_user=end_user)

    async def create(self, run: Run) -> None:
        spec = self.reasoner(run.reasoner)
        ids = plan.anonymous_ids(run.n, run.id)
        await self.store.create(run, ids, [spec.worker_for(i) for i in range(run.n)])

    # -- execution ---------------------------------------------------------------------

    async def execute(self, run_id: str) -> Run:
        run = await self.store.get(run_id)
        if run is None:
            raise RunFailed(f"reasoning run {run_id} does not exist")
        if run.done:
            return run
        try:
            spec = self.reasoner(run.reasoner)
            await self._execute(run, spec)
        except KeelError as exc:
            await self._fail(run.id, exc.message)
        except Exception as exc:  # a bug: the run ends failed, never hangs
            log.exception("reasoning run %s failed", run.id)
            await self._fail(run.id, f"internal error: {type(exc).__name__}")
        final = await self.store.get(run.id)
        assert final is not None
        return final

    async def _fail(self, run_id: str, message: str) -> None:
        await self.store.update_run(run_id, ("failed", {"error": message}), status="failed",
                                    phase="done", error=message, finished_at=time.time())

    async def _execute(self, run: Run, spec: ReasonerSpec) -> None:
        question = prompts.question_text(run.messages)
        if run.status == "queued":
            await self.store.update_run(run.id, ("started", {}), status="running")
        affordable = self.affordable(spec, run.n, run.budget_usd, question)
        pending = [s["index"] for s in run.samples if s["status"] in UNFINISHED]
        for i in [i for i in pending if i >= affordable]:
            await self.store.update_sample(
                run.id, i, ("sample_skipped", {"index": i, "reason": "budget"}),
                status="skipped", reason=f"the run's budget pays for {affordable} samples")
        pending = [i for i in pending if i < affordable]
        if run.phase == "sampling":
            agreed = await self._sample_phase(run, spec, pending)
            if agreed:
                await self._finish_agreed(run, spec, agreed)
                return
            await self.store.update_run(run.id, ("judging", {}), phase="judging")
        run = await self.store.get(run.id) or run
        ok = [s for s in run.samples if s["status"] == "ok"]
        if len(ok) < spec.min_survivors:
            reasons = Counter(s["error"] or s["reason"] or s["status"]
                              for s in run.samples if s["status"] != "ok")
            detail = "; ".join(f"{r} (x{c})" for r, c in reasons.most_common(5))
            raise RunFailed(f"{len(ok)} of {run.n} samples succeeded, fewer than "
                            f"min_survivors = {spec.min_survivors}: {detail}")
        await self._judge_phase(run, spec, ok, question)

    async def _sample_phase(self, run: Run, spec: ReasonerSpec,
                            pending: list[int]) -> list[int] | None:
        done_ok = [s for s in run.samples if s["status"] == "ok"]
        finished: list[tuple[int, str]] = [(s["index"], s["text"] or "") for s in done_ok]
        agreed: list[int] | None = None
        checked = len(finished) >= spec.early_stop > 0

        async def on_done(res: SampleResult) -> bool:
            nonlocal agreed, checked
            if res.ok:
                finished.append((res.index, res.text))
            if spec.early_stop and not checked and len(finished) >= spec.early_stop:
                checked = True  # only the FIRST k answers decide
                first = finished[:spec.early_stop]
                if await self._agree([t for _, t in first], spec):
                    agreed = [i for i, _ in first]
                    return True
            return False

        if pending:
            await self.fanout(run, spec, pending, on_done)
        if agreed:
            fresh = await self.store.get(run.id)
            for s in (fresh.samples if fresh else []):
                if s["status"] == "pending":
                    await self.store.update_sample(
                        run.id, s["index"], None, status="cancelled",
                        reason=f"early stop: the first {spec.early_stop} answers agreed")
            await self.store.event(run.id, "early_stop", {"agreed": agreed})
        return agreed

    async def _agree(self, texts: list[str], spec: ReasonerSpec) -> bool:
        if spec.early_stop_match == "normalised" or self._embedder is None:
            return plan.agree(texts)
        import numpy as np

        vecs = await self._embedder().embed(texts)
        m = np.asarray(vecs, dtype=np.float32)
        m /= np.linalg.norm(m, axis=1, keepdims=True) + 1e-9
        sims = m @ m.T
        return bool(sims.min() >= spec.early_stop_similarity)

    async def sample(self, run: Run, spec: ReasonerSpec, index: int,
                     stored: JSON | None = None, lane: int | None = None) -> SampleResult:
        """One sample with retries (429, 5xx, timeouts: backoff with jitter), recorded;
        with ``lane``, the lane's next sample is claimed in the same transaction."""
        if stored is None:
            stored = next(s for s in run.samples if s["index"] == index)
        model = stored["model"]
        body: JSON = {"model": model, "messages": run.messages,
                      "temperature": spec.worker_temperature,
                      "max_tokens": spec.worker_max_tokens, "seed": index}
        principal = Principal(key_id=run.key_id, tenant=run.tenant, agent=run.agent)
        rng = plan.rng_for(run.id, f"retry-{index}")
        started = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            try:
                async with asyncio.timeout(spec.sample_timeout_s):
                    reply = await self.call(principal, body, run.id, f"sample-{index}",
                                            run.end_user)
                break
            except Exception as exc:
                message = exc.message if isinstance(exc, KeelError) else (
                    f"timed out after {spec.sample_timeout_s:g} s"
                    if isinstance(exc, TimeoutError) else type(exc).__name__)
                if plan.retryable(exc) and attempt <= spec.retries:
                    delay = plan.backoff_s(attempt - 1, spec.retry_base_s, spec.retry_max_s,
                                           rng)
                    await self.store.event(run.id, "retry", {
                        "index": index, "id": stored["id"], "attempt": attempt,
                        "error": message, "delay_s": round(delay, 3)})
                    await asyncio.sleep(delay)
                    continue
                claimed = await self.store.update_sample(
                    run.id, index, ("sample_failed", {"index": index, "id": stored["id"],
                                                      "error": message, "attempts": attempt}),
                    claim=lane, status="failed", attempts=attempt, error=message,
                    latency_ms=(time.perf_counter() - started) * 1000)
                return SampleResult(index, False, claimed=claimed)
        claimed = await self.store.finish_sample(
            run.id, index, reply, attempt, (time.perf_counter() - started) * 1000,
            stored["id"], claim=lane)
        return SampleResult(index, True, reply.text, claimed)

    # -- judging -----------------------------------------------------------------------

    async def _judge_phase(self, run: Run, spec: ReasonerSpec, ok: list[JSON],
                           question: str) -> None:
        answers = {s["id"]: s["text"] or "" for s in ok}
        sizes = {s["id"]: s["completion_tokens"] or plan.estimate_tokens(s["text"] or "")
                 for s in ok}
        by_id = {s["id"]: s for s in ok}
        room = self.room(spec, question)
        recorded = {e["key"]: e for e in await self.store.events(run.id)
                    if e["kind"] == "judge"}
        verdicts: dict[str, tuple[str, str | None]] = {}
        field = plan.shuffled(list(answers), run.id, "round-0")
        principal = Principal(key_id=run.key_id, tenant=run.tenant, agent=run.agent)
        if spec.vote_k and len(field) > spec.vote_keep and room.fits(sizes[a] for a in field):
            field = await self._vote(run, spec, principal, question, field, answers,
                                     recorded, verdicts)
        rnd = 0
        sem = asyncio.Semaphore(spec.max_concurrency)
        while not plan.final_fits([sizes[a] for a in field], room, spec.group_size):
            rnd += 1
            groups = plan.plan_round({a: sizes[a] for a in field}, room, spec.survivors,
                                     spec.group_size)

            async def judge_group(g: int, group: list[str], rnd: int = rnd) -> list[str]:
                if len(group) <= spec.survivors:
                    return group  # nothing to choose
                async with sem:
                    return await self._keep(run, spec, principal, question, rnd, g, group,
                                            answers, recorded, verdicts)

            kept = await asyncio.gather(*(judge_group(g, grp) for g, grp in enumerate(groups)))
            field = plan.shuffled([a for k in kept for a in k], run.id, f"round-{rnd}")
            await self.store.event(run.id, "round", {"round": rnd, "groups": len(groups),
                                                     "survivors": len(field)})
        data = await self._judge(run, spec, principal, "final", prompts.final_prompt(
            spec.judge_prompt, question, field, answers), prompts.FINAL_SCHEMA, recorded,
            {"round": "final", "presented": field})
        parsed = prompts.parse_json_object(data["text"])
        answer = (parsed or {}).get("answer") if parsed is not None else data["text"]
        if not isinstance(answer, str) or not answer.strip():
            raise RunFailed("the final judge returned no usable answer (expected JSON with "
                            "an 'answer'); use a stronger judge model")
        if parsed is not None:
            cites = [c for c in parsed.get("citations") or [] if isinstance(c, dict)]
            checked = plan.check_ids([c.get("id") for c in cites], field)
            insight = {str(c.get("id", "")).strip().lower(): str(c.get("insight", ""))
                       for c in cites}
            for r in parsed.get("rejected") or []:
                if isinstance(r, dict) and str(r.get("id", "")).lower() in answers:
                    verdicts[str(r["id"]).lower()] = ("rejected", str(r.get("reason", "")))
        else:
            checked = plan.Checked(plan.ids_in_text(answer, field), [])
            insight = {}
        citations = [{"id": a, "sample": by_id[a]["index"], "model": by_id[a]["model"],
                      "insight": insight.get(a, "")} for a in checked.valid]
        for a in field:
            verdicts.setdefault(a, ("kept", None))
        for a in checked.valid:
            verdicts[a] = ("cited", None)
        if checked.invalid:
            await self.store.event(run.id, "citations_invalid", {"ids": checked.invalid})
        await self.store.verdicts(run.id, {by_id[a]["index"]: v for a, v in verdicts.items()})
        await self.store.update_run(
            run.id, ("succeeded", {"citations": len(citations)}), status="succeeded",
            phase="done", answer=answer.strip(), citations=citations,
            finished_at=time.time())

    async def _finish_agreed(self, run: Run, spec: ReasonerSpec, agreed: list[int]) -> None:
        fresh = await self.store.get(run.id)
        assert fresh is not None
        by_index = {s["index"]: s for s in fresh.samples}
        citations = [{"id": by_index[i]["id"], "sample": i, "model": by_index[i]["model"],
                      "insight": "agreed (early stop)"} for i in agreed]
        await self.store.verdicts(run.id, {i: ("cited", None) for i in agreed})
        await self.store.update_run(
            run.id, ("succeeded", {"early_stop": True}), status="succeeded", phase="done",
            answer=(by_index[agreed[0]]["text"] or "").strip(), citations=citations,
            finished_at=time.time())

    async def _keep(self, run: Run, spec: ReasonerSpec, principal: Principal, question: str,
                    rnd: int, g: int, group: list[str], answers: dict[str, str],
                    recorded: dict[str, JSON],
                    verdicts: dict[str, tuple[str, str | None]]) -> list[str]:
        try:
            data = await self._judge(run, spec, principal, f"r{rnd}g{g}", prompts.keep_prompt(
                question, group, answers, spec.survivors), prompts.keep_schema(spec.survivors),
                recorded, {"round": rnd, "group": g, "presented": group})
            parsed = prompts.parse_json_object(data["text"]) or {}
            checked = plan.check_ids(parsed.get("keep") or [], group)
            reasons = {str(r.get("id", "")).lower(): str(r.get("reason", ""))
                       for r in parsed.get("rejected") or [] if isinstance(r, dict)}
        except KeelError as exc:  # a failed sub-judge: the group's consensus goes on
            await self.store.event(run.id, "judge_failed", {"key": f"r{rnd}g{g}",
                                                            "error": exc.message})
            checked, reasons = plan.Checked([], []), {}
        kept = plan.fill_survivors(checked.valid, group, spec.survivors, answers)
        if checked.invalid:
            await self.store.event(run.id, "citations_invalid", {"key": f"r{rnd}g{g}",
                                                                 "ids": checked.invalid})
        for a in group:
            if a not in kept:
                verdicts[a] = ("rejected", reasons.get(a) or f"not kept in round {rnd}")
        return kept

    async def _vote(self, run: Run, spec: ReasonerSpec, principal: Principal, question: str,
                    field: list[str], answers: dict[str, str], recorded: dict[str, JSON],
                    verdicts: dict[str, tuple[str, str | None]]) -> list[str]:
        votes: Counter[str] = Counter()
        for v in range(spec.vote_k):
            order = plan.shuffled(field, run.id, f"vote-{v}")  # each voter: its own order
            try:
                data = await self._judge(
                    run, spec, principal, f"vote{v}",
                    prompts.vote_prompt(question, order, answers, spec.vote_keep),
                    prompts.vote_schema(spec.vote_keep), recorded,
                    {"round": "vote", "presented": order}, model=spec.voter_model)
            except KeelError as exc:
                await self.store.event(run.id, "judge_failed", {"key": f"vote{v}",
                                                                "error": exc.message})
                continue
            parsed = prompts.parse_json_object(data["text"]) or {}
            votes.update(plan.check_ids(parsed.get("best") or [], order).valid)
        ranked = sorted(field, key=lambda a: -votes[a])  # stable: ties keep the shuffle
        keep = ranked[:spec.vote_keep]
        for a in ranked[spec.vote_keep:]:
            verdicts[a] = ("rejected", f"{votes[a]} of {spec.vote_k} votes")
        return [a for a in field if a in keep]

    async def _judge(self, run: Run, spec: ReasonerSpec, principal: Principal, key: str,
                     messages: list[JSON], schema: JSON, recorded: dict[str, JSON],
                     info: JSON, model: str | None = None) -> JSON:
        """One judge call, or its recorded result when a resumed run already made it."""
        if key in recorded:
            return recorded[key]
        model = model or spec.judge_model
        fresh = await self.store.get(run.id, with_samples=False)
        spent = fresh.cost_usd if fresh else 0.0
        if run.budget_usd:
            worst = self._worst_judge(spec, self.room(spec, ""))
            if spent + worst > run.budget_usd:
                raise BudgetExceeded(
                    f"the run has spent ${spent:.6f}; a judge call may cost up to "
                    f"${worst:.6f}, over its budget of ${run.budget_usd:g}")
        body: JSON = {"model": model, "messages": messages,
                      "temperature": spec.judge_temperature,
                      "max_tokens": spec.judge_max_tokens,
                      "response_format": {"type": "json_schema", "json_schema": {
                          "name": "verdict", "schema": schema}}}
        reply: Reply = await self.call(principal, body, run.id, f"judge-{key}",
                                       run.end_user)
        data = {"key": key, "model": model, "text": reply.text,
                "request_id": reply.request_id, "cost_usd": reply.cost_usd,
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens, **info}
        await self.store.judged(run.id, data)
        recorded[key] = data
        return data


class LocalFanout:
    """asyncio tasks in this process, at most ``max_concurrency`` at once."""

    def __init__(self, engine: ReasoningEngine) -> None:
        self.engine = engine

    async def __call__(self, run: Run, spec: ReasonerSpec, indices: Sequence[int],
                       on_done: Callable[[SampleResult], Awaitable[bool]]) -> None:
        sem = asyncio.Semaphore(spec.max_concurrency)

        async def one(i: int) -> SampleResult:
            async with sem:
                return await self.engine.sample(run, spec, i)

        tasks = [asyncio.create_task(one(i)) for i in indices]
        try:
            for fut in asyncio.as_completed(tasks):
                if await on_done(await fut):
                    break
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
