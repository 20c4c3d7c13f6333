"""``keel reason``: ask a reasoner through the gateway and watch the run; show past runs.

``keel reason "QUESTION" --reasoner NAME`` starts a run in the gateway (durable there:
stopping this command does not stop the run) and follows its events with a live view;
``keel reason show RUN`` prints every attempt, the judges' verdicts and citations, what
was rejected and why, tokens and cost per sample (read from the database: no gateway
needed); ``keel reason runs`` lists recent runs.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import typer
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from typer.core import TyperGroup

from keel.cli.common import (
    checked,
    console,
    err_console,
    fail,
    gateway_client,
    new_table,
    settings_from,
    styled,
)


class _AskByDefault(TyperGroup):
    """``keel reason "QUESTION"`` runs ``ask``; ``keel reason show RUN`` runs ``show``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["ask", *args]
        return super().parse_args(ctx, args)


def _client(settings: Any, url: str | None, timeout: float = 30) -> httpx.Client:
    return gateway_client(settings, url, timeout=timeout)


def _check(r: httpx.Response) -> Any:
    return checked(r).json()


def _events(c: httpx.Client, run_id: str) -> Any:
    with c.stream("GET", f"/v1/reasoning/runs/{run_id}/events",
                  timeout=httpx.Timeout(None, connect=5)) as r:
        if r.status_code >= 400:
            r.read()
            _check(r)
        for line in r.iter_lines():
            if line.startswith("data: "):
                yield orjson.loads(line[6:])


def build() -> typer.Typer:
    app = typer.Typer(cls=_AskByDefault, no_args_is_help=True)
    url_opt = typer.Option(None, "--url", help="Gateway base URL (default from settings).")

    @app.command("ask")
    def ask(
        ctx: typer.Context,
        question: str = typer.Argument(..., help="The question."),
        reasoner: str = typer.Option(..., "--reasoner", "-r", help="A [[reasoners]] name."),
        n: int | None = typer.Option(None, "--n", help="Samples (default: the reasoner's)."),
        budget: float | None = typer.Option(None, "--budget", help="USD limit for this run."),
        as_json: bool = typer.Option(False, "--json", help="Print the run as JSON."),
        url: str | None = url_opt,
    ) -> None:
        """Ask a reasoner (keel reason "QUESTION" --reasoner NAME) and watch the run."""
        settings = settings_from(ctx)
        body: dict[str, Any] = {"reasoner": reasoner, "question": question}
        if n is not None:
            body["n"] = n
        if budget is not None:
            body["budget_usd"] = budget
        with _client(settings, url) as c:
            try:
                run = _check(c.post("/v1/reasoning/runs", json=body))
            except httpx.HTTPError:
                fail(f"no keel gateway answers at {c.base_url}: start one with `keel serve` "
                     "(or set --url / KEEL_URL)")
            _follow(c, run)
            final = _check(c.get(f"/v1/reasoning/runs/{run['id']}"))
        if as_json:
            console.print_json(orjson.dumps(final).decode())
            return
        _print_result(final)
        if final["status"] != "succeeded":
            raise typer.Exit(1)

    @app.command("show")
    def show(ctx: typer.Context, run_id: str = typer.Argument(..., help="Run id (rsn_...)"),
             as_json: bool = typer.Option(False, "--json")) -> None:
        """Every attempt of a run: verdicts, citations, rejections, tokens and cost."""
        run, events = asyncio.run(_load(settings_from(ctx), run_id))
        if run is None:
            fail(f"reasoning run {run_id!r} does not exist")
        data = run.public(with_samples=True)
        data["events"] = events
        if as_json:
            console.print_json(orjson.dumps(data).decode())
            return
        _print_result(data)
        _print_samples(data)
        _print_judges(events)

    @app.command("runs")
    def runs(ctx: typer.Context, limit: int = typer.Option(20, "--limit")) -> None:
        """Recent runs."""
        items = asyncio.run(_recent(settings_from(ctx), limit))
        t = new_table("id", "reasoner", "status", "n", "cost usd", "judge calls", "answer")
        for r in items:
            t.add_row(r.id, r.reasoner, r.status, str(r.n), f"{r.cost_usd:.6f}",
                      str(r.judge_calls), (r.answer or r.error or "")[:60])
        console.print(t)

    return app


