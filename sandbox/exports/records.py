"""The export airlock's tables in the state database, and the steps every transition uses.

``ExportRecords`` owns ``export_requests``, ``export_items``, ``export_events`` and
``export_hits`` (created by the state's migrations, ``sandbox.statedb.schema``): it reads
requests back, and writes events (each with its audit record, in the caller's
transaction), item rows and dropped content. The transitions (``ExportStore`` in
``store``) are built on it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from .. import audit
from ..statedb import Connection
from .errors import ExportNotFoundError, ExportStateError, SelfApprovalError
from .items import ExportItem, FileItem, FrameItem
from .model import DROPPED, Event, ExportRequest, StoredItem
from .results import CheckReport, Fingerprint

_COLUMNS = ("id", "workspace", "requester", "request_id", "title", "purpose", "state",
            "revision", "policy_id", "policy_version", "policy_hash", "approvals_required",
            "min_group_count", "report", "fingerprint", "created", "updated", "released_seq",
            "bundle_sha256")


class ExportRecords:
    """Rows of the airlock's tables, in the state database of a ``State``."""

    def __init__(self, state: Any) -> None:
        self.state = state
        if state.signer is not None:  # a read-only state (auditor's copy) is only read
            with state.transaction() as con:
                self._drop_stale(con)

    def _drop_stale(self, con: Connection) -> None:
        """Content of withdrawn and rejected requests that earlier versions kept."""
        marks = ", ".join("?" * len(DROPPED))
        for (export_id,) in con.execute(
                "SELECT id FROM export_requests WHERE state IN (" + marks + ") AND (bundle IS "
                "NOT NULL OR id IN (SELECT export_id FROM export_items WHERE data IS NOT NULL))",
                DROPPED).fetchall():
            self._drop_content(con, export_id)

    # -- reading ---------------------------------------------------------------------------
    def _row(self, con: Connection, export_id: str) -> dict[str, Any]:
        row = con.execute(f"SELECT {', '.join(_COLUMNS)} FROM export_requests WHERE id = ?",
                          (export_id,)).fetchone()
        if row is None:
            raise ExportNotFoundError(f"there is no export request {export_id!r}",
                                      "list the export requests to find its id")
        return dict(zip(_COLUMNS, row, strict=True))

    def _load(self, con: Connection, export_id: str) -> ExportRequest:
        r = self._row(con, export_id)
        items = tuple(StoredItem(p, n, k, m, s, h, kept == 1, json.loads(meta))
                      for p, n, k, m, s, h, kept, meta in con.execute(
                          "SELECT position, name, kind, media_type, size, sha256, data IS NOT "
                          "NULL, meta FROM export_items WHERE export_id = ? AND revision = ? "
                          "ORDER BY position", (export_id, r["revision"])))
        events = tuple(Event(*e) for e in con.execute(
            "SELECT seq, event, actor, revision, comment, time FROM export_events WHERE "
            "export_id = ? ORDER BY seq", (export_id,)))
        report = CheckReport.from_dict(json.loads(r["report"])) if r["report"] else None
        return ExportRequest(
            r["id"], r["workspace"], r["requester"], r["request_id"], r["title"], r["purpose"],
            r["state"], r["revision"], r["policy_id"], r["policy_version"], r["policy_hash"],
            r["approvals_required"], r["min_group_count"], report, r["created"], r["updated"],
            r["released_seq"], r["bundle_sha256"], items, events)

    def get(self, export_id: str) -> ExportRequest:
        return self._load(self.state.con, export_id)

    def list(self, *, workspace: str | None = None, requester: str | None = None,
             states: Sequence[str] | None = None) -> list[ExportRequest]:
        where, args = [], []
        for col, value in (("workspace", workspace), ("requester", requester)):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        if states:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            args += list(states)
        sql = "SELECT id FROM export_requests" + (" WHERE " + " AND ".join(where)
                                                  if where else "") + " ORDER BY created, id"
        return [self.get(i) for (i,) in self.state.con.execute(sql, args).fetchall()]

    def item_data(self, export_id: str, position: int) -> bytes:
        """One item's bytes (current revision) for a reviewer to look at."""
        r = self._row(self.state.con, export_id)
        row = self.state.con.execute(
            "SELECT data FROM export_items WHERE export_id = ? AND revision = ? AND "
            "position = ?", (export_id, r["revision"], position)).fetchone()
        if row is None or row[0] is None:
            raise ExportNotFoundError(f"export {export_id} has no kept item #{position}",
                                      "the content of blocked, withdrawn and rejected "
                                      "exports is not kept")
        return bytes(row[0])

    def _stored_items(self, export_id: str, revision: int) -> list[ExportItem]:
        """Items as stored (frames as their CSV files)."""
        out: list[ExportItem] = []
        for name, media, data, meta in self.state.con.execute(
                "SELECT name, media_type, data, meta FROM export_items WHERE "
                "export_id = ? AND revision = ? ORDER BY position", (export_id, revision)):
            m = json.loads(meta)
            out.append(FileItem(name, bytes(data or b""), media, tuple(m["release_ids"]),
                                tuple(m["postprocessing"])))
        return out


    def approved_fingerprints(self, workspace: str,
                              exclude: str | None = None) -> tuple[Fingerprint, ...]:
        """What earlier approved (or released) exports of the workspace let out."""
        rows = self.state.con.execute(
            "SELECT fingerprint FROM export_requests WHERE workspace = ? AND state IN "
            "('approved', 'released', 'revoked') AND fingerprint IS NOT NULL AND id != ? "
            "ORDER BY created", (workspace, exclude or "")).fetchall()
        return tuple(Fingerprint.from_dict(json.loads(f)) for (f,) in rows)

    # -- writing helpers --------------------------------------------------------------------
    def _event(self, con: Connection, req: dict[str, Any], event: str, actor: str,
               **fields: Any) -> int:
        """Append ``export.<event>`` and keep it with the request (same transaction)."""
        seq = self.state.append(con, f"export.{event}", workspace=req["workspace"],
                                member=req["requester"], actor=actor, export_id=req["id"],
                                revision=req["revision"], **fields)
        (when,) = con.execute("SELECT time FROM audit_records WHERE seq = ?", (seq,)).fetchone()
        con.execute("INSERT INTO export_events VALUES (?,?,?,?,?,?,?)",
                    (req["id"], seq, event, actor, req["revision"], fields.get("comment") or "",
                     when))
        return seq

    def _set(self, con: Connection, export_id: str, **cols: Any) -> None:
        cols["updated"] = audit.now_iso()
        con.execute(f"UPDATE export_requests SET {', '.join(f'{k} = ?' for k in cols)} "
                    "WHERE id = ?", (*cols.values(), export_id))

    @staticmethod
    def _not_requester(r: dict[str, Any], reviewer: str, doing: str, hint: str) -> None:
        if reviewer == r["requester"]:
            raise SelfApprovalError(
                f"{reviewer} requested export {r['id']} and cannot {doing}: a reviewer can "
                "never decide on their own request (separation of duties)", hint)

    @staticmethod
    def _expect(req: dict[str, Any], allowed: Sequence[str], doing: str) -> None:
        if req["state"] not in allowed:
            raise ExportStateError(
                f"export {req['id']} is {req['state']}: it can be {doing} only when "
                f"{' or '.join(allowed)}",
                "reload the request to see its current state")

    def _store_items(self, con: Connection, export_id: str, revision: int,
                     items: Sequence[ExportItem]) -> list[dict[str, Any]]:
        summary = []
        for pos, it in enumerate(items):
            data = it.data
            meta: dict[str, Any] = {"release_ids": list(it.release_ids),
                                    "postprocessing": list(it.postprocessing)}
            if isinstance(it, FrameItem):
                meta.update(columns=list(it.columns), rows=len(it.rows))
            sha = hashlib.sha256(data).hexdigest()
            con.execute("INSERT INTO export_items VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (export_id, revision, pos, it.filename, it.kind, it.media_type,
                         len(data), sha, data, json.dumps(meta, ensure_ascii=False)))
            summary.append({"name": it.filename, "kind": it.kind, "media_type": it.media_type,
                            "size": len(data), "sha256": sha})
        return summary

    @staticmethod
    def _drop_content(con: Connection, export_id: str,
                      revision: int | None = None) -> None:
        """Keep names, sizes and hashes; drop the bytes and the column names (a header
        can be an identifier too) of one revision, or (``revision`` None: a withdrawn or
        rejected request) of every revision, and the bundle (its hash stays)."""
        sql, args = ("SELECT revision, position, meta FROM export_items WHERE "
                     "export_id = ?"), (export_id,)
        if revision is not None:
            sql, args = sql + " AND revision = ?", (export_id, revision)
        rows = con.execute(sql, args).fetchall()
        for rev, pos, meta in rows:
            m = json.loads(meta)
            if isinstance(m.get("columns"), list):
                m["columns"] = len(m["columns"])
            con.execute("UPDATE export_items SET data = NULL, meta = ? WHERE export_id = ? AND "
                        "revision = ? AND position = ?",
                        (json.dumps(m, ensure_ascii=False), export_id, rev, pos))
        if revision is None:
            con.execute("UPDATE export_requests SET bundle = NULL WHERE id = ?", (export_id,))
