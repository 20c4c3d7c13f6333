"""``keel chat "..."``: stream a chat completion through the gateway.

Talks to the running gateway (``--url``, default from settings). When none is running it
starts a private one on a free loopback port for the duration of the command, so the
request still goes through the whole pipeline and lands in the request log.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import httpx
import typer

from keel.cli.common import console, err_console, fail, read_local_key, settings_from, styled
from keel.config import Settings
from keel.errors import KeelError


@contextlib.contextmanager
def _ephemeral_gateway(settings: Settings) -> Iterator[str]:
    from keel.app import create_app
    from keel.cli.serve import prepare
    from keel.gateway.background import serving

    prepare(settings)
    try:
        with serving(create_app(settings)) as base:
            yield base
    except KeelError as exc:
        fail(exc.message)


def _reachable(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def register(app: typer.Typer) -> None:
    @app.command("chat")
    def chat(
        ctx: typer.Context,
        prompt: str = typer.Argument(..., help="Your message."),
        model: str | None = typer.Option(None, "--model", "-m"),
        system: str | None = typer.Option(None, "--system", "-s", help="System prompt."),
        max_tokens: int = typer.Option(128, "--max-tokens"),
        temperature: float = typer.Option(0.7, "--temperature"),
        url: str | None = typer.Option(None, "--url", help="Gateway base URL."),
        api_key: str | None = typer.Option(None, "--api-key", envvar="KEEL_API_KEY",
                                           help="API key (default: the data dir's admin key)."),
        no_stream: bool = typer.Option(False, "--no-stream"),
    ) -> None:
        """Send one message and stream the answer."""
        settings = settings_from(ctx)
        base = url or f"http://{settings.server.host}:{settings.server.port}"
        body = {
            "model": model or settings.default_model,
            "messages": ([{"role": "system", "content": system}] if system else [])
            + [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": temperature, "stream": not no_stream,
        }
        if not no_stream:  # the last chunk then carries the token counts for the footer
            body["stream_options"] = {"include_usage": True}
        with contextlib.ExitStack() as stack:
            if not _reachable(base):
                if url:
                    fail(f"no keel gateway answers at {url}")
                where = settings.data_dir.resolve()
                err_console.print(styled((
                    f"no gateway answers at {base}; starting a private one for this "
                    f"command (data dir {where}, models in {settings.model_dir.resolve()}: "
                    "the local model is assembled there once if missing; pass --url or run "
                    "`keel serve` to use a running gateway)…", "dim")))
                base = stack.enter_context(_ephemeral_gateway(settings))
            key = api_key or read_local_key(settings)
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            _send(base, body, headers)


def _send(base: str, body: dict[str, object], headers: dict[str, str]) -> None:
    timeout = httpx.Timeout(600.0, connect=5.0)
    with httpx.Client(base_url=base, headers=headers, timeout=timeout) as client:
        if not body["stream"]:
            r = client.post("/v1/chat/completions", json=body)
            _check(r)
            data = r.json()
            typer.echo(data["choices"][0]["message"]["content"])
            _footer(r.headers, data.get("usage"))
            return
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code >= 400:
                r.read()
                _check(r)
            usage = None
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    fail(chunk["error"].get("message", "stream failed"))
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        console.print(text, end="", markup=False, highlight=False)
                usage = chunk.get("usage") or usage
            console.print()
            _footer(r.headers, usage)


def _check(r: httpx.Response) -> None:
    if r.status_code >= 400:
        try:
            msg = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            msg = r.text[:300]
        fail(f"HTTP {r.status_code}: {msg}")


def _footer(headers: httpx.Headers, usage: object) -> None:
    rid = headers.get("x-keel-request-id", "?")
    line = f"request {rid}"
    if isinstance(usage, dict):
        line += (f" · {usage.get('prompt_tokens', '?')} tokens in, "
                 f"{usage.get('completion_tokens', '?')} out")
    cache = headers.get("x-keel-cache")
    if cache:
        line += f" · cache {cache}"
    err_console.print(styled((line, "dim")))