def _follow(c: httpx.Client, run: dict[str, Any]) -> None:
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err_console)
    samples = progress.add_task("samples", total=run["n"])
    judges = progress.add_task("judge calls", total=None)
    status = styled(("run ", "bold"), run["id"])
    with Live(progress, console=err_console, transient=False):
        err_console.print(status)
        for ev in _events(c, run["id"]):
            kind = ev.get("kind")
            if kind in ("sample", "sample_failed", "sample_skipped"):
                progress.advance(samples)
            elif kind == "judge":
                progress.advance(judges)
            elif kind == "retry":
                progress.console.print(f"retry sample {ev.get('id')}: {ev.get('error')}",
                                       markup=False)
            elif kind == "early_stop":
                progress.update(samples, completed=run["n"])
                progress.console.print("early stop: the first answers agree", markup=False)
            elif kind == "round":
                progress.console.print(f"tournament round {ev['round']}: {ev['groups']} "
                                       f"groups -> {ev['survivors']} survivors",
                                       markup=False)


def _print_result(run: dict[str, Any]) -> None:
    ok = run["status"] == "succeeded"
    console.print(styled((run["status"], "bold green" if ok else "bold red"), " ", run["id"],
                         f"  cost ${run['cost_usd']:.6f}",
                         f"  tokens {run['usage']['total_tokens']}",
                         f"  judge calls {run['judge_calls']}",
                         f"  samples {run['samples_by_status']}"))
    if run.get("answer"):
        console.print(run["answer"])
    if run.get("error"):
        console.print(styled(("error: ", "red"), run["error"]))
    for cite in run.get("citations") or []:
        console.print(styled(("  cites ", "cyan"), f"{cite['id']} (sample {cite['sample']}, "
                             f"{cite['model']}): {cite['insight']}"))


def _print_samples(run: dict[str, Any]) -> None:
    t = new_table("#", "id", "model", "status", "verdict", "tries", "tokens in/out", "cost usd",
                  "ms", "answer / why")
    for s in run["samples"]:
        why = s["reason"] or s["error"] or ""
        text = (s["text"] or "").replace("\n", " ")
        t.add_row(str(s["index"]), s["id"], s["model"], s["status"], s["verdict"] or "",
                  str(s["attempts"]), f"{s['prompt_tokens']}/{s['completion_tokens']}",
                  f"{s['cost_usd']:.6f}", f"{s['latency_ms'] or 0:.0f}",
                  (text[:80] + (f"  <- {why}" if why else "")))
    console.print(t)


def _print_judges(events: list[dict[str, Any]]) -> None:
    judges = [e for e in events if e["kind"] == "judge"]
    if not judges:
        return
    t = new_table("call", "model", "presented", "tokens in/out", "cost usd", "request")
    for j in judges:
        t.add_row(j["key"], j["model"], " ".join(j.get("presented") or []),
                  f"{j['prompt_tokens']}/{j['completion_tokens']}", f"{j['cost_usd']:.6f}",
                  j["request_id"])
    console.print(t)


async def _load(settings: Any, run_id: str) -> tuple[Any, list[dict[str, Any]]]:
    from keel.app import open_database
    from keel.reasoning.store import RunStore

    db = open_database(settings)
    try:
        store = RunStore(db)
        run = await store.get(run_id)
        return run, (await store.events(run_id) if run else [])
    finally:
        db.dispose()


async def _recent(settings: Any, limit: int) -> list[Any]:
    from keel.app import open_database
    from keel.reasoning.store import RunStore

    db = open_database(settings)
    try:
        return await RunStore(db).recent(None, limit)
    finally:
        db.dispose()
