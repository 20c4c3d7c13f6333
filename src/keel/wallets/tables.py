"""SQL tables of the wallets capability (SQLite and PostgreSQL, SQLAlchemy Core).

Money columns are BIGINT micro-USD. The ledger is double-entry: every ``ledger_entries``
row has ``ledger_lines`` that sum to zero, and ``ledger_accounts.balance`` is a cache of the
sum of an account's lines, updated in the same transaction (checked by ``check_books``).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import Insert

from keel.storage.migrations import Migration

meta = MetaData()

wallets = Table(
    "wallets", meta,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("agent", String(128), nullable=False),
    Column("address", String(42), nullable=False),
    Column("key_ciphertext", Text),  # keel-generated key, AES-GCM sealed
    Column("key_ref", String(200)),  # externally configured signer, e.g. "env:AGENT_KEY"
    Column("created_at", Float, nullable=False),
    Index("wallets_agent", "tenant", "agent", unique=True),
)

accounts = Table(
    "ledger_accounts", meta,
    Column("id", String(300), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("kind", String(16), nullable=False),  # funding | available | held | payee
    Column("wallet_id", String(32)),
    Column("balance", BigInteger, nullable=False, default=0),
)

entries = Table(
    "ledger_entries", meta,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("kind", String(16), nullable=False),  # fund | reserve | settle | release | refund
    Column("payment_id", String(32)),
    Column("memo", String(500)),
    Column("at", Float, nullable=False),
    Index("ledger_entries_at", "at"),
)

lines = Table(
    "ledger_lines", meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("entry_id", String(32), nullable=False),
    Column("account_id", String(300), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Index("ledger_lines_account", "account_id"),
    Index("ledger_lines_entry", "entry_id"),
)

counters = Table(
    "budget_counters", meta,
    Column("key", String(400), primary_key=True),
    Column("limit_micros", BigInteger),
    Column("max_calls", Integer),
    Column("spent", BigInteger, nullable=False, default=0),
    Column("reserved", BigInteger, nullable=False, default=0),
    Column("calls", Integer, nullable=False, default=0),
    Column("expires_at", Float, nullable=False),
)

payments = Table(
    "payments", meta,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("agent", String(128), nullable=False),
    Column("wallet_id", String(32), nullable=False),
    Column("session_id", String(200), nullable=False),
    Column("url", String(2000), nullable=False),
    Column("payee", String(42), nullable=False),
    Column("network", String(64), nullable=False),
    Column("asset", String(64), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),  # held | settled | released | refunded
    Column("counter_keys", Text, nullable=False),  # JSON list of budget_counters keys
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("closed_at", Float),
    Column("tx_hash", String(100)),
    Column("reason", String(500)),
    Index("payments_status_expiry", "status", "expires_at"),
    Index("payments_agent", "tenant", "agent", "created_at"),
)

events = Table(
    "payment_events", meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("payment_id", String(32)),
    Column("tenant", String(128), nullable=False),
    Column("agent", String(128)),
    Column("session_id", String(200)),
    Column("kind", String(24), nullable=False),
    Column("detail", Text),
    Column("at", Float, nullable=False),
    Index("payment_events_payment", "payment_id"),
    Index("payment_events_at", "at"),
)

sessions = Table(
    "wallet_sessions", meta,
    Column("id", String(100), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("agent", String(128), nullable=False),
    Column("budget", BigInteger, nullable=False),  # micro-USD
    Column("max_calls", Integer, nullable=False),
    Column("opened_by", String(200), nullable=False),  # "key:<id>" or "cli:<user>"
    Column("by_agent", Integer, nullable=False, default=0),  # 1: the agent's own key
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("closed_at", Float),
    Index("wallet_sessions_agent", "tenant", "agent", "created_at"),
)

ALL = [wallets, accounts, entries, lines, counters, payments, events]

MIGRATIONS = [
    Migration("wallets/0001_ledger", lambda c: meta.create_all(c, tables=ALL)),
    Migration("wallets/0002_sessions", lambda c: meta.create_all(c, tables=[sessions])),
]


def insert_ignore(conn: Connection, table: Table, **values: object) -> None:
    """INSERT that does nothing when the primary key exists (SQLite and PostgreSQL)."""
    stmt: Insert
    if conn.dialect.name == "postgresql":
        stmt = postgresql.insert(table).values(**values).on_conflict_do_nothing()
    else:
        stmt = sqlite.insert(table).values(**values).on_conflict_do_nothing()
    conn.execute(stmt)
