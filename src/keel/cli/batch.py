"""``keel batch``: a client of the gateway's Batch API.

``submit FILE.jsonl [--wait]`` uploads the file and creates the batch (a progress bar
with an ETA while it runs when ``--wait``); ``status``, ``list``, ``results`` (the output
file, or ``--errors``), ``cancel`` and ``cost`` (local CPU vs each priced model).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import typer

from keel.cli.common import (
    console,
    err_console,
    fail,
    gateway_call,
    gateway_client,
    new_table,
    settings_from,
)

FINAL = ("completed", "failed", "cancelled", "expired")


def _client(ctx: typer.Context, url: str | None) -> httpx.Client:
    return gateway_client(settings_from(ctx), url, timeout=300)


def _wait(c: httpx.Client, batch_id: str, poll_s: float) -> dict[str, Any]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    b: dict[str, Any] = gateway_call(c, "GET", f"/v1/batches/{batch_id}").json()
    total = b["request_counts"]["total"]
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                  console=err_console) as bar:
        task = bar.add_task(batch_id, total=total)
        while True:
            n = b["request_counts"]
            bar.update(task, completed=n["completed"] + n["failed"] + b["keel"]["cancelled"],
                       description=f"{batch_id} {b['status']} ({n['failed']} failed)")
            if b["status"] in FINAL:
                return b
            time.sleep(poll_s)
            b = gateway_call(c, "GET", f"/v1/batches/{batch_id}").json()


def _summary(b: dict[str, Any]) -> None:
    n = b["request_counts"]
    t = new_table("batch", "status", "done", "failed", "total", "output file", "error file")
    t.add_row(b["id"], b["status"], str(n["completed"]), str(n["failed"]), str(n["total"]),
              b.get("output_file_id") or "", b.get("error_file_id") or "")
    console.print(t)


def build() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True, help=__doc__)
    url_opt = typer.Option(None, "--url", help="Gateway URL (default: KEEL_URL or "
                           "server.host:port).")

    @app.command("submit")
    def submit(ctx: typer.Context, file: Path = typer.Argument(..., exists=True,
                                                                dir_okay=False),
               wait: bool = typer.Option(False, "--wait", help="Wait with a progress bar."),
               endpoint: str | None = typer.Option(
                   None, help="Endpoint of the lines (default: the url of the first line)."),
               url: str | None = url_opt, poll: float = typer.Option(1.0, min=0.1)) -> None:
        """Upload FILE.jsonl and start a batch."""
        if endpoint is None:
            with file.open("rb") as fh:
                first = next((ln for ln in fh if ln.strip()), b"{}")
            try:
                endpoint = str(orjson.loads(first).get("url") or "/v1/chat/completions")
            except (orjson.JSONDecodeError, AttributeError):
                endpoint = "/v1/chat/completions"  # the upload names the bad line
        with _client(ctx, url) as c, file.open("rb") as fh:
            up = gateway_call(c, "POST", "/v1/files", data={"purpose": "batch"},
                       files={"file": (file.name, fh, "application/jsonl")}).json()
            b = gateway_call(c, "POST", "/v1/batches", json={
                "input_file_id": up["id"], "endpoint": endpoint,
                "completion_window": "24h"}).json()
            console.print(f"batch {b['id']} created: {b['request_counts']['total']} lines "
                          f"from {up['id']}", markup=False, highlight=False)
            if wait:
                _summary(_wait(c, b["id"], poll))

    @app.command("status")
    def status(ctx: typer.Context, batch_id: str, url: str | None = url_opt,
               wait: bool = typer.Option(False, "--wait"),
               poll: float = typer.Option(1.0, min=0.1)) -> None:
        """A batch's status and counts."""
        with _client(ctx, url) as c:
            b = _wait(c, batch_id, poll) if wait else \
                gateway_call(c, "GET", f"/v1/batches/{batch_id}").json()
        _summary(b)

    @app.command("list")
    def list_(ctx: typer.Context, url: str | None = url_opt,
              limit: int = typer.Option(20, min=1, max=100)) -> None:
        """Recent batches."""
        with _client(ctx, url) as c:
            data = gateway_call(c, "GET", "/v1/batches", params={"limit": limit}).json()["data"]
        t = new_table("batch", "status", "done", "failed", "total", "created")
        for b in data:
            n = b["request_counts"]
            t.add_row(b["id"], b["status"], str(n["completed"]), str(n["failed"]),
                      str(n["total"]), time.strftime("%Y-%m-%d %H:%M:%S",
                                                     time.localtime(b["created_at"])))
        console.print(t)

    @app.command("results")
    def results(ctx: typer.Context, batch_id: str, url: str | None = url_opt,
                errors: bool = typer.Option(False, "--errors", help="The error file."),
                out: Path | None = typer.Option(None, "--out", "-o",
                                                help="Write to this file.")) -> None:
        """Print (or save) the output file of a batch (or its error file)."""
        with _client(ctx, url) as c:
            b = gateway_call(c, "GET", f"/v1/batches/{batch_id}").json()
            fid = b["error_file_id" if errors else "output_file_id"]
            if not fid:
                fail(f"batch {batch_id} has no {'error' if errors else 'output'} file "
                     f"(status {b['status']})")
            body = gateway_call(c, "GET", f"/v1/files/{fid}/content").content
        if out is not None:
            out.write_bytes(body)
            err_console.print(f"wrote {out}", markup=False)
        else:
            console.file.write(body.decode())

    @app.command("cancel")
    def cancel(ctx: typer.Context, batch_id: str, url: str | None = url_opt) -> None:
        """Cancel a batch: queued lines are dropped, running ones finish."""
        with _client(ctx, url) as c:
            _summary(gateway_call(c, "POST", f"/v1/batches/{batch_id}/cancel").json())

    @app.command("cost")
    def cost(ctx: typer.Context, batch_id: str, url: str | None = url_opt,
             as_json: bool = typer.Option(False, "--json")) -> None:
        """What the batch cost on local CPUs vs the same tokens on each priced model."""
        with _client(ctx, url) as c:
            r = gateway_call(c, "GET", f"/v1/batches/{batch_id}/cost").json()
        if as_json:
            console.print_json(orjson.dumps(r).decode())
            return
        loc, up = r["local"], r["upstream"]
        console.print(
            f"{r['lines_done']} lines done, {r['lines_failed']} failed; "
            f"{r['input_tokens']} tokens in / {r['output_tokens']} out, {r['cpu_s']} CPU-s "
            f"over {r['wall_s']} s", markup=False, highlight=False)
        console.print(
            f"local model: {loc['lines']} lines, {loc['input_tokens']} tokens in / "
            f"{loc['output_tokens']} out, {loc['cpu_s']} CPU-s "
            f"({r['cpu_s_per_document']} CPU-s per line); at "
            f"${loc['cpu_usd_per_hour']}/CPU-hour: ${loc['usd']:.6f} "
            f"(${loc['usd_per_document']:.8f} per line)", markup=False, highlight=False)
        if up["lines"]:
            per_model = ", ".join(f"{m['model']} {m['lines']} lines ${m['usd']:.6f}"
                                  for m in up["models"])
            console.print(
                f"upstream models (paid to the upstream, not in the comparison): "
                f"{up['lines']} lines, {up['input_tokens']} tokens in / "
                f"{up['output_tokens']} out, ${up['usd']:.6f} metered ({per_model})",
                markup=False, highlight=False)
        t = new_table("model", "local lines' tokens", "per line", "local cheaper",
                      "break-even input tokens")
        why = r.get("break_even_unavailable") or "n/a"
        for m in r["models"]:
            be = m["break_even_input_tokens"]
            t.add_row(m["model"], f"${m['usd']:.6f}", f"${m['usd_per_document']:.8f}",
                      "yes" if m["local_is_cheaper"] else "no",
                      f"n/a ({why})" if be is None else str(be))
        if not r["models"]:
            t.add_row("(no local lines)" if not loc["lines"] else
                      "(no priced models in [[models]])", "", "", "", "")
        console.print(t)

    return app
