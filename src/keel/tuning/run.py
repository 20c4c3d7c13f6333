"""``python -m keel.tuning.run SPEC``: train one spec to the end (resuming when it has
checkpoints) and print the result as JSON. ``keel train run SPEC`` is the same with a
progress bar."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

from keel.errors import KeelError


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m keel.tuning.run SPEC.json", file=sys.stderr)
        return 2
    from keel.tuning.spec import TrainSpec
    from keel.tuning.trainer import train

    try:
        spec = TrainSpec.load(Path(args[0]))

        def on_step(step: int, total: int, loss: float) -> None:
            print(f"step {step}/{total} loss {loss:.4f}", file=sys.stderr, flush=True)

        result = train(spec, on_step=on_step)
    except KeelError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    sys.stdout.write(orjson.dumps(result.to_json()).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
