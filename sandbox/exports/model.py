"""Export requests as the store keeps them, and what each party may see of them.

``ExportRequest`` (with its ``StoredItem``s and ``Event``s) is what the store returns, the
console and the CLI show and the bundle's manifest is made of; ``to_dict("requester")``
is a function of what the requester sent and did (and of reviewers' decisions) only. The
states and the limits on free text are here too, so readers need not load the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ExportInputError
from .results import CheckReport

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


def text_field(value: Any, what: str, limit: int, required: bool) -> str:
    """A title, purpose or comment: text, stripped, present when required, not too long."""
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
