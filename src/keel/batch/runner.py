"""Run one batch line in a worker: claim, call the model, write the result once.

* The key that created the batch is checked before every model call of a line
  (:meth:`keel.auth.keys.KeyStore.active`, uncached, so a revocation takes effect at the
  next line in every worker process): once it is revoked or gone, the batch stops
  (``keel.batch.store.stop_batch``): its queued lines go to the error file as
  ``key_revoked`` and the batch ends ``failed``.
* Every attempt is counted in the line's row *before* the model runs, so a line that
  kills its worker (segfault, OOM, kill -9) is retried by the next worker and, after
  ``max_attempts``, written to the error file instead of taking down worker after worker.
* Timeouts, 408, 429 and 5xx are retried with exponential backoff; any other 4xx is the
  line's final answer (the same request would fail the same way), an upstream's 401/403
  included (keel reports those as a 502 whose message names the upstream's status).
* The result update only applies to an open line (``store.finish_line``): a line re-run
  after its worker died mid-write still appears once in the output.
* What a line cost is recorded whatever its end: tokens and USD of every model call that
  was billed (a JSON cut by ``max_tokens`` is billed and then failed), CPU and wall time of
  every attempt. The batch's usage and CPU are the sums over all its lines.
* CPU-seconds: the worker process's CPU time, charged to the line whose attempt ends (all
  the process's work while lines run, none of its idle time): per batch the sum is the CPU
  the batch cost; per line it is an approximation when lines overlap.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from keel.batch import store
from keel.batch.schemas import output_valid, response_schema
from keel.batch.settings import BatchSettings
from keel.errors import KeelError, UpstreamError
from keel.gateway.context import ANONYMOUS, Principal
from keel.storage.sql import Database

log = logging.getLogger("keel.batch")
JSON = dict[str, Any]


@dataclass(frozen=True)
class CallResult:
    response: JSON
    request_id: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    model: str | None = None  # the model that answered (the degradation ladder may swap)
    on_local: bool | None = None  # it ran on the local provider


class CallFailed(Exception):
    """A line's model call ended in ``error``, with what it had cost by then (a call that
    ran before the pipeline failed it is billed in the request log, and in the batch)."""

    def __init__(self, error: KeelError, *, request_id: str | None = None,
                 prompt_tokens: int = 0, completion_tokens: int = 0, cost_usd: float = 0.0,
                 model: str | None = None, on_local: bool | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.cost_usd = cost_usd
        self.model = model
        self.on_local = on_local


# (principal, endpoint, body) -> the OpenAI-shaped response; raises KeelError or CallFailed
LineCall = Callable[[Principal, str, JSON], Awaitable[CallResult]]
# key id -> its principal while the key is active, None once revoked or deleted
KeyCheck = Callable[[str], Principal | None]


class CpuMeter:
    """Process CPU time spent while lines run (idle time between lines is dropped)."""

    def __init__(self) -> None:
        self._last = time.process_time()
        self.running = 0

    def start(self) -> None:
        if self.running == 0:
            self._last = time.process_time()  # drop the idle time before this line
        self.running += 1

    def finish(self) -> float:
        self.running -= 1
        now = time.process_time()
        spent, self._last = now - self._last, now
        return max(0.0, spent)


def output_text(endpoint: str, response: JSON) -> str:
    choices = response.get("choices") or [{}]
    if endpoint == "/v1/completions":
        return str(choices[0].get("text") or "")
    return str((choices[0].get("message") or {}).get("content") or "")


def finish_reason(response: JSON) -> str | None:
    choices = response.get("choices") or [{}]
    reason = choices[0].get("finish_reason") if isinstance(choices[0], dict) else None
    return reason if isinstance(reason, str) else None


# keel's OpenAI-compatible provider reports an upstream 401/403 as a 502 (keel's own
# credentials are wrong, not the client's request) whose message names the status
# (its own wording, matched in full: the upstream's text that follows must not decide)
_UPSTREAM_STATUS = re.compile(r"^model '[^']*' \(upstream '[^']*'\): upstream refused "
                              r"keel's credentials \(HTTP (4\d\d)\)")


def decisive_status(exc: KeelError) -> int:
    """The status that decides whether a failed call is retried: the upstream's own 4xx
    when keel wrapped it in a 5xx, else the error's status."""
    if isinstance(exc, UpstreamError):
        upstream = exc.extra.get("upstream_status")
        if isinstance(upstream, int):
            return upstream
        m = _UPSTREAM_STATUS.match(exc.message)
        if m:
            return int(m.group(1))
    return exc.http_status


