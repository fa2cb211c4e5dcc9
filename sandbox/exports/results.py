"""What the automatic checks produce: one ``RuleResult`` per rule, gathered in a
``CheckReport``, and what they read (``CheckContext``, ``ReleaseRecord``, ``Fingerprint``).

Kept apart from the rules (``rules``, ``numbers``) and their driver (``checks``) so the
store, the bundle and the service can read stored reports without loading the rules.
The requester's view (``to_dict("requester")``) leaves out the rules whose outcome depends
on the vault (``CONFIDENTIAL_RULES``) and the details that would locate an identifier.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..audit import canonical

RULES_VERSION = "2026.12-1"
PASS, REVIEW, BLOCK = "pass", "review", "block"
PRIVATE_RULES = frozenset({"identifiers", "differencing"})  # details for reviewers only
# Rules whose outcome depends on the protected data (the identifier index of the vault):
# requesters never see them, nor anything that depends on them (docs/exports.md).
CONFIDENTIAL_RULES = frozenset({"identifiers"})
EXAMPLES = 5


@dataclass(frozen=True)
class Limits:
    max_items: int = 20
    max_item_bytes: int = 10 << 20
    max_total_bytes: int = 25 << 20
    max_rows: int = 100_000
    max_columns: int = 500

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class IdentifierLookup(Protocol):
    """``IdentifierIndex`` (or a fake): which normalised candidates are identifiers, and of
    which dataset. An optional ``lengths`` attribute limits the candidates hashed."""

    def find(self, items: Any) -> dict[str, str]: ...


@dataclass(frozen=True)
class ReleaseRecord:
    """One answered query of this workspace, as released: what exports are matched to."""

    release_id: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    ci95: tuple[tuple[Any, ...], ...] = ()
    epsilon: float = 0.0
    delta: float = 0.0
    key_columns: tuple[str, ...] = ()  # grouping keys
    count_columns: tuple[str, ...] = ()  # noisy counts: the group sizes
    member: str | None = None

    @classmethod
    def from_response(cls, d: dict[str, Any], count_columns: Sequence[str] = (),
                      member: str | None = None) -> ReleaseRecord:
        """From ``gate.Release.to_dict()`` (the stored answer of a query)."""
        cols = tuple(str(c) for c in d.get("columns") or ())
        mechanisms = d.get("mechanisms") or {}
        return cls(str(d["release_id"]), cols,
                   tuple(tuple(r) for r in d.get("rows") or ()),
                   tuple(tuple(r) for r in d.get("ci95") or ()),
                   float(d.get("epsilon") or 0.0), float(d.get("delta") or 0.0),
                   tuple(c for c in cols if c not in mechanisms),
                   tuple(c for c in count_columns if c in cols), member)


@dataclass(frozen=True)
class Fingerprint:
    """What later exports are compared with (differencing): hashed row keys and numbers."""

    export_id: str
    title: str = ""
    release_ids: frozenset[str] = frozenset()
    keys: frozenset[str] = frozenset()
    numbers: frozenset[str] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        return {"export_id": self.export_id, "title": self.title,
                "release_ids": sorted(self.release_ids), "keys": sorted(self.keys),
                "numbers": sorted(self.numbers)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fingerprint:
        return cls(d["export_id"], d.get("title", ""), frozenset(d.get("release_ids", ())),
                   frozenset(d.get("keys", ())), frozenset(d.get("numbers", ())))


@dataclass(frozen=True)
class CheckContext:
    """What the checks need from outside, all of it about ONE workspace."""

    identifiers: IdentifierLookup | None  # None: no index, so the scan blocks (fail closed)
    release: Callable[[str], ReleaseRecord | None] = lambda _rid: None
    releases: Callable[[], Iterable[ReleaseRecord]] = lambda: ()  # every release
    min_group_count: int = 10
    prior_exports: tuple[Fingerprint, ...] = ()
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class RuleResult:
    rule: str
    outcome: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def private(self) -> bool:
        """Details only reviewers see: where identifiers were found (a requester must not
        learn which value matched), and other requests' exports (differencing)."""
        return self.rule in PRIVATE_RULES

    @property
    def confidential(self) -> bool:
        """Its outcome depends on the vault's data: requesters never see this result."""
        return self.rule in CONFIDENTIAL_RULES

    def to_dict(self, view: str = "reviewer") -> dict[str, Any]:
        d: dict[str, Any] = {"rule": self.rule, "outcome": self.outcome,
                             "message": self.message}
        if view == "reviewer":
            d["details"] = self.details
        elif not self.private:
            d["details"] = _requester_details(self.rule, self.details)
        return d


