"""GBNF versus llguidance for keel's structured output, on the raw xllamacpp server.

Why a batch worker does not route its first structured lines to GBNF while llguidance
builds its vocabulary table (see :mod:`gbnf`): same model (Gemma 3 270M Q4_K_M), same
prompts through keel's own request builder (compact JSON), 2 threads, 4 slots,
temperature 0; the only difference is ``grammar`` (:func:`gbnf.to_gbnf`) instead of
``json_schema``.

* ``first_token_s``: a fresh server's first constrained request (3 tokens, a short
  prompt): llguidance pays its table here, GBNF does not.
* 40 short texts -> ``{"sentiment": enum}`` and 24 ~500-token documents -> the batch
  bench's summary schema: valid outputs, tokens generated, wall time, and how often the two
  engines give the same answer.

Measured on 2026-12-05 (2 cores, load ~1.8), ``.venv/bin/python
bench/experiments/gbnf_vs_llguidance.py`` (``bench/results/gbnf_vs_llguidance.json``):

| | llguidance | GBNF |
|---|---|---|
| first constrained token of a fresh server | 1.39 s | 0.16 s |
| sentiment: valid / 40 | 40 | 40 |
| sentiment: tokens for the 40 answers | 240 | 430 |
| sentiment: same answer as llguidance | | 26 / 40 |
| summaries: valid / 24 | 23 | 22 |
| summaries: tokens | 1,080 | 1,401 |
| summaries: same sentiment field | | 2 / 24 (GBNF: 21 "negative") |
| wall for all 64 | 48.4 s | 66.7 s |

GBNF accepts any tokenization of text the grammar forces, and the small model spells
keys and values in pieces ('{' '"' 's' 'enti' 'me' 'nt' instead of '{"' 'sentiment'),
which costs tokens and changes its answers ("Great!" -> negative). llguidance only allows
the canonical tokens there. A worker's first lines answered differently from the rest of
the batch is not a trade keel makes for ~1.7 s of cold start.

Writes ``bench/results/gbnf_vs_llguidance.json``.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import orjson

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from batch_throughput import SCHEMA as SUMMARY  # noqa: E402
from batch_throughput import documents  # noqa: E402
from gbnf import to_gbnf  # noqa: E402

SENTIMENT = {"type": "object", "properties": {
    "sentiment": {"enum": ["positive", "neutral", "negative"]}},
    "required": ["sentiment"], "additionalProperties": False}
MODEL = REPO / ".keel" / "models" / "gemma-3-270m-q4_k_m.gguf"
TEXTS = REPO.parent / "shared" / "datasets" / "prompt_injection" / "prompts.jsonl"
if not TEXTS.exists():
    TEXTS = Path("/work/shared/datasets/prompt_injection/prompts.jsonl")


def request(mode: str, schema: dict[str, Any], text: str, max_tokens: int) -> dict[str, Any]:
    from keel.config import ModelSpec
    from keel.providers.llama_requests import chat_prompt, llama_request

    spec = ModelSpec(name="g", provider="local", path=str(MODEL), context=2048)
    body = {"temperature": 0, "max_tokens": max_tokens,
            "messages": [{"role": "system", "content": "Answer as JSON."},
                         {"role": "user", "content": text}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "s", "schema": schema}}}
    prompt, stop = chat_prompt(body["messages"], spec.chat_format)
    req = llama_request(body, prompt, stream=False, default_max=max_tokens, turn_stop=stop)
    if mode == "gbnf":
        grammar = to_gbnf(req.pop("json_schema"))
        assert grammar is not None
        req["grammar"] = grammar
    return req


def call(server: Any, req: dict[str, Any]) -> tuple[str, int]:
    got: list[bytes] = []
    server.handle_completions(orjson.dumps(req), lambda r: got.append(r) and False)
    out = orjson.loads(got[-1])
    if "error" in out:
        raise SystemExit(f"llama.cpp refused the request: {out['error']}")
    return out["choices"][0]["text"], int(out["usage"]["completion_tokens"])


def fresh_first_token(mode: str) -> float:
    """A fresh server per mode (llguidance's table is per process and model)."""
    import subprocess

    code = (f"import sys,time; sys.path[:0]={[str(HERE), str(HERE.parent)]!r}; "
            "import gbnf_vs_llguidance as g; from keel.providers.local import "
            "start_llama_server as s; srv=s(g.MODEL,1024,1,2,'k'); "
            f"r=g.request({mode!r}, g.SENTIMENT, 'Great!', 3); t=time.perf_counter(); "
            "g.call(srv, r); print(time.perf_counter()-t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return float(out.strip().splitlines()[-1])


def valid(text: str, schema: dict[str, Any]) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def field(text: str) -> str | None:
    try:
        value = json.loads(text).get("sentiment")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def main() -> int:
    from rich.progress import track

    from keel.providers.local import start_llama_server

    first = {m: round(fresh_first_token(m), 3) for m in ("llg", "gbnf")}
    print("first constrained token:", first, flush=True)
    texts = [json.loads(line)["text"] for line in TEXTS.open()][:200:5][:40]
    jobs = ([("sentiment", SENTIMENT, "Is this text positive, neutral or negative? "
              + t[:400], 20) for t in texts]
            + [("summary", SUMMARY, d, 200) for d in documents(24, 500)])
    server = start_llama_server(MODEL, 2048, 4, 2, "bench")
    out: dict[str, list[tuple[str, int]]] = {}
    wall: dict[str, float] = {}
    for mode in ("llg", "gbnf"):
        started = time.perf_counter()
        with cf.ThreadPoolExecutor(4) as pool:
            out[mode] = list(track(pool.map(lambda j, m=mode: call(server, request(m, *j[1:])),
                                            jobs), total=len(jobs), description=mode))
        wall[mode] = round(time.perf_counter() - started, 1)
    report: dict[str, Any] = {"first_token_s": first, "wall_s": wall, "sets": {}}
    for kind, schema in (("sentiment", SENTIMENT), ("summary", SUMMARY)):
        idx = [i for i, j in enumerate(jobs) if j[0] == kind]
        row: dict[str, Any] = {"n": len(idx)}
        for mode in ("llg", "gbnf"):
            row[mode] = {"valid": sum(valid(out[mode][i][0], schema) for i in idx),
                         "tokens": sum(out[mode][i][1] for i in idx),
                         "answers": dict(Counter(str(field(out[mode][i][0])) for i in idx))}
        row["same_text"] = sum(out["llg"][i][0] == out["gbnf"][i][0] for i in idx)
        row["same_sentiment"] = sum(field(out["llg"][i][0]) == field(out["gbnf"][i][0])
                                    is not None for i in idx)
        report["sets"][kind] = row
    print(json.dumps(report, indent=1))
    (REPO / "bench" / "results" / "gbnf_vs_llguidance.json").write_text(
        json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
