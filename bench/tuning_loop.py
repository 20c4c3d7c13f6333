"""Feedback -> fine-tune loop on the real default model (Gemma 3 270M, CPU): before/after
exact match on held-out paraphrases, the gate's decision (through the product's own
``TuningLoop.register_run``: register + promote), training time and peak RSS per 100
examples, resume after kill -9, and a poisoned batch the gate must refuse.

Task: facts about Quillon, a fictional database (bench/data/tuning_facts.json). The base
model cannot know them; users correct its answers in the feedback box (4 wordings per
fact); the held-out set is 2 more paraphrases per fact, written separately and never
trained on. The regression set is answers users approved (general knowledge the base model
gets right). The poisoned batch gives every question another fact's answer and "corrects"
approved answers to wrong ones; it is judged against the serving champion.

    flock /work/bench.lock .venv/bin/python bench/tuning_loop.py [--lr 1e-3] [--no-kill]

Writes bench/results/tuning_loop.json. Baseline and candidates are scored in the same run by
the same llama.cpp engine (a candidate is the base GGUF plus its exported LoRA GGUF).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from keel.app import open_database
from keel.config import load_settings
from keel.providers.registry import ModelRegistry
from keel.sanitize import Sanitizer
from keel.tuning.dataset import Example
from keel.tuning.gate import exact, normalise
from keel.tuning.loop import LocalAnswerer, TuningLoop
from keel.tuning.registry import VersionRegistry

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "bench" / "data" / "tuning_facts.json"
OUT = REPO / "bench" / "results" / "tuning_loop.json"
MODEL = "gemma-3-270m"


def ex(q: str, a: str) -> Example:
    return Example([{"role": "user", "content": q}], a)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def score(answerer: LocalAnswerer, items: list[Example], adapter: str | None
                ) -> dict[str, Any]:
    got = [await answerer.answer(e.messages, adapter) for e in items]
    em = sum(exact(g, e.answer) for g, e in zip(got, items, strict=True))
    contains = sum(normalise(e.answer) in normalise(g) for g, e in zip(got, items, strict=True))
    return {"n": len(items), "exact_match": round(em / len(items), 4),
            "contains": round(contains / len(items), 4),
            "answers": [{"q": e.messages[-1]["content"], "expected": e.answer, "got": g}
                        for e, g in zip(items, got, strict=True)]}


def _child(spec: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "keel.tuning.run", str(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})


def train(spec: Path, batch: int, kill_at: int = 0) -> dict[str, Any]:
    """Train ``spec`` in a child process. With ``kill_at``, SIGKILL it once it reports that
    step, then rerun the same spec: the rerun must resume from the last checkpoint."""
    killed: dict[str, Any] = {}
    started = time.perf_counter()
    if kill_at:
        proc = _child(spec)
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("step ") and int(line.split()[1].split("/")[0]) >= kill_at:
                proc.send_signal(signal.SIGKILL)
                killed["killed_after_step"] = int(line.split()[1].split("/")[0])
                break
        proc.wait()
        killed["killed_run_seconds"] = round(time.perf_counter() - started, 1)
    proc = _child(spec)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"training failed: {err[-3000:]}")
    result: dict[str, Any] = json.loads(out)
    result.update(killed)
    if kill_at:
        result["steps_lost_to_kill"] = killed["killed_after_step"] - result["resumed_from"]
    result["wall_seconds_total"] = round(time.perf_counter() - started, 1)
    ran = result["steps"] - result["resumed_from"]  # the steps this process trained
    seen = ran * batch
    result["train_seconds_per_100_examples"] = round(result["train_seconds"] / seen * 100, 1)
    result["cpu_seconds_per_100_examples"] = round(result["cpu_seconds"] / seen * 100, 1)
    result["final_losses"] = result.pop("losses", [])[-5:]
    result["load_average_after"] = load()
    print(f"trained {spec.parent.name}: {json.dumps(result)}", flush=True)
    return result


def version_json(v: Any) -> dict[str, Any]:
    return {"id": v.id, "status": v.status, "metrics": v.metrics, "report": v.report}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=float, default=5.0)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--checkpoint-every", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the trainer")
    ap.add_argument("--llama-threads", type=int, default=1)
    ap.add_argument("--work", default="/tmp/keel-tuning-bench")
    ap.add_argument("--skip-poison", action="store_true")
    ap.add_argument("--no-kill", action="store_true", help="do not kill -9 the clean run")
    args = ap.parse_args()
    data = json.loads(DATA.read_text())
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    settings = load_settings(None, data_dir=str(work / "data"),
                             models_dir=str(REPO / ".keel" / "models"),
                             tuning={"enabled": True, "gate": {
                                 "margin": 0.05, "regression_tolerance": 0.0,
                                 "max_new_tokens": 16}})
    settings.local.slots, settings.local.threads = 1, args.llama_threads
    spec = next(m for m in settings.model_table() if m.name == MODEL)
    db = open_database(settings)
    registry = VersionRegistry(db)
    models = ModelRegistry(settings)
    scrub = Sanitizer(key=b"keel tuning bench sanitizer key")
    loop = TuningLoop(settings, db, registry, models.provider, scrub)
    answerer = LocalAnswerer(models.provider(spec), spec, max_tokens=16)
    corrections = [ex(q, f["answer"]) for f in data["facts"] for q in f["train"]]
    held_out = [ex(q, f["answer"]) for f in data["facts"] for q in f["held_out"]]
    approved = [ex(q, a) for q, a in data["approved"]]
    overrides = {"learning_rate": args.lr, "epochs": args.epochs, "batch_size": args.batch,
                 "lora_rank": args.rank, "lora_alpha": 2.0 * args.rank,
                 "checkpoint_every": args.checkpoint_every, "threads": args.threads,
                 "device": "cpu", "max_length": 128}
    report: dict[str, Any] = {
        "machine": f"{os.cpu_count()} shared CPU cores (AMD EPYC), other agents' builds and "
                   "tests running beside it",
        "load_average_start": load(),
        "model": "gemma-3-270m Q4_K_M GGUF (llama.cpp) + LoRA GGUF adapter",
        "hyperparameters": overrides | {"max_new_tokens": 16}}
    t0 = time.perf_counter()
    try:
        ds = loop.dataset(corrections, approved)
        ds_dir = ds.write(loop.root / "datasets")
        report["dataset"] = {"hash": ds.hash, "train": len(ds.train), "eval": len(ds.eval),
                             "regression": len(ds.regression), "corrections": len(corrections),
                             "held_out_paraphrases": len(held_out)}
        report["base_held_out"] = await score(answerer, held_out, None)
        print("base held-out", report["base_held_out"]["exact_match"], load(), flush=True)
        clean_spec = loop.plan(MODEL, ds_dir, "", **overrides)
        kill_at = 0 if args.no_kill else args.checkpoint_every + args.checkpoint_every // 2
        report["train_clean"] = train(clean_spec, args.batch, kill_at=kill_at)
        clean = await loop.register_run(clean_spec)
        report["round_clean"] = {"status": clean.status, "reason": clean.reason,
                                 "version": version_json(clean.version)}
        adapter = clean.version.adapter if clean.version else None
        report["tuned_held_out"] = await score(answerer, held_out, adapter)
        report["improvement_points"] = round(100 * (report["tuned_held_out"]["exact_match"]
                                                    - report["base_held_out"]["exact_match"]),
                                             1)
        print("tuned held-out", report["tuned_held_out"]["exact_match"], clean.status,
              clean.reason, load(), flush=True)
        if not args.skip_poison:
            rng = random.Random(7)
            answers = [f["answer"] for f in data["facts"]]
            poisoned = [ex(q, rng.choice([a for a in answers if a != f["answer"]]))
                        for f in data["facts"] for q in f["train"]]
            poisoned += [ex(q, a) for q, a in data["poison_approved"]]
            pds = loop.dataset(poisoned, approved)
            pdir = pds.write(loop.root / "datasets")
            champion = await registry.serving(MODEL)
            pspec = loop.plan(MODEL, pdir, champion.id if champion else "", **overrides)
            report["train_poisoned"] = train(pspec, args.batch)
            bad = await loop.register_run(pspec)
            report["round_poisoned"] = {"status": bad.status, "reason": bad.reason,
                                        "version": version_json(bad.version)}
            after = await registry.serving(MODEL)
            report["serving_after_poisoned_round"] = after.id if after else "base"
            if bad.version:
                report["poisoned_held_out"] = await score(answerer, held_out,
                                                          bad.version.adapter)
            print("poisoned round", bad.status, bad.reason, flush=True)
    finally:
        await models.aclose()
        report["bench_wall_seconds"] = round(time.perf_counter() - t0, 1)
        report["load_average_end"] = load()
        OUT.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {OUT} in {report['bench_wall_seconds']} s")


if __name__ == "__main__":
    asyncio.run(main())
