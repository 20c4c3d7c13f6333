"""QA tables: suite versions and their prompts, runs, per-prompt results and reviews."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from keel.storage.migrations import Migration

meta = MetaData()

suites = Table(
    "qa_suites", meta,
    Column("name", String(64), primary_key=True),
    Column("version", String(16), primary_key=True),  # content hash of the prompts
    Column("parent", String(16), nullable=True),  # the version this one was built from
    Column("created", Float, nullable=False),
    Column("n_prompts", Integer, nullable=False),
    Column("meta", Text, nullable=False),  # JSON: source, generator, cost, dedupe stats
)

prompts = Table(
    "qa_prompts", meta,
    Column("suite", String(64), nullable=False),
    Column("version", String(16), nullable=False),
    Column("idx", Integer, nullable=False),
    Column("prompt_id", String(32), nullable=False),
    Column("body", Text, nullable=False),  # JSON: the suite line (prompt, persona, expect...)
    UniqueConstraint("suite", "version", "idx"),
    Index("qa_prompts_version", "suite", "version"),
)

runs = Table(
    "qa_runs", meta,
    Column("id", String(32), primary_key=True),
    Column("suite", String(64), nullable=False),
    Column("version", String(16), nullable=False),
    Column("target", String(500), nullable=False),
    Column("profile", String(32), nullable=False),
    Column("started", Float, nullable=False),
    Column("finished", Float, nullable=True),
    Column("status", String(16), nullable=False),  # running, passed, blocked, error
    Column("rubric_version", String(16), nullable=True),
    Column("summary", Text, nullable=False),  # JSON: counts, gate, costs, settings
    Index("qa_runs_started", "started"),
)

results = Table(
    "qa_results", meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(32), nullable=False),
    Column("prompt_id", String(32), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("reply", Text, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("outcome", String(16), nullable=False),  # pass, fail
    Column("checks", Text, nullable=False),  # JSON list of failed deterministic checks
    Column("verdict", Text, nullable=True),  # JSON: judge verdict, reasons, votes
    Column("rubric_version", String(16), nullable=True),
    Column("context", Text, nullable=True),  # what the target said it used (RAG)
    Column("review", String(8), nullable=True),  # fp (judge wrong), tp (judge right)
    Column("reviewer", String(200), nullable=True),
    Column("reviewed_at", Float, nullable=True),
    UniqueConstraint("run_id", "prompt_id"),
    Index("qa_results_outcome", "outcome", "run_id"),
)

rubrics = Table(
    "qa_rubrics", meta,
    Column("version", String(16), primary_key=True),
    Column("created", Float, nullable=False),
    Column("text", Text, nullable=False),
)

MIGRATIONS = [Migration("qa/0001_tables", lambda c: meta.create_all(c))]
