"""Durable state in one SQLite database: the audit log and the privacy ledger.

Both live in one file so that a budget charge and its audit record are written
in one transaction, made durable (WAL, synchronous=FULL) before the answer is
returned. Writers take the database lock up front (BEGIN IMMEDIATE), so
check-and-charge is atomic across threads and processes.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from . import audit
from .errors import ConfigError, SandboxError
from .merkle import Frontier, inclusion_proof

CHECKPOINT_EVERY = 256
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_records (
    seq INTEGER PRIMARY KEY, time TEXT NOT NULL, kind TEXT NOT NULL, workspace TEXT,
    member TEXT, body TEXT NOT NULL, leaf TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_by_member ON audit_records (workspace, member, time);
CREATE INDEX IF NOT EXISTS audit_by_time ON audit_records (time);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    tree_size INTEGER PRIMARY KEY, root_hash TEXT NOT NULL, time TEXT NOT NULL,
    public_key TEXT NOT NULL, signature TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS budgets (
    workspace TEXT NOT NULL, member TEXT NOT NULL, epsilon_total REAL NOT NULL,
    delta_total REAL NOT NULL, refresh TEXT NOT NULL, PRIMARY KEY (workspace, member));
CREATE TABLE IF NOT EXISTS workspaces (
    name TEXT PRIMARY KEY, policy_id TEXT NOT NULL, epsilon REAL NOT NULL, delta REAL NOT NULL,
    refresh TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scenarios (
    id TEXT NOT NULL, version INTEGER NOT NULL, title TEXT NOT NULL,
    content_hash TEXT NOT NULL, text TEXT NOT NULL, datasets TEXT NOT NULL,
    reviewer TEXT NOT NULL, reference TEXT NOT NULL, reviewed TEXT NOT NULL,
    source TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (id, version));
CREATE TABLE IF NOT EXISTS members (
    workspace TEXT NOT NULL, member TEXT NOT NULL, added TEXT NOT NULL,
    PRIMARY KEY (workspace, member));
CREATE INDEX IF NOT EXISTS members_by_member ON members (member);
CREATE TABLE IF NOT EXISTS charges (
    id TEXT PRIMARY KEY, workspace TEXT NOT NULL, member TEXT NOT NULL, period TEXT NOT NULL,
    epsilon REAL NOT NULL, delta REAL NOT NULL, rho REAL NOT NULL, zcdp_epsilon REAL,
    zcdp_delta REAL, state TEXT NOT NULL, created REAL NOT NULL, opened_seq INTEGER NOT NULL,
    closed_seq INTEGER);
CREATE INDEX IF NOT EXISTS charges_by_member ON charges (workspace, member, period);
CREATE TABLE IF NOT EXISTS requests (
    workspace TEXT NOT NULL, member TEXT NOT NULL, request_id TEXT NOT NULL,
    charge_id TEXT NOT NULL, response TEXT, PRIMARY KEY (workspace, member, request_id));
CREATE INDEX IF NOT EXISTS requests_by_charge ON requests (charge_id);
CREATE TABLE IF NOT EXISTS releases (
    workspace TEXT NOT NULL, member TEXT NOT NULL, replay_key TEXT NOT NULL,
    charge_id TEXT NOT NULL, response TEXT NOT NULL,
    PRIMARY KEY (workspace, member, replay_key));
"""


# Columns added to ``workspaces`` when operators began provisioning them (sandbox.workspaces);
# a workspace made by an older ``sandbox query --workspace`` has state 'ad-hoc'.
_WORKSPACE_COLUMNS = (
    ("scenario_version", "INTEGER"), ("state", "TEXT NOT NULL DEFAULT 'ad-hoc'"),
    ("expires", "TEXT"), ("created", "TEXT"), ("hub_status", "TEXT"), ("hub_error", "TEXT"),
)


