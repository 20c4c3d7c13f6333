"""What a batch cost on local CPUs, and what the same tokens would cost on each priced
model of the model table: the reference's "local wins only for long inputs" argument,
settled from measured numbers instead of list prices alone.

Only the lines that ran on the local provider enter the comparison: a line served by an
upstream model was paid to that upstream (its metered USD is reported on its own, per
model). Failed lines count where their model call ran (a JSON cut by ``max_tokens`` used
the CPU and the tokens all the same).

Local cost = measured worker CPU-seconds of the local lines x ``batch.cpu_usd_per_hour``
/ 3600. The break-even input length fits per-line CPU-seconds to ``a * input + b *
output`` tokens (least squares over the local lines) and solves ``a*L + b*out =
price_in*L + price_out*out`` for L at the local lines' mean output length.
"""

from __future__ import annotations

from typing import Any

from keel.batch.store import Totals
from keel.config import ModelSpec

JSON = dict[str, Any]
MIN_FIT_LINES = 8


def fit_cpu_per_token(stats: list[tuple[int, int, float]]
                      ) -> tuple[tuple[float, float] | None, str | None]:
    """((CPU-s per input token, per output token), None), or (None, why the lines cannot
    tell the two apart)."""
    import numpy as np

    if len(stats) < MIN_FIT_LINES:
        return None, (f"{len(stats)} local lines with a model call; the fit needs at "
                      f"least {MIN_FIT_LINES}")
    x = np.array([[p, c] for p, c, _ in stats], dtype=float)
    y = np.array([s for _, _, s in stats], dtype=float)
    if np.linalg.matrix_rank(x) < 2 or np.linalg.cond(x) > 1e6:
        return None, "the lines' input and output lengths vary together (one shape)"
    (a, b), *_ = np.linalg.lstsq(x, y, rcond=None)
    if a <= 0 or b <= 0:
        return None, "the CPU-seconds do not grow with the tokens (overlapping lines?)"
    return (float(a), float(b)), None


def report(totals: Totals, local: Totals, upstream: list[tuple[str, int, int, int, float]],
           stats: list[tuple[int, int, float]], models: list[ModelSpec],
           cpu_usd_per_hour: float) -> JSON:
    """``totals``: every line; ``local``: the lines served by the local provider;
    ``upstream``: (model, lines, input tokens, output tokens, metered USD) per upstream
    model; ``stats``: (input, output tokens, CPU-s) per local line (the fit)."""
    local_lines = local.lines_done + local.lines_failed
    docs = max(1, local_lines)
    tin, tout = local.prompt_tokens, local.completion_tokens
    local_usd = local.cpu_s * cpu_usd_per_hour / 3600.0
    wall = totals.wall_s
    out: JSON = {
        "lines_done": totals.lines_done, "lines_failed": totals.lines_failed,
        "input_tokens": totals.prompt_tokens, "output_tokens": totals.completion_tokens,
        "cpu_s": round(totals.cpu_s, 3), "wall_s": round(wall, 3),
        "cpu_s_per_document": round(local.cpu_s / docs, 4),
        "documents_per_min": round(totals.lines_done / wall * 60, 2) if wall else None,
        "output_tok_per_s": round(totals.completion_tokens / wall, 2) if wall else None,
        "local": {"lines": local_lines, "lines_done": local.lines_done,
                  "lines_failed": local.lines_failed, "input_tokens": tin,
                  "output_tokens": tout, "cpu_s": round(local.cpu_s, 3),
                  "cpu_usd_per_hour": cpu_usd_per_hour, "usd": local_usd,
                  "usd_per_document": local_usd / docs},
        "upstream": {
            "lines": sum(r[1] for r in upstream), "input_tokens": sum(r[2] for r in upstream),
            "output_tokens": sum(r[3] for r in upstream),
            "usd": sum(r[4] for r in upstream),
            "models": [{"model": m, "lines": n, "input_tokens": p, "output_tokens": o,
                        "usd": u} for m, n, p, o, u in upstream]},
        "metered_usd": totals.cost_usd,
        "schema": {"checked": totals.schema_checked, "failures": totals.schema_failures},
        "models": [],
    }
    fit, why = fit_cpu_per_token(stats)
    mean_in, mean_out = tin / docs, tout / docs
    price = cpu_usd_per_hour / 3600.0
    out["cpu_s_per_token"] = None if fit is None else {"input": fit[0], "output": fit[1]}
    out["break_even_unavailable"] = why  # why break_even_input_tokens is null, if it is
    for spec in models if local_lines else []:
        if spec.kind != "chat" or spec.provider == "local":
            continue
        if spec.input_usd_per_1m <= 0 and spec.output_usd_per_1m <= 0:
            continue
        usd = spec.cost_usd(tin, tout)
        row: JSON = {"model": spec.name, "usd": usd, "usd_per_document": usd / docs,
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
