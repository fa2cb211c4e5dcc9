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

Rules: ``limits`` (counts, sizes, rows), ``types`` (the content is what its name says),
``identifiers`` (no value of an identifier column of the vault), ``provenance`` (every
number comes from a release of this workspace, or a declared post-processing of one),
``small_cells`` (no values of groups below the policy's count threshold), ``human_review``
(images and free text) and ``differencing`` (overlap with earlier approved exports).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import content as contentmod
from .content import Content
from .identifiers import ALL_LENGTHS, candidates
from .items import ExportItem, scales

RULES_VERSION = "2026.12-1"
PASS, REVIEW, BLOCK = "pass", "review", "block"
RULES = ("limits", "types", "identifiers", "provenance", "small_cells", "human_review",
         "differencing")
PRIVATE_RULES = frozenset({"identifiers", "differencing"})  # details for reviewers only
# Rules whose outcome depends on the protected data (the identifier index of the vault):
# requesters never see them, nor anything that depends on them (docs/exports.md).
CONFIDENTIAL_RULES = frozenset({"identifiers"})
EXAMPLES = 5
MAX_RATIO_CELLS = 200_000  # released values considered for declared ratios


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
        return hashlib.sha256(_canonical(self.to_dict())).hexdigest()


def _outcome(results: Iterable[RuleResult]) -> str:
    outcomes = {r.outcome for r in results}
    return "blocked" if BLOCK in outcomes else "review" if REVIEW in outcomes else "pass"


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False, default=str).encode()


# -- the driver ----------------------------------------------------------------------------
def run_checks(items: Sequence[ExportItem], ctx: CheckContext,
               export_id: str = "", title: str = "") -> CheckReport:
    """Run every rule over the items; never raises on bad content (that is a result)."""
    contents = [contentmod.read(it, ctx.limits.max_rows) for it in items]
    readable = [c for c in contents if not c.problems]
    hits, weak, id_result = _identifiers(readable, ctx)
    tainted = set(hits) | weak  # items whose values are never echoed in details
    releases = _releases(items, ctx)
    fp = fingerprint(export_id, title, items, readable)
    results = [
        _limits(items, contents, ctx.limits),
        _types(contents),
        id_result,
        _provenance(items, readable, releases, ctx, tainted),
        _small_cells(items, readable, releases, ctx),
        _human_review(readable),
        _differencing(fp, ctx),
    ]
    used = sorted({rid for it in items for rid in it.release_ids})
    refs = tuple(ReleaseRef(r, releases[r].epsilon, releases[r].delta)
                 for r in used if releases.get(r) is not None)
    return CheckReport(RULES_VERSION, tuple(results), refs, fp)


def _releases(items: Sequence[ExportItem], ctx: CheckContext) -> dict[str, ReleaseRecord | None]:
    out: dict[str, ReleaseRecord | None] = {}
    for it in items:
        for rid in it.release_ids:
            if rid not in out:
                out[rid] = ctx.release(rid)
    return out


# -- limits and types ----------------------------------------------------------------------
def _limits(items: Sequence[ExportItem], contents: list[Content], lim: Limits) -> RuleResult:
    problems = []
    if not items:
        problems.append("the export has no items")
    if len(items) > lim.max_items:
        problems.append(f"{len(items)} items; at most {lim.max_items} per export")
    names = [it.filename.lower() for it in items]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"item names repeat: {', '.join(dupes)}")
    total = 0
    for it in items:
        size = len(it.data)
        total += size
        if size > lim.max_item_bytes:
            problems.append(f"'{it.filename}' is {size:,} bytes; at most "
                            f"{lim.max_item_bytes:,} per item")
    if total > lim.max_total_bytes:
        problems.append(f"the items total {total:,} bytes; at most {lim.max_total_bytes:,}")
    for c in contents:
        for t in c.tables:
            if len(t.rows) > lim.max_rows:
                problems.append(f"'{c.item}' has {len(t.rows):,} rows; at most "
                                f"{lim.max_rows:,}")
            if len(t.columns) > lim.max_columns:
                problems.append(f"'{c.item}' has {len(t.columns):,} columns; at most "
                                f"{lim.max_columns:,}")
    details = {"items": len(items), "bytes": total, "limits": lim.to_dict()}
    if problems:
        return RuleResult("limits", BLOCK, "the export exceeds the limits: " +
                          "; ".join(problems), {**details, "problems": problems})
    return RuleResult("limits", PASS, f"{len(items)} item(s), {total:,} bytes: within limits",
                      details)


