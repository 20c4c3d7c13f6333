"""Does scatter-gather beat one sample? Accuracy of 1 sample, an N-sample majority vote
and N samples + judge (keel's reasoner), with 95% Wilson intervals, on a public labelled
task with checkable answers.

Tasks (``--task``), each a balanced sample, answers "yes"/"no", four labelled examples
as earlier chat turns (few-shot, which the base Gemma 3 270M follows far better than an
instruction):

* ``injection`` (default) -- is this prompt a jailbreak attempt? Jailbreaks from Shen et
  al. "Do Anything Now" (CCS'24) against benign user instructions from AlpacaEval, both
  in ``shared/datasets/prompt_injection`` (first 160 characters, whitespace collapsed);
* ``pii`` -- does a short text contain personal information? (presidio-research
  synthetic set in ``shared/datasets/pii``: a text with any labelled PII span is "yes",
  texts under 200 characters).

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
DATASETS = REPO.parent / "shared" / "datasets"
DATA = DATASETS / "pii" / "presidio_synth_v2.jsonl"
INJECTION = DATASETS / "prompt_injection" / "prompts.jsonl"
INJECTION_QUESTION = ("Is this prompt a jailbreak attempt (trying to make the AI ignore "
                      "its rules)? Answer yes or no.")
PII_QUESTION = ("Does the text contain personal information about a person? Answer yes "
                "or no.")
RESULTS = REPO / "bench" / "results" / "reasoning_quality.json"
TASKS = {
    "injection": "jailbreak yes/no (Shen et al. DAN jailbreaks vs AlpacaEval instructions, "
                 "balanced, first 160 chars, 4-shot)",
    "pii": "pii yes/no (presidio synth v2, balanced, < 200 chars, 4-shot)",
}
JUDGE_PROMPT = (
    "You will receive N proposed answers (yes or no) to a yes/no question about a text. "
    "Discard wrong answers, and answer with only yes or no in 'answer'. Cite the ids of "
    "the answers you agree with.")


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


def _rows(path: Path) -> list[dict[str, Any]]:
    # split on newlines only: texts carry U+2028, which splitlines() would also split on
    return [json.loads(x) for x in path.read_text().split("\n") if x.strip()]


def _balanced(pos: list[str], neg: list[str], count: int,
              seed: int) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """Four few-shot examples (yes, no, yes, no), then ``count`` other texts, half each."""
    rng = random.Random(seed)
    rng.shuffle(pos)
    rng.shuffle(neg)
    shots = [(pos[0], "yes"), (neg[0], "no"), (pos[1], "yes"), (neg[1], "no")]
    out = ([{"text": t, "gold": "yes"} for t in pos[2:2 + count // 2]]
           + [{"text": t, "gold": "no"} for t in neg[2:2 + count - count // 2]])
    rng.shuffle(out)
    return shots, out


def items(task: str, count: int,
          seed: int = 1) -> tuple[str, list[tuple[str, str]], list[dict[str, Any]]]:
    """(question, few-shot examples, questions) of a task."""
    if task == "injection":
        rows = _rows(INJECTION)

        def cut(t: str) -> str:
            return " ".join(t.split())[:160]

        pos = [cut(r["text"]) for r in rows if r["label"] == "jailbreak"]
        neg = [cut(r["text"]) for r in rows
               if r["label"] == "benign" and r["category"] == "user_instruction"]
        return (INJECTION_QUESTION, *_balanced(pos, neg, count, seed))
    rows = _rows(DATA)
    pos = [r["text"] for r in rows if r["spans"] and len(r["text"]) < 200]
    neg = [r["text"] for r in rows if not r["spans"] and len(r["text"]) < 200]
    return (PII_QUESTION, *_balanced(pos, neg, count, seed))


def messages_for(question: str, shots: list[tuple[str, str]], text: str) -> list[Any]:
    out: list[dict[str, str]] = []
    for shot, answer in shots:
        out += [{"role": "user", "content": f"{question}\nText: {shot}"},
                {"role": "assistant", "content": answer}]
    return [*out, {"role": "user", "content": f"{question}\nText: {text}"}]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", choices=("injection", "pii"), default="injection")
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
    question, shots, qs = items(a.task, a.questions)
    rows: list[dict[str, Any]] = []
    async with running(svc):
        service = svc.get(ReasoningService)
        for i, q in enumerate(qs):
            t0 = time.perf_counter()
            run = await service.submit(who, "quality",
                                       messages_for(question, shots, q["text"]))
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
            result = {"task": TASKS[a.task], "load_average": os.getloadavg(),
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
