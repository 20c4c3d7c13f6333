"""Sanitizer quality and speed on presidio's synthetic PII set, against stock presidio.

Data: ``../shared/datasets/pii/presidio_synth_v2.jsonl`` (1,500 lines, 2,863 labelled
spans). Both systems run in the same process on the same lines:

* ``keel``: ``keel.sanitize.Sanitizer`` (presidio engine + keel's recognizers);
* ``presidio-stock``: presidio's predefined recognizers with the no-op NLP engine (what
  presidio gives without a spaCy model), its email check made offline.

Entity-level scores per type. A gold span is *recalled* when a prediction of the mapped
type overlaps at least half of the shorter of the two; a prediction is *correct* when it
so overlaps a gold span of its type. ``masked`` counts a gold span covered by a
prediction of any type (what matters for privacy). Dataset labels keel does not detect
(addresses, places, organisations, dates, titles, ages, NRP, zip) are reported as
``not targeted``; predictions of keel's own ``ID`` type are counted, not scored.

    .venv/bin/python bench/sanitize_eval.py [--limit N]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from collections import Counter
from pathlib import Path

from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
from presidio_analyzer.nlp_engine import NoOpNlpEngine

from keel.sanitize import Sanitizer
from keel.sanitize.patterns import KeelEmailRecognizer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "pii" / "presidio_synth_v2.jsonl"
OUT = ROOT / "bench" / "results" / "sanitize_eval.json"

# dataset label -> the type a sanitizer should report
GOLD_MAP = {"PERSON": "PERSON", "EMAIL_ADDRESS": "EMAIL_ADDRESS",
            "PHONE_NUMBER": "PHONE_NUMBER", "CREDIT_CARD": "CREDIT_CARD",
            "IBAN_CODE": "IBAN_CODE", "IP_ADDRESS": "IP_ADDRESS", "US_SSN": "US_SSN",
            "US_DRIVER_LICENSE": "US_DRIVER_LICENSE", "DOMAIN_NAME": "URL"}
TARGETS = {"EMAIL_ADDRESS": 0.95, "PHONE_NUMBER": 0.95, "CREDIT_CARD": 0.95,
           "IBAN_CODE": 0.95, "IP_ADDRESS": 0.95, "US_SSN": 0.95, "PERSON": 0.85}


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    inter = min(a[1], b[1]) - max(a[0], b[0])
    return inter > 0 and inter >= 0.5 * min(a[1] - a[0], b[1] - b[0])


def score(records: list[dict], preds: list[list[tuple[str, int, int]]]) -> dict:
    gold_n: Counter[str] = Counter()
    hit: Counter[str] = Counter()
    masked: Counter[str] = Counter()
    exact: Counter[str] = Counter()
    pred_n: Counter[str] = Counter()
    pred_ok: Counter[str] = Counter()
    misses: dict[str, list[str]] = {}
    false_pos: dict[str, list[str]] = {}
    for rec, pred in zip(records, preds, strict=True):
        gold = [(GOLD_MAP.get(s["label"], "~" + s["label"]), s["start"], s["end"])
                for s in rec["spans"]]
        for g_type, gs, ge in gold:
            gold_n[g_type] += 1
            same = [p for p in pred if p[0] == g_type and overlaps((gs, ge), (p[1], p[2]))]
            if same:
                hit[g_type] += 1
                exact[g_type] += any((p[1], p[2]) == (gs, ge) for p in same)
            else:
                misses.setdefault(g_type, []).append(rec["text"][gs:ge])
            masked[g_type] += any(overlaps((gs, ge), (p[1], p[2])) for p in pred)
        for p_type, ps, pe in pred:
            pred_n[p_type] += 1
            if any(g[0] == p_type and overlaps((ps, pe), (g[1], g[2])) for g in gold):
                pred_ok[p_type] += 1
            else:
                false_pos.setdefault(p_type, []).append(rec["text"][ps:pe])
    per_type = {}
    for t in sorted(set(gold_n) | set(pred_n)):
        targeted = not t.startswith("~")
        row: dict[str, object] = {"gold": gold_n[t], "predicted": pred_n[t]}
        if gold_n[t]:
            row["masked_any_type"] = round(masked[t] / gold_n[t], 3)
        if targeted and gold_n[t]:
            row["recall"] = round(hit[t] / gold_n[t], 3)
            row["recall_exact_bounds"] = round(exact[t] / gold_n[t], 3)
            row["misses_sample"] = misses.get(t, [])[:8]
        if targeted and pred_n[t] and (gold_n[t] or t != "ID"):
            row["precision"] = round(pred_ok[t] / pred_n[t], 3)
            row["false_positives_sample"] = false_pos.get(t, [])[:8]
        if t in TARGETS:
            row["target_recall"] = TARGETS[t]
        if not targeted:
            row["note"] = "not targeted"
        per_type[t.lstrip("~")] = row
    return per_type


def stock_presidio() -> AnalyzerEngine:
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"],
                                         nlp_engine=NoOpNlpEngine(
                                             models=[{"lang_code": "en",
                                                      "model_name": "none"}]))
    registry.remove_recognizer("EmailRecognizer")
    registry.add_recognizer(KeelEmailRecognizer())
    return AnalyzerEngine(registry=registry,
                          nlp_engine=NoOpNlpEngine(models=[{"lang_code": "en",
                                                            "model_name": "none"}]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    records = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    if args.limit:
        records = records[:args.limit]
    texts = [r["text"] for r in records]

    t0 = time.perf_counter()
    san = Sanitizer(key=b"bench-key-0123456789abcdef")
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = [san.sanitize(t) for t in texts]
    keel_s = time.perf_counter() - t0
    keel_preds = [[(e.type, e.start, e.end) for e in r.entities] for r in results]

    stock = stock_presidio()
    t0 = time.perf_counter()
    stock_found = [stock.analyze(text=t, language="en", score_threshold=0.3) for t in texts]
    stock_s = time.perf_counter() - t0
    stock_preds = [[(f.entity_type, f.start, f.end) for f in fs] for fs in stock_found]

    n = len(texts)
    report = {
        "dataset": str(DATA.relative_to(ROOT.parent)), "lines": n,
        "config": "keel Sanitizer (default entity types, min_score 0.3) vs presidio "
                  "predefined recognizers with NoOpNlpEngine; one process, one thread",
        "machine": f"{platform.machine()}, shared by several agents (speed under load)",
        "keel": {"ms_per_1000_lines": round(keel_s / n * 1000 * 1000, 1),
                 "load_s": round(load_s, 2), "per_type": score(records, keel_preds)},
        "presidio_stock": {"ms_per_1000_lines": round(stock_s / n * 1000 * 1000, 1),
                           "note": "analyze only (no anonymize)",
                           "per_type": score(records, stock_preds)},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"{'type':20} {'gold':>5} {'keel R':>7} {'keel P':>7} {'stock R':>8} "
          f"{'stock P':>8} target")
    for t, row in report["keel"]["per_type"].items():
        srow = report["presidio_stock"]["per_type"].get(t, {})
        if "recall" not in row and "precision" not in row:
            continue
        print(f"{t:20} {row['gold']:>5} {row.get('recall', '-')!s:>7} "
              f"{row.get('precision', '-')!s:>7} {srow.get('recall', '-')!s:>8} "
              f"{srow.get('precision', '-')!s:>8} {row.get('target_recall', '')}")
    print(f"keel: {report['keel']['ms_per_1000_lines']} ms / 1,000 lines "
          f"(sanitize); presidio stock: {report['presidio_stock']['ms_per_1000_lines']} "
          f"ms / 1,000 lines (analyze)")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
