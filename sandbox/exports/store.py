"""Export requests and their review: a state machine whose every step is an audit record.

    submitted -> checked -> approved -> released -> revoked
                        \\-> rejected   (also automatically, when a check the requester
                                       may see blocks: limits, types)
                        \\-> returned -> submitted (a new revision)
    withdrawn: by the requester, from submitted, checked, returned or approved

Each transition and its audit record are one transaction of the state database
(``sandbox.state``), so the log and the requests never disagree. The store enforces the
rules that do not depend on who is an auditor (the service decides that): a reviewer can
never decide on their own request, a policy can ask for two independent approvals, only
the requester withdraws, nothing blocked can be approved, and only what was approved is
released. The content of a blocked export is not kept (only its names, sizes and hashes),
nor that of a withdrawn or rejected one; approved and released requests keep theirs.

An export the identifier scan blocks is NOT rejected at once: that would tell the requester
that a value is in the vault (a membership oracle). It waits for review like any other
request (state checked, the same view for its requester), with its content dropped; a
reviewer can only reject it. Each identifier hit is an ``export.flagged`` record; a member
with ``hit_limit`` requests with hits within ``hit_window_s`` has further submissions
refused (``ExportHeldError``, one generic message; an ``export.held`` record).

What a member stores without any reviewer having decided is bounded: the sizes of the items
of every revision of their requests awaiting a decision (``AWAITING``), in all workspaces,
may add up to at most ``quota_bytes``. A submission or resubmission that would go over is
refused before anything is stored (``ExportQuotaError``, a ``limits.exceeded`` record).
The sizes count whether or not the content was kept, so the quota in use never tells a
member that the identifier scan dropped a request's content.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from .. import audit
from ..policy import Policy
from . import bundle as bundlemod
from .checks import CheckContext, CheckReport, Fingerprint, run_checks
from .errors import (
    DuplicateApprovalError,
    ExportBlockedError,
    ExportHeldError,
    ExportInputError,
    ExportNotFoundError,
    ExportQuotaError,
    ExportRevokedError,
    ExportStateError,
    NotRequesterError,
    SelfApprovalError,
)
from .items import ExportItem, FileItem, FrameItem

STATES = ("submitted", "checked", "approved", "rejected", "returned", "released",
          "withdrawn", "revoked")
DECISIONS = {"approve": "approved", "reject": "rejected", "return": "returned"}
WITHDRAWABLE = ("submitted", "checked", "returned", "approved")
AWAITING = ("submitted", "checked", "returned")  # no reviewer has decided: counts to the quota
DROPPED = ("withdrawn", "rejected")  # states whose content is not kept
CHECKS_ACTOR = "sandbox:checks"
MAX_TITLE, MAX_PURPOSE, MAX_COMMENT = 200, 4000, 4000
HIT_LIMIT = 3  # requests with identifier hits ...
HIT_WINDOW_S = 30 * 86400  # ... within this many seconds: further submissions are held
REVIEWER_EVENTS = frozenset({"flagged"})  # never in the requester's view
FLAGGED = "identifier hits"  # the reviewers' marker of a flagged request (CLI, console)
HELD_MESSAGE = "your export requests are held for review; contact the auditors"
EXPORT_QUOTA_BYTES = 64 << 20  # item bytes a member may have awaiting a decision
QUOTA_LIMIT = "export_quota_bytes"  # the service limit, named in limits.exceeded records
QUOTA_HINT = "withdraw requests you no longer need, or wait for a reviewer's decision"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS export_requests (
    id TEXT PRIMARY KEY, workspace TEXT NOT NULL, requester TEXT NOT NULL, request_id TEXT,
    title TEXT NOT NULL, purpose TEXT NOT NULL, state TEXT NOT NULL, revision INTEGER NOT NULL,
    policy_id TEXT NOT NULL, policy_version INTEGER, policy_hash TEXT NOT NULL,
    approvals_required INTEGER NOT NULL, min_group_count INTEGER NOT NULL, report TEXT,
    fingerprint TEXT, created TEXT NOT NULL, updated TEXT NOT NULL, released_seq INTEGER,
    bundle BLOB, bundle_sha256 TEXT, UNIQUE (workspace, requester, request_id));
CREATE INDEX IF NOT EXISTS export_requests_by_workspace ON export_requests (workspace, state);
CREATE TABLE IF NOT EXISTS export_items (
    export_id TEXT NOT NULL REFERENCES export_requests(id), revision INTEGER NOT NULL,
    position INTEGER NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL,
    media_type TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL, data BLOB,
    meta TEXT NOT NULL, PRIMARY KEY (export_id, revision, position));
CREATE TABLE IF NOT EXISTS export_events (
    export_id TEXT NOT NULL REFERENCES export_requests(id), seq INTEGER NOT NULL,
    event TEXT NOT NULL, actor TEXT NOT NULL, revision INTEGER NOT NULL,
    comment TEXT NOT NULL, time TEXT NOT NULL, PRIMARY KEY (export_id, seq));
CREATE TABLE IF NOT EXISTS export_hits (
    member TEXT NOT NULL, time TEXT NOT NULL, export_id TEXT NOT NULL,
    revision INTEGER NOT NULL, strong INTEGER NOT NULL, weak INTEGER NOT NULL,
    seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS export_hits_by_member ON export_hits (member, time);
"""
_COLUMNS = ("id", "workspace", "requester", "request_id", "title", "purpose", "state",
            "revision", "policy_id", "policy_version", "policy_hash", "approvals_required",
            "min_group_count", "report", "fingerprint", "created", "updated", "released_seq",
            "bundle_sha256")


