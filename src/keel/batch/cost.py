"""What a batch cost on local CPUs, and what the same tokens would cost on each priced
model of the model table: the reference's "local wins only for long inputs" argument,
settled from measured numbers instead of list prices alone.

Local cost = measured worker CPU-seconds x ``batch.cpu_usd_per_hour`` / 3600. The
break-even input length fits per-line CPU-seconds to ``a * input + b * output`` tokens
(least squares over the batch's lines) and solves ``a*L + b*out = price_in*L +
price_out*out`` for L at the batch's mean output length.
"""

from __future__ import annotations

from typing import Any

from keel.batch.store import Totals
from keel.config import ModelSpec

JSON = dict[str, Any]


def fit_cpu_per_token(stats: list[tuple[int, int, float]]) -> tuple[float, float] | None:
    """(CPU-s per input token, per output token), or None when the lines cannot tell the
    two apart (too few lines, or all of one shape)."""
    import numpy as np

    if len(stats) < 8:
        return None
    x = np.array([[p, c] for p, c, _ in stats], dtype=float)
    y = np.array([s for _, _, s in stats], dtype=float)
    if np.linalg.matrix_rank(x) < 2 or np.linalg.cond(x) > 1e6:
        return None
    (a, b), *_ = np.linalg.lstsq(x, y, rcond=None)
    if a <= 0 or b <= 0:
        return None
    return float(a), float(b)


def report(totals: Totals, stats: list[tuple[int, int, float]], models: list[ModelSpec],
           cpu_usd_per_hour: float) -> JSON:
    done = max(1, totals.lines_done)
    tin, tout = totals.prompt_tokens, totals.completion_tokens
    local_usd = totals.cpu_s * cpu_usd_per_hour / 3600.0
    wall = totals.wall_s
    out: JSON = {
        "lines_done": totals.lines_done, "lines_failed": totals.lines_failed,
        "input_tokens": tin, "output_tokens": tout,
        "cpu_s": round(totals.cpu_s, 3), "wall_s": round(wall, 3),
        "cpu_s_per_document": round(totals.cpu_s / done, 4),
        "documents_per_min": round(totals.lines_done / wall * 60, 2) if wall else None,
        "output_tok_per_s": round(tout / wall, 2) if wall else None,
        "local": {"cpu_usd_per_hour": cpu_usd_per_hour, "usd": local_usd,
                  "usd_per_document": local_usd / done},
        "metered_usd": totals.cost_usd,
        "schema": {"checked": totals.schema_checked, "failures": totals.schema_failures},
        "models": [],
    }
    fit = fit_cpu_per_token(stats)
    mean_in, mean_out = tin / done, tout / done
    price = cpu_usd_per_hour / 3600.0
    out["cpu_s_per_token"] = None if fit is None else {"input": fit[0], "output": fit[1]}
    for spec in models:
        if spec.kind != "chat" or spec.provider == "local":
            continue
        if spec.input_usd_per_1m <= 0 and spec.output_usd_per_1m <= 0:
            continue
        usd = spec.cost_usd(tin, tout)
        row: JSON = {"model": spec.name, "usd": usd, "usd_per_document": usd / done,
                     "local_is_cheaper": local_usd < usd, "break_even_input_tokens": None}
        if fit is not None:
            a, b = fit[0] * price, fit[1] * price  # local USD per input / output token
            pin, pout = spec.input_usd_per_1m / 1e6, spec.output_usd_per_1m / 1e6
            if pin > a:  # local gets relatively cheaper as inputs grow
                row["break_even_input_tokens"] = max(0, round(mean_out * (b - pout) / (pin - a)))
            else:
                row["break_even_input_tokens"] = "never"
        out["models"].append(row)
    out["mean_input_tokens"], out["mean_output_tokens"] = round(mean_in, 1), round(mean_out, 1)
    return out
