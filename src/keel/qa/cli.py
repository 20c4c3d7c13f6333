"""``keel qa``: sanitize logs, manage suites, run the swarm, review the judge."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer

from keel.cli.common import err_console, settings_from, styled
from keel.errors import KeelError

BAD_INPUT = 2  # exit code for bad input, distinct from a failed gate (1)


def bad_input(message: str) -> typer.Exit:
    err_console.print(styled(("error:", "bold red"), " ", message))
    return typer.Exit(BAD_INPUT)


def read_lines(path: Path) -> list[str]:
    """Texts to sanitize: plain lines, or JSON objects with a ``text`` field (JSONL)."""
    try:
        raw = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise bad_input(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise bad_input(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    texts: list[str] = []
    for n, line in enumerate(raw.splitlines(), 1):
        if line.lstrip().startswith("{"):
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise bad_input(f"{path}:{n}: malformed JSON ({exc})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise bad_input(f"{path}:{n}: a JSON line needs a string field \"text\"")
            texts.append(obj["text"])
        else:
            texts.append(line)
    return texts


def sanitize_cmd(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="Text file (one record per line) or JSONL "
                                              "with a \"text\" field; - for stdin.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line: "
                                                         "text and entities.")] = False,
) -> None:
    """Replace names, emails, phones, cards, IBANs, IPs, national IDs and keys with
    stable keyed pseudonyms (the same value gets the same pseudonym in every line)."""
    from keel.sanitize import Sanitizer
    from keel.sanitize.keys import sanitizer_key

    texts = read_lines(file)
    settings = settings_from(ctx)
    try:
        sanitizer = Sanitizer(key=sanitizer_key(settings))
    except KeelError as exc:
        raise bad_input(exc.message) from None
    out = sys.stdout
    for n, text in enumerate(texts, 1):
        result = sanitizer.sanitize(text)
        if as_json:
            out.write(orjson.dumps({"line": n, "text": result.text,
                                    "entities": [e.as_dict() for e in result.entities]})
                      .decode() + "\n")
        else:
            out.write(result.text + "\n")
    out.flush()
    if not texts:
        err_console.print(styled(("no lines to sanitize", "yellow")))


def build() -> typer.Typer:
    from keel.qa import review_cmd, run_cmd, suite_cmd

    app = typer.Typer(no_args_is_help=True, help="Synthetic QA.")
    app.command("sanitize")(sanitize_cmd)
    app.command("run")(run_cmd.run_cmd)
    app.command("runs")(review_cmd.runs_cmd)
    app.command("review")(review_cmd.review_cmd)
    app.command("replay")(review_cmd.replay_cmd)
    app.add_typer(suite_cmd.build(), name="suite", help="Prompt suites: import, build, "
                                                        "list, show, diff, export.")
    return app