def _types(contents: list[Content]) -> RuleResult:
    problems = [p for c in contents for p in c.problems]
    types = {c.item: c.media_type for c in contents}
    if problems:
        return RuleResult("types", BLOCK, "; ".join(problems),
                          {"types": types, "problems": problems})
    return RuleResult("types", PASS, "every item is a readable file of an allowed type",
                      {"types": types})


# -- identifiers ---------------------------------------------------------------------------
def _identifiers(contents: list[Content],
                 ctx: CheckContext) -> tuple[dict[str, list[dict[str, Any]]], set[str],
                                             RuleResult]:
    """(strong hits per item, items with weak hits, result). Messages say only how many."""
    if ctx.identifiers is None:
        return {}, set(), RuleResult(
            "identifiers", BLOCK, "the identifier index is not available, so the export "
            "cannot be checked for identifiers; an operator must build it", {})
    lengths = getattr(ctx.identifiers, "lengths", ALL_LENGTHS)
    wanted = {cand for c in contents for _, text in c.scan
              for cand, _ in candidates(text, lengths)}
    found = ctx.identifiers.find(wanted) if wanted else {}
    strong_hits: dict[str, list[dict[str, Any]]] = {}
    weak_hits: dict[str, list[dict[str, Any]]] = {}
    # A second pass, to say where (to reviewers). It runs whether or not anything was
    # found, so the time a check takes does not tell whether a value is in the vault.
    for c in contents:
        for loc, text in c.scan:
            for cand, strong in candidates(text, lengths):
                if cand in found:
                    target = strong_hits if strong else weak_hits
                    entry = {"where": loc, "dataset": found[cand]}
                    if entry not in target.setdefault(c.item, []):
                        target[c.item].append(entry)
    details = {"strong": strong_hits, "weak": weak_hits}
    if strong_hits:
        n = sum(len(v) for v in strong_hits.values())
        return strong_hits, set(weak_hits), RuleResult(
            "identifiers", BLOCK, f"{n} value(s) in {len(strong_hits)} item(s) match "
            "identifiers (names, ID numbers, phone numbers) held in the vault; identifiers "
            "can never leave. The values are not shown", details)
    if weak_hits:
        n = sum(len(v) for v in weak_hits.values())
        return {}, set(weak_hits), RuleResult(
            "identifiers", REVIEW, f"{n} place(s) in running text contain words that are "
            "also identifiers (such as names) held in the vault; a reviewer will look",
            details)
    return {}, set(), RuleResult("identifiers", PASS, "no identifier of the vault was found",
                                 {})


# -- provenance ----------------------------------------------------------------------------
def decimals(x: float | int) -> int:
    """Digits after the point as written (shortest repr), for a rounding tolerance."""
    if isinstance(x, int) or float(x).is_integer():  # 52544.0: rounded, kept as a float
        return 0
    r = repr(float(x))
    mant, _, exp = r.partition("e")
    frac = len(mant.split(".")[1]) if "." in mant else 0
    return max(frac - int(exp or 0), 0)


def _trailing_zeros(x: float | int) -> int:
    if not float(x).is_integer() or x == 0:
        return 0
    n, z = abs(int(x)), 0
    while n % 10 == 0:
        n, z = n // 10, z + 1
    return z


class NumberSet:
    """Released numbers, matched within float rounding and the exported value's precision."""

    def __init__(self, values: Iterable[float]) -> None:
        self.values = sorted({float(v) for v in values if math.isfinite(float(v))})

    def __len__(self) -> int:
        return len(self.values)

    def matches(self, x: float | int, rounded: bool = False) -> bool:
        tol = max(abs(float(x)) * 1e-9, 1e-12, 0.5 * 10.0 ** -decimals(x))
        if rounded:  # declared rounding to tens, hundreds, ...
            tol = max(tol, 0.5 * 10.0 ** _trailing_zeros(x))
        i = bisect.bisect_left(self.values, float(x) - tol)
        return i < len(self.values) and self.values[i] <= float(x) + tol


