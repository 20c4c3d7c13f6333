"""Does scatter-gather beat one sample? Accuracy of 1 sample, an N-sample majority vote
and N samples + judge (keel's reasoner), with 95% Wilson intervals, on a public labelled
task with checkable answers.

Task: ``pii`` -- does a short text contain personal information? (labels from the
presidio-research synthetic set in ``shared/datasets/pii``: a text with any labelled PII
span is "yes"), a balanced sample of texts under 200 characters. Answers are "yes"/"no".

Every call goes through keel's pipeline (``InternalClient`` for the single sample, the
reasoner for the rest), so the cost per question comes from keel's metering.

    .venv/bin/python bench/reasoning_quality.py --questions 40 --n 5           # local model
    .venv/bin/python bench/reasoning_quality.py --model gpt-4o-mini \\
        --base-url https://api.openai.com/v1 --api-key-env OPENAI_API_KEY \\
        --judge gpt-4o --questions 200 --n 10                                  # any upstream

Writes ``bench/results/reasoning_quality.json`` after every question (partial runs
count). The 1-sample arm uses sample 0 of the same run (the worker temperature), so the
arms differ only in how the samples are combined.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "datasets" / "pii" / "presidio_synth_v2.jsonl"
RESULTS = REPO / "bench" / "results" / "reasoning_quality.json"
INSTRUCTIONS = (
    "Does the text contain personal information (a name, address, phone number, email, "
    "card number, date of birth)? Answer yes or no.\n"
    "Text: Call me at 555-123-4567 tomorrow. Answer: yes\n"
    "Text: What is the weather like today? Answer: no\n"
    "Text: My name is Anna Schmidt and I live in Berlin. Answer: yes\n"
    "Text: Please summarise this article about climate change. Answer: no\n")
JUDGE_PROMPT = (
    "You will receive N proposed answers (yes or no) to a question about whether a text "
    "contains personal information. Discard wrong answers, and answer with only yes or no "
    "in 'answer'. Cite the ids of the answers you agree with.")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return c - h, c + h


def label(text: str) -> str:
    m = re.search(r"\b(yes|no)\b", text.lower())
    return m.group(1) if m else "?"


def items(count: int, seed: int = 0) -> list[dict[str, Any]]:
    rows = [json.loads(x) for x in DATA.read_text().splitlines()]
    pos = [r for r in rows if r["spans"] and len(r["text"]) < 200]
    neg = [r for r in rows if not r["spans"] and len(r["text"]) < 200]
    rng = random.Random(seed)
    rng.shuffle(pos)
    rng.shuffle(neg)
    out = pos[: count // 2] + neg[: count - count // 2]
    rng.shuffle(out)
    return [{"text": r["text"], "gold": "yes" if r["spans"] else "no"} for r in out]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=40)
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--judge", default="")
    ap.add_argument("--base-url", default="")
    ap.add_argument("--api-key-env", default="")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from keel.app import build_services, running
    from keel.config import load_settings
    from keel.reasoning.service import ReasoningService

    models: list[dict[str, Any]] = []
    if a.base_url:
        for name in {a.model, a.judge or a.model}:
            models.append({"name": name, "provider": "openai", "base_url": a.base_url,
                           "api_key": os.environ.get(a.api_key_env, "") or None})
    reasoner = {"name": "quality", "workers": [a.model], "judge": a.judge or a.model,
                "n": a.n, "max_concurrency": 4, "worker_max_tokens": 4,
                "judge_max_tokens": 96, "worker_temperature": 0.9,
                "judge_prompt": JUDGE_PROMPT}
    tmp = Path(tempfile.mkdtemp(prefix="reasoning-quality-"))
    s = load_settings(None, data_dir=str(tmp), models=models, reasoners=[reasoner],
                      models_dir=str(REPO / ".keel" / "models"))
    s.firewall.enabled = False  # the texts are PII on purpose; not what is measured
    svc = build_services(s)
    from keel.gateway.context import Principal

    who = Principal(key_id="bench-quality", tenant="bench", agent="quality")
    qs = items(a.questions)
    rows: list[dict[str, Any]] = []
    async with running(svc):
        service = svc.get(ReasoningService)
        for i, q in enumerate(qs):
            t0 = time.perf_counter()
            messages = [{"role": "user", "content": INSTRUCTIONS
                         + f"Text: {q['text']} Answer:"}]
            run = await service.submit(who, "quality", messages)
            run = await service.wait(run.id)
            answers = [label(x["text"] or "") for x in sorted(run.samples,
                                                                key=lambda x: x["index"])
                       if x["status"] == "ok"]
            votes = [x for x in answers if x in ("yes", "no")]
            majority = max(("yes", "no"), key=votes.count) if votes else "?"
            rows.append({"gold": q["gold"], "single": answers[0] if answers else "?",
                         "majority": majority,
                         "judged": label(run.answer or "") if run.status == "succeeded"
                         else "?", "status": run.status, "error": run.error,
                         "cost_usd": run.cost_usd, "seconds": time.perf_counter() - t0})
            summary = {arm: sum(r[arm] == r["gold"] for r in rows)
                       for arm in ("single", "majority", "judged")}
            result = {"task": "pii yes/no (presidio synth v2, balanced, < 200 chars)",
                      "model": a.model, "judge": a.judge or a.model, "n": a.n,
                      "questions": len(rows), "chance": 0.5,
                      "accuracy": {k: {"correct": v, "rate": v / len(rows),
                                       "wilson95": wilson(v, len(rows))}
                                   for k, v in summary.items()},
                      "mean_cost_usd": sum(r["cost_usd"] for r in rows) / len(rows),
                      "mean_seconds": sum(r["seconds"] for r in rows) / len(rows),
                      "rows": rows}
            RESULTS.write_text(json.dumps(result, indent=2))
            print(f"{i + 1}/{len(qs)} " + " ".join(
                f"{k}={v}/{len(rows)}" for k, v in summary.items()), flush=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
