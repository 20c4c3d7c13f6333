"""Is a JSON schema one llama.cpp's grammar engine can compile?

llama.cpp (the build xllamacpp ships) compiles ``json_schema`` with llguidance: its
``json_schema_to_grammar`` wraps the schema as ``%llguidance {}`` + ``start: %json
<schema>``, and llguidance compiles that when the request runs. A schema it cannot compile
does not fail the request there: generation runs UNCONSTRAINED (measured: a dangling
``$ref`` or ``"type": "frobnicate"`` gave free text). So keel compiles the same grammar
text with llguidance itself first: a chat request gets a 400, a batch upload names the line.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import orjson

from keel.errors import InvalidRequest

JSON = dict[str, Any]


def llama_grammar(schema: JSON) -> str:
    """The grammar text xllamacpp's ``json_schema_to_grammar`` produces for ``schema`` as
    the local provider sends it (:func:`keel.providers.llama_requests.constrained`; a test
    checks the two stay equal; importing xllamacpp in the gateway costs ~20 MB)."""
    from keel.providers.llama_requests import constrained

    return "%llguidance {}\nstart: %json " + orjson.dumps(constrained(schema)).decode()


def check_compiles(schema: JSON, where: str) -> None:
    """Refuse a schema llama.cpp's grammar engine cannot compile (an InvalidRequest)."""
    import llguidance

    problem = llguidance.LLMatcher.validate_grammar(llama_grammar(schema))
    if problem:
        detail = problem_reason(problem)
        raise InvalidRequest(
            f"{where}: response_format.json_schema.schema cannot be compiled by llama.cpp's "
            f"grammar engine: {detail}; fix the schema", param="response_format")


def problem_reason(problem: str) -> str:
    """llguidance's complaint in one line, without the grammar text it echoes. A regex
    error spans several lines (``regex parse error:``, the pattern, a caret, ``error:
    unclosed group``): the reason and the pattern are kept."""
    head: list[str] = []
    for raw in problem.strip().splitlines():
        if re.match(r"\s*\d+ \| ", raw):  # the echoed grammar starts
            break
        if raw.strip():
            head.append(raw.strip())
    if not head:
        return problem.strip()[:300]
    text = re.sub(r"^at \d+\(\d+\): ", "", head[0])
    if text.endswith(":") and len(head) > 1:
        reasons = [h.removeprefix("error:").strip() for h in head[1:] if h.startswith("error:")]
        shown = [h for h in head[1:] if not h.startswith("error:") and set(h) != {"^"}]
        text = f"{text} {'; '.join(reasons) or ' '.join(head[1:])}"
        if shown and reasons:
            text += f" in {shown[0]!r}"
    return text[:300]


@lru_cache(maxsize=256)
def _problem(grammar: str) -> str:
    import llguidance

    return str(llguidance.LLMatcher.validate_grammar(grammar))


def ensure_compiles(schema: JSON) -> None:
    """:func:`check_compiles` for a request's ``response_format``, remembered per schema
    (a few hundred microseconds the first time, a dict lookup after)."""
    problem = _problem(llama_grammar(schema))
    if problem:
        raise InvalidRequest(
            "response_format.json_schema.schema cannot be compiled by llama.cpp's grammar "
            f"engine: {problem_reason(problem)}; fix the schema", param="response_format")
