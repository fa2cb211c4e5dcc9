"""Pages of the audit log for people: filters that narrow the SQL query, keyset paging.

The console's query log reads one page at a time: every filter (workspace, member, kind,
time range, text) is a ``WHERE`` condition, and pages follow ``seq`` (``seq < ?`` for older
records, ``seq > ?`` for newer ones), so a page costs the same at record 10 as at record
10 million and never holds the whole log in memory. A record's SQL can be long (refusals
of old versions kept it whole): pages carry a folded excerpt (``fold``) and the whole
text is read one record at a time (``one``).

It works on a DB-API connection the state gives (``State.con``) with portable SQL only:
``?`` placeholders, ``LIKE ... ESCAPE``, ``LOWER``, ``COUNT``, ``ORDER BY seq`` and
``LIMIT``, so the same queries run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

PAGE_ROWS = 100
COUNT_CAP = 10_000  # matching records counted at most (a count is a scan)
CHARGE_WINDOW = 1_000  # records looked back for the charge record of an outcome
INLINE_CHARS = 240  # SQL up to this length is shown whole in the list
SHOWN_CHARS = 600  # longer SQL: this much behind the expander, the rest on its own page
SUMMARY_CHARS = 120  # the expander's one-line summary

Record = dict[str, Any]


@dataclass(frozen=True)
class Filters:
    """What an auditor narrowed the log to; each one a condition of the query."""

    workspace: str | None = None
    member: str | None = None
    kind: str = "query."  # one kind, or a family ending in "."
    since: str | None = None  # the log's time format (audit.parse_when), inclusive
    until: str | None = None  # exclusive
    text: str | None = None  # anywhere in the stored record, any case

    def where(self) -> tuple[list[str], list[Any]]:
        conds, args = [], []
        for col, value in (("workspace", self.workspace), ("member", self.member)):
            if value is not None:
                conds.append(f"{col} = ?")
                args.append(value)
        if self.kind.endswith("."):
            conds.append("kind LIKE ? ESCAPE '\\'")
            args.append(like_escape(self.kind) + "%")
        else:
            conds.append("kind = ?")
            args.append(self.kind)
        if self.since:
            conds.append("time >= ?")
            args.append(self.since)
        if self.until:
            conds.append("time < ?")
            args.append(self.until)
        if self.text:
            # the database folds both sides, with one LOWER whatever its locale
            conds.append("LOWER(body) LIKE LOWER(?) ESCAPE '\\'")
            args.append("%" + like_escape(as_stored(self.text)) + "%")
        return conds, args

    def to_record(self) -> dict[str, Any]:
        """The filters as an ``audit.read`` record keeps them."""
        return asdict(self)


def like_escape(text: str) -> str:
    """``text`` matched literally by ``LIKE ... ESCAPE '\\'``."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def as_stored(text: str) -> str:
    """``text`` as it appears inside a stored record (canonical JSON string escapes), so
    that a search for ``name = "x"`` finds SQL that holds it."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


@dataclass(frozen=True)
class Page:
    records: list[Record]  # newest first
    older: int | None  # pass as ``before`` for the next older page (None: this is the last)
    newer: int | None  # pass as ``after`` for the next newer page (None: this is the newest)
    matching: int  # records matching the filters, counted up to COUNT_CAP
    more: bool  # more than COUNT_CAP match


def _select(con: Any, f: Filters, extra: Sequence[tuple[str, Any]], order: str,
            limit: int) -> list[tuple[int, str]]:
    conds, args = f.where()
    for cond, arg in extra:
        conds.append(cond)
        args.append(arg)
    sql = (f"SELECT seq, body FROM audit_records WHERE {' AND '.join(conds)} "
           f"ORDER BY seq {order} LIMIT ?")
    return [(int(s), str(b)) for s, b in con.execute(sql, [*args, limit]).fetchall()]


def _exists(con: Any, f: Filters, cond: str, seq: int) -> bool:
    conds, args = f.where()
    sql = (f"SELECT seq FROM audit_records WHERE {' AND '.join([*conds, cond])} "
           "ORDER BY seq LIMIT 1")
    return con.execute(sql, [*args, seq]).fetchone() is not None


def count(con: Any, f: Filters, cap: int = COUNT_CAP) -> tuple[int, bool]:
    """(matching records up to ``cap``, whether there are more)."""
    conds, args = f.where()
    sql = (f"SELECT COUNT(*) FROM (SELECT seq FROM audit_records WHERE {' AND '.join(conds)} "
           "LIMIT ?) AS matching")
    n = int(con.execute(sql, [*args, cap + 1]).fetchone()[0])
    return min(n, cap), n > cap


def page(con: Any, f: Filters, *, before: int | None = None, after: int | None = None,
         rows: int = PAGE_ROWS) -> Page:
    """The newest ``rows`` records matching ``f`` (older than ``before``, or the oldest
    ``rows`` newer than ``after``), newest first."""
    matching, more = count(con, f)
    if after is not None:
        got = _select(con, f, [("seq > ?", after)], "ASC", rows + 1)
        if len(got) <= rows:  # the newest records: show a full first page instead
            return page(con, f, rows=rows)
        got = got[:rows][::-1]
        newer: int | None = got[0][0]
        older = got[-1][0] if _exists(con, f, "seq < ?", got[-1][0]) else None
    else:
        extra = [("seq < ?", before)] if before is not None else []
        got = _select(con, f, extra, "DESC", rows + 1)
        older = got[rows - 1][0] if len(got) > rows else None
        got = got[:rows]
        newer = (got[0][0] if got and before is not None
                 and _exists(con, f, "seq > ?", got[0][0]) else None)
    return Page([json.loads(body) for _, body in got], older, newer, matching, more)


def one(con: Any, seq: int, kind: str = "query.") -> Record | None:
    """Record ``seq`` if it is of ``kind`` (a kind or a family ending in ".")."""
    got = _select(con, Filters(kind=kind), [("seq = ?", seq)], "DESC", 1)
    return json.loads(got[0][1]) if got else None


def _of_charge(cid: Any) -> tuple[str, str]:
    """The condition "this record is about charge ``cid``" (its stored key and value)."""
    stored = '"charge_id":' + json.dumps(str(cid), ensure_ascii=False)
    return "body LIKE ? ESCAPE '\\'", "%" + like_escape(stored) + "%"


def charge_records(con: Any, records: Iterable[Record]) -> dict[str, Record]:
    """The ``query.charged`` record of each outcome (answered, failed, ...) in
    ``records``, by charge id: the SQL is on the charge. Outside ``records`` it is looked
    up at most ``CHARGE_WINDOW`` records back, among its member's (it comes just before
    its outcome)."""
    recs = list(records)
    found = {str(r["charge_id"]): r for r in recs
             if r.get("kind") == "query.charged" and r.get("charge_id")}
    for r in recs:
        cid = r.get("charge_id")
        if not cid or str(cid) in found:
            continue
        seq = int(r.get("seq") or 0)
        f = Filters(workspace=r.get("workspace"), member=r.get("member"), kind="query.charged")
        got = _select(con, f, [("seq < ?", seq), ("seq >= ?", seq - CHARGE_WINDOW),
                               _of_charge(cid)], "DESC", 1)
        if got:
            found[str(cid)] = json.loads(got[0][1])
    return found


def related(con: Any, rec: Record, limit: int = 20) -> list[Record]:
    """The other records of ``rec``'s charge (its reservation and outcome), oldest first."""
    cid = rec.get("charge_id")
    if not cid:
        return []
    seq = int(rec.get("seq") or 0)
    f = Filters(workspace=rec.get("workspace"), member=rec.get("member"))
    got = _select(con, f, [("seq >= ?", seq - CHARGE_WINDOW), ("seq <= ?", seq + CHARGE_WINDOW),
                           _of_charge(cid)], "ASC", limit + 1)
    return [json.loads(body) for s, body in got if s != seq][:limit]


# -- what a page shows of long text ---------------------------------------------------------
@dataclass(frozen=True)
class Folded:
    """A long text as a list shows it: whole if short, else a summary line, the first
    ``SHOWN_CHARS`` behind an expander, and the length of the whole."""

    text: str  # what the page carries (all of it when not folded)
    summary: str  # one line for the expander ("" when not folded)
    folded: bool
    cut: bool  # the page does not carry all of it
    length: int


def fold(text: str | None, inline: int = INLINE_CHARS, shown: int = SHOWN_CHARS) -> Folded:
    text = text or ""
    if len(text) <= inline:
        return Folded(text, "", False, False, len(text))
    line = " ".join(text[:SUMMARY_CHARS * 2].split())
    summary = line[:SUMMARY_CHARS].rstrip() + "…"
    return Folded(text[:shown], summary, True, len(text) > shown, len(text))
