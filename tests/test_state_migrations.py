"""Schema migrations: numbered steps (``PRAGMA user_version``), applied once each, in order;
a database from before the numbering is brought up to date, a newer one refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sandbox.dp import Cost
from sandbox.ledger import SqliteLedger
from sandbox.policy import BudgetPolicy
from sandbox.state import _SCHEMA, MIGRATIONS, State, StateError

KEY = Ed25519PrivateKey.generate()


def _version(path: Path) -> int:
    con = sqlite3.connect(path)
    try:
        return int(con.execute("PRAGMA user_version").fetchone()[0])
    finally:
        con.close()


def _columns(path: Path, table: str) -> set[str]:
    con = sqlite3.connect(path)
    try:
        return {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
    finally:
        con.close()


def test_a_new_database_is_at_the_latest_version(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    State(path, KEY).close()
    assert _version(path) == len(MIGRATIONS)
    assert {"pure_epsilon", "pure_rho"} <= _columns(path, "charges")
    State(path, KEY).close()  # opening again changes nothing
    assert _version(path) == len(MIGRATIONS)


def test_a_database_from_before_the_numbering_is_brought_up_to_date(tmp_path: Path) -> None:
    """The first schema, without the columns added since and at user_version 0, and with
    one of the later columns already added by hand (as the unnumbered code did)."""
    path = tmp_path / "state.sqlite"
    con = sqlite3.connect(path)
    con.executescript(_SCHEMA)
    con.execute("ALTER TABLE requests ADD COLUMN request_digest TEXT")
    con.close()
    assert _version(path) == 0 and "pure_rho" not in _columns(path, "charges")
    state = State(path, KEY)
    ledger = SqliteLedger.open(state, "ws", "p", BudgetPolicy(1.0, 1e-6, "never"))
    ledger.commit(ledger.reserve("alice", Cost(0.25)), release_id="r")
    assert ledger.balance("alice").epsilon_spent == pytest.approx(0.25)
    assert state.verify().ok
    state.close()
    assert _version(path) == len(MIGRATIONS)
    assert {"state", "expires"} <= _columns(path, "workspaces")


def test_a_database_of_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    State(path, KEY).close()
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    con.close()
    with pytest.raises(StateError, match="newer than this version of the sandbox"):
        State(path, KEY)