def _requester_details(rule: str, details: dict[str, Any]) -> dict[str, Any]:
    """The details a requester sees: nothing that depends on the identifier scan. Which
    items share a place with an identifier changes how reviewers' provenance details are
    written (no values, no column names), so requesters get places by number only."""
    if rule != "provenance":
        return details
    items = {name: {**d, "examples": [{"where": e["where"]} for e in d["examples"]]}
             for name, d in details.get("items", {}).items()}
    return {**details, "items": items}


@dataclass(frozen=True)
class ReleaseRef:
    release_id: str
    epsilon: float
    delta: float


@dataclass(frozen=True)
class CheckReport:
    rules_version: str
    results: tuple[RuleResult, ...]
    releases: tuple[ReleaseRef, ...] = ()
    fingerprint: Fingerprint = field(default_factory=lambda: Fingerprint(""))

    @property
    def outcome(self) -> str:
        """blocked (cannot leave), review (flags for the reviewer) or pass."""
        return _outcome(self.results)

    @property
    def blocked(self) -> bool:
        return self.outcome == "blocked"

    @property
    def blocked_openly(self) -> bool:
        """A rule the requester may see blocked it (content only: limits, types): the
        request is rejected at once and the requester told why."""
        return any(r.outcome == BLOCK and not r.confidential for r in self.results)

    @property
    def blocked_confidentially(self) -> bool:
        """Only a confidential rule blocked it (an identifier of the vault, or no index):
        it waits for a reviewer like any other request, who can only reject it."""
        return self.blocked and not self.blocked_openly

    def identifier_hits(self) -> tuple[int, int]:
        """(strong, weak) places where the identifier scan matched the vault's index."""
        res = next((r for r in self.results if r.rule == "identifiers"), None)
        if res is None:
            return 0, 0
        strong, weak = ((res.details.get(k) or {}).values() for k in ("strong", "weak"))
        return sum(len(v) for v in strong), sum(len(v) for v in weak)

    @property
    def flagged(self) -> bool:
        """The identifier scan matched something: reviewers see 'flagged: identifier hits'."""
        return any(self.identifier_hits())

    def result(self, rule: str) -> RuleResult:
        return next(r for r in self.results if r.rule == rule)

    def visible(self, view: str = "reviewer") -> tuple[RuleResult, ...]:
        return self.results if view == "reviewer" else tuple(
            r for r in self.results if not r.confidential)

    def to_dict(self, view: str = "reviewer") -> dict[str, Any]:
        """``view="requester"`` leaves out the confidential rules (and the details that
        would locate an identifier): it is a function of the submitted content and the
        workspace's releases only."""
        shown = self.visible(view)
        return {"rules_version": self.rules_version, "outcome": _outcome(shown),
                "results": [r.to_dict(view) for r in shown],
                "releases": [r.__dict__ for r in self.releases]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckReport:
        return cls(d["rules_version"], tuple(
            RuleResult(r["rule"], r["outcome"], r["message"], r.get("details", {}))
            for r in d["results"]),
            tuple(ReleaseRef(**r) for r in d.get("releases", ())))

    def summary(self) -> list[dict[str, str]]:
        return [{"rule": r.rule, "outcome": r.outcome} for r in self.results]

    def digest(self) -> str:
        return hashlib.sha256(canonical(self.to_dict())).hexdigest()


def _outcome(results: Iterable[RuleResult]) -> str:
    outcomes = {r.outcome for r in results}
    return "blocked" if BLOCK in outcomes else "review" if REVIEW in outcomes else "pass"
