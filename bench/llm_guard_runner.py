"""Runs inside .bench-venv: llm-guard's Regex / BanSubstrings input scanners over texts.

stdin: {"texts": [...], "patterns": [...], "phrases": [...]}
stdout: {"<scanner>": {"blocked": [bool...], "us_per_prompt": float}, "notes": [...]}

llm-guard's ``input_scanners/__init__`` imports every scanner (presidio analyzer, torch,
transformers), which cannot load offline here, so the two rule-based scanners are loaded
from their own modules under a bare package object. Its model-based PromptInjection
scanner needs a HuggingFace model download (protectai/deberta-v3-base-prompt-injection-v2)
and cannot run offline: it is not part of this comparison.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sys
import time
import types
from pathlib import Path

_spec = importlib.util.find_spec("llm_guard")
assert _spec is not None and _spec.submodule_search_locations is not None
_root = Path(next(iter(_spec.submodule_search_locations)))
for _name, _path in (("llm_guard", _root), ("llm_guard.input_scanners", _root / "input_scanners")):
    _pkg = types.ModuleType(_name)
    _pkg.__path__ = [str(_path)]
    sys.modules[_name] = _pkg

from llm_guard.input_scanners.ban_substrings import (  # noqa: E402
    PROMPT_STOP_SUBSTRINGS,
    BanSubstrings,
)
from llm_guard.input_scanners.regex import Regex  # noqa: E402


def run(scanner: object, texts: list[str]) -> dict[str, object]:
    blocked = []
    t0 = time.perf_counter()
    for text in texts:
        _, valid, _ = scanner.scan(text)  # type: ignore[attr-defined]
        blocked.append(not valid)
    dt = time.perf_counter() - t0
    return {"blocked": blocked, "us_per_prompt": dt / max(1, len(texts)) * 1e6}


def main() -> None:
    import logging

    logging.disable(logging.CRITICAL)
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    job = json.load(sys.stdin)
    texts = job["texts"]
    out: dict[str, object] = {
        "version": importlib.metadata.version("llm-guard"),
        "ban_substrings_default": run(
            BanSubstrings(substrings=PROMPT_STOP_SUBSTRINGS, match_type="str", redact=False),
            texts,
        ),
        "ban_substrings_injection_phrases": run(
            BanSubstrings(substrings=job["phrases"], match_type="str", redact=False), texts
        ),
        "regex_keel_patterns_raw_text": run(
            Regex(patterns=job["patterns"], is_blocked=True, redact=False), texts
        ),
        "notes": [
            "PromptInjection (model-based) scanner not run: it downloads "
            "protectai/deberta-v3-base-prompt-injection-v2 from HuggingFace; offline here.",
            "llm-guard compiles Regex patterns case-sensitively; keel patterns are passed "
            "with a (?i) prefix and run on raw (un-normalised) text, one re at a time.",
        ],
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
