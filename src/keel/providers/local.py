"""The ``local`` provider: GGUF models on llama.cpp, in process, through ``xllamacpp``.

* A model is loaded on its first request (one engine per GGUF path and context size) in a
  worker thread, and unloaded after ``local.idle_unload_s`` seconds without requests
  (``<= 0`` keeps it loaded). Unloading destroys the llama.cpp server, which frees the
  weights and the KV cache; RSS goes back down.
* The default model is a base model without a chat template, so chat messages are
  rendered in the Gemma turn format here and sent to llama.cpp's completion path.
* ``slots`` sequences decode together (continuous batching), each with the model's full
  context; more requests queue inside llama.cpp. On 2 cores 4 slots give ~2.2x the
  aggregate tokens/s of one (84 vs 38 tok/s) at the same single-stream speed, for ~80 MB
  more KV cache.
* Streams bridge llama.cpp's per-token callback thread to asyncio with
  ``call_soon_threadsafe``; closing the stream early makes the next callback return
  ``True``, which cancels the generation inside llama.cpp.

A provider instance belongs to the event loop it is first used in.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import secrets
import threading
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from keel.config import ModelSpec, Settings
from keel.errors import (
    ContextLengthExceeded,
    InvalidRequest,
    KeelError,
    ModelFileError,
    UpstreamError,
)
from keel.providers.llama_requests import (
    chat_prompt,
    completion_prompt,
    llama_request,
    usage_block,
)
from keel.providers.model_files import resolve_model_path

JSON = dict[str, Any]
Sink = Callable[[JSON | None], None]  # gets each parsed chunk, then None when the call ends
log = logging.getLogger("keel.local")
# the request :meth:`LocalProvider.warm` builds llama.cpp's grammar engine with (plus the
# response_format to warm)
WARM_GRAMMAR_BODY: JSON = {
    "max_tokens": 1, "temperature": 0, "messages": [{"role": "user", "content": "warm-up"}]}

def _upstream_error(err: Any, spec: ModelSpec) -> KeelError:
    if not isinstance(err, dict):
        return UpstreamError(f"local model {spec.name!r} failed: {err}")
    message = str(err.get("message") or "unknown error")
    if err.get("type") == "exceed_context_size_error":
        return ContextLengthExceeded(
            f"the prompt is {err.get('n_prompt_tokens')} tokens but model {spec.name!r} has a "
            f"context of {err.get('n_ctx')} tokens; shorten the messages or raise the "
            "model's context (`local.context`, or `context` in [[models]])",
            param="messages",
        )
    code = err.get("code")
    if isinstance(code, int) and 400 <= code < 500:
        return InvalidRequest(f"local model {spec.name!r} rejected the request: {message}")
    return UpstreamError(f"local model {spec.name!r} failed: {message}")


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# -- engines -------------------------------------------------------------------------------


class _Engine:
    """One llama.cpp server for one GGUF file. Touched only on the event-loop thread."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec  # the spec that first asked for this engine (path and context)
        self.server: Any = None
        self.path: Path | None = None
        self.in_flight = 0
        self.loading: asyncio.Task[None] | None = None
        self.unloading: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.load_s = 0.0

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def start_llama_server(path: Path, n_ctx: int, slots: int, threads: int, api_key: str,
                       lora: str | None = None) -> Any:
    import xllamacpp  # heavy native module: imported on first load only

    p = xllamacpp.CommonParams()
    p.model.path = str(path)
    if lora:
        if not Path(lora).is_file():
            raise ModelFileError(f"LoRA adapter {lora} does not exist")
        adapter = xllamacpp.CommonAdapterLoraInfo()
        adapter.path, adapter.scale = lora, 1.0
        p.lora_adapters = [adapter]
    p.n_parallel = slots
    p.n_ctx = n_ctx * slots  # llama.cpp splits n_ctx between the slots
    p.cpuparams.n_threads = threads
    p.cpuparams_batch.n_threads = threads
    p.fit_params = False  # keep n_ctx as configured
    p.cache_ram_mib = 0  # no extra host-RAM prompt cache beyond the slot's own KV cache
    p.verbosity = 0
    # xllamacpp always starts llama.cpp's HTTP server too (loopback, random port). keel
    # never uses it: no UI, one HTTP thread, and a random key nobody knows.
    p.ui = False
    p.n_threads_http = 1
    p.api_keys = [api_key]
    try:
        return xllamacpp.Server(p)
    except Exception as exc:
        raise ModelFileError(
            f"llama.cpp could not load {path}: {exc}; check that it is a complete GGUF file "
            "(re-run `python -m keel.providers.model_files <model_dir>` for the default model)"
        ) from None


