"""The service's database: SQLite by default, PostgreSQL when the URL says so."""

from __future__ import annotations

import sqlite3
from typing import Any

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS products (sku TEXT PRIMARY KEY, name TEXT NOT NULL, "
    "price_cents INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS discounts (code TEXT PRIMARY KEY, percent INTEGER)",
    "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, total_cents INTEGER NOT NULL, "
    "discount_code TEXT, payment_mode TEXT NOT NULL)",
]
PRODUCTS = [("sku-1", "Mug", 1200), ("sku-2", "Tee", 2500), ("sku-3", "Cap", 1800)]
DISCOUNTS = [("SAVE10", 10), ("SAVE20", 20)]


class Database:
    """A thin DB-API wrapper that speaks ``?`` placeholders on both backends."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("postgresql://"):
            import psycopg

            self.conn: Any = psycopg.connect(url, autocommit=True)
            self.pg = True
        else:
            path = url.removeprefix("sqlite:///")
            self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA busy_timeout=5000")
            self.pg = False

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.pg:
            sql = sql.replace("?", "%s")
        cur = self.conn.execute(sql, params)
        return list(cur.fetchall()) if cur.description else []

    def columns(self, table: str) -> list[str]:
        if self.pg:
            rows = self.execute("SELECT column_name FROM information_schema.columns "
                                "WHERE table_name = ?", (table,))
            return [r[0] for r in rows]
        return [r[1] for r in self.execute(f"PRAGMA table_info({table})")]

    def close(self) -> None:
        self.conn.close()


def migrate(db: Database) -> None:
    for stmt in SCHEMA:
        db.execute(stmt.replace("INTEGER PRIMARY KEY", "SERIAL PRIMARY KEY") if db.pg
                   and "orders" in stmt else stmt)


def seed(db: Database) -> None:
    for sku, name, price in PRODUCTS:
        if not db.execute("SELECT 1 FROM products WHERE sku = ?", (sku,)):
            db.execute("INSERT INTO products (sku, name, price_cents) VALUES (?, ?, ?)",
                       (sku, name, price))
    for code, percent in DISCOUNTS:
        if not db.execute("SELECT 1 FROM discounts WHERE code = ?", (code,)):
            db.execute("INSERT INTO discounts (code, percent) VALUES (?, ?)", (code, percent))
