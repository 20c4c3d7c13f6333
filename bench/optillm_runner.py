"""Runs optillm 0.4's best-of-n and mixture-of-agents against an OpenAI-compatible
upstream; executed by ``bench/reasoning_speed.py`` with the optillm venv's Python.

optillm's package ``__init__`` starts its proxy server module (flask, torch, transformers,
spaCy...); the approaches themselves only need an OpenAI client. This runner loads
``optillm/bon.py`` and ``optillm/moa.py`` unchanged from the installed package, with the
package's conversation logger replaced by a no-op (it only records calls for optillm's own
UI). Prints one JSON line: wall time and completion tokens optillm reports.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import types
from pathlib import Path


def load(approach: str) -> types.ModuleType:
    spec = importlib.util.find_spec("optillm")
    assert spec is not None and spec.submodule_search_locations, "optillm is not installed"
    root = Path(next(iter(spec.submodule_search_locations)))
    pkg = types.ModuleType("optillm")
    pkg.__path__ = [str(root)]
    logger = types.ModuleType("optillm.conversation_logger")
    logger.log_provider_call = lambda *a, **k: None  # type: ignore[attr-defined]
    pkg.conversation_logger = logger  # type: ignore[attr-defined]
    sys.modules["optillm"] = pkg
    sys.modules["optillm.conversation_logger"] = logger
    mod_spec = importlib.util.spec_from_file_location(f"optillm.{approach}",
                                                      root / f"{approach}.py")
    assert mod_spec is not None and mod_spec.loader is not None
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", default="cheap")
    ap.add_argument("--approach", choices=["bon", "moa"], required=True)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--question", default="What is 6 x 7?")
    a = ap.parse_args()
    from openai import OpenAI

    client = OpenAI(base_url=a.base_url, api_key="sk-bench", max_retries=0)
    t0 = time.perf_counter()
    if a.approach == "bon":
        answer, tokens = load("bon").best_of_n_sampling(
            "You are a helpful assistant.", a.question, client, a.model, n=a.n,
            request_config={"max_tokens": 64})
    else:
        answer, tokens = load("moa").mixture_of_agents(
            "You are a helpful assistant.", a.question, client, a.model,
            request_config={"max_tokens": 64})
    print(json.dumps({"approach": a.approach, "wall_s": time.perf_counter() - t0,
                      "completion_tokens": tokens, "answer": str(answer)[:80]}))


if __name__ == "__main__":
    main()