# Added to ``requests`` to tell a retry from a reused id (sandbox.ledger.request_digest);
# requests stored before have none and replay as they did.
_REQUEST_COLUMNS = (("request_digest", "TEXT"),)


# Added to ``charges`` when pure-DP parts began to be accounted in zCDP (dp.compose); NULL
# in older charges, whose pure parts sandbox.dp.Cost derives.
_CHARGE_COLUMNS = (("pure_epsilon", "REAL"), ("pure_rho", "REAL"))


def _add_columns(table: str, columns: tuple[tuple[str, str], ...]
                 ) -> Callable[[sqlite3.Connection], None]:
    def step(con: sqlite3.Connection) -> None:
        # a database from before versions were numbered may have some of them already
        have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
        for name, decl in columns:
            if name not in have:
                con.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
    return step


# The schema's history, oldest first: step i brings a database to version i + 1
# (``PRAGMA user_version``). Append only; never edit a step that has shipped.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    lambda con: [con.execute(stmt) for stmt in _SCHEMA.split(";") if stmt.strip()],
    _add_columns("workspaces", _WORKSPACE_COLUMNS),
    _add_columns("requests", _REQUEST_COLUMNS),
    _add_columns("charges", _CHARGE_COLUMNS),
)


def _migrate(con: sqlite3.Connection, path: str | Path) -> None:
    """Bring the database to the latest schema version, each step in its transaction."""
    version = con.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StateError(f"the state database {path} is at schema version {version}, newer "
                         f"than this version of the sandbox knows ({len(MIGRATIONS)})",
                         "run the sandbox version that wrote it, or a newer one")
    for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
        con.execute("BEGIN IMMEDIATE")
        try:
            step(con)
            con.execute(f"PRAGMA user_version = {number}")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


class StateError(SandboxError):
    code = "state.error"


@dataclass
class Head:
    seq: int
    leaf: str
    frontier: Frontier


