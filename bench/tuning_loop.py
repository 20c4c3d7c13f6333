"""Feedback -> fine-tune loop on the real default model (Gemma 3 270M, CPU): before/after
exact match on held-out paraphrases, the gate's decision, training time and peak RSS per
100 examples, and a poisoned batch the gate must refuse.

Task: facts about Quillon, a fictional database (bench/data/tuning_facts.json). The base
model cannot know them; users correct its answers in the feedback box (4 wordings per
fact); the held-out set is 2 more paraphrases per fact, written separately and never
trained on. The regression set is answers users approved (general knowledge the base model
gets right). The poisoned batch gives every question another fact's answer and "corrects"
approved answers to wrong ones.

    .venv/bin/python bench/tuning_loop.py [--epochs 8] [--lr 1e-3] [--threads 2]

Writes bench/results/tuning_loop.json. Baseline and candidate are scored in the same run by
the same llama.cpp engine (the candidate is the base GGUF plus the exported LoRA GGUF).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from keel.config import load_settings
from keel.providers.local import LocalProvider
from keel.sanitize import Sanitizer
from keel.tuning.dataset import Example, build
from keel.tuning.gate import evaluate, exact, normalise
from keel.tuning.loop import LocalAnswerer
from keel.tuning.settings import GateSettings
from keel.tuning.spec import TrainSpec

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "bench" / "data" / "tuning_facts.json"
OUT = REPO / "bench" / "results" / "tuning_loop.json"


def ex(q: str, a: str) -> Example:
    return Example([{"role": "user", "content": q}], a)


async def score(answerer: LocalAnswerer, items: list[Example], adapter: str | None
                ) -> dict[str, Any]:
    got = [await answerer.answer(e.messages, adapter) for e in items]
    em = sum(exact(g, e.answer) for g, e in zip(got, items, strict=True))
    contains = sum(normalise(e.answer) in normalise(g) for g, e in zip(got, items, strict=True))
    return {"n": len(items), "exact_match": round(em / len(items), 4),
            "contains": round(contains / len(items), 4),
            "samples": [{"q": e.messages[-1]["content"], "expected": e.answer, "got": g}
                        for e, g in list(zip(items, got, strict=True))[:6]]}


def train(run: Path, base: str, ds_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    spec = TrainSpec(base=base, dataset=str(ds_dir), output=str(run / "out"),
                     lora_rank=args.rank, lora_alpha=2.0 * args.rank, learning_rate=args.lr,
                     epochs=args.epochs, batch_size=args.batch, checkpoint_every=20,
                     threads=args.threads, device="cpu", max_length=128)
    run.mkdir(parents=True, exist_ok=True)
    spec.save(run / "spec.json")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "keel.tuning.run", str(run / "spec.json")],
                          capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"training failed: {proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    result["wall_seconds_with_load"] = round(time.perf_counter() - started, 1)
    seen = result["steps"] * args.batch
    result["examples_seen"] = seen
    result["train_seconds_per_100_examples"] = round(result["train_seconds"] / seen * 100, 1)
    result["cpu_seconds_per_100_examples"] = round(result["cpu_seconds"] / seen * 100, 1)
    result.pop("losses", None)
    print(f"trained {run.name}: {json.dumps(result)}", flush=True)
    return result


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=float, default=8.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/keel-tuning-bench")
    ap.add_argument("--skip-poison", action="store_true")
    args = ap.parse_args()
    data = json.loads(DATA.read_text())
    work = Path(args.work)
    settings = load_settings(None, data_dir=str(work / "data"),
                             models_dir=str(REPO / ".keel" / "models"))
    settings.local.slots, settings.local.threads = 1, args.threads
    spec = next(m for m in settings.model_table() if m.name == "gemma-3-270m")
    base = str(settings.model_dir / "gemma-3-270m-q4_k_m.gguf")
    provider = LocalProvider(settings)
    answerer = LocalAnswerer(provider, spec, max_tokens=16)
    gate = GateSettings(margin=0.05, regression_tolerance=0.0, max_new_tokens=16)
    scrub = Sanitizer(key=b"keel tuning bench sanitizer key")
    corrections = [ex(q, f["answer"]) for f in data["facts"] for q in f["train"]]
    held_out = [ex(q, f["answer"]) for f in data["facts"] for q in f["held_out"]]
    approved = [ex(q, a) for q, a in data["approved"]]
    report: dict[str, Any] = {
        "machine": "2 shared CPU cores; 8 agents were running builds and tests on them "
                   "(load average ~20): times are under heavy load",
        "model": "gemma-3-270m Q4_K_M GGUF (llama.cpp) + LoRA GGUF adapter",
        "hyperparameters": vars(args) | {"max_new_tokens": 16}}
    try:
        ds = build(corrections, approved, scrub, eval_fraction=0.2, min_rows=8)
        ds_dir = ds.write(work / "datasets")
        report["dataset"] = {"hash": ds.hash, "train": len(ds.train), "eval": len(ds.eval),
                             "regression": len(ds.regression)}
        report["base_held_out"] = await score(answerer, held_out, None)
        print("base held-out", report["base_held_out"]["exact_match"], flush=True)
        clean = train(work / "clean", base, ds_dir, args)
        adapter = clean["adapter"]
        report["train_clean"] = clean
        report["tuned_held_out"] = await score(answerer, held_out, adapter)
        report["tuned_train_questions"] = await score(answerer, ds.train[:24], adapter)
        g = await evaluate(answerer, champion=None, candidate=adapter, held_out=ds.eval,
                           regression=ds.regression, settings=gate)
        report["gate_clean"] = g.to_json()
        print("tuned held-out", report["tuned_held_out"]["exact_match"], "gate", g.passed,
              g.reasons, flush=True)
        if not args.skip_poison:
            rng = random.Random(7)
            answers = [f["answer"] for f in data["facts"]]
            poisoned = [ex(q, rng.choice([a for a in answers if a != f["answer"]]))
                        for f in data["facts"] for q in f["train"]]
            poisoned += [ex(q, a) for q, a in data["poison_approved"]]
            pds = build(poisoned, approved, scrub, eval_fraction=0.2, min_rows=8)
            pdir = pds.write(work / "datasets")
            bad = train(work / "poisoned", base, pdir, args)
            report["train_poisoned"] = bad
            pg = await evaluate(answerer, champion=None, candidate=bad["adapter"],
                                held_out=pds.eval, regression=pds.regression, settings=gate)
            report["gate_poisoned"] = pg.to_json()
            report["poisoned_held_out"] = await score(answerer, held_out, bad["adapter"])
            print("poisoned gate", pg.passed, pg.reasons, flush=True)
    finally:
        await provider.aclose()
    OUT.write_text(json.dumps(report, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    asyncio.run(main())
