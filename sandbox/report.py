"""The monthly audit report of one workspace: one self-contained HTML page to file.

Pure: ``render`` takes audit record dicts (as ``State.records`` yields them), the
verification report of the whole log, the workspace and the period, and returns HTML.
Inline CSS and inline SVG charts only (no scripts, no external URLs), so the page reads
the same offline in ten years. Every piece of text is escaped: SQL, member names and
refusal messages are untrusted input.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
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


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


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


def bar_chart(items: Sequence[tuple[str, int]], title: str) -> str:
    """Horizontal bars: one row per (label, count)."""
    row, label_w, bar_w, top = 26, 230, 420, 8
    width, height = label_w + bar_w + 60, top * 2 + row * len(items)
    biggest = max((n for _, n in items), default=1) or 1
    parts = [f'<svg class="chart" role="img" '
             f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
             f"<title>{esc(title)}</title>"]
    for i, (label, n) in enumerate(items):
        y = top + i * row
        w = max(bar_w * n / biggest, 2)
        shown = label if len(label) <= 34 else label[:33] + "…"
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end" class="mono">{esc(shown)}'
            f"</text>"
            f'<rect x="{label_w}" y="{y + 4}" width="{w:.1f}" height="{row - 8}" '
            f'fill="{PALETTE[5]}"><title>{esc(label)}: {n}</title></rect>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 17}">{n}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _step_points(items: Sequence[Charge], x, y, x_end: float) -> str:  # type: ignore[no-untyped-def]
    total, pts = 0.0, [(x(items[0].time), y(0.0))]
    for c in items:
        px = x(c.time)
        pts.append((px, y(total)))
        total += c.epsilon
        pts.append((px, y(total)))
    pts.append((max(x_end, pts[-1][0]), y(total)))
    return " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)


def _markers(items: Sequence[Charge], member: str, colour: str, x, y) -> str:  # type: ignore[no-untyped-def]
    total, out = 0.0, []
    for c in items:
        total += c.epsilon
        out.append(f'<circle cx="{x(c.time):.1f}" cy="{y(total):.1f}" r="3" fill="{colour}">'
                   f"<title>{esc(member)} {c.time:%Y-%m-%d %H:%M} UTC: +{fmt_eps(c.epsilon)}, "
                   f"total {fmt_eps(total)}</title></circle>")
    return "".join(out)


def spend_chart(items: Sequence[Charge], start: dt.datetime, end: dt.datetime,
                until: dt.datetime) -> str:
    """Cumulative epsilon charged per member over the period: one step line each."""
    left, right, top, bottom, w, h = 64, 200, 14, 40, 640, 260
    width, height = left + w + right, top + h + bottom
    by_member: dict[str, list[Charge]] = defaultdict(list)
    for c in items:
        by_member[c.member].append(c)
    order = sorted(by_member, key=lambda m: (-sum(c.epsilon for c in by_member[m]), m))
    peak = max(sum(c.epsilon for c in v) for v in by_member.values())
    step = nice_step(peak)
    ymax = step * max(math.ceil(peak / step), 1)
    span = (end - start).total_seconds()

    def x(t: dt.datetime) -> float:
        return left + w * min(max((t - start).total_seconds() / span, 0.0), 1.0)

    def y(v: float) -> float:
        return top + h - h * v / ymax

    parts = [f'<svg class="chart" role="img" '
             f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
             "<title>Cumulative epsilon charged per member</title>"]
    for i in range(round(ymax / step) + 1):
        v = i * step
        parts.append(f'<line x1="{left}" x2="{left + w}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                     f'class="grid"/><text x="{left - 6}" y="{y(v) + 4:.1f}" '
                     f'text-anchor="end">{v:g}</text>')
    days = (end - start).days
    for day in (1, 8, 15, 22, 29):
        if day <= days:
            t = start + dt.timedelta(days=day - 1)
            parts.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top}" y2="{top + h}" '
                         f'class="grid"/><text x="{x(t):.1f}" y="{top + h + 16}" '
                         f'text-anchor="middle">{t:%b} {t.day}</text>')
    parts.append(f'<line x1="{left}" x2="{left + w}" y1="{top + h}" y2="{top + h}" '
                 f'class="axis"/><line x1="{left}" x2="{left}" y1="{top}" y2="{top + h}" '
                 f'class="axis"/><text x="{left + w / 2}" y="{height - 4}" '
                 f'text-anchor="middle">time (UTC)</text><text x="14" y="{top + h / 2}" '
                 f'text-anchor="middle" transform="rotate(-90 14 {top + h / 2})">'
                 "epsilon (cumulative)</text>")
    x_end = x(min(until, end))
    for i, member in enumerate(order):
        colour, dash = PALETTE[i % len(PALETTE)], DASHES[i // len(PALETTE) % len(DASHES)]
        spent = sum(c.epsilon for c in by_member[member])
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash_attr} '
                     f'points="{_step_points(by_member[member], x, y, x_end)}">'
                     f"<title>{esc(member)}: epsilon {fmt_eps(spent)}</title></polyline>")
        parts.append(_markers(by_member[member], member, colour, x, y))
        ly = top + 10 + i * 20
        shown = member if len(member) <= 20 else member[:19] + "…"
        parts.append(f'<line x1="{left + w + 16}" x2="{left + w + 40}" y1="{ly}" y2="{ly}" '
                     f'stroke="{colour}" stroke-width="3"{dash_attr}/>'
                     f'<text x="{left + w + 46}" y="{ly + 4}">{esc(shown)}'
                     f"<title>{esc(member)}: epsilon {fmt_eps(spent)}</title></text>")
    parts.append("</svg>")
    return "".join(parts)


# -- HTML -----------------------------------------------------------------------------------
CSS = """
:root { --ok: #1a7f37; --bad: #b42318; --muted: #57606a; --line: #d0d7de; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "Noto Sans", "Noto Sans CJK SC",
       sans-serif; color: #1f2328; margin: 0; background: #f6f8fa; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 1px solid
     var(--line); }
