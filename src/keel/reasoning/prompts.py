"""What judges and voters are asked, and how their structured answers are read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from keel.gateway.validation import content_text

JSON = dict[str, Any]

_REJECTED = {"type": "array", "items": {
    "type": "object", "properties": {"id": {"type": "string"}, "reason": {"type": "string"}},
    "required": ["id", "reason"], "additionalProperties": False}}
FINAL_SCHEMA: JSON = {
    "type": "object",
    "properties": {
        "rejected": _REJECTED,
        "answer": {"type": "string"},
        "citations": {"type": "array", "items": {
            "type": "object",
            "properties": {"id": {"type": "string"}, "insight": {"type": "string"}},
            "required": ["id", "insight"], "additionalProperties": False}},
    },
    "required": ["rejected", "answer", "citations"],
    "additionalProperties": False,
}


def keep_schema(survivors: int) -> JSON:
    return {"type": "object",
            "properties": {"keep": {"type": "array", "items": {"type": "string"},
                                    "maxItems": survivors},
                           "rejected": _REJECTED},
            "required": ["keep", "rejected"], "additionalProperties": False}


def vote_schema(keep: int) -> JSON:
    return {"type": "object",
            "properties": {"best": {"type": "array", "items": {"type": "string"},
                                    "maxItems": keep}},
            "required": ["best"], "additionalProperties": False}


def question_text(messages: Sequence[JSON]) -> str:
    """The user's question as judges see it: the last user turn, with earlier turns as
    context when there are any."""
    turns = [(str(m.get("role", "")), content_text(m.get("content"))) for m in messages]
    if len(turns) == 1:
        return turns[0][1]
    return "\n".join(f"{role}: {text}" for role, text in turns)


def _answers_block(ids: Sequence[str], answers: dict[str, str]) -> str:
    return "\n\n".join(f"### Answer id {aid}\n{answers[aid].strip()}" for aid in ids)


def final_prompt(instructions: str, question: str, ids: Sequence[str],
                 answers: dict[str, str]) -> list[JSON]:
    system = (instructions.replace("N proposed", f"{len(ids)} proposed") +
              "\n\nEach answer is labelled with an id. Reply with JSON only: "
              '{"rejected": [{"id": ID, "reason": WHY}], "answer": YOUR FINAL ANSWER, '
              '"citations": [{"id": ID, "insight": WHAT YOU TOOK FROM IT}]}. '
              "Use only the ids shown.")
    user = f"Question:\n{question}\n\n{len(ids)} proposed answers:\n\n" + _answers_block(
        ids, answers)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def keep_prompt(question: str, ids: Sequence[str], answers: dict[str, str],
                survivors: int) -> list[JSON]:
    system = (f"You are a strict reviewer. You will receive {len(ids)} proposed answers "
              "to a user question. Discard answers with factual errors or hallucinations "
              f"and keep the {survivors} best. Reply with JSON only: "
              '{"keep": [ID, ...], "rejected": [{"id": ID, "reason": WHY}]}. '
              "Use only the ids shown.")
    user = f"Question:\n{question}\n\n{len(ids)} proposed answers:\n\n" + _answers_block(
        ids, answers)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def vote_prompt(question: str, ids: Sequence[str], answers: dict[str, str],
                keep: int) -> list[JSON]:
    system = (f"Pick the {keep} most correct answers to the question. Reply with JSON "
              'only: {"best": [ID, ...]}. Use only the ids shown.')
    user = f"Question:\n{question}\n\nAnswers:\n\n" + _answers_block(ids, answers)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def parse_json_object(text: str) -> JSON | None:
    """The first JSON object in ``text`` (judges sometimes wrap it in prose or fences)."""
    start = text.find("{")
    end = text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        data = orjson.loads(text[start:end + 1])
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None
