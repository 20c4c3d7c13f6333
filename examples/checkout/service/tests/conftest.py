"""Tests use a fresh database each; ``CHECKOUT_DATABASE_URL`` (a clone) is for regression
tests that need production-shaped data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from checkout.db import Database, migrate, seed  # noqa: E402


@pytest.fixture
def db(tmp_path: Path):
    d = Database(f"sqlite:///{tmp_path / 'test.db'}")
    migrate(d)
    seed(d)
    yield d
    d.close()


@pytest.fixture
def clone_db():
    url = os.environ.get("CHECKOUT_DATABASE_URL")
    if not url:
        pytest.skip("CHECKOUT_DATABASE_URL (a clone of production) is not set")
    d = Database(url)
    migrate(d)
    yield d
    d.close()