def _retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500


@dataclass
class Spent:
    """What a line has cost over its attempts so far."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    model: str | None = None
    on_local: bool | None = None

    def billed(self, prompt_tokens: int, completion_tokens: int, cost_usd: float,
               model: str | None, on_local: bool | None) -> None:
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.cost_usd += cost_usd
        self.model = model or self.model
        self.on_local = self.on_local if on_local is None else on_local

    def columns(self) -> JSON:
        return {"prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cost_usd": self.cost_usd,
                "cpu_s": self.cpu_s, "wall_s": self.wall_s, "model": self.model,
                "on_local": self.on_local}


@dataclass(frozen=True)
class Attempt:
    """One model call's end: an error (with its status) or the response to write."""

    status: int
    error: JSON | None
    request_id: str | None
    response: JSON | None = None
    schema_ok: bool | None = None
    decisive: int = 0  # the status that decides a retry (see decisive_status)


class LineRunner:
    def __init__(self, db: Database, settings: BatchSettings, call: LineCall,
                 key_active: KeyCheck) -> None:
        self.db = db
        self.settings = settings
        self.call = call
        self.key_active = key_active
        self.cpu = CpuMeter()

    async def run(self, batch_id: str, line_no: int) -> str:
        """Run one line to its final state; returns that state (or "skipped")."""
        claim = await self.db.run(lambda c: store.claim_line(c, batch_id, line_no))
        if claim is None:  # done already, or the batch was cancelled
            await self.finalize(batch_id)
            return "skipped"
        b = claim.batch
        principal = Principal(key_id=b.key_id, tenant=b.tenant, agent=b.agent)
        model = claim.body.get("model")
        spent = Spent(model=model if isinstance(model, str) else None)
        attempts = claim.attempts
        if attempts > self.settings.max_attempts:  # earlier attempts never came back
            await self._fail(batch_id, line_no, 500, {
                "code": "worker_died", "message": f"the line was started {attempts - 1} "
                "times and its worker stopped each time (crash or kill); not retried"},
                None, spent)
            return store.FAILED
        while True:
            revoked = await self._stop_if_key_revoked(b)
            if revoked is not None:
                await self._fail(batch_id, line_no, 401, revoked, None, spent)
                return store.FAILED
            got = await self._attempt(batch_id, line_no, principal, b.endpoint, claim.body,
                                      spent)
            if got.error is None:
                await self.db.run(partial(
                    store.finish_line, batch_id=batch_id, line_no=line_no, status=store.DONE,
                    status_code=200, response=got.response, error=None,
                    request_id=got.request_id, schema_ok=got.schema_ok, **spent.columns()))
                await self.finalize(batch_id)
                return store.DONE
            if not _retryable(got.decisive) or attempts >= self.settings.max_attempts:
                await self._fail(batch_id, line_no, got.status, got.error, got.request_id,
                                 spent)
                return store.FAILED
            await asyncio.sleep(self.settings.retry_backoff_s * 2 ** (attempts - 1))
            current = await self.db.run(lambda c: store.get_batch(c, batch_id, None))
            if current is None or current.status != store.IN_PROGRESS:
                await self.db.run(partial(
                    store.finish_line, batch_id=batch_id, line_no=line_no,
                    status=store.CANCELLED, status_code=got.status, response=None,
                    error=got.error, request_id=got.request_id, **spent.columns()))
                await self.finalize(batch_id)
                return store.CANCELLED
            attempts = await self.db.run(lambda c: store.count_attempt(c, batch_id, line_no))

    async def _stop_if_key_revoked(self, b: store.BatchRow) -> JSON | None:
        """None while the batch's key is active; else stop the batch, return the error."""
        if b.key_id == ANONYMOUS.key_id:  # created with auth_required = false: no key
            return None
        p = await asyncio.to_thread(self.key_active, b.key_id)
        if p is not None and p.tenant == b.tenant:
            return None
        error = {"code": "key_revoked", "type": "authentication_error",
                 "message": f"API key {b.key_id} that created batch {b.id} was revoked or "
                 "deleted, so the batch was stopped and this line was not run; create the "
                 "batch again with an active key"}
        await self.db.run(lambda c: store.stop_batch(c, b.id, status_code=401, error=error))
        log.warning("batch %s stopped: its key %s is revoked", b.id, b.key_id)
        return error

    async def _attempt(self, batch_id: str, line_no: int, principal: Principal,
                       endpoint: str, body: JSON, spent: Spent) -> Attempt:
        """One model call; what it cost is added to ``spent``."""
        t0 = time.perf_counter()
        self.cpu.start()
        try:
            result = await asyncio.wait_for(self.call(principal, endpoint, body),
                                            self.settings.line_timeout_s)
        except TimeoutError:
            return Attempt(504, {"code": "timeout", "message": "the line ran longer than "
                                 f"{self.settings.line_timeout_s:g} s (batch.line_timeout_s)"},
                           None, decisive=504)
        except (KeelError, CallFailed) as raised:
            failed = raised if isinstance(raised, CallFailed) else CallFailed(raised)
            spent.billed(failed.prompt_tokens, failed.completion_tokens, failed.cost_usd,
                         failed.model, failed.on_local)
            exc = failed.error
            err = exc.to_dict()["error"]
            return Attempt(exc.http_status, {"code": err.get("code"), "message": exc.message,
                                             "type": err.get("type")},
                           failed.request_id or exc.extra.get("request_id"),
                           decisive=decisive_status(exc))
        except Exception as exc:  # a bug must not lose the line: it is retried, then failed
            log.exception("batch %s line %d failed", batch_id, line_no)
            return Attempt(500, {"code": "internal_error", "message": f"internal error: {exc}"},
                           None, decisive=500)
        finally:
            spent.cpu_s += self.cpu.finish()
            spent.wall_s += time.perf_counter() - t0
        spent.billed(result.prompt_tokens, result.completion_tokens, result.cost_usd,
                     result.model, result.on_local)
        schema = response_schema(body)
        text = output_text(endpoint, result.response)
        ok = None if schema is None else output_valid(schema, text)
        if ok is False and finish_reason(result.response) == "length":
            # cut by max_tokens before the JSON closed: not an answer to hand on as a
            # success (every successful line validates); the error file says what to fix
            return Attempt(422, {
                "code": "output_truncated", "type": "invalid_request_error",
                "message": "the JSON output reached max_tokens "
                f"({body.get('max_tokens', 'the default')}) before it was complete; "
                "raise max_tokens or bound the schema's strings and arrays"},
                result.request_id, decisive=422)
        return Attempt(200, None, result.request_id, response=result.response, schema_ok=ok)

    async def _fail(self, batch_id: str, line_no: int, status: int, error: JSON,
                    request_id: str | None, spent: Spent) -> None:
        body = {"error": {"type": error.get("type") or "api_error", "code": error.get("code"),
                          "message": error.get("message"), "param": None}}
        await self.db.run(lambda c: store.finish_line(
            c, batch_id, line_no, status=store.FAILED, status_code=status, response=body,
            error={"code": error.get("code"), "message": error.get("message")},
            request_id=request_id, **spent.columns()))
        await self.finalize(batch_id)

    async def finalize(self, batch_id: str) -> None:
        await self.db.run(lambda c: store.finalize_if_done(c, batch_id))
