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
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from .. import audit
from ..policy import Policy
from ..statedb import Connection, IntegrityError
from . import bundle as bundlemod
from .checks import CheckContext, CheckReport, run_checks
from .errors import (
    DuplicateApprovalError,
    ExportBlockedError,
    ExportHeldError,
    ExportInputError,
    ExportQuotaError,
    ExportRevokedError,
    ExportStateError,
    NotRequesterError,
)
from .items import ExportItem
from .model import (
    AWAITING,
    CHECKS_ACTOR,
    DECISIONS,
    DROPPED,
    EXPORT_QUOTA_BYTES,
    FLAGGED,
    HELD_MESSAGE,
    HIT_LIMIT,
    HIT_WINDOW_S,
    MAX_COMMENT,
    MAX_PURPOSE,
    MAX_TITLE,
    QUOTA_HINT,
    QUOTA_LIMIT,
    REVIEWER_EVENTS,
    STATES,
    WITHDRAWABLE,
    Event,
    ExportRequest,
    StoredItem,
    text_field,
)
from .records import _COLUMNS, ExportRecords

__all__ = ["AWAITING", "DECISIONS", "DROPPED", "FLAGGED", "REVIEWER_EVENTS", "STATES",
           "WITHDRAWABLE", "Event", "ExportRequest", "ExportStore", "StoredItem"]


class ExportStore(ExportRecords):
    """Export requests of every workspace, in the state database of a ``State``: the
    transitions, the holds after identifier hits, and the storage quota."""

    def __init__(self, state: Any, *, hit_limit: int = HIT_LIMIT,
                 hit_window_s: float = HIT_WINDOW_S,
                 quota_bytes: int = EXPORT_QUOTA_BYTES) -> None:
        self.hit_limit, self.hit_window_s = hit_limit, hit_window_s
        self.quota_bytes = quota_bytes
        super().__init__(state)

    # -- identifier hits and holds ----------------------------------------------------------
    def _since(self) -> str:
        start = _utcnow() - dt.timedelta(seconds=self.hit_window_s)
        return start.isoformat(timespec="microseconds")

    def recent_hits(self, member: str, con: Connection | None = None) -> int:
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
    def quota_used(self, member: str, con: Connection | None = None) -> int:
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

    def _quota_refusal(self, con: Connection, workspace: str, requester: str,
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

    def _flag(self, con: Connection, req: dict[str, Any],
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

    def _checked(self, con: Connection, req: dict[str, Any],
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
        title = text_field(title, "title", MAX_TITLE, True)
        purpose = text_field(purpose, "purpose", MAX_PURPOSE, True)
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
                except IntegrityError:
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
        title = text_field(title, "title", MAX_TITLE, True) if title is not None else r["title"]
        purpose = text_field(purpose, "purpose", MAX_PURPOSE, True) if purpose is not None \
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
        comment = text_field(comment, "comment", MAX_COMMENT, decision != "approve")
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
        comment = text_field(comment, "comment", MAX_COMMENT, False)
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
        comment = text_field(comment, "comment", MAX_COMMENT, True)
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
