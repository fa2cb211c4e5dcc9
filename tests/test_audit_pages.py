"""The query log's pages (sandbox.audit_pages) on a real state database of thousands of
records: every filter narrows the query, keyset pages cover the matching records exactly
once in order, long SQL is folded, and the first page stays small.

The console's pages in a browser, on a real hub: tests/test_console_queries.py.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sandbox import audit_pages as ap
from sandbox.audit_pages import Filters
from sandbox.service import console, console_views
from sandbox.state import State

KEY = Ed25519PrivateKey.generate()
T0 = dt.datetime(2026, 9, 1, tzinfo=dt.UTC)
MEMBERS = ("ana", "bo", "a_member_with_a_long_name_32chr")
BIG = "SELECT 'it''s 100% \"odd\"_name', \n" + ",\n".join(
    f"  income_{i} * 2 AS c{i}" for i in range(900)) + "\nFROM persons"  # ~20 kB


def fill(state: State, n: int, seed: int = 7) -> list[dict[str, Any]]:
    """``n`` query records (charges with their outcomes, refusals with big SQL) over 30
    days in two workspaces; returns them as stored."""
    rnd = random.Random(seed)
    with state.transaction() as con:
        i = 0
        while i < n:
            ws = "ws-a" if rnd.random() < 0.7 else "ws-b"
            member = rnd.choice(MEMBERS)
            at = (T0 + dt.timedelta(minutes=i * 30 * 24 * 60 // n)).isoformat(
                timespec="microseconds")
            if rnd.random() < 0.15:
                sql = BIG if rnd.random() < 0.5 else f"SELECT name FROM persons -- {i}"
                state.append(con, "query.refused", workspace=ws, member=member, sql=sql,
                             rule="gate.row_level_output", message="no raw rows " * 30,
                             time=at)
                i += 1
                continue
            cid = f"charge{i:06d}"
            state.append(con, "query.charged", workspace=ws, member=member, charge_id=cid,
                         sql=f"SELECT district, count(*) FROM persons WHERE n > {i} "
                             "GROUP BY district", epsilon=0.1, delta=0.0, time=at)
            outcome = rnd.choice(["query.answered"] * 8 + ["query.failed"])
            extra = ({"release_id": f"rel{i}", "rows": 5} if outcome == "query.answered"
                     else {"error_code": "engine.timeout"})
            state.append(con, outcome, workspace=ws, member=member, charge_id=cid,
                         epsilon=0.1, time=at, **extra)
            i += 2
        state.append(con, "budget.changed", workspace="ws-a", member="ana", actor="op",
                     operation="set", epsilon_total=5.0, delta_total=1e-6, refresh="monthly")
    return list(state.records())


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[State, list[dict]]]:
    s = State(tmp_path_factory.mktemp("pages") / "state.sqlite", KEY)
    records = fill(s, 5000)
    yield s, records
    s.close()


def matching(records: list[dict[str, Any]], f: Filters) -> list[int]:
    """What the filters mean, in Python: the matching seqs, newest first."""
    def ok(r: dict[str, Any]) -> bool:
        kind = r["kind"]
        return ((f.workspace is None or r["workspace"] == f.workspace)
                and (f.member is None or r["member"] == f.member)
                and (kind.startswith(f.kind) if f.kind.endswith(".") else kind == f.kind)
                and (f.since is None or r["time"] >= f.since)
                and (f.until is None or r["time"] < f.until)
                and (f.text is None or f.text.lower() in str(r.get("sql", "")).lower()
                     or f.text.lower() in str(r.get("release_id", "")).lower()))
    return [r["seq"] for r in reversed(records) if ok(r)]


def walk(state: State, f: Filters, rows: int) -> tuple[list[int], list[ap.Page]]:
    seqs, pages, before = [], [], None
    while True:
        pg = ap.page(state.con, f, before=before, rows=rows)
        pages.append(pg)
        seqs += [r["seq"] for r in pg.records]
        assert len(pages) < 1000
        if pg.older is None:
            return seqs, pages
        before = pg.older


FILTERS = [
    Filters(),
    Filters(member="bo"),
    Filters(workspace="ws-b", member="ana"),
    Filters(kind="query.refused"),
    Filters(kind="query.answered", member="a_member_with_a_long_name_32chr"),
    Filters(since=(T0 + dt.timedelta(days=3)).isoformat(timespec="microseconds"),
            until=(T0 + dt.timedelta(days=4, hours=5)).isoformat(timespec="microseconds")),
    Filters(text="rel42"),
    Filters(member="nobody"),
]


@pytest.mark.parametrize("f", FILTERS, ids=[str(i) for i in range(len(FILTERS))])
def test_pages_cover_the_matching_records_once_newest_first(
        filled: tuple[State, list[dict]], f: Filters) -> None:
    state, records = filled
    expected = matching(records, f)
    seqs, pages = walk(state, f, rows=97)
    assert seqs == expected
    assert all(pg.matching == len(expected) and not pg.more for pg in pages)
    assert all(len(pg.records) == 97 for pg in pages[:-1])
    assert pages[0].newer is None
    # back again: the newer links lead to the same pages, then to the newest page
    for older_page, page in zip(pages[1:], pages[:-1], strict=True):
        assert older_page.newer is not None
        back = ap.page(state.con, f, after=older_page.newer, rows=97)
        assert [r["seq"] for r in back.records] == [r["seq"] for r in page.records]
        assert back.older == page.older


def test_filters_are_conditions_of_the_query(filled: tuple[State, list[dict]]) -> None:
    """Nothing is filtered after reading: the SQL says it all (and only portable SQL)."""
    conds, args = Filters(workspace="w", member="m", kind="query.", since="a", until="b",
                          text='50%_"x"').where()
    assert conds == ["workspace = ?", "member = ?", "kind LIKE ? ESCAPE '\\'", "time >= ?",
                     "time < ?", "LOWER(body) LIKE LOWER(?) ESCAPE '\\'"]
    assert args == ["w", "m", "query.%", "a", "b", '%50\\%\\_\\\\"x\\\\"%']


def test_text_is_matched_literally_and_in_any_case(filled: tuple[State, list[dict]]) -> None:
    state, records = filled
    big = [r["seq"] for r in reversed(records) if r.get("sql") == BIG]
    assert big
    for text in ("100% \"ODD\"_NAME", "it''s 100%", "INCOME_899 * 2"):
        assert walk(state, Filters(text=text), 500)[0] == big, text
    for text in ("100%%", "_odd", "it's 100%"):  # literal: no wildcards
        assert ap.page(state.con, Filters(text=text)).records == [], text


def test_the_count_stops_at_its_cap(filled: tuple[State, list[dict]]) -> None:
    state, records = filled
    queries = sum(r["kind"].startswith("query.") for r in records)
    assert ap.count(state.con, Filters()) == (queries, False)
    assert ap.count(state.con, Filters(), cap=100) == (100, True)
    assert ap.count(state.con, Filters(kind="budget.changed")) == (1, False)


def test_a_page_finds_the_sql_of_outcomes_on_their_charge(
        filled: tuple[State, list[dict]]) -> None:
    state, records = filled
    pg = ap.page(state.con, Filters(kind="query.answered", member="bo"), rows=50)
    charges = ap.charge_records(state.con, pg.records)
    by_seq = {r["seq"]: r for r in records}
    for r in pg.records:
        charge = charges[r["charge_id"]]
        assert charge["kind"] == "query.charged" and charge["seq"] < r["seq"]
        assert by_seq[charge["seq"]] == charge and charge["member"] == "bo"
    rows = console_views.log_rows(pg.records, charges)
    assert all(row["sql"].text.startswith("SELECT district") and row["sql_from"]
               for row in rows)
    # a charge beyond the window is not searched for
    far = {"kind": "query.answered", "charge_id": "charge000000", "seq": 10 ** 6,
           "workspace": records[0]["workspace"], "member": records[0]["member"]}
    assert ap.charge_records(state.con, [far]) == {}


def test_one_record_and_the_others_of_its_charge(filled: tuple[State, list[dict]]) -> None:
    state, records = filled
    answered = next(r for r in records if r["kind"] == "query.answered")
    assert ap.one(state.con, answered["seq"]) == answered
    others = ap.related(state.con, answered)
    assert [(r["kind"], r["charge_id"]) for r in others] == [
        ("query.charged", answered["charge_id"])]
    budget = records[-1]
    assert budget["kind"] == "budget.changed"
    assert ap.one(state.con, budget["seq"]) is None  # the query log shows query records only
    assert ap.one(state.con, 10 ** 9) is None


def test_long_text_is_folded() -> None:
    short = ap.fold("SELECT 1")
    assert (short.text, short.folded, short.cut, short.length) == ("SELECT 1", False, False, 8)
    big = ap.fold(BIG)
    assert big.folded and big.cut and big.length == len(BIG)
    assert big.text == BIG[:ap.SHOWN_CHARS] and len(big.summary) <= ap.SUMMARY_CHARS + 1
    assert "\n" not in big.summary and big.summary.endswith("…")
    assert ap.fold(None).length == 0


def test_the_first_page_is_small_however_long_the_sql(filled: tuple[State, list[dict]]) -> None:
    """5,000 records, some refusals with 20 kB of SQL: the first page (and a page of only
    such refusals) stays far below what the old page weighed (5 MB)."""
    state, _ = filled
    for f in (Filters(), Filters(kind="query.refused", text="income_1 ")):
        pg = ap.page(state.con, f)
        assert any(r.get("sql") == BIG for r in pg.records)
        html = console.show_page(
            "console/queries.html", "/services/sandbox/", "Query log", "auditor", "queries",
            names=["ws-a", "ws-b"], **console_views.log_context(
                "/services/sandbox/console/", {}, pg, ap.charge_records(state.con,
                                                                         pg.records)))
        size = len(html.encode())
        assert size < 300_000, size
        assert BIG not in html and html.count("The whole text (") >= 1
        assert html.count("<tr>") == len(pg.records) + 1
