"""Dataset builder (with the real PII sanitizer) and the evaluation gate's rule (a scripted
answerer stands in for the model: these tests are about keel's decision logic)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from keel.errors import InvalidRequest
from keel.sanitize import Sanitizer
from keel.tuning.dataset import Example, build, clusters, prompt_messages, read_split
from keel.tuning.gate import evaluate
from keel.tuning.settings import GateSettings

KEY = b"0123456789abcdef0123456789abcdef"


def ex(q: str, a: str, system: str | None = None) -> Example:
    msgs = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": q}]
    return Example(msgs, a)


ROWS = [ex(f"What is the port of service {name}?", port) for name, port in
        [("alpha", "7001"), ("bravo", "7002"), ("charlie", "7003"), ("delta", "7004"),
         ("echo", "7005"), ("foxtrot", "7006"), ("golf", "7007"), ("hotel", "7008"),
         ("india", "7009"), ("juliet", "7010")]]


def test_pii_is_scrubbed_from_prompts_and_corrections_before_anything_is_written(
        tmp_path: Path):
    rows = [*ROWS, ex("Email jane.doe@example.com the invoice", "Sent.",
                      system="Support bot for Acme"),
            # an answer that is itself personal data is left out, not taught as a pseudonym
            ex("Who is the account owner?", "Jane Doe, jane.doe@example.com"),
            ex("Who is the account owner?", "The person named on the invoice.")]
    ds = build(rows, [ex("Who signed?", "Marta Velez"), ex("Who signs?", "The owner")],
               Sanitizer(key=KEY), min_rows=8)
    out = ds.write(tmp_path)
    text = "".join(p.read_text() for p in out.glob("*.jsonl"))
    assert "jane.doe@example.com" not in text and "<EMAIL_ADDRESS_" in text
    assert ds.scrubbed >= 2
    assert "Support bot for Acme" in text  # the system prompt is part of the prompt
    assert "<PERSON_" not in text and "Marta" not in text and "Jane Doe" not in text
    assert ds.pii_answers == 2 and "The person named on the invoice." in text
    assert '"pii_answers_dropped": 1' not in (out / "meta.json").read_text()
    assert '"pii_answers_dropped": 2' in (out / "meta.json").read_text()
    assert out.name == ds.hash and len(ds.hash) == 64


def test_answers_with_spelled_out_contact_details_are_left_out(tmp_path: Path):
    leaky = [ex("Who handles billing?",
                "Ask priya ramanathan, she is at priya dot r at gmail dot com"),
             ex("Who handles refunds?", "nijito asano handles it, her number is four one "
                                        "five five five five zero one nine nine"),
             ex("Who handles the vendor?", "write to ops at vendorco dot io"),
             ex("Who is on call?", "call him on oh seven seven double nine one two three "
                                   "four five six")]
    kept = ex("Who handles the meeting?", "meet at 10 in room one or two")
    ds = build([*ROWS, *leaky, kept], [], Sanitizer(key=KEY), min_rows=8)
    text = "".join(p.read_text() for p in ds.write(tmp_path).glob("*.jsonl"))
    assert ds.pii_answers == 4
    for word in ("priya", "gmail", "four one five", "vendorco", "double nine"):
        assert word not in text
    assert "meet at 10 in room one or two" in text  # ordinary text is still taught


def test_duplicates_collapse_and_the_hash_is_the_content(tmp_path: Path):
    s = Sanitizer(key=KEY)
    a = build([*ROWS, ROWS[0], ex("what is the port of service alpha", "7001")], [], s)
    assert a.duplicates == 2 and len(a.train) + len(a.eval) == len(ROWS)
    b = build(list(ROWS), [], s)
    assert a.hash == b.hash
    c = build([*ROWS[:-1], ex("What is the port of service juliet?", "7011")], [], s)
    assert c.hash != a.hash
    # writing the same dataset twice is one directory
    assert a.write(tmp_path) == b.write(tmp_path)
    assert [e.answer for e in read_split(tmp_path / a.hash / "train.jsonl")] == \
        [e.answer for e in a.train]


def test_near_copies_of_a_prompt_stay_on_one_side_of_the_split():
    rows = [*ROWS, ex("What is the port of the service alpha?", "7001"),
            ex("what's the port of service alpha", "7001")]
    groups = clusters(rows)
    alpha = {i for i, r in enumerate(rows) if "alpha" in r.messages[-1]["content"]}
    assert any(alpha <= set(g) for g in groups)
    ds = build(rows, [], Sanitizer(key=KEY), eval_fraction=0.3)
    train_q = {r.messages[-1]["content"].lower() for r in ds.train}
    eval_q = {r.messages[-1]["content"].lower() for r in ds.eval}
    assert ds.eval and ds.train
    assert not ({q for q in train_q if "alpha" in q} and {q for q in eval_q if "alpha" in q})


def test_a_dataset_too_small_to_split_is_a_clear_error():
    with pytest.raises(InvalidRequest, match="at least 8 rows"):
        build(ROWS[:3], [], Sanitizer(key=KEY), min_rows=8)
    same = [ex("What is the port of service alpha?", f"70{i}") for i in range(10)]
    with pytest.raises(InvalidRequest, match="2 or more clusters"):
        build(same, [], Sanitizer(key=KEY))


def test_prompt_messages_come_from_the_logged_body_and_skip_truncated_ones():
    body = '{"model":"m","messages":[{"role":"system","content":"ctx"},' \
           '{"role":"user","content":[{"type":"text","text":"hi"}]}]}'
    assert prompt_messages(body, "chat") == [{"role": "system", "content": "ctx"},
                                             {"role": "user", "content": "hi"}]
    assert prompt_messages('{"_keel_truncated": true, "messages": []}', "chat") is None
    assert prompt_messages('{"input": "x"}', "embeddings") is None


class ScriptedAnswerer:
    """Answers from a table per adapter (None: the champion)."""

    def __init__(self, table: dict[str | None, dict[str, str]]) -> None:
        self.table = table

    async def answer(self, messages: list[dict[str, Any]], adapter: str | None) -> str:
        return self.table[adapter].get(messages[-1]["content"], "no idea")


HELD = [ex("q1", "a1"), ex("q2", "a2"), ex("q3", "a3"), ex("q4", "a4")]
APPROVED = [ex("capital of France?", "Paris"), ex("2+2?", "4")]


async def test_scripted_gate_promotes_a_better_candidate_that_keeps_what_was_right():
    champ = {"q1": "a1", "capital of France?": " Paris.", "2+2?": "4"}
    cand = {"q1": "A1", "q2": "a2 ", "q3": "a3", "capital of France?": "paris", "2+2?": "4"}
    r = await evaluate(ScriptedAnswerer({None: champ, "c": cand}), champion=None,
                       candidate="c", held_out=HELD, regression=APPROVED,
                       settings=GateSettings(margin=0.3))
    assert r.passed, r.reasons
    assert (r.champion_eval, r.candidate_eval) == (0.25, 0.75)
    assert r.regression_n == 3 and r.regressions == 0


async def test_scripted_gate_refuses_a_candidate_that_breaks_an_approved_answer():
    champ = {"capital of France?": "Paris", "2+2?": "4"}
    cand = {"q1": "a1", "q2": "a2", "q3": "a3", "q4": "a4", "capital of France?": "Berlin",
            "2+2?": "4"}
    r = await evaluate(ScriptedAnswerer({None: champ, "c": cand}), champion=None,
                       candidate="c", held_out=HELD, regression=APPROVED,
                       settings=GateSettings(margin=0.1))
    assert not r.passed
    assert r.candidate_eval == 1.0 and r.regressions == 1
    assert "answers wrong that the champion gets right" in r.reasons[0]
    assert any(c.get("regression") for c in r.changed)
    # a tolerance that allows one loss in two lets it through
    r2 = await evaluate(ScriptedAnswerer({None: champ, "c": cand}), champion=None,
                        candidate="c", held_out=HELD, regression=APPROVED,
                        settings=GateSettings(margin=0.1, regression_tolerance=0.5))
    assert r2.passed


async def test_scripted_gate_refuses_a_candidate_no_better_than_the_champion():
    same = {"q1": "a1"}
    r = await evaluate(ScriptedAnswerer({None: same, "c": same}), champion=None,
                       candidate="c", held_out=HELD, regression=[],
                       settings=GateSettings(margin=0.05))
    assert not r.passed and "must win by at least" in r.reasons[0]
    empty = await evaluate(ScriptedAnswerer({None: {}, "c": {}}), champion=None,
                           candidate="c", held_out=[], regression=[],
                           settings=GateSettings())
    assert not empty.passed and "empty" in empty.reasons[0]


def test_replay_trains_on_part_of_the_approved_answers_and_holds_the_rest_out():
    approved = [ex(f"What is the capital of {c}?", city) for c, city in
                [("England", "London"), ("Russia", "Moscow"), ("Greece", "Athens"),
                 ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Ireland", "Dublin")]]
    approved.append(ex("what's the capital of England", "London"))  # a near-copy
    none = build(ROWS, approved, Sanitizer(key=KEY))
    assert len(none.regression) == len(approved) and len(none.train) + len(none.eval) == 10
    ds = build(ROWS, approved, Sanitizer(key=KEY), replay_fraction=0.5)
    replayed = {r.messages[-1]["content"] for r in ds.train if r.answer[0].isalpha()}
    held = {r.messages[-1]["content"] for r in ds.regression}
    assert replayed and held and not replayed & held
    assert len(replayed) + len(held) == len(approved)
    assert 2 <= len(replayed) <= 5
    # the England pair is one cluster: both sides of the split never share it
    england = {q for q in replayed | held if "England" in q}
    assert england <= replayed or england <= held
    assert ds.eval == none.eval  # corrections split as before
