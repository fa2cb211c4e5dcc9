"""Durable state in one database: the audit log and the privacy ledger.

Both live in one database so that a budget charge and its audit record are written in
one transaction, made durable before the answer is returned. The database is a SQLite
file (the default) or a PostgreSQL database shared by several service replicas
(``sandbox.statedb``: the back ends, the schema and its migrations). Writers take the
database's one writer lock up front (SQLite's BEGIN IMMEDIATE, PostgreSQL's advisory
lock), so check-and-charge is atomic across threads, processes and replicas, and the
log's records form a single total order.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from . import audit, statedb
from .merkle import Frontier, inclusion_proof
from .statedb import Connection, StateError
from .statedb.schema import _SCHEMA, MIGRATIONS

__all__ = ["CHECKPOINT_EVERY", "MIGRATIONS", "_SCHEMA", "Head", "State", "StateError"]

CHECKPOINT_EVERY = 256


def _text(value: str | bytes) -> str:
    """A stored text as read (PostgreSQL: text; SQLite: bytes, maybe not UTF-8)."""
    return value if isinstance(value, str) else bytes(value).decode(errors="replace")


@dataclass
class Head:
    seq: int
    leaf: str
    frontier: Frontier


class State:
    """One connection to the state database (use one per thread or process)."""

    def __init__(self, path: str | Path, signer: Ed25519PrivateKey | Ed25519PublicKey,
                 checkpoint_every: int = CHECKPOINT_EVERY) -> None:
        """``path`` is a SQLite file or a ``postgresql://`` URL (``statedb``). With a public
        key instead of the signing key, the state is opened read-only (for auditors
        verifying a copy of the database away from the key store)."""
        self.path, self.checkpoint_every = path, checkpoint_every
        read_only = isinstance(signer, Ed25519PublicKey)
        self.signer: Ed25519PrivateKey | None = None
        if isinstance(signer, Ed25519PrivateKey):
            self.signer, self.public_key = signer, signer.public_key()
        else:
            self.public_key = signer
        self.con: Connection = statedb.connect(
            path, read_only=read_only,
            prepare=lambda con: con.execute("SELECT count(*) FROM audit_records").fetchone())

    @property
    def backend(self) -> str:
        """"sqlite" or "postgresql"."""
        return self.con.backend

    def close(self) -> None:
        self.con.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A writing transaction: committed when the block ends, rolled back on an error."""
        self.con.begin_write()
        try:
            yield self.con
        except BaseException:
            self.con.rollback()
            raise
        self.con.commit()

    # -- the log -------------------------------------------------------------------------
    def _head(self, con: Connection) -> Head:
        rows = dict(con.execute("SELECT key, value FROM meta WHERE key IN "
                                "('head_seq', 'head_leaf', 'frontier')").fetchall())
        seq = int(rows.get("head_seq", 0))
        return Head(seq, rows.get("head_leaf", ""),
                    Frontier.from_list(seq, json.loads(rows.get("frontier", "[]"))))

    def append(self, con: Connection, kind: str, *, workspace: str | None = None,
               member: str | None = None, actor: str | None = None, **fields: Any) -> int:
        """Append one record inside the caller's transaction; returns its sequence number."""
        head = self._head(con)
        seq = head.seq + 1
        body = audit.make_body(seq, head.leaf, kind, workspace=workspace, member=member,
                               actor=actor, **fields)
        text = audit.canonical(body).decode()
        leaf = audit.record_leaf(body)
        head.frontier.append(leaf)
        con.execute_batch([
            ("INSERT INTO audit_records VALUES (?,?,?,?,?,?,?)",
             (seq, body["time"], kind, workspace, member, text, leaf.hex())),
            ("INSERT INTO meta VALUES (?, ?), (?, ?), (?, ?) ON CONFLICT (key) DO UPDATE SET "
             "value = excluded.value", ("head_seq", str(seq), "head_leaf", leaf.hex(),
                                        "frontier", json.dumps(head.frontier.to_list())))])
        if seq % self.checkpoint_every == 0:
            self._store_checkpoint(con, seq, head.frontier.root())
        return seq

    def record(self, kind: str, **kwargs: Any) -> int:
        """Append one record in a transaction of its own."""
        with self.transaction() as con:
            return self.append(con, kind, **kwargs)

    def _store_checkpoint(self, con: Connection, size: int,
                          root: bytes) -> audit.Checkpoint:
        if self.signer is None:
            raise StateError("this state database was opened read-only, with a public key",
                             "sign checkpoints on the machine that holds the key store")
        cp = audit.sign_checkpoint(self.signer, size, root)
        con.execute("INSERT INTO audit_checkpoints VALUES (?,?,?,?,?) ON CONFLICT (tree_size) "
                    "DO UPDATE SET root_hash = excluded.root_hash, time = excluded.time, "
                    "public_key = excluded.public_key, signature = excluded.signature",
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
        raw = self.con.raw_text
        for seq, body, leaf in self.con.stream(
                f"SELECT seq, {raw('body')}, {raw('leaf')} FROM audit_records ORDER BY seq",
                (), batch):
            yield audit.StoredRecord(seq, _text(body), _text(leaf))

    def verify(self, external: audit.Checkpoint | None = None) -> audit.VerifyReport:
        """Check the records, checkpoints and the stored head, all from one snapshot."""
        snapshot = not self.con.in_transaction
        if snapshot:
            self.con.begin_read()  # appends by others do not interfere
        try:
            try:
                head: Head | None = self._head(self.con)
            except (ValueError, TypeError, AttributeError):
                head = None
            report = audit.verify(self.stored_records(), self.checkpoints(), self.public_key,
                                  external)
            last = self.con.execute(f"SELECT {self.con.raw_text('leaf')} FROM audit_records "
                                    "ORDER BY seq DESC LIMIT 1").fetchone()
        finally:
            if snapshot:
                self.con.commit()
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
            if last is not None and _text(last[0]) == head.leaf:
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
        for (body,) in self.con.stream(sql + " ORDER BY seq", args):
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
