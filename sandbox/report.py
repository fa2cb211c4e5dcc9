"""The monthly audit report of one workspace: one self-contained HTML page to file.

Pure: ``render`` takes audit record dicts (as ``State.records`` yields them), the
verification report of the whole log, the workspace and the period, and returns HTML.
Inline CSS and inline SVG charts only (no scripts, no external URLs), so the page reads
the same offline in ten years. The page is the template ``templates/report.html``, which
escapes every piece of text: SQL, member names and refusal messages are untrusted input.
This module works out what it shows (counts, charges, chart geometry).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .audit import VerifyReport
from .errors import InputError

DECISIONS = (
    ("query.answered", "answered"),
    ("query.refused", "refused"),
    ("query.failed", "failed"),
    ("query.interrupted", "interrupted"),
    ("query.cancelled", "cancelled"),
    ("query.replayed", "replayed (free)"),
)
# Okabe-Ito: distinguishable with colour-blindness, readable on white.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000",
           "#999933")
DASHES = ("", "6 3", "2 3")
REFUSALS_LISTED = 500  # the newest refusals of the period listed with their SQL
_PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")

Record = dict[str, Any]


def period_bounds(period: str) -> tuple[dt.datetime, dt.datetime]:
    """``YYYY-MM`` -> (first instant of the month, first instant of the next), in UTC."""
    m = _PERIOD.match(period)
    if not m:
        raise InputError(f"--period {period!r} is not a month",
                         "write the period as YYYY-MM, e.g. --period 2026-11")
    start = dt.datetime(int(m[1]), int(m[2]), 1, tzinfo=dt.UTC)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    return start, end


def key_fingerprint(public_hex: str) -> str:
    """A short, comparable name of an Ed25519 public key (first 128 bits of its SHA-256)."""
    try:
        raw = bytes.fromhex(public_hex)
    except ValueError:
        return "(not a hex key)"
    digest = hashlib.sha256(raw).hexdigest()[:32]
    return "SHA256:" + ":".join(digest[i:i + 4] for i in range(0, 32, 4))


def parse_time(text: Any) -> dt.datetime | None:
    try:
        t = dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def short_time(text: Any) -> str:
    t = parse_time(text)
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if t else str(text)


def fmt_eps(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, int | float) and not isinstance(x, bool) else "-"


def fmt_delta(x: Any) -> str:
    return f"{x:.2g}" if isinstance(x, int | float) and not isinstance(x, bool) else "-"


# -- what the records say -----------------------------------------------------------------
@dataclass
class Charge:
    time: dt.datetime
    member: str
    epsilon: float
    delta: float


def charges(records: Iterable[Record]) -> list[Charge]:
    """Budget charged, one entry per query.charged record that was not cancelled."""
    recs = list(records)
    cancelled = {r.get("charge_id") for r in recs if r.get("kind") == "query.cancelled"}
    out = []
    for r in recs:
        t = parse_time(r.get("time"))
        if r.get("kind") == "query.charged" and r.get("charge_id") not in cancelled and t:
            out.append(Charge(t, str(r.get("member")), float(r.get("epsilon") or 0),
                              float(r.get("delta") or 0)))
    return sorted(out, key=lambda c: c.time)


def decisions(records: Iterable[Record]) -> dict[str, int]:
    counts = Counter(r.get("kind") for r in records)
    return {label: counts.get(kind, 0) for kind, label in DECISIONS}


def sql_by_charge(records: Iterable[Record]) -> dict[str, str]:
    return {r["charge_id"]: str(r.get("sql") or "") for r in records
            if r.get("kind") == "query.charged" and r.get("charge_id")}


def of_kind(records: Iterable[Record], *prefixes: str) -> list[Record]:
    return [r for r in records if str(r.get("kind", "")).startswith(prefixes)]


# -- SVG charts -----------------------------------------------------------------------------
def nice_step(span: float, ticks: int = 4) -> float:
    raw = max(span, 1e-12) / ticks
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * power:
            return m * power
    return 10 * power  # pragma: no cover


def text_width(chars: int) -> int:
    """Pixels ``chars`` characters take in the charts' 12 px monospace (names are never
    cut: the chart grows instead)."""
    return round(7.3 * chars)


def bar_chart(items: Sequence[tuple[str, int]], title: str) -> dict[str, Any]:
    """Horizontal bars, one row per (label, count): geometry for ``charts.html``."""
    row, bar_w, top = 26, 420, 8
    label_w = max(120, text_width(max((len(label) for label, _ in items), default=0)) + 16)
    biggest = max((n for _, n in items), default=1) or 1
    bars = []
    for i, (label, n) in enumerate(items):
        y = top + i * row
        w = max(bar_w * n / biggest, 2)
        bars.append({"y": y + 4, "text_y": y + 17, "w": f"{w:.1f}", "n_x": f"{label_w + w + 6:.1f}",
                     "label": label, "n": n})
    return {"width": label_w + bar_w + 60, "height": top * 2 + row * len(items),
            "title": title, "label_x": label_w - 8, "bar_x": label_w, "bar_h": row - 8,
            "colour": PALETTE[5], "bars": bars}


XScale = Callable[[dt.datetime], float]  # a time to its x on the chart
YScale = Callable[[float], float]  # an epsilon to its y


def _step_points(items: Sequence[Charge], x: XScale, y: YScale, x_end: float) -> str:
    total, pts = 0.0, [(x(items[0].time), y(0.0))]
    for c in items:
        px = x(c.time)
        pts.append((px, y(total)))
        total += c.epsilon
        pts.append((px, y(total)))
    pts.append((max(x_end, pts[-1][0]), y(total)))
    return " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)


def _markers(items: Sequence[Charge], x: XScale, y: YScale) -> list[dict[str, Any]]:
    total, out = 0.0, []
    for c in items:
        total += c.epsilon
        out.append({"x": f"{x(c.time):.1f}", "y": f"{y(total):.1f}",
                    "when": f"{c.time:%Y-%m-%d %H:%M}", "epsilon": c.epsilon, "total": total})
    return out


def spend_chart(items: Sequence[Charge], start: dt.datetime, end: dt.datetime,
                until: dt.datetime, ceilings: Mapping[str, float] | None = None
                ) -> dict[str, Any]:
    """Cumulative epsilon charged per member over the period, one step line each, and a
    dashed line at each budget ceiling (``ceilings``: member -> epsilon total) of a
    member on the chart: geometry for ``charts.html``."""
    by_member: dict[str, list[Charge]] = defaultdict(list)
    for c in items:
        by_member[c.member].append(c)
    order = sorted(by_member, key=lambda m: (-sum(c.epsilon for c in by_member[m]), m))
    levels: dict[float, list[str]] = defaultdict(list)
    for m in order:
        total = (ceilings or {}).get(m)
        if total is not None and math.isfinite(total) and total > 0:
            levels[float(total)].append(m)
    labels = {t: f"budget {fmt_eps(t)}: " + (", ".join(names) if len(names) <= 3 else
                                            f"{len(names)} members")
              for t, names in levels.items()}
    legend = max([len(m) for m in order] + [len(label) for label in labels.values()])
    left, right, top, bottom, w, h = 64, text_width(legend) + 56, 14, 40, 640, 260
    width, height = left + w + right, top + h + bottom
    peak = max([sum(c.epsilon for c in v) for v in by_member.values()] + list(levels))
    step = nice_step(peak)
    ymax = step * max(math.ceil(peak / step), 1)
    span = (end - start).total_seconds()

    def x(t: dt.datetime) -> float:
        return left + w * min(max((t - start).total_seconds() / span, 0.0), 1.0)

    def y(v: float) -> float:
        return top + h - h * v / ymax

    grid = [{"y": f"{y(i * step):.1f}", "text_y": f"{y(i * step) + 4:.1f}",
             "label": f"{i * step:g}"} for i in range(round(ymax / step) + 1)]
    days = [{"x": f"{x(t):.1f}", "label": f"{t:%b} {t.day}"}
            for day in (1, 8, 15, 22, 29) if day <= (end - start).days
            for t in [start + dt.timedelta(days=day - 1)]]
    x_end = x(min(until, end))
    members = []
    for i, member in enumerate(order):
        members.append({
            "member": member, "colour": PALETTE[i % len(PALETTE)],
            "dash": DASHES[i // len(PALETTE) % len(DASHES)],
            "spent": sum(c.epsilon for c in by_member[member]),
            "points": _step_points(by_member[member], x, y, x_end),
            "marks": _markers(by_member[member], x, y), "legend_y": top + 10 + i * 20})
    base_y = top + 10 + len(members) * 20 + 8
    limits = [{"y": f"{y(total):.1f}", "total": total, "members": ", ".join(names),
               "label": labels[total], "legend_y": base_y + i * 20}
              for i, (total, names) in enumerate(sorted(levels.items()))]
    return {"width": width, "height": max(height, base_y + 20 * len(limits)), "left": left,
            "right": left + w, "top": top, "bottom": top + h, "mid_x": left + w / 2,
            "mid_y": top + h / 2, "legend_x": left + w + 16, "grid": grid, "days": days,
            "members": members, "limits": limits}


# -- the page ------------------------------------------------------------------------------
def _refusals(records: Sequence[Record]) -> dict[str, Any] | None:
    refused = of_kind(records, "query.refused")
    if not refused:
        return None
    by_rule = Counter(str(r.get("rule")) for r in refused)
    example = {str(r.get("rule")): str(r.get("message") or "") for r in refused}
    ranked = sorted(by_rule.items(), key=lambda kv: (-kv[1], kv[0]))
    listed = refused[-REFUSALS_LISTED:][::-1]
    return {"rows": [(rule, n, f"{100 * n / len(refused):.0f}%", example[rule])
                     for rule, n in ranked],
            "chart": bar_chart(ranked, "Refusals by rule"),
            "listed": [(r, fold_text(r.get("sql"))) for r in listed],
            "unlisted": len(refused) - len(listed)}


def fold_text(text: Any, inline: int = 240) -> dict[str, Any]:
    """Long text for a page to fold: a one-line summary, and all of it behind it."""
    text = "" if text is None else str(text)
    summary = " ".join(text[:240].split())[:120].rstrip() + "…" if len(text) > inline else ""
    return {"text": text, "summary": summary, "length": len(text)}


def _spending(spent: Sequence[Charge], period: str, generated_at: dt.datetime,
              budgets: Mapping[str, Any]) -> dict[str, Any]:
    """Each member's charges in the period beside their budget and what is left now;
    the chart when anything was charged."""
    start, end = period_bounds(period)
    per: dict[str, list[Charge]] = defaultdict(list)
    for c in spent:
        per[c.member].append(c)
    members = sorted(set(per) | set(budgets),
                     key=lambda m: (-sum(c.epsilon for c in per.get(m, [])), m))
    rows = []
    for m in members:
        b = budgets.get(m)
        rows.append({"member": m, "charges": len(per.get(m, [])),
                     "epsilon": sum(c.epsilon for c in per.get(m, [])),
                     "delta": sum(c.delta for c in per.get(m, [])),
                     "budget": None if b is None else b.epsilon_total,
                     "left": None if b is None else b.epsilon_remaining,
                     "delta_budget": None if b is None else b.delta_total})
    total = {"charges": sum(r["charges"] for r in rows),
             "epsilon": sum(r["epsilon"] for r in rows),
             "delta": sum(r["delta"] for r in rows)}
    chart = spend_chart(spent, start, end, generated_at,
                        {m: b.epsilon_total for m, b in budgets.items()}) if spent else None
    return {"chart": chart, "rows": rows, "total": total}


def operation_summary(r: Record) -> str:
    kind = r.get("kind")
    if kind == "key.rotated":
        retired = ", ".join(map(str, r.get("retired") or [])) or "-"
        return f"new key {r.get('new_key')}, retired {retired}, {r.get('rewrapped')} re-wrapped"
    if kind == "key.destroyed":
        return f"key {r.get('key_id')}"
    if kind == "dataset.added":
        return f"{r.get('dataset')} version {r.get('version')}, {r.get('rows')} rows, " \
               f"sha256 {r.get('sha256')}"
    if kind == "dataset.removed":
        return f"{r.get('dataset')} version(s) {', '.join(map(str, r.get('versions') or []))}"
    return ""


def render(records: Iterable[Record], verification: VerifyReport, workspace: str, period: str,
           *, generated_at: dt.datetime | None = None, public_key: str | None = None,
           checkpoint: dict[str, Any] | None = None,
           budgets: Mapping[str, Any] | None = None) -> str:
    """The report as one HTML string (records: the workspace's period, plus platform ops;
    ``budgets``: each member's balance now, as the ledger gives it, with
    ``epsilon_total``, ``epsilon_remaining`` and ``delta_total``)."""
    from .templates import render as render_template

    recs = sorted(records, key=lambda r: int(r.get("seq") or 0))
    now = generated_at or dt.datetime.now(dt.UTC)
    spent = charges(recs)
    start, end = period_bounds(period)
    outcomes = {k for k, _ in DECISIONS}
    open_ids = ({r.get("charge_id") for r in recs if r.get("kind") == "query.charged"}
                - {r.get("charge_id") for r in recs if r.get("kind") in outcomes})
    return render_template(
        "report.html", workspace=workspace, period=period, first_day=f"{start:%Y-%m-%d}",
        last_day=f"{end - dt.timedelta(days=1):%Y-%m-%d}",
        generated_at=now.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        key=key_fingerprint(public_key) if public_key else None,
        verification=verification, decisions=decisions(recs),
        epsilon_charged=sum(c.epsilon for c in spent), open_charges=len(open_ids),
        refusals=_refusals(recs), spending=_spending(spent, period, now, budgets or {}),
        releases=of_kind(recs, "query.answered"), sql=sql_by_charge(recs),
        exports=of_kind(recs, "export."), budget_changes=of_kind(recs, "budget.changed"),
        platform=[(r, operation_summary(r)) for r in of_kind(recs, "key.", "dataset.")],
        checkpoint=checkpoint,
        checkpoint_json=json.dumps(checkpoint, indent=2, ensure_ascii=False)
        if checkpoint is not None else "")