def _run(server: Any, payload: bytes, sink: Sink, cancel: threading.Event) -> None:
    """Worker thread: drive one llama.cpp request, pushing each parsed chunk to ``sink``."""

    def on_chunk(raw: bytes) -> bool:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = {"error": {"code": 500, "message": "llama.cpp sent a malformed response"}}
        try:
            sink(data)
        except Exception:  # the event loop is gone: stop generating
            cancel.set()
        return cancel.is_set()

    try:
        server.handle_completions(payload, on_chunk)
    except Exception as exc:
        with contextlib.suppress(Exception):
            sink({"error": {"code": 500, "message": str(exc)}})
    finally:
        with contextlib.suppress(Exception):
            sink(None)


# -- provider ------------------------------------------------------------------------------


class LocalProvider:
    """:class:`~keel.ports.provider.ChatProvider` for GGUF models on llama.cpp."""

    kind = "local"

    def __init__(self, settings: Settings, *, slots: int | None = None) -> None:
        self._settings = settings
        self._slots = max(1, settings.local.slots if slots is None else slots)
        self._threads = settings.local.threads or _cpu_count()
        self._engines: dict[tuple[str, int, str], _Engine] = {}
        self._executor = ThreadPoolExecutor(
            max_workers=2 * self._slots + 2, thread_name_prefix="keel-llama"
        )
        self._api_key = secrets.token_urlsafe(32)
        self._cancels: set[threading.Event] = set()
        self._workers: set[asyncio.Future[None]] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"LocalProvider(loaded={[str(p) for p in self.loaded_paths]})"

    # -- state -------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """Whether any model is in memory (true until an unload has freed it)."""
        return any(e.server is not None or e.unloading for e in self._engines.values())

    @property
    def in_flight(self) -> int:
        """Requests holding a model right now (running or queued in llama.cpp)."""
        return sum(e.in_flight for e in self._engines.values())

    @property
    def loaded_paths(self) -> list[Path]:
        return [e.path for e in self._engines.values() if e.server is not None and e.path]

    def is_loaded(self, model: ModelSpec) -> bool:
        """Whether ``model`` is in memory or loading."""
        eng = self._engines.get(self._key(model))
        return eng is not None and (eng.server is not None or eng.loading is not None)

    def load_seconds(self, model: ModelSpec) -> float | None:
        """How long the last load of ``model`` took, if it is loaded."""
        eng = self._engines.get(self._key(model))
        return eng.load_s if eng is not None and eng.server is not None else None

    # -- load / unload -------------------------------------------------------------------

    @staticmethod
    def _key(model: ModelSpec) -> tuple[str, int, str]:
        return (model.path or "", model.context, model.lora or "")

    async def preload(self, model: ModelSpec) -> None:
        """Load ``model`` now (startup warm-up, ``keel doctor``); it still idles out."""
        eng = await self._acquire(model)
        self._release(eng)

    async def warm(self, model: ModelSpec, *, grammar: JSON | None = None) -> None:
        """Load ``model``; with ``grammar`` (a ``json_schema`` ``response_format``), also
        hand llama.cpp a one-token request constrained by it and return without waiting.
        llama.cpp's grammar engine builds a token trie of the vocabulary on its first use
        in a process (~1.5 s for Gemma 3's 262k tokens) and compiles each new schema
        (~0.5 s more, then cached), on its own thread, without the GIL: started here with
        the schema the first request will use, both happen while the caller goes on (a
        worker: imports, services, DBOS)."""
        eng = await self._acquire(model)
        if grammar is None:
            self._release(eng)
            return
        req = self._chat_request({**WARM_GRAMMAR_BODY, "response_format": grammar}, model)
        collect = _Collect()
        fut = self._submit(eng, {**req, "stream": True}, collect, threading.Event())

        def report(_: asyncio.Future[None]) -> None:
            if collect.error is not None:  # nothing lost: the first real request retries
                log.warning("grammar warm-up of %s failed: %s", model.name, collect.error)

        fut.add_done_callback(report)

    async def llama_server(self, model: ModelSpec) -> Any:
        """The ``xllamacpp.Server`` serving ``model``, loaded if needed (benchmarks).

        Call into it only while nothing can unload it (a long ``idle_unload_s``). A second
        server in the same process costs the first ~35% of its speed (libgomp), so a
        baseline must share this one rather than load its own.
        """
        eng = await self._acquire(model)
        self._release(eng)
        return eng.server

    async def _acquire(self, model: ModelSpec) -> _Engine:
        if self._closed:
            raise UpstreamError("the local provider is shut down")
        key = self._key(model)
        eng = self._engines.get(key)
        if eng is None:
            eng = self._engines[key] = _Engine(model)
        while eng.server is None:
            if eng.loading is None:
                eng.loading = asyncio.create_task(self._load(eng))
                eng.loading.add_done_callback(_consume_exception)
            await asyncio.shield(eng.loading)
        eng.in_flight += 1
        eng.cancel_timer()
        return eng

    async def _load(self, eng: _Engine) -> None:
        try:
            if eng.unloading is not None:
                await eng.unloading
            started = time.perf_counter()
            path = await asyncio.to_thread(resolve_model_path, eng.spec, self._settings)
            server = await asyncio.to_thread(
                start_llama_server,
                path,
                eng.spec.context,
                self._slots,
                self._threads,
                self._api_key,
                eng.spec.lora,
            )
            eng.server, eng.path = server, path
            eng.load_s = time.perf_counter() - started
            log.info("local model %s loaded in %.2f s (%d threads, %d slots)", path.name,
                     eng.load_s, self._threads, self._slots)
            if eng.in_flight == 0:
                self._schedule_unload(eng)
        finally:
            eng.loading = None

    def _release(self, eng: _Engine) -> None:
        eng.in_flight -= 1
        if eng.in_flight == 0:
            self._schedule_unload(eng)

    def _schedule_unload(self, eng: _Engine) -> None:
        idle = self._settings.local.idle_unload_s
        if idle > 0 and not self._closed:
            eng.cancel_timer()
            eng.timer = asyncio.get_running_loop().call_later(idle, self._on_idle, eng)

    def _on_idle(self, eng: _Engine) -> None:
        eng.timer = None
        if eng.in_flight == 0 and eng.server is not None and eng.unloading is None:
            eng.unloading = asyncio.create_task(self._unload(eng))

    async def _unload(self, eng: _Engine) -> None:
        try:
            holder = [eng.server]
            eng.server = None
            # the last reference dies in a worker thread: ~Server joins llama.cpp's threads
            await asyncio.to_thread(_drop, holder)
        finally:
            eng.unloading = None

    async def unload(self) -> None:
        """Unload every idle model now."""
        for eng in list(self._engines.values()):
            eng.cancel_timer()
            if eng.loading is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(eng.loading)
            if eng.in_flight == 0 and eng.server is not None and eng.unloading is None:
                eng.unloading = asyncio.create_task(self._unload(eng))
            if eng.unloading is not None:
                await eng.unloading

    async def aclose(self) -> None:
        """Stop generations in flight, unload every model, stop the worker threads."""
        self._closed = True
        for cancel in list(self._cancels):
            cancel.set()
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)
        await self.unload()
        self._executor.shutdown(wait=False)

    # -- running requests ----------------------------------------------------------------

    def _submit(
        self, eng: _Engine, req: JSON, sink: Sink, cancel: threading.Event
    ) -> asyncio.Future[None]:
        """Start ``req`` on a worker thread; the engine is released when the thread ends."""
        loop = asyncio.get_running_loop()
        try:
            fut = loop.run_in_executor(
                self._executor, _run, eng.server, orjson.dumps(req), sink, cancel
            )
        except RuntimeError:
            self._release(eng)
            raise UpstreamError("the local provider is shut down") from None
        self._cancels.add(cancel)
        self._workers.add(fut)

        def done(f: asyncio.Future[None]) -> None:
            self._cancels.discard(cancel)
            self._workers.discard(f)
            self._release(eng)

        fut.add_done_callback(done)
        return fut

    async def _generate(self, model: ModelSpec, req: JSON) -> tuple[str, str, JSON]:
        """Run ``req`` to the end: (text, finish_reason, usage).

        llama.cpp streams to the worker thread, which joins the pieces without waking the
        event loop per token; a cancelled caller stops the generation at the next token.
        """
        eng = await self._acquire(model)
        collect = _Collect()
        cancel = threading.Event()
        fut = self._submit(eng, {**req, "stream": True}, collect, cancel)
        try:
            await asyncio.shield(fut)  # the engine is released when the thread is done
        except asyncio.CancelledError:
            cancel.set()
            raise
        if collect.error is not None or collect.last is None:
            raise _upstream_error(collect.error or "llama.cpp sent no response", model)
        choice = collect.last["choices"][0] if collect.last.get("choices") else {}
        finish = choice.get("finish_reason") or "stop"
        return "".join(collect.parts), finish, usage_block(collect.last)

    async def _chunks(self, model: ModelSpec, req: JSON) -> AsyncGenerator[JSON, None]:
        """Raw llama.cpp stream chunks; closing this generator cancels the generation."""
        eng = await self._acquire(model)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[JSON | None] = asyncio.Queue()
        cancel = threading.Event()

        def sink(chunk: JSON | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, chunk)

        self._submit(eng, req, sink, cancel)
        try:
            while (chunk := await queue.get()) is not None:
                if "error" in chunk:
                    raise _upstream_error(chunk["error"], model)
                yield chunk
        finally:
            cancel.set()

    # -- ChatProvider --------------------------------------------------------------------

    def _request(self, body: JSON, prompt: Any, *,
                 turn_stop: str | tuple[str, ...] | None = None) -> JSON:
        return llama_request(
            body,
            prompt,
            stream=True,  # always: a closed stream or a cancelled caller stops generation
            default_max=self._settings.local.max_tokens_default,
            turn_stop=turn_stop,
        )

    def _chat_request(self, body: JSON, model: ModelSpec) -> JSON:
        prompt, turn_stop = chat_prompt(body.get("messages"), model.chat_format)
        return self._request(body, prompt, turn_stop=turn_stop)

    async def chat(self, body: JSON, model: ModelSpec) -> JSON:
        req = self._chat_request(body, model)
        text, finish, usage = await self._generate(model, req)
        return {
            "id": f"chatcmpl-{secrets.token_hex(12)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": usage,
        }

    async def chat_stream(self, body: JSON, model: ModelSpec) -> AsyncGenerator[JSON, None]:
        req = self._chat_request(body, model)
        rid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        first = True
        async with contextlib.aclosing(self._chunks(model, req)) as chunks:
            async for chunk in chunks:
                choice = chunk["choices"][0] if chunk.get("choices") else {}
                text = choice.get("text") or ""
                finish = choice.get("finish_reason")
                if not text and finish is None and not first:
                    continue
                delta: JSON = {"role": "assistant", "content": text} if first else {}
                if text and not first:
                    delta["content"] = text
                first = False
                out: JSON = {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model.name,
                    "choices": [
                        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
                    ],
                }
                if finish is not None:
                    if text:  # a last piece of text rides with the finish in its own chunk
                        yield out
                        out = {**out, "choices": [{**out["choices"][0], "delta": {}}]}
                    out["choices"][0]["finish_reason"] = finish
                    out["usage"] = usage_block(chunk)
                yield out

    async def complete(self, body: JSON, model: ModelSpec) -> JSON:
        req = self._request(body, completion_prompt(body))
        text, finish, usage = await self._generate(model, req)
        return {
            "id": f"cmpl-{secrets.token_hex(12)}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model.name,
            "choices": [
                {
                    "index": 0,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": usage,
        }

    async def complete_stream(self, body: JSON, model: ModelSpec) -> AsyncGenerator[JSON, None]:
        req = self._request(body, completion_prompt(body))
        rid, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())
        async with contextlib.aclosing(self._chunks(model, req)) as chunks:
            async for chunk in chunks:
                choice = chunk["choices"][0] if chunk.get("choices") else {}
                text = choice.get("text") or ""
                finish = choice.get("finish_reason")
                if not text and finish is None:
                    continue
                out: JSON = {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": model.name,
                    "choices": [
                        {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
                    ],
                }
                if finish is not None:
                    out["usage"] = usage_block(chunk)
                yield out


class _Collect:
    """Sink that joins a stream's text in the worker thread (non-streaming requests)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.last: JSON | None = None
        self.error: Any = None

    def __call__(self, chunk: JSON | None) -> None:
        if chunk is None:
            return
        if "error" in chunk:
            self.error = chunk["error"]
            return
        choices = chunk.get("choices")
        if choices and (text := choices[0].get("text")):
            self.parts.append(text)
        self.last = chunk


def _drop(holder: list[Any]) -> None:
    holder.clear()
    _trim_heap()


def _consume_exception(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved here; every waiter re-raises it from the shield