class State:
    """One connection to the state database (use one per thread or process)."""

    def __init__(self, path: Path, signer: Ed25519PrivateKey | Ed25519PublicKey,
                 checkpoint_every: int = CHECKPOINT_EVERY) -> None:
        """With a public key instead of the signing key, the state is opened read-only
        (for auditors verifying a copy of the database away from the key store)."""
        self.path, self.checkpoint_every = path, checkpoint_every
        read_only = isinstance(signer, Ed25519PublicKey)
        self.signer = None if read_only else signer
        self.public_key = signer if read_only else signer.public_key()  # type: ignore[union-attr]
        con = None
        try:
            if read_only:
                if not Path(path).is_file():
                    raise ConfigError(f"no state database at {path}", "check the path")
                con = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro&immutable=1",
                                      uri=True, isolation_level=None, check_same_thread=False)
            else:
                con = sqlite3.connect(path, isolation_level=None, timeout=60,
                                      check_same_thread=False)
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=FULL")
                con.execute("PRAGMA foreign_keys=ON")
                _migrate(con, path)
            con.execute("SELECT count(*) FROM audit_records").fetchone()
        except StateError:
            if con is not None:
                con.close()
            raise
        except sqlite3.Error as exc:
            if con is not None:
                con.close()  # also removes the -wal/-shm files it created
            # OperationalError is a DatabaseError too: tell damage from permissions by code
            if getattr(exc, "sqlite_errorname", "") in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
                raise StateError(
                    f"the state database {path} is damaged or not a database ({exc})",
                    "restore it from a backup; run `sandbox audit verify` on the restored copy",
                ) from None
            raise ConfigError(f"cannot open the state database {path}: {exc}",
                              "check that its directory exists and is writable") from None
        self.con = con

    def close(self) -> None:
        self.con.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self.con.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StateError(f"the state database is busy or unwritable ({exc})",
                             "try again; if it persists check disk space and permissions") \
                from None
        try:
            yield self.con
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        try:
            self.con.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self.con.execute("ROLLBACK")
            raise StateError(f"the state could not be saved ({exc}); nothing was recorded",
                             "check free disk space and permissions, then try again") from None

    # -- the log -------------------------------------------------------------------------
    def _head(self, con: sqlite3.Connection) -> Head:
        rows = dict(con.execute("SELECT key, value FROM meta WHERE key IN "
                                "('head_seq', 'head_leaf', 'frontier')").fetchall())
        seq = int(rows.get("head_seq", 0))
        return Head(seq, rows.get("head_leaf", ""),
                    Frontier.from_list(seq, json.loads(rows.get("frontier", "[]"))))

    def append(self, con: sqlite3.Connection, kind: str, *, workspace: str | None = None,
               member: str | None = None, actor: str | None = None, **fields: Any) -> int:
        """Append one record inside the caller's transaction; returns its sequence number."""
        head = self._head(con)
        seq = head.seq + 1
        body = audit.make_body(seq, head.leaf, kind, workspace=workspace, member=member,
                               actor=actor, **fields)
        text = audit.canonical(body).decode()
        leaf = audit.record_leaf(body)
        con.execute("INSERT INTO audit_records VALUES (?,?,?,?,?,?,?)",
                    (seq, body["time"], kind, workspace, member, text, leaf.hex()))
        head.frontier.append(leaf)
        con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
            ("head_seq", str(seq)), ("head_leaf", leaf.hex()),
            ("frontier", json.dumps(head.frontier.to_list()))])
        if seq % self.checkpoint_every == 0:
            self._store_checkpoint(con, seq, head.frontier.root())
        return seq

    def record(self, kind: str, **kwargs: Any) -> int:
        """Append one record in a transaction of its own."""
        with self.transaction() as con:
            return self.append(con, kind, **kwargs)

    def _store_checkpoint(self, con: sqlite3.Connection, size: int,
                          root: bytes) -> audit.Checkpoint:
        if self.signer is None:
            raise StateError("this state database was opened read-only, with a public key",
                             "sign checkpoints on the machine that holds the key store")
        cp = audit.sign_checkpoint(self.signer, size, root)
        con.execute("INSERT OR REPLACE INTO audit_checkpoints VALUES (?,?,?,?,?)",
                    (cp.tree_size, cp.root_hash, cp.time, cp.public_key, cp.signature))
        return cp

    def checkpoint(self) -> audit.Checkpoint:
        """Sign the current tree head (also stored, so later verifications check it)."""
        with self.transaction() as con:
            head = self._head(con)
            return self._store_checkpoint(con, head.seq, head.frontier.root())

    def size(self) -> int:
        return self._head(self.con).seq

    def checkpoints(self) -> list[audit.Checkpoint]:
        return [audit.Checkpoint(*r) for r in self.con.execute(
            "SELECT tree_size, root_hash, time, public_key, signature FROM audit_checkpoints "
            "ORDER BY tree_size")]

    def stored_records(self, batch: int = 10_000) -> Iterator[audit.StoredRecord]:
        # Read bytes: a tampered body need not be valid UTF-8 (it must fail, not crash).
        cur = self.con.execute("SELECT seq, CAST(body AS BLOB), CAST(leaf AS BLOB) "
                               "FROM audit_records ORDER BY seq")
        while rows := cur.fetchmany(batch):
            for seq, body, leaf in rows:
                yield audit.StoredRecord(seq, bytes(body).decode(errors="replace"),
                                         bytes(leaf).decode(errors="replace"))

    def verify(self, external: audit.Checkpoint | None = None) -> audit.VerifyReport:
        """Check the records, checkpoints and the stored head, all from one snapshot."""
        snapshot = not self.con.in_transaction
        if snapshot:
            self.con.execute("BEGIN")  # a read transaction: appends by others do not interfere
        try:
            try:
                head: Head | None = self._head(self.con)
            except (ValueError, TypeError, AttributeError):
                head = None
            report = audit.verify(self.stored_records(), self.checkpoints(), self.public_key,
                                  external)
            last = self.con.execute("SELECT CAST(leaf AS BLOB) FROM audit_records ORDER BY "
                                    "seq DESC LIMIT 1").fetchone()
        finally:
            if snapshot:
                self.con.execute("COMMIT")
        # The head is written with every record: a removed, added or rewritten last record
        # (which no later record and maybe no checkpoint covers yet) shows up here.
        if head is None:
            report.bad(None, "the log's stored head is unreadable (altered)")
        elif head.seq > report.records:
            report.bad(report.records + 1, f"the log's head says {head.seq} records but only "
                       f"{report.records} remain: records after #{report.records} were removed")
        elif head.seq < report.records:
            report.bad(head.seq + 1, f"the log has {report.records} records but its head says "
                       f"{head.seq}: record #{head.seq + 1} on were added behind its back")
        elif head.frontier.root().hex() != report.root_hash:
            if last is not None and bytes(last[0]).decode(errors="replace") == head.leaf:
                # the last leaf is the head's, and the chain pins every record before it
                report.bad(None, "the log's stored head does not match its records (altered)")
            else:
                report.bad(head.seq, f"the records do not match the log's head at "
                           f"#{head.seq}: a record was altered (the last one, if no other "
                           "problem is named)")
        return report

    def records(self, *, workspace: str | None = None, member: str | None = None,
                kind: str | None = None, since: str | None = None,
                until: str | None = None) -> Iterator[dict[str, Any]]:
        """Records matching the filters (``kind`` may end in '.' for a prefix)."""
        where, args = [], []
        for col, value in (("workspace", workspace), ("member", member)):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        if kind:
            if kind.endswith("."):
                where.append("kind LIKE ?")
                args.append(kind + "%")
            else:
                where.append("kind = ?")
                args.append(kind)
        if since:
            where.append("time >= ?")
            args.append(since)
        if until:
            where.append("time < ?")
            args.append(until)
        sql = "SELECT body FROM audit_records"
        if where:
            sql += " WHERE " + " AND ".join(where)
        for (body,) in self.con.execute(sql + " ORDER BY seq", args):
            yield json.loads(body)

    def proof(self, seq: int) -> dict[str, Any]:
        """Inclusion proof of record ``seq`` against a fresh signed checkpoint."""
        size = self.size()
        row = self.con.execute("SELECT body FROM audit_records WHERE seq = ?",
                               (seq,)).fetchone()
        if row is None or not 1 <= seq <= size:
            raise StateError(f"there is no audit record #{seq}",
                             f"record numbers run from 1 to {size}")
        cp = self.checkpoint()
        leaves = [bytes.fromhex(leaf) for (leaf,) in self.con.execute(
            "SELECT leaf FROM audit_records WHERE seq <= ? ORDER BY seq", (cp.tree_size,))]
        return audit.proof_document(seq, row[0], cp.tree_size,
                                    inclusion_proof(leaves, seq - 1), cp)

    # -- the ledger ------------------------------------------------------------------------
    def recover(self, stale_after_s: float = 3600.0, now: float | None = None) -> int:
        """Close reservations whose process died: charged (never refunded) and logged."""
        cutoff = (now if now is not None else time.time()) - stale_after_s
        closed = 0
        with self.transaction() as con:
            rows = con.execute("SELECT id, workspace, member, epsilon, delta FROM charges "
                               "WHERE state = 'reserved' AND created <= ?",
                               (cutoff,)).fetchall()
            for cid, ws, member, eps, delta in rows:
                seq = self.append(con, "query.interrupted", workspace=ws, member=member,
                                  charge_id=cid, epsilon=eps, delta=delta)
                con.execute("UPDATE charges SET state = 'interrupted', closed_seq = ? "
                            "WHERE id = ?", (seq, cid))
                closed += 1
        return closed