p.sub { color: var(--muted); margin: 0 0 16px; }
dl.meta { display: grid; grid-template-columns: 180px 1fr; gap: 4px 16px; margin: 0; }
dl.meta dt { color: var(--muted); }
dl.meta dd { margin: 0; }
.mono, code { font-family: ui-monospace, "SFMono-Regular", "DejaVu Sans Mono", monospace;
              font-size: 12px; }
code.hash { word-break: break-all; }
.badge { display: inline-block; padding: 1px 10px; border-radius: 10px; color: #fff;
         font-weight: 600; }
.badge.ok { background: var(--ok); } .badge.bad { background: var(--bad); }
.problems { color: var(--bad); margin: 4px 0 0; }
.tiles { display: flex; gap: 12px; flex-wrap: wrap; margin: 8px 0; }
.tile { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 120px; }
.tile b { display: block; font-size: 22px; }
.tile span { color: var(--muted); }
table { border-collapse: collapse; width: 100%; margin: 8px 0; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line);
         vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.sql { max-width: 360px; word-break: break-word; }
td.time { white-space: nowrap; }
svg.chart { display: block; margin: 8px 0; max-width: 100%; height: auto; }
svg.chart text { font: 12px system-ui, "Noto Sans", sans-serif; fill: #1f2328; }
svg.chart text.mono { font: 12px ui-monospace, "DejaVu Sans Mono", monospace; }
svg.chart .grid { stroke: #eaeef2; } svg.chart .axis { stroke: #57606a; }
.none { color: var(--muted); font-style: italic; }
.note { color: var(--muted); font-size: 12px; }
pre { background: #f6f8fa; border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px;
      white-space: pre-wrap; word-break: break-all; }
@media print { body { background: #fff; } main { padding: 0; } h2 { break-after: avoid; }
               tr, svg { break-inside: avoid; } }
"""


def table(headers: Sequence[str], rows: Iterable[Sequence[str]],
          numeric: Sequence[int] = (), sql: Sequence[int] = (), time: bool = False) -> str:
    """An HTML table; headers and cells must already be escaped HTML (``time``: column 0)."""

    def cls(i: int) -> str:
        if i in numeric:
            return ' class="num"'
        return ' class="sql"' if i in sql else ' class="time"' if time and i == 0 else ""

    head = "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def none(text: str) -> str:
    return f'<p class="none">{esc(text)}</p>'


def _header(verification: VerifyReport, workspace: str, period: str,
            generated_at: dt.datetime, public_key: str | None) -> str:
    start, end = period_bounds(period)
    last = end - dt.timedelta(days=1)
    if verification.ok:
        status = '<span class="badge ok">ok</span> every record, the hash chain and every ' \
                 "signed checkpoint match"
    else:
        first = (f" First bad record: #{verification.first_bad}."
                 if verification.first_bad is not None else "")
        items = "".join(f"<li>{esc(p)}</li>" for p in verification.problems)
        status = (f'<span class="badge bad">FAILED</span> {len(verification.problems)} '
                  f'problem(s).{esc(first)}<ul class="problems">{items}</ul>')
    key = (f"<code>{esc(key_fingerprint(public_key))}</code>" if public_key else "-")
    rows = [("Workspace", esc(workspace)),
            ("Period", f"{esc(period)} ({start:%Y-%m-%d} to {last:%Y-%m-%d}, UTC)"),
            ("Generated at", esc(generated_at.astimezone(dt.UTC).strftime(
                "%Y-%m-%d %H:%M:%S UTC"))),
            ("Log size", f"{verification.records:,} records, {verification.checkpoints} signed "
                         "checkpoint(s) checked"),
            ("Root hash", f'<code class="hash">{esc(verification.root_hash)}</code>'),
            ("Signing key", key),
            ("Verification", status)]
    meta = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    return (f"<h1>Audit report: {esc(workspace)}, {esc(period)}</h1>"
            '<p class="sub">Who asked what, what was released, what it cost in privacy, and '
            "what left the platform.</p>"
            f'<dl class="meta">{meta}</dl>')


def _decisions(records: Sequence[Record], spent: Sequence[Charge]) -> str:
    counts = decisions(records)
    tiles = "".join(f'<div class="tile"><b>{n:,}</b><span>{esc(label)}</span></div>'
                    for label, n in counts.items())
    total_eps = sum(c.epsilon for c in spent)
    open_ids = ({r.get("charge_id") for r in records if r.get("kind") == "query.charged"}
                - {r.get("charge_id") for r in records
                   if r.get("kind") in {k for k, _ in DECISIONS}})
    pending = (f'<p class="note">{len(open_ids)} charged quer(ies) have no outcome in this '
               "period yet (running, or their outcome falls in the next period).</p>"
               if open_ids else "")
    return ('<h2 id="decisions">Queries by decision</h2>'
            f'<div class="tiles">{tiles}<div class="tile"><b>{fmt_eps(total_eps)}</b>'
            "<span>epsilon charged</span></div></div>" + pending)


def _refusals(records: Sequence[Record]) -> str:
    refused = of_kind(records, "query.refused")
    out = '<h2 id="refusals">Refusals by rule</h2>'
    if not refused:
        return out + none("No refusals in this period.")
    by_rule = Counter(str(r.get("rule")) for r in refused)
    example = {str(r.get("rule")): str(r.get("message") or "") for r in refused}
    ranked = sorted(by_rule.items(), key=lambda kv: (-kv[1], kv[0]))
    rows = [(f"<code>{esc(rule)}</code>", str(n), f"{100 * n / len(refused):.0f}%",
             esc(example[rule])) for rule, n in ranked]
    return (out + table(["Rule", "Refusals", "Share", "Latest message"], rows, numeric=(1, 2))
            + bar_chart(ranked, "Refusals by rule"))


def _spending(spent: Sequence[Charge], period: str, generated_at: dt.datetime) -> str:
    out = '<h2 id="epsilon">Epsilon spent per member</h2>'
    if not spent:
        return out + none("No privacy budget was charged in this period.")
    start, end = period_bounds(period)
    per: dict[str, list[Charge]] = defaultdict(list)
    for c in spent:
        per[c.member].append(c)
    rows = [(esc(m), str(len(v)), fmt_eps(sum(c.epsilon for c in v)),
             fmt_delta(sum(c.delta for c in v)))
            for m, v in sorted(per.items(), key=lambda kv: (-sum(c.epsilon for c in kv[1]),
                                                            kv[0]))]
    return (out + spend_chart(spent, start, end, generated_at)
            + table(["Member", "Charges", "Epsilon", "Delta"], rows, numeric=(1, 2, 3))
            + '<p class="note">Charged at reservation, never refunded once execution started '
              "(answered, failed and interrupted queries all cost); cancelled reservations "
              "are left out. Sums of per-query epsilon and delta: for Gaussian queries the "
              "ledger's zCDP accounting can charge less.</p>")


def _releases(records: Sequence[Record]) -> str:
    answered = of_kind(records, "query.answered")
    out = '<h2 id="releases">Answered releases</h2>'
    if not answered:
        return out + none("No answers were released in this period.")
    sql = sql_by_charge(records)
    rows = [(esc(short_time(r.get("time"))), esc(r.get("member")),
             f"<code>{esc(r.get('release_id'))}</code>", fmt_eps(r.get("epsilon")),
             esc(r.get("rows")), f'<code class="hash">{esc(r.get("values_digest"))}</code>',
             f'<code>{esc(sql.get(r.get("charge_id"), "-"))}</code>')
            for r in answered]
    return out + table(["Time (UTC)", "Member", "Release id", "Epsilon", "Rows",
                        "Values digest (SHA-256)", "SQL asked"], rows, numeric=(3, 4),
                       sql=(6,), time=True)


def _exports(records: Sequence[Record]) -> str:
    exports = of_kind(records, "export.")
    out = '<h2 id="exports">Exports</h2>'
    if not exports:
        return out + none("No exports in this period.")
    rows = [(esc(short_time(r.get("time"))), esc(r.get("kind")), esc(r.get("member")),
             esc(r.get("actor"))) for r in exports]  # pragma: no cover - no export kinds yet
    return out + table(["Time (UTC)", "Event", "Member", "Actor"], rows)  # pragma: no cover


def _budget_changes(records: Sequence[Record]) -> str:
    changes = of_kind(records, "budget.changed")
    out = '<h2 id="budget">Budget changes</h2>'
    if not changes:
        return out + none("No budget changes in this period.")
    rows = [(esc(short_time(r.get("time"))), esc(r.get("actor") or "-"), esc(r.get("member")),
             esc(r.get("operation")), fmt_eps(r.get("epsilon_total")),
             fmt_delta(r.get("delta_total")), esc(r.get("refresh"))) for r in changes]
    return out + table(["Time (UTC)", "By", "Member", "Operation", "Epsilon total",
                        "Delta total", "Refresh"], rows, numeric=(4, 5), time=True)


def _platform(records: Sequence[Record]) -> str:
    ops = of_kind(records, "key.", "dataset.")
    out = '<h2 id="platform">Key and dataset operations (whole platform)</h2>'
    if not ops:
        return out + none("No key or dataset operations in this period.")
    rows = [(esc(short_time(r.get("time"))), esc(r.get("kind")), esc(r.get("actor") or "-"),
             esc(operation_summary(r))) for r in ops]
    return out + table(["Time (UTC)", "Event", "By", "Details"], rows, time=True)


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


def _checking(checkpoint: dict[str, Any] | None) -> str:
    out = '<h2 id="checking">Checking this report later</h2>'
    proof = ("<p><code>sandbox audit proof SEQ</code> proves that one record is in the log; "
             "<code>sandbox audit check-proof FILE</code> checks such a proof anywhere, without "
             "keys. Record fields are described in docs/audit-events.md.</p>")
    if checkpoint is None:
        return out + none("No checkpoint was signed: the log failed verification.") + proof
    text = json.dumps(checkpoint, indent=2, ensure_ascii=False)
    return (out + f"<p>The log's signed checkpoint at {esc(checkpoint.get('tree_size'))} records. "
            "Save it as a file and run <code>sandbox audit verify --checkpoint FILE</code> at "
            "any later time: it fails if any of these records was changed, removed or "
            f"reordered since this report was made.</p><pre><code>{esc(text)}</code></pre>"
            + proof)


def render(records: Iterable[Record], verification: VerifyReport, workspace: str, period: str,
           *, generated_at: dt.datetime | None = None, public_key: str | None = None,
           checkpoint: dict[str, Any] | None = None) -> str:
    """The report as one HTML string (records: the workspace's period, plus platform ops)."""
    recs = sorted(records, key=lambda r: int(r.get("seq") or 0))
    now = generated_at or dt.datetime.now(dt.UTC)
    spent = charges(recs)
    body = "".join([
        _header(verification, workspace, period, now, public_key),
        _decisions(recs, spent), _refusals(recs), _spending(spent, period, now),
        _releases(recs), _exports(recs), _budget_changes(recs), _platform(recs),
        _checking(checkpoint),
    ])
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Audit report {esc(workspace)} {esc(period)}</title>"
            f"<style>{CSS}</style></head><body><main>{body}</main></body></html>\n")