@dataclass(frozen=True)
class StoredItem:
    position: int
    name: str  # the file name in the bundle
    kind: str  # frame | file
    media_type: str
    size: int
    sha256: str
    kept: bool  # False when the content was not kept (blocked, withdrawn, rejected)
    meta: dict[str, Any]

    def to_dict(self, view: str = "reviewer") -> dict[str, Any]:
        """The requester's view leaves out whether the content was kept and the column
        names (dropped with the content of blocked exports): both would tell them."""
        if view == "reviewer":
            return {"position": self.position, "name": self.name, "kind": self.kind,
                    "media_type": self.media_type, "size": self.size, "sha256": self.sha256,
                    "kept": self.kept, **self.meta}
        return {"position": self.position, "name": self.name, "kind": self.kind,
                "media_type": self.media_type, "size": self.size, "sha256": self.sha256,
                **{k: v for k, v in self.meta.items() if k != "columns"}}


@dataclass(frozen=True)
class Event:
    seq: int  # the audit record's sequence number
    event: str  # submitted | checked | approved | rejected | returned | ...
    actor: str
    revision: int
    comment: str
    time: str  # the audit record's time

    def to_dict(self, view: str = "reviewer") -> dict[str, Any]:
        """Requesters do not get the record numbers: gaps between them would count the
        records written in between (such as an ``export.flagged``)."""
        d = dict(self.__dict__)
        if view != "reviewer":
            del d["seq"]
        return d


