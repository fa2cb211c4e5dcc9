"""The rules that read an export's content only, and its overlap with earlier exports:
``limits``, ``types``, ``identifiers``, ``human_review`` and ``differencing``.

Each takes the ``Scan`` of one request (``checks``) and returns a ``RuleResult``; the
driver runs them in the order of ``checks.CHECKS``. No message ever contains a matched
identifier, and the identifier scan takes the same steps whether or not it finds one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .content import Content
from .identifiers import ALL_LENGTHS, candidates
from .items import ExportItem
from .numbers import numeric, text_key
from .results import BLOCK, PASS, REVIEW, Fingerprint, RuleResult

if TYPE_CHECKING:
    from .checks import Scan


# -- limits and types ----------------------------------------------------------------------
def limits(scan: Scan) -> RuleResult:
    """Counts, sizes, rows and columns within ``Limits``; names unique."""
    items, contents, lim = scan.items, scan.contents, scan.ctx.limits
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


def types(scan: Scan) -> RuleResult:
    """Every item is a readable file of what its name says (``content.read``)."""
    contents = scan.contents
    problems = [p for c in contents for p in c.problems]
    types = {c.item: c.media_type for c in contents}
    if problems:
        return RuleResult("types", BLOCK, "; ".join(problems),
                          {"types": types, "problems": problems})
    return RuleResult("types", PASS, "every item is a readable file of an allowed type",
                      {"types": types})


# -- identifiers ---------------------------------------------------------------------------
def identifiers(scan: Scan) -> RuleResult:
    """No value of the vault's identifier index. Details (reviewers only) say where, as
    ``{"strong": {item: [...]}, "weak": {...}}``; messages say only how many."""
    contents, ctx = scan.readable, scan.ctx
    if ctx.identifiers is None:
        return RuleResult(
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
        return RuleResult(
            "identifiers", BLOCK, f"{n} value(s) in {len(strong_hits)} item(s) match "
            "identifiers (names, ID numbers, phone numbers) held in the vault; identifiers "
            "can never leave. The values are not shown", details)
    if weak_hits:
        n = sum(len(v) for v in weak_hits.values())
        return RuleResult(
            "identifiers", REVIEW, f"{n} place(s) in running text contain words that are "
            "also identifiers (such as names) held in the vault; a reviewer will look",
            details)
    return RuleResult("identifiers", PASS, "no identifier of the vault was found",
                                 {})


# -- human review --------------------------------------------------------------------------
def human_review(scan: Scan) -> RuleResult:
    """Images and free text are always read by a person."""
    contents = scan.readable
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
                texts = [text_key(v) for v in row if v is not None and not numeric(v)]
                if texts:
                    keys.add(_h(json.dumps(texts, ensure_ascii=False)))
                numbers |= {_h(_number_key(v)) for v in row if numeric(v) and
                            not (float(v).is_integer() and abs(v) < 10)}
        numbers |= {_h(_number_key(v)) for v in c.numbers
                    if not (float(v).is_integer() and abs(v) < 10)}
    return Fingerprint(export_id, title, frozenset(r for it in items for r in it.release_ids),
                       frozenset(keys), frozenset(numbers))


def differencing(scan: Scan) -> RuleResult:
    """Overlap with the workspace's earlier approved exports (same releases, groups or
    numbers): together they could reveal a small group."""
    mine, ctx = scan.fingerprint, scan.ctx
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
