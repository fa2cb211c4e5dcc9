"""The automatic checks of an export request: what must never leave, what needs a look.

``run_checks(items, ctx)`` runs every rule and returns a ``CheckReport``: one result per
rule, each ``pass``, ``review`` (a reviewer must look) or ``block`` (it can never leave).
The rules and what they mean are versioned together (``RULES_VERSION``) and the version
is stored with every report. No message ever contains a matched identifier.

What a requester sees (``CheckReport.to_dict("requester")``) depends only on what they
submitted and on releases their workspace already received, never on the vault: rules
whose outcome depends on the vault's data (``CONFIDENTIAL_RULES``: the identifier index)
are left out of the requester's view altogether, and so are their effects on other rules'
details (the requester's details of ``provenance`` give places by row and column number,
never values). Otherwise the airlock would be a membership oracle: submit a guessed ID
number, see whether it is blocked.

Rules (``CHECKS``, a table of ``(name, function)`` run in order, like the rewrite's
``PASSES``): ``limits`` (counts, sizes, rows), ``types`` (the content is what its name
says), ``identifiers`` (no value of an identifier column of the vault), ``provenance``
(every number comes from a release of this workspace, or a declared post-processing of
one), ``small_cells`` (no values of groups below the policy's count threshold),
``human_review`` (images and free text) and ``differencing`` (overlap with earlier
approved exports). The rules live in ``rules`` and ``numbers``, what they produce in
``results``; this module runs them and re-exports the names callers use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import content as contentmod
from .content import Content
from .items import ExportItem
from .numbers import provenance, small_cells
from .results import (
    BLOCK,
    CONFIDENTIAL_RULES,
    PASS,
    PRIVATE_RULES,
    REVIEW,
    RULES_VERSION,
    CheckContext,
    CheckReport,
    Fingerprint,
    IdentifierLookup,
    Limits,
    ReleaseRecord,
    ReleaseRef,
    RuleResult,
)
from .rules import differencing, fingerprint, human_review, identifiers, limits, types

__all__ = [
    "BLOCK", "CHECKS", "CONFIDENTIAL_RULES", "PASS", "PRIVATE_RULES", "REVIEW", "RULES",
    "RULES_VERSION", "CheckContext", "CheckReport", "Fingerprint", "IdentifierLookup",
    "Limits", "ReleaseRecord", "ReleaseRef", "RuleResult", "Scan", "run_checks",
]


@dataclass
class Scan:
    """One request as the rules see it: its items, what they hold, the releases they name,
    and the results of the rules run so far (in ``CHECKS`` order)."""

    items: Sequence[ExportItem]
    contents: list[Content]  # every item, read
    ctx: CheckContext
    releases: dict[str, ReleaseRecord | None]  # the release ids the items name
    fingerprint: Fingerprint
    done: dict[str, RuleResult] = field(default_factory=dict)

    @property
    def readable(self) -> list[Content]:
        """The items that could be read (the others are the ``types`` rule's business)."""
        return [c for c in self.contents if not c.problems]

    @property
    def tainted(self) -> set[str]:
        """Items where the identifier scan matched: their values are never echoed in any
        rule's details (``identifiers`` runs before the rules that ask)."""
        res = self.done.get("identifiers")
        if res is None:
            return set()
        return set(res.details.get("strong") or {}) | set(res.details.get("weak") or {})


Rule = Callable[[Scan], RuleResult]

# The rules, in the order their results are reported (and stored, and signed).
CHECKS: tuple[tuple[str, Rule], ...] = (
    ("limits", limits),
    ("types", types),
    ("identifiers", identifiers),
    ("provenance", provenance),
    ("small_cells", small_cells),
    ("human_review", human_review),
    ("differencing", differencing),
)
RULES = tuple(name for name, _ in CHECKS)


def run_checks(items: Sequence[ExportItem], ctx: CheckContext,
               export_id: str = "", title: str = "") -> CheckReport:
    """Run every rule over the items; never raises on bad content (that is a result)."""
    contents = [contentmod.read(it, ctx.limits.max_rows) for it in items]
    releases = _releases(items, ctx)
    scan = Scan(items, contents, ctx, releases, Fingerprint(export_id))
    scan.fingerprint = fingerprint(export_id, title, items, scan.readable)
    for name, rule in CHECKS:
        scan.done[name] = rule(scan)
    used = sorted({rid for it in items for rid in it.release_ids})
    refs = tuple(ReleaseRef(r, releases[r].epsilon, releases[r].delta)
                 for r in used if releases.get(r) is not None)
    return CheckReport(RULES_VERSION, tuple(scan.done.values()), refs, scan.fingerprint)


def _releases(items: Sequence[ExportItem], ctx: CheckContext) -> dict[str, ReleaseRecord | None]:
    out: dict[str, ReleaseRecord | None] = {}
    for it in items:
        for rid in it.release_ids:
            if rid not in out:
                out[rid] = ctx.release(rid)
    return out