@dataclass(frozen=True)
class ExportRequest:
    id: str
    workspace: str
    requester: str
    request_id: str | None
    title: str
    purpose: str
    state: str
    revision: int
    policy_id: str
    policy_version: int | None
    policy_hash: str
    approvals_required: int
    min_group_count: int
    report: CheckReport | None
    created: str
    updated: str
    released_seq: int | None
    bundle_sha256: str | None
    items: tuple[StoredItem, ...]
    events: tuple[Event, ...]

    @property
    def approvals(self) -> list[str]:
        """Reviewers who approved the current revision."""
        return [e.actor for e in self.events
                if e.event == "approved" and e.revision == self.revision]

    @property
    def decisions(self) -> list[Event]:
        return [e for e in self.events if e.revision == self.revision and
                e.event in ("approved", "rejected", "returned")]

    @property
    def flagged(self) -> bool:
        """The identifier scan matched: 'flagged: identifier hits' (reviewers only)."""
        return self.report is not None and self.report.flagged

    def to_dict(self, view: str = "requester") -> dict[str, Any]:
        """JSON for the service: ``view="requester"`` is a function of what the requester
        sent and did (and of reviewers' decisions) only: nothing of it depends on whether
        a value is in the vault. ``"reviewer"`` shows every check detail and the flag."""
        reviewer = view == "reviewer"
        d = {
            "id": self.id, "workspace": self.workspace, "requester": self.requester,
            "title": self.title, "purpose": self.purpose, "state": self.state,
            "revision": self.revision,
            "policy": {"id": self.policy_id, "version": self.policy_version,
                       "content_hash": self.policy_hash},
            "approvals_required": self.approvals_required, "approvals": self.approvals,
            "min_group_count": self.min_group_count,
            "checks": None if self.report is None else self.report.to_dict(view),
            "items": [i.to_dict(view) for i in self.items],
            "events": [e.to_dict(view) for e in self.events
                       if reviewer or e.event not in REVIEWER_EVENTS],
            "created": self.created, "updated": self.updated,
            "bundle_sha256": self.bundle_sha256,
        }
        if reviewer:
            strong, weak = self.report.identifier_hits() if self.report else (0, 0)
            d["flagged"] = {"identifier_hits": strong + weak, "strong": strong,
                            "weak": weak} if strong or weak else None
        return d


def _text(value: Any, what: str, limit: int, required: bool) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ExportInputError(f"{what} must be text", f"give the {what} as a string")
    value = value.strip()
    if required and not value:
        raise ExportInputError(f"the {what} is missing", f"say in a few words the {what}")
    if len(value) > limit:
        raise ExportInputError(f"the {what} is longer than {limit} characters",
                               "shorten it")
    return value


