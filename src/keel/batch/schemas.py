"""JSON-schema structured output: compile check before queueing, validation after.

The compile check is :mod:`keel.providers.grammar_check` (the local provider runs it on
every structured request too); a batch upload runs it per line and names the line.

Outputs are validated again with ``jsonschema`` after generation (the issue's "validate it
anyway"): a failure is counted per line, never hidden.
"""

from __future__ import annotations

from typing import Any

import orjson

from keel.providers.grammar_check import check_compiles

JSON = dict[str, Any]


def response_schema(body: JSON) -> JSON | None:
    """The ``response_format`` JSON schema of a request body, if it has one."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    return schema if isinstance(schema, dict) else None


def preload() -> None:
    """Load and exercise the grammar compiler once (uploads are checked with it), so its
    memory is part of a batch-enabled gateway's idle baseline, not the first upload's."""
    check_compiles({"type": "object", "properties": {"a": {"type": "string"}}}, "preload")


def output_valid(schema: JSON, text: str) -> bool:
    """Whether the model's text is JSON that validates against ``schema``."""
    import jsonschema

    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return False
    except jsonschema.SchemaError:
        return False
    return True
