"""Run one batch line in a worker: claim, call the model, write the result once.

* Every attempt is counted in the line's row *before* the model runs, so a line that
  kills its worker (segfault, OOM, kill -9) is retried by the next worker and, after
  ``max_attempts``, written to the error file instead of taking down worker after worker.
* Timeouts, 429 and 5xx are retried with exponential backoff; any other 4xx is the line's
  final answer (the same request would fail the same way).
* The result update only applies to an open line (``store.finish_line``): a line re-run
  after its worker died mid-write still appears once in the output.
* CPU-seconds: the worker process's CPU time, charged to the line that finishes (all the
  process's work while lines run, none of its idle time): per batch the sum is the CPU
  the batch cost; per line it is an approximation when lines overlap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from keel.batch import store
from keel.batch.schemas import output_valid, response_schema
from keel.batch.settings import BatchSettings
from keel.errors import KeelError
from keel.gateway.context import Principal
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


# (principal, endpoint, body) -> the OpenAI-shaped response; raises KeelError
LineCall = Callable[[Principal, str, JSON], Awaitable[CallResult]]


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


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


class LineRunner:
    def __init__(self, db: Database, settings: BatchSettings, call: LineCall) -> None:
        self.db = db
        self.settings = settings
        self.call = call
        self.cpu = CpuMeter()

    async def run(self, batch_id: str, line_no: int) -> str:
        """Run one line to its final state; returns that state (or "skipped")."""
        claim = await self.db.run(lambda c: store.claim_line(c, batch_id, line_no))
        if claim is None:  # done already, or the batch was cancelled
            await self.finalize(batch_id)
            return "skipped"
        b = claim.batch
        principal = Principal(key_id=b.key_id, tenant=b.tenant, agent=b.agent)
        attempts = claim.attempts
        if attempts > self.settings.max_attempts:  # earlier attempts never came back
            await self._fail(batch_id, line_no, 500, {
                "code": "worker_died", "message": f"the line was started {attempts - 1} "
                "times and its worker stopped each time (crash or kill); not retried"}, None)
            return store.FAILED
        while True:
            status, error, request_id = await self._attempt(batch_id, line_no, principal,
                                                            b.endpoint, claim.body)
            if error is None:
                return store.DONE
            if not _retryable(status) or attempts >= self.settings.max_attempts:
                await self._fail(batch_id, line_no, status, error, request_id)
                return store.FAILED
            await asyncio.sleep(self.settings.retry_backoff_s * 2 ** (attempts - 1))
            current = await self.db.run(lambda c: store.get_batch(c, batch_id, None))
            if current is None or current.status != store.IN_PROGRESS:
                await self.db.run(partial(
                    store.finish_line, batch_id=batch_id, line_no=line_no,
                    status=store.CANCELLED, status_code=status, response=None, error=error,
                    request_id=request_id))
                await self.finalize(batch_id)
                return store.CANCELLED
            attempts = await self.db.run(lambda c: store.count_attempt(c, batch_id, line_no))

    async def _attempt(self, batch_id: str, line_no: int, principal: Principal,
                       endpoint: str, body: JSON) -> tuple[int, JSON | None, str | None]:
        """One model call: (status, error or None, request id)."""
        t0 = time.perf_counter()
        self.cpu.start()
        try:
            result = await asyncio.wait_for(self.call(principal, endpoint, body),
                                            self.settings.line_timeout_s)
        except TimeoutError:
            self.cpu.finish()
            return 504, {"code": "timeout", "message": "the line ran longer than "
                         f"{self.settings.line_timeout_s:g} s (batch.line_timeout_s)"}, None
        except KeelError as exc:
            self.cpu.finish()
            err = exc.to_dict()["error"]
            return exc.http_status, {"code": err.get("code"), "message": exc.message,
                                     "type": err.get("type")}, exc.extra.get("request_id")
        except Exception as exc:  # a bug must not lose the line: it is retried, then failed
            self.cpu.finish()
            log.exception("batch %s line %d failed", batch_id, line_no)
            return 500, {"code": "internal_error", "message": f"internal error: {exc}"}, None
        cpu_s = self.cpu.finish()
        schema = response_schema(body)
        text = output_text(endpoint, result.response)
        ok = None if schema is None else output_valid(schema, text)
        if ok is False and finish_reason(result.response) == "length":
            # cut by max_tokens before the JSON closed: not an answer to hand on as a
            # success (every successful line validates); the error file says what to fix
            return 422, {"code": "output_truncated", "type": "invalid_request_error",
                         "message": "the JSON output reached max_tokens "
                         f"({body.get('max_tokens', 'the default')}) before it was complete; "
                         "raise max_tokens or bound the schema's strings and arrays"}, \
                result.request_id
        await self.db.run(lambda c: store.finish_line(
            c, batch_id, line_no, status=store.DONE, status_code=200,
            response=result.response, error=None, request_id=result.request_id,
            prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
            cost_usd=result.cost_usd, cpu_s=cpu_s, wall_s=time.perf_counter() - t0,
            schema_ok=ok))
        await self.finalize(batch_id)
        return 200, None, result.request_id

    async def _fail(self, batch_id: str, line_no: int, status: int, error: JSON,
                    request_id: str | None) -> None:
        body = {"error": {"type": error.get("type") or "api_error", "code": error.get("code"),
                          "message": error.get("message"), "param": None}}
        await self.db.run(lambda c: store.finish_line(
            c, batch_id, line_no, status=store.FAILED, status_code=status, response=body,
            error={"code": error.get("code"), "message": error.get("message")},
            request_id=request_id))
        await self.finalize(batch_id)

    async def finalize(self, batch_id: str) -> None:
        await self.db.run(lambda c: store.finalize_if_done(c, batch_id))
