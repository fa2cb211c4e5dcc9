"""What the console's query log and budget pages show, worked out from records and
balances (pure: no request, no database; the handlers in ``console`` fetch, these shape).

The query log's rows fold long text (``audit_pages.fold``) and take an outcome's SQL from
its charge record; the budget chart's bars link to each member's queries.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

from .. import audit, audit_pages
from ..report import PALETTE

QUERY_KINDS = ("query.", *sorted(k for k in audit.KINDS if k.startswith("query.")))


def budget_chart(rows: Sequence[tuple[str, float, float]],
                 link: Callable[[str], str] | None = None) -> dict[str, Any]:
    """Horizontal bars: epsilon spent of each member's total (red from 90 %); each bar
    links to the member's queries when ``link`` is given. Names are never cut: the label
    column is as wide as the longest (member names have at most 32 characters)."""
    row, bar_w, top = 26, 420, 8
    label_w = max(120, round(7.3 * max((len(m) for m, _, _ in rows), default=0)) + 16)
    bars = []
    for i, (member, spent, total) in enumerate(rows):
        frac = min(spent / total, 1.0) if total > 0 else 1.0
        bars.append({"y": top + i * row + 4, "text_y": top + i * row + 17,
                     "w": f"{bar_w * frac:.1f}",
                     "colour": PALETTE[5] if frac >= 0.9 else PALETTE[0],
                     "member": member, "spent": spent, "total": total,
                     "href": link(member) if link else None})
    return {"width": label_w + bar_w + 190, "height": top * 2 + row * len(rows),
            "label_x": label_w - 8, "bar_x": label_w, "bar_w": bar_w, "bar_h": row - 8,
            "value_x": label_w + bar_w + 8, "bars": bars}


def queries_link(base: str, workspace: str, member: str) -> str:
    """The query log narrowed to one member of one workspace."""
    return f"{base}queries?{urlencode({'workspace': workspace, 'member': member})}"


def page_link(path: str, form: dict[str, str], **cursor: int) -> str:
    """The query log with the same filters, at another page."""
    args = {k: v for k, v in form.items() if v} | {k: str(v) for k, v in cursor.items()}
    return f"{path}?{urlencode(args)}" if args else path


LOG_FORM = ("workspace", "member", "kind", "since", "until", "text")


def log_context(base: str, form: dict[str, str], pg: audit_pages.Page,
                charges: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What ``console/queries.html`` shows besides the workspace names: the form as typed,
    the page's rows and the links to the newest, newer and older pages."""
    form = {k: form.get(k, "") for k in LOG_FORM}
    link = functools.partial(page_link, base + "queries", form)
    return {"kinds": QUERY_KINDS[1:], "form": form, "page": pg,
            "per_page": audit_pages.PAGE_ROWS, "rows": log_rows(pg.records, charges),
            "newest": link() if pg.newer is not None else None,
            "newer": link(after=pg.newer) if pg.newer is not None else None,
            "older": link(before=pg.older) if pg.older is not None else None}


OUTCOME_FIELDS = ("release_id", "rows", "rule", "error_code", "dummy", "charge_id", "delta")


NAME_SHOWN = 80  # names are short by rule; an older or hostile one is cut on the page


def _name(value: Any) -> Any:
    """A workspace, member or actor name as the log page shows it (the record page shows
    it whole)."""
    if isinstance(value, str) and len(value) > NAME_SHOWN:
        return value[:NAME_SHOWN - 1] + "…"
    return value


def log_rows(records: Sequence[dict[str, Any]],
             charges: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """What the query log shows of each record: long text folded (``audit_pages.fold``),
    the SQL of an outcome taken from its charge record (and which record that is)."""
    out = []
    for r in records:
        charge = charges.get(str(r.get("charge_id"))) if not r.get("sql") else None
        out.append({
            "seq": r.get("seq"), "time": r.get("time"), "kind": str(r.get("kind")),
            "workspace": _name(r.get("workspace")), "member": _name(r.get("member")),
            "actor": _name(r.get("actor")), "epsilon": r.get("epsilon"),
            **{k: r.get(k) for k in OUTCOME_FIELDS},
            "sql": audit_pages.fold(r.get("sql") or (charge or {}).get("sql")),
            "sql_from": charge.get("seq") if charge and charge.get("seq") != r.get("seq")
            else None,
            "message": audit_pages.fold(r.get("message")),
            "rewritten": audit_pages.fold(r.get("rewritten_sql"), inline=0)})
    return out