class ExportStore:
    """Export requests of every workspace, in the state database of a ``State``."""

    def __init__(self, state: Any, *, hit_limit: int = HIT_LIMIT,
                 hit_window_s: float = HIT_WINDOW_S,
                 quota_bytes: int = EXPORT_QUOTA_BYTES) -> None:
        self.state = state
        self.hit_limit, self.hit_window_s = hit_limit, hit_window_s
        self.quota_bytes = quota_bytes
        if state.signer is not None:  # a read-only state (auditor's copy) is only read
            with state.transaction() as con:  # not executescript: it would commit others' work
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        con.execute(stmt)
                self._drop_stale(con)

    def _drop_stale(self, con: sqlite3.Connection) -> None:
        """Content of withdrawn and rejected requests that earlier versions kept."""
        marks = ", ".join("?" * len(DROPPED))
        for (export_id,) in con.execute(
                "SELECT id FROM export_requests WHERE state IN (" + marks + ") AND (bundle IS "
                "NOT NULL OR id IN (SELECT export_id FROM export_items WHERE data IS NOT NULL))",
                DROPPED).fetchall():
            self._drop_content(con, export_id)

    # -- reading ---------------------------------------------------------------------------
    def _row(self, con: sqlite3.Connection, export_id: str) -> dict[str, Any]:
        row = con.execute(f"SELECT {', '.join(_COLUMNS)} FROM export_requests WHERE id = ?",
                          (export_id,)).fetchone()
        if row is None:
            raise ExportNotFoundError(f"there is no export request {export_id!r}",
                                      "list the export requests to find its id")
        return dict(zip(_COLUMNS, row, strict=True))

    def _load(self, con: sqlite3.Connection, export_id: str) -> ExportRequest:
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

    # -- identifier hits and holds ----------------------------------------------------------
    def _since(self) -> str:
        start = _utcnow() - dt.timedelta(seconds=self.hit_window_s)
        return start.isoformat(timespec="microseconds")

    def recent_hits(self, member: str, con: sqlite3.Connection | None = None) -> int:
        """Requests (revisions) of ``member`` the identifier scan blocked, in the window."""
        (n,) = (con or self.state.con).execute(
            "SELECT count(*) FROM export_hits WHERE member = ? AND time >= ? AND strong > 0",
            (member, self._since())).fetchone()
        return int(n)

    def held(self, member: str) -> bool:
        """Further submissions of ``member`` are refused (too many identifier hits)."""
        return self.recent_hits(member) >= self.hit_limit

    def _refuse_if_held(self, workspace: str, requester: str, title: str) -> None:
        """One generic message: it says neither why nor which request."""
        recent = self.recent_hits(requester)
        if recent < self.hit_limit:
            return
        self.state.record("export.held", workspace=workspace, member=requester,
                          actor=requester, export_id=None, title=title, recent=recent,
                          limit=self.hit_limit, window_s=self.hit_window_s)
        raise ExportHeldError(HELD_MESSAGE, "an auditor will look at them with you")

    # -- the storage quota -----------------------------------------------------------------
    def quota_used(self, member: str, con: sqlite3.Connection | None = None) -> int:
        """Bytes counted to ``member``'s quota: the sizes of the items of every revision of
        their requests awaiting a decision, and any bundle of those, in all workspaces.
        Sizes count whether or not the content was kept (see the module's docstring)."""
        marks = ", ".join("?" * len(AWAITING))
        (n,) = (con or self.state.con).execute(
            "SELECT coalesce((SELECT sum(i.size) FROM export_items i JOIN export_requests r ON "
            f"r.id = i.export_id WHERE r.requester = ? AND r.state IN ({marks})), 0) + "
            "coalesce((SELECT sum(length(bundle)) FROM export_requests WHERE requester = ? "
            f"AND state IN ({marks})), 0)", (member, *AWAITING, member, *AWAITING)).fetchone()
        return int(n)

    def _quota_refusal(self, con: sqlite3.Connection, workspace: str, requester: str,
                       need: int, endpoint: str | None) -> ExportQuotaError | None:
        """None when ``need`` more bytes fit; else a ``limits.exceeded`` record (in ``con``'s
        transaction) and the error to raise once it is committed."""
        used = self.quota_used(requester, con)
        if used + need <= self.quota_bytes:
            return None
        self.state.append(con, "limits.exceeded", workspace=workspace, member=requester,
                          actor=requester, limit=QUOTA_LIMIT, endpoint=endpoint, count=1,
                          window_s=None)
        return ExportQuotaError(
            f"this export needs {_size(need)} but your export quota of "
            f"{_size(self.quota_bytes)} has {_size(max(self.quota_bytes - used, 0))} left: "
            f"{_size(used)} is in use by your requests awaiting a decision (all workspaces)",
            QUOTA_HINT)

    def _refuse_over_quota(self, workspace: str, requester: str, need: int,
                           endpoint: str | None) -> None:
        """Before the checks run: a member over the quota is refused at once."""
        if self.quota_used(requester) + need <= self.quota_bytes:
            return
        with self.state.transaction() as con:
            refused = self._quota_refusal(con, workspace, requester, need, endpoint)
        if refused is not None:
            raise refused

    def _flag(self, con: sqlite3.Connection, req: dict[str, Any],
              report: CheckReport) -> None:
        """An identifier hit: an ``export.flagged`` record (reviewers only), counted
        towards the member's hold."""
        strong, weak = report.identifier_hits()
        res = report.result("identifiers")
        items = sorted(set(res.details.get("strong") or {}) | set(res.details.get("weak") or {}))
        recent = self.recent_hits(req["requester"], con) + (1 if strong else 0)
        seq = self._event(con, req, "flagged", CHECKS_ACTOR, rule="identifiers",
                          strong=strong, weak=weak, items=items, recent=recent,
                          limit=self.hit_limit, held=recent >= self.hit_limit)
        (when,) = con.execute("SELECT time FROM audit_records WHERE seq = ?", (seq,)).fetchone()
        con.execute("INSERT INTO export_hits VALUES (?,?,?,?,?,?,?)",
                    (req["requester"], when, req["id"], req["revision"], strong, weak, seq))

    def approved_fingerprints(self, workspace: str,
                              exclude: str | None = None) -> tuple[Fingerprint, ...]:
        """What earlier approved (or released) exports of the workspace let out."""
        rows = self.state.con.execute(
            "SELECT fingerprint FROM export_requests WHERE workspace = ? AND state IN "
            "('approved', 'released', 'revoked') AND fingerprint IS NOT NULL AND id != ? "
            "ORDER BY created", (workspace, exclude or "")).fetchall()
        return tuple(Fingerprint.from_dict(json.loads(f)) for (f,) in rows)

    # -- writing helpers --------------------------------------------------------------------
    def _event(self, con: sqlite3.Connection, req: dict[str, Any], event: str, actor: str,
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

    def _set(self, con: sqlite3.Connection, export_id: str, **cols: Any) -> None:
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

    def _store_items(self, con: sqlite3.Connection, export_id: str, revision: int,
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

    def _checked(self, con: sqlite3.Connection, req: dict[str, Any],
                 report: CheckReport) -> None:
        """Record the check report. Blocked by a rule the requester may see (limits,
        types): rejected at once, content dropped. Blocked by a confidential rule only (an
        identifier of the vault): content dropped, but the request waits for review like
        any other, so its requester cannot tell; a reviewer can only reject it."""
        report_json = json.dumps(report.to_dict("reviewer"), ensure_ascii=False,
                                 allow_nan=False, default=str)
        self._event(con, req, "checked", CHECKS_ACTOR, rules_version=report.rules_version,
                    outcome=report.outcome, results=report.summary(),
                    report_sha256=report.digest())
        fp = replace(report.fingerprint, export_id=req["id"], title=req["title"])
        self._set(con, req["id"], state="checked", report=report_json,
                  fingerprint=json.dumps(fp.to_dict()))
        if report.flagged:
            self._flag(con, {**req, "state": "checked"}, report)
        if report.blocked:
            self._drop_content(con, req["id"], req["revision"])
        if report.blocked_openly:
            rules = ", ".join(r.rule for r in report.visible("requester")
                              if r.outcome == "block")
            comment = f"blocked by the automatic checks ({rules}); the content was not kept"
            self._event(con, {**req, "state": "checked"}, "rejected", CHECKS_ACTOR,
                        comment=comment)
            self._set(con, req["id"], state="rejected")
            self._drop_content(con, req["id"])  # earlier revisions too

    @staticmethod
    def _drop_content(con: sqlite3.Connection, export_id: str,
                      revision: int | None = None) -> None:
        """Keep names, sizes and hashes; drop the bytes and the column names (a header
        can be an identifier too) of one revision, or (``revision`` None: a withdrawn or
        rejected request) of every revision, and the bundle (its hash stays)."""
        rows = con.execute("SELECT revision, position, meta FROM export_items WHERE "
                           "export_id = ? AND (? IS NULL OR revision = ?)",
                           (export_id, revision, revision)).fetchall()
        for rev, pos, meta in rows:
            m = json.loads(meta)
            if isinstance(m.get("columns"), list):
                m["columns"] = len(m["columns"])
            con.execute("UPDATE export_items SET data = NULL, meta = ? WHERE export_id = ? AND "
                        "revision = ? AND position = ?",
                        (json.dumps(m, ensure_ascii=False), export_id, rev, pos))
        if revision is None:
            con.execute("UPDATE export_requests SET bundle = NULL WHERE id = ?", (export_id,))

    def _context(self, ctx: CheckContext, req: dict[str, Any]) -> CheckContext:
        return replace(ctx, min_group_count=req["min_group_count"],
                       prior_exports=self.approved_fingerprints(req["workspace"], req["id"]))

    # -- the transitions --------------------------------------------------------------------
    def submit(self, *, workspace: str, requester: str, title: str, purpose: str,
               items: Sequence[ExportItem], policy: Policy, policy_version: int | None = None,
               request_id: str | None = None, context: CheckContext | None = None,
               endpoint: str | None = None) -> ExportRequest:
        """A new request (state submitted). With a ``context`` the checks run now too
        (state checked, or rejected when a check blocks). A repeated ``request_id`` of the
        same requester returns the first request and stores nothing. Over the quota:
        ``ExportQuotaError``, nothing stored; ``endpoint`` goes into its audit record
        (by default the service's route)."""
        title = _text(title, "title", MAX_TITLE, True)
        purpose = _text(purpose, "purpose", MAX_PURPOSE, True)
        if not items:
            raise ExportInputError("an export needs at least one item",
                                   "pass the frames or files to export")
        if request_id is not None:
            row = self.state.con.execute(
                "SELECT id FROM export_requests WHERE workspace = ? AND requester = ? AND "
                "request_id = ?", (workspace, requester, request_id)).fetchone()
            if row is not None:
                return self.get(row[0])
        self._refuse_if_held(workspace, requester, title)
        need = sum(len(it.data) for it in items)
        if endpoint is None:
            endpoint = f"POST /workspaces/{workspace}/exports"
        self._refuse_over_quota(workspace, requester, need, endpoint)
        export_id = uuid.uuid4().hex
        req = {"id": export_id, "workspace": workspace, "requester": requester,
               "title": title, "revision": 1, "state": "submitted",
               "min_group_count": policy.export.min_group_count}
        report = None
        if context is not None:
            report = run_checks(items, self._context(context, req), export_id, title)
        now = audit.now_iso()
        with self.state.transaction() as con:
            # again, in the transaction: concurrent submissions of one member add up
            refused = self._quota_refusal(con, workspace, requester, need, endpoint)
            if refused is None:
                try:
                    con.execute(f"INSERT INTO export_requests ({', '.join(_COLUMNS)}) VALUES "
                                f"({', '.join('?' * len(_COLUMNS))})",
                                (export_id, workspace, requester, request_id, title, purpose,
                                 "submitted", 1, policy.id, policy_version,
                                 policy.content_hash, policy.export.approvals,
                                 policy.export.min_group_count, None, None, now, now, None,
                                 None))
                except sqlite3.IntegrityError:
                    raise ExportStateError(f"request {request_id} was just submitted",
                                           "fetch it again") from None
                summary = self._store_items(con, export_id, 1, items)
                self._event(con, req, "submitted", requester, title=title, purpose=purpose,
                            items=summary)
                if report is not None:
                    self._checked(con, req, report)
        if refused is not None:
            raise refused
        return self.get(export_id)

    def check(self, export_id: str, context: CheckContext,
              items: Sequence[ExportItem] | None = None) -> ExportRequest:
        """Run the checks of a submitted request (when ``submit`` had no context). The
        items are read back from the store unless given."""
        r = self._row(self.state.con, export_id)
        self._expect(r, ("submitted",), "checked")
        if items is None:
            items = self._stored_items(export_id, r["revision"])
        report = run_checks(items, self._context(context, r), export_id, r["title"])
        with self.state.transaction() as con:
            r = self._row(con, export_id)
            self._expect(r, ("submitted",), "checked")
            self._checked(con, r, report)
        return self.get(export_id)

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

    def resubmit(self, export_id: str, requester: str, items: Sequence[ExportItem], *,
                 title: str | None = None, purpose: str | None = None,
                 context: CheckContext | None = None,
                 endpoint: str | None = None) -> ExportRequest:
        """A returned request, changed by its requester: a new revision, checked again;
        approvals of earlier revisions do not count. The earlier revisions stay stored and
        counted to the quota (``ExportQuotaError`` when the new one does not fit)."""
        r = self._row(self.state.con, export_id)
        if r["requester"] != requester:
            raise NotRequesterError(f"only {r['requester']} can change export {export_id}",
                                    "submit a request of your own")
        self._expect(r, ("returned",), "resubmitted")
        if not items:
            raise ExportInputError("an export needs at least one item",
                                   "pass the frames or files to export")
        title = _text(title, "title", MAX_TITLE, True) if title is not None else r["title"]
        purpose = _text(purpose, "purpose", MAX_PURPOSE, True) if purpose is not None \
            else r["purpose"]
        self._refuse_if_held(r["workspace"], requester, title)
        need = sum(len(it.data) for it in items)
        if endpoint is None:
            endpoint = f"POST /workspaces/{r['workspace']}/exports/{export_id}/resubmit"
        self._refuse_over_quota(r["workspace"], requester, need, endpoint)
        req = {**r, "revision": r["revision"] + 1, "title": title}
        report = None if context is None else run_checks(
            items, self._context(context, req), export_id, title)
        with self.state.transaction() as con:
            cur = self._row(con, export_id)
            self._expect(cur, ("returned",), "resubmitted")
            refused = self._quota_refusal(con, r["workspace"], requester, need, endpoint)
            if refused is None:
                self._set(con, export_id, state="submitted", revision=req["revision"],
                          title=title, purpose=purpose, report=None, fingerprint=None)
                summary = self._store_items(con, export_id, req["revision"], items)
                self._event(con, req, "submitted", requester, title=title, purpose=purpose,
                            items=summary)
                if report is not None:
                    self._checked(con, req, report)
        if refused is not None:
            raise refused
        return self.get(export_id)

    def decide(self, export_id: str, reviewer: str, decision: str,
               comment: str = "") -> ExportRequest:
        """approve, reject or return (with comments) a checked request. The service must
        make sure ``reviewer`` is an auditor; the store makes sure it is not the requester,
        that one reviewer counts once, and that blocked requests are never approved (nor
        returned: a request the identifier scan blocked can only be rejected)."""
        if decision not in DECISIONS:
            raise ExportInputError(f"unknown decision {decision!r}",
                                   f"use one of {', '.join(DECISIONS)}")
        comment = _text(comment, "comment", MAX_COMMENT, decision != "approve")
        with self.state.transaction() as con:
            r = self._row(con, export_id)
            self._not_requester(r, reviewer, "decide on it", "ask another auditor to review it")
            self._expect(r, ("checked",), DECISIONS[decision])
            report = json.loads(r["report"]) if r["report"] else None
            if decision == "approve" and (report is None or report["outcome"] == "blocked"):
                raise ExportBlockedError(
                    f"export {export_id} was blocked by the automatic checks and can never "
                    "be approved", "reject it, with a comment that does not say why (the "
                    "requester must not learn that a value is in the vault)")
            if decision == "return" and report is not None and report["outcome"] == "blocked":
                raise ExportBlockedError(
                    f"export {export_id} was blocked by the automatic checks and can only be "
                    "rejected (a return would let the requester try variants)",
                    "reject it, with a comment that does not say why")
            if decision != "approve":
                self._event(con, r, DECISIONS[decision], reviewer, comment=comment)
                self._set(con, export_id, state=DECISIONS[decision])
                if decision == "reject":
                    self._drop_content(con, export_id)
                return self._load(con, export_id)
            approvers = {a for (a,) in con.execute(
                "SELECT actor FROM export_events WHERE export_id = ? AND revision = ? AND "
                "event = 'approved'", (export_id, r["revision"]))}
            if reviewer in approvers:
                raise DuplicateApprovalError(
                    f"{reviewer} already approved export {export_id}: the policy asks for "
                    f"{r['approvals_required']} approvals by different reviewers (two-person "
                    "rule)", "a second auditor must approve it")
            count = len(approvers) + 1
            self._event(con, r, "approved", reviewer, comment=comment,
                        approvals=count, approvals_required=r["approvals_required"])
            if count >= r["approvals_required"]:
                self._set(con, export_id, state="approved")
            else:
                self._set(con, export_id)
            return self._load(con, export_id)

    def review(self, export_id: str, reviewer: str, decision: str,
               comment: str = "") -> ExportRequest:
        """``decide``, then release at once when the last approval needed came in: what the
        console and `sandbox export approve|reject|return` do."""
        req = self.decide(export_id, reviewer, decision, comment)
        if req.state == "approved":
            req = self.release(export_id, reviewer)
        return req

    def withdraw(self, export_id: str, requester: str, comment: str = "") -> ExportRequest:
        comment = _text(comment, "comment", MAX_COMMENT, False)
        with self.state.transaction() as con:
            r = self._row(con, export_id)
            if requester != r["requester"]:
                raise NotRequesterError(
                    f"only the requester ({r['requester']}) can withdraw export {export_id}",
                    "a reviewer rejects it instead")
            self._expect(r, WITHDRAWABLE, "withdrawn")
            self._event(con, r, "withdrawn", requester, comment=comment)
            self._set(con, export_id, state="withdrawn")
            self._drop_content(con, export_id)  # frees the member's quota and the space
            return self._load(con, export_id)

    def revoke(self, export_id: str, reviewer: str, comment: str) -> ExportRequest:
        """After release: logged and shown to the requester (the bundle already left; the
        revocation says it must no longer be used)."""
        comment = _text(comment, "comment", MAX_COMMENT, True)
        with self.state.transaction() as con:
            r = self._row(con, export_id)
            self._not_requester(r, reviewer, "revoke it", "ask an auditor to revoke it")
            self._expect(r, ("released",), "revoked")
            self._event(con, r, "revoked", reviewer, comment=comment)
            self._set(con, export_id, state="revoked")
            return self._load(con, export_id)

    def release(self, export_id: str, actor: str) -> ExportRequest:
        """approved -> released: the release record (holding the manifest's hash) is
        appended, then the signed bundle with its inclusion proof is built and kept."""
        req = self.get(export_id)
        if req.state != "approved":
            self._expect({"id": export_id, "state": req.state}, ("approved",), "released")
        if req.report is None or req.report.blocked:  # never: approve refuses it
            raise ExportBlockedError(f"export {export_id} was blocked by the automatic checks "
                                     "and can never be released", "reject it")
        body = bundlemod.manifest_body(req, self._files(req))
        digest = bundlemod.body_digest(body)
        with self.state.transaction() as con:
            r = self._row(con, export_id)
            self._expect(r, ("approved",), "released")
            seq = self._event(con, r, "released", actor, manifest_sha256=digest,
                              files=[{"name": f["name"], "sha256": f["sha256"]}
                                     for f in body["files"]])
            self._set(con, export_id, state="released", released_seq=seq)
        self._bundle(export_id)
        return self.get(export_id)

    def _files(self, req: ExportRequest) -> list[tuple[StoredItem, bytes]]:
        return [(it, self.item_data(req.id, it.position)) for it in req.items]

    def _bundle(self, export_id: str) -> bytes:
        """The kept bundle, built (again) if missing."""
        row = self.state.con.execute("SELECT bundle FROM export_requests WHERE id = ?",
                                     (export_id,)).fetchone()
        if row is not None and row[0] is not None:
            return bytes(row[0])
        req = self.get(export_id)
        if req.released_seq is None:
            raise ExportStateError(f"export {export_id} was not released",
                                   "it is released once approved")
        if self.state.signer is None:
            raise ExportStateError("this state database is read-only",
                                   "build bundles where the key store is")
        files = self._files(req)
        body = bundlemod.manifest_body(req, files)
        proof = self.state.proof(req.released_seq)
        data = bundlemod.build(body, files, proof, self.state.signer)
        with self.state.transaction() as con:
            self._set(con, export_id, bundle=data,
                      bundle_sha256=hashlib.sha256(data).hexdigest())
        return data

    def download(self, export_id: str, actor: str) -> bytes:
        """The signed bundle of a released export; each download is an audit record. The
        service decides who may download (the requester, auditors)."""
        req = self.get(export_id)
        if req.state == "revoked":
            last = next(e for e in reversed(req.events) if e.event == "revoked")
            raise ExportRevokedError(f"export {export_id} was revoked by {last.actor}: "
                                     f"{last.comment}", "it must no longer be used")
        self._expect({"id": export_id, "state": req.state}, ("released",), "downloaded")
        data = self._bundle(export_id)
        with self.state.transaction() as con:
            r = self._row(con, export_id)
            self._expect(r, ("released",), "downloaded")
            self._event(con, r, "downloaded", actor,
                        bundle_sha256=hashlib.sha256(data).hexdigest())
        return data


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _size(n: int) -> str:
    """Bytes for a message: exact below 1 KiB, else KiB or MiB with one decimal."""
    if n < 1024:
        return f"{n} bytes"
    if n < 1 << 20:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1 << 20):.1f} MiB"