def _numeric(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _release_numbers(rel: ReleaseRecord) -> list[float]:
    return [float(v) for r in (*rel.rows, *rel.ci95) for v in r if _numeric(v)]


def _derived(rels: list[ReleaseRecord], steps: Sequence[str]) -> NumberSet:
    base = [v for rel in rels for v in _release_numbers(rel)]
    extra: list[float] = []
    for rel in rels:
        cols = list(zip(*rel.rows, strict=False)) if rel.rows else []
        sums = [sum(float(v) for v in col if _numeric(v)) for col in cols]
        if "sum" in steps:
            extra += sums
        if "ratio" in steps and len(rel.rows) * max(len(rel.columns), 1) ** 2 <= \
                MAX_RATIO_CELLS:
            for r in rel.rows:
                nums = [float(v) for v in r if _numeric(v)]
                extra += [a / b for a in nums for b in nums if b != 0]
                extra += [float(v) / s for v, s in zip(r, sums, strict=False)
                          if _numeric(v) and s != 0]
    values = base + extra
    for k in scales(steps):
        values += [v * k for v in base + extra]
    return NumberSet(values)


def _text_key(v: Any) -> str:
    return str(v).strip().casefold()


def _provenance(items: Sequence[ExportItem], contents: list[Content],
                releases: dict[str, ReleaseRecord | None], ctx: CheckContext,
                tainted: set[str]) -> RuleResult:
    by_name = {it.filename: it for it in items}
    unknown = sorted(r for r, rel in releases.items() if rel is None)
    everything: list[ReleaseRecord] | None = None
    per_item: dict[str, dict[str, Any]] = {}
    for c in contents:
        it = by_name[c.item]
        if c.image:
            continue  # images are always reviewed by a person (human_review)
        if it.release_ids:
            rels = [rel for r in it.release_ids if (rel := releases.get(r)) is not None]
        else:
            if everything is None:
                everything = list(ctx.releases())
            rels = everything
        numbers = _derived(rels, it.postprocessing)
        keys = {_text_key(v) for rel in rels for r in rel.rows for v in r
                if v is not None and not _numeric(v)}
        keys |= {_text_key(col) for rel in rels for col in rel.columns}
        rounded = "round" in it.postprocessing
        unmatched: list[dict[str, Any]] = []
        texts: list[str] = []
        total = 0
        for t in c.tables:
            for i, row in enumerate(t.rows):
                for j, v in enumerate(row):
                    # by number: the same whether or not the item holds an identifier
                    where = f"row {i + 1} column #{j + 1}"
                    if _numeric(v):
                        total += 1
                        if not numbers.matches(v, rounded):
                            col = t.columns[j] if j < len(t.columns) else None
                            unmatched.append({"where": where} if c.item in tainted else
                                             {"where": where, "column": col, "value": v})
                    elif v is not None and _text_key(v) not in keys and \
                            not isinstance(v, bool):
                        texts.append(where)
        for v in c.numbers:
            total += 1
            if not numbers.matches(v, rounded):
                unmatched.append({"where": "text"} if c.item in tainted else
                                 {"where": "text", "value": v})
        texts += ["text"] * sum(1 for v in c.texts if _text_key(v) not in keys)
        if unmatched or texts:
            per_item[c.item] = {
                "numbers": total, "unmatched": len(unmatched),
                "examples": unmatched[:EXAMPLES], "unexplained_text": len(texts),
                "text_examples": texts[:EXAMPLES],
                "release_ids": list(it.release_ids) or "all releases of the workspace"}
    details = {"unknown_release_ids": unknown, "items": per_item}
    if per_item or unknown:
        n = sum(v["unmatched"] for v in per_item.values())
        m = sum(v["unexplained_text"] for v in per_item.values())
        parts = []
        if unknown:
            parts.append(f"{len(unknown)} release id(s) are not releases of this workspace")
        if n:
            parts.append(f"{n} number(s) match no release of this workspace (nor a declared "
                         "post-processing of one)")
        if m:
            parts.append(f"{m} text value(s) are not group keys of a release")
        return RuleResult("provenance", REVIEW, "; ".join(parts) + ": a reviewer will check "
                          "where they come from", details)
    return RuleResult("provenance", PASS, "every value comes from a release of this "
                      "workspace", details)


# -- small cells ---------------------------------------------------------------------------
def _small_cells(items: Sequence[ExportItem], contents: list[Content],
                 releases: dict[str, ReleaseRecord | None], ctx: CheckContext) -> RuleResult:
    threshold = ctx.min_group_count
    by_name = {it.filename: it for it in items}
    flagged: dict[str, list[str]] = {}
    unknown_sizes: set[str] = set()
    for c in contents:
        it = by_name[c.item]
        rels = [rel for r in it.release_ids if (rel := releases.get(r)) is not None]
        count_cols: set[str] = set()
        small: list[float] = []
        other: list[float] = []
        for rel in rels:
            if not rel.count_columns:
                unknown_sizes.add(rel.release_id)
                continue
            count_cols |= set(rel.count_columns)
            idx = [rel.columns.index(cc) for cc in rel.count_columns]
            keyidx = {rel.columns.index(k) for k in rel.key_columns}
            for r in rel.rows:
                is_small = any(_numeric(r[i]) and r[i] < threshold for i in idx)
                vals = [float(v) for j, v in enumerate(r) if j not in keyidx and _numeric(v)]
                (small if is_small else other).extend(vals)
        if not small:
            continue
        small_set, other_set = NumberSet(small), NumberSet(other)
        rows: list[str] = []
        for t in c.tables:
            counts = [j for j, col in enumerate(t.columns) if col in count_cols]
            for i, row in enumerate(t.rows):
                direct = any(_numeric(row[j]) and row[j] < threshold for j in counts)
                matched = any(_numeric(v) and small_set.matches(v) and not other_set.matches(v)
                              for j, v in enumerate(row) if j not in counts)
                if direct or matched:
                    rows.append(f"row {i + 1}")
        if rows:
            flagged[c.item] = rows
    details: dict[str, Any] = {"min_group_count": threshold,
                               "items": {k: {"rows": len(v), "examples": v[:EXAMPLES]}
                                         for k, v in flagged.items()}}
    if unknown_sizes:
        details["group_sizes_not_released"] = sorted(unknown_sizes)
    if flagged:
        n = sum(len(v) for v in flagged.values())
        return RuleResult("small_cells", REVIEW, f"{n} row(s) hold values of groups whose "
                          f"noisy count is below {threshold}: a reviewer will check them",
                          details)
    note = "" if not unknown_sizes else (" (some releases have no count, so their group "
                                         "sizes are unknown)")
    return RuleResult("small_cells", PASS, f"no values of groups below {threshold}{note}",
                      details)


# -- human review --------------------------------------------------------------------------
def _human_review(contents: list[Content]) -> RuleResult:
    images = [c.item for c in contents if c.image]
    text = [c.item for c in contents if c.free_text]
    if images or text:
        what = ", ".join([*(f"'{i}' (image)" for i in images),
                          *(f"'{t}' (free text)" for t in text)])
        return RuleResult("human_review", REVIEW, f"images and free text are always read by "
                          f"a reviewer: {what}", {"images": images, "free_text": text})
    return RuleResult("human_review", PASS, "no images or free text",
                      {"images": [], "free_text": []})


# -- differencing --------------------------------------------------------------------------
def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _number_key(v: float) -> str:
    return f"{float(v):.9g}"


def fingerprint(export_id: str, title: str, items: Sequence[ExportItem],
                contents: list[Content]) -> Fingerprint:
    keys, numbers = set(), set()
    for c in contents:
        for t in c.tables:
            for row in t.rows:
                texts = [_text_key(v) for v in row if v is not None and not _numeric(v)]
                if texts:
                    keys.add(_h(json.dumps(texts, ensure_ascii=False)))
                numbers |= {_h(_number_key(v)) for v in row if _numeric(v) and
                            not (float(v).is_integer() and abs(v) < 10)}
        numbers |= {_h(_number_key(v)) for v in c.numbers
                    if not (float(v).is_integer() and abs(v) < 10)}
    return Fingerprint(export_id, title, frozenset(r for it in items for r in it.release_ids),
                       frozenset(keys), frozenset(numbers))


def _differencing(mine: Fingerprint, ctx: CheckContext) -> RuleResult:
    overlaps = []
    for prior in ctx.prior_exports:
        shared_r = sorted(mine.release_ids & prior.release_ids)
        shared_k = len(mine.keys & prior.keys)
        shared_n = len(mine.numbers & prior.numbers)
        if shared_r or shared_k or shared_n:
            overlaps.append({"export_id": prior.export_id, "title": prior.title,
                             "shared_release_ids": shared_r, "shared_groups": shared_k,
                             "shared_numbers": shared_n})
    details = {"earlier_exports": len(ctx.prior_exports), "overlaps": overlaps}
    if overlaps:
        return RuleResult("differencing", REVIEW, f"overlaps with {len(overlaps)} earlier "
                          "approved export(s) of this workspace (same releases, groups or "
                          "values): a reviewer will check that together they reveal no "
                          "small group", details)
    return RuleResult("differencing", PASS, "no overlap with earlier approved exports",
                      details)
