"""The automatic checks, on real releases of the tiny demo vault and its identifier index."""

from __future__ import annotations

import io
import json
import struct
import zlib
from dataclasses import replace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatekit import policy
from sandbox.exports import (
    CheckContext,
    FileItem,
    Fingerprint,
    FrameItem,
    IdentifierIndex,
    Limits,
    run_checks,
    state_context,
)
from sandbox.exports.identifiers import normalise
from sandbox.gate import Gate, Release
from sandbox.ledger import SqliteLedger, released_answer, released_answers
from sandbox.state import State

PEOPLE = ("SELECT district, count(*) AS people, avg(income) AS avg_income FROM persons "
          "GROUP BY district")
OLD = ("SELECT education, count(*) AS n, avg(income) AS avg_income FROM persons "
       "WHERE age >= 85 GROUP BY education")


@pytest.fixture(scope="module")
def airlock(tiny_vault, engine, tmp_path_factory):  # type: ignore[no-untyped-def]
    """A workspace 'w' with two answered queries, and its check context."""
    pol = policy(tiny_vault.catalog)
    state = State(tmp_path_factory.mktemp("state") / "state.sqlite",
                  Ed25519PrivateKey.generate())
    ledger = SqliteLedger.open(state, "w", pol.id, pol.budget)
    gate = Gate(pol)
    people = gate.answer(PEOPLE, member="alice", ledger=ledger, executor=engine,
                         request_id="r-people")
    old = gate.answer(OLD, member="bob", ledger=ledger, executor=engine, request_id="r-old")
    index = IdentifierIndex.load(tiny_vault.catalog, tiny_vault.kms, build_missing=False)
    ctx = state_context(state, "w", index, min_group_count=20, gate=gate)
    yield {"ctx": ctx, "people": people, "old": old, "index": index, "state": state}
    state.close()


def frame(rel: Release, name: str = "result", **kw: Any) -> FrameItem:
    return FrameItem(name, tuple(rel.columns), tuple(tuple(r) for r in rel.rows),
                     (rel.release_id,), **kw)


def outcome(report, rule: str) -> str:  # type: ignore[no-untyped-def]
    return report.result(rule).outcome


def test_the_ledger_answers_for_its_released_answers(airlock) -> None:  # type: ignore[no-untyped-def]
    """The airlock reads releases through the ledger (the owner of its tables), by id and
    all at once, only of its own workspace, with the SQL its charge recorded."""
    con, people = airlock["state"].con, airlock["people"]
    got = released_answer(con, "w", people.release_id)
    assert got is not None and got.member == "alice" and got.sql == PEOPLE
    assert got.response["release_id"] == people.release_id
    assert released_answer(con, "other", people.release_id) is None
    assert released_answer(con, "w", "nope") is None
    assert {a.member for a in released_answers(con, "w")} == {"alice", "bob"}
    assert released_answers(con, "other") == []


# -- what passes ---------------------------------------------------------------------------
def test_a_frame_of_released_noisy_values_passes(airlock) -> None:  # type: ignore[no-untyped-def]
    rel = airlock["people"]
    assert any(isinstance(v, float) for r in rel.rows for v in r)
    report = run_checks([frame(rel)], airlock["ctx"])
    assert report.outcome == "pass", report.to_dict()
    assert [r.rule for r in report.results] == ["limits", "types", "identifiers", "provenance",
                                                "small_cells", "human_review", "differencing"]
    assert report.releases[0].release_id == rel.release_id
    assert report.releases[0].epsilon == pytest.approx(0.5)


def test_the_same_values_pass_as_csv_json_and_parquet(airlock) -> None:  # type: ignore[no-untyped-def]
    rel = airlock["people"]
    csv_bytes = frame(rel).data
    records = json.dumps([dict(zip(rel.columns, r, strict=True)) for r in rel.rows]).encode()
    buf = io.BytesIO()
    pq.write_table(pa.table({c: [r[i] for r in rel.rows] for i, c in enumerate(rel.columns)}),
                   buf)
    items = [FileItem("a.csv", csv_bytes, release_ids=(rel.release_id,)),
             FileItem("b.json", records, release_ids=(rel.release_id,)),
             FileItem("c.parquet", buf.getvalue(), release_ids=(rel.release_id,))]
    report = run_checks(items, airlock["ctx"])
    assert report.outcome == "pass", report.to_dict()


def test_rounded_values_pass_and_undeclared_post_processing_needs_review(airlock) -> None:  # type: ignore[no-untyped-def]
    rel = airlock["people"]
    rounded = [[d, n, round(a)] for d, n, a in rel.rows]
    item = FrameItem("rounded", tuple(rel.columns), tuple(map(tuple, rounded)), (rel.release_id,))
    assert run_checks([item], airlock["ctx"]).outcome == "pass"
    percent = [[d, n, a * 100] for d, n, a in rel.rows]
    item = FrameItem("pct", tuple(rel.columns), tuple(map(tuple, percent)), (rel.release_id,))
    assert outcome(run_checks([item], airlock["ctx"]), "provenance") == "review"
    declared = replace(item, postprocessing=("scale:100",))
    assert run_checks([declared], airlock["ctx"]).outcome == "pass"
    total = sum(n for _, n, _ in rel.rows)
    totals = FrameItem("total", ("people",), ((total,),), (rel.release_id,))
    assert outcome(run_checks([totals], airlock["ctx"]), "provenance") == "review"
    assert run_checks([replace(totals, postprocessing=("sum",))], airlock["ctx"]).outcome == \
        "pass"
    share = FrameItem("share", ("district", "share"),
                      tuple((d, n / total) for d, n, _ in rel.rows), (rel.release_id,))
    assert run_checks([replace(share, postprocessing=("ratio",))],
                      airlock["ctx"]).outcome == "pass"


def test_a_frame_without_release_id_is_matched_to_every_release_of_the_workspace(  # type: ignore[no-untyped-def]
        airlock) -> None:
    rel = airlock["people"]
    item = FrameItem("anon", tuple(rel.columns), tuple(tuple(r) for r in rel.rows))
    assert run_checks([item], airlock["ctx"]).outcome == "pass"


# -- provenance ----------------------------------------------------------------------------
def test_a_number_from_no_release_needs_review(airlock) -> None:  # type: ignore[no-untyped-def]
    rel = airlock["people"]
    rows = [list(r) for r in rel.rows]
    rows[2][2] = rows[2][2] + 1234.5  # not a released value
    item = FrameItem("edited", tuple(rel.columns), tuple(map(tuple, rows)), (rel.release_id,))
    report = run_checks([item], airlock["ctx"])
    res = report.result("provenance")
    assert res.outcome == "review" and report.outcome == "review"
    d = res.details["items"]["edited.csv"]
    assert d["unmatched"] == 1 and d["examples"] == [
        {"where": "row 3 column #3", "column": "avg_income", "value": rows[2][2]}]
    # the requester gets the place only (how it is written never depends on the vault)
    seen = report.to_dict("requester")["results"]
    prov = next(r for r in seen if r["rule"] == "provenance")
    assert prov["details"]["items"]["edited.csv"]["examples"] == [{"where": "row 3 column #3"}]


def test_a_release_of_another_workspace_is_unknown(airlock, engine, tiny_vault) -> None:  # type: ignore[no-untyped-def]
    state = airlock["state"]
    pol = policy(tiny_vault.catalog)
    other = Gate(pol).answer(PEOPLE, member="eve", executor=engine, request_id="r-x",
                             ledger=SqliteLedger.open(state, "other", pol.id, pol.budget))
    report = run_checks([frame(other)], airlock["ctx"])
    res = report.result("provenance")
    assert res.outcome == "review"
    assert res.details["unknown_release_ids"] == [other.release_id]
    assert report.releases == ()


def test_text_that_is_not_a_group_key_needs_review(airlock) -> None:  # type: ignore[no-untyped-def]
    rel = airlock["people"]
    rows = [[*r, "looks fine"] for r in rel.rows]
    item = FrameItem("notes", (*rel.columns, "note"), tuple(map(tuple, rows)), (rel.release_id,))
    res = run_checks([item], airlock["ctx"]).result("provenance")
    assert res.outcome == "review"
    assert res.details["items"]["notes.csv"]["unexplained_text"] == len(rows)


# -- identifiers ---------------------------------------------------------------------------
def _variants(value: str) -> st.SearchStrategy[str]:
    def spell(case: str, sep: str, every: int) -> str:
        v = value.upper() if case == "upper" else value.lower() if case == "lower" else value
        if case == "fullwidth":
            v = "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch for ch in v)
        return sep.join(v[i:i + every] for i in range(0, len(v), every))

    return st.builds(spell, st.sampled_from(["same", "upper", "lower", "fullwidth"]),
                     st.sampled_from(["", " ", "-", ".", "_", "/", "  "]),
                     st.integers(1, 5))


@pytest.fixture(scope="module")
def identifier_values(demo_tables) -> list[str]:  # type: ignore[no-untyped-def]
    persons = demo_tables["persons"]
    out = []
    for col in ("name", "id_number", "phone"):
        out += persons.column(col).to_pylist()[:40]
    out += demo_tables["loans"].column("loan_id").to_pylist()[:40]
    return out


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_an_identifier_in_any_column_case_or_spacing_is_blocked(  # type: ignore[no-untyped-def]
        airlock, identifier_values, data) -> None:
    value = data.draw(st.sampled_from(identifier_values))
    spelled = data.draw(_variants(value))
    wrap = data.draw(st.sampled_from(["{}", "name: {}", "({})", "{};", "id={}"]))
    text = wrap.format(spelled)
    rel = airlock["people"]
    rows = [list(r) for r in rel.rows]
    where = data.draw(st.sampled_from(["cell", "new column", "header"]))
    cols = list(rel.columns)
    if where == "cell":
        rows[data.draw(st.integers(0, len(rows) - 1))][data.draw(st.integers(0, 2))] = text
    elif where == "new column":
        cols.append("extra")
        for r in rows:
            r.append(text)
    else:
        cols[data.draw(st.integers(0, 2))] = text
    item = FrameItem("leak", tuple(cols), tuple(map(tuple, rows)), (rel.release_id,))
    report = run_checks([item], airlock["ctx"])
    assert report.outcome == "blocked", (text, report.to_dict())
    assert outcome(report, "identifiers") == "block"
    requester = report.to_dict("requester")
    shown = json.dumps(requester, ensure_ascii=False)
    for secret in (value, normalise(value), spelled):
        assert secret not in shown
        assert secret not in report.result("identifiers").message
    # the requester's view leaves the identifier scan out altogether
    assert "identifiers" not in [r["rule"] for r in requester["results"]]
    assert requester["outcome"] != "blocked"


def test_identifiers_stored_as_numbers_are_found(airlock, demo_tables) -> None:  # type: ignore[no-untyped-def]
    phone = demo_tables["persons"].column("phone").to_pylist()[3]
    rel = airlock["people"]
    for value in (int(phone), float(phone)):
        item = FrameItem("p", ("district", "phone"), (("Siming", value),), (rel.release_id,))
        report = run_checks([item], airlock["ctx"])
        assert report.outcome == "blocked"
        assert phone not in json.dumps(report.to_dict("requester"))


def test_identifiers_are_found_in_every_file_type(airlock, demo_tables) -> None:  # type: ignore[no-untyped-def]
    idn = demo_tables["persons"].column("id_number").to_pylist()[7]
    name = demo_tables["persons"].column("name").to_pylist()[7]
    buf = io.BytesIO()
    pq.write_table(pa.table({"x": [1.0]}).replace_schema_metadata({"owner": idn}), buf)
    files = [
        FileItem("a.csv", f"district,who\nSiming,{name}\n".encode()),
        FileItem("b.json", json.dumps({"rows": [{"id": idn.lower()}]}).encode()),
        FileItem("c.txt", f"The customer's ID is {idn[:6]} {idn[6:]}.\n".encode()),
        FileItem("d.svg", f'<svg xmlns="http://www.w3.org/2000/svg"><text>{name}</text>'
                          f'</svg>'.encode()),
        FileItem("e.png", png(text=("Author", name))),
        FileItem("f.parquet", buf.getvalue()),
    ]
    for f in files:
        report = run_checks([f], airlock["ctx"])
        assert outcome(report, "identifiers") == "block", f.name
        assert report.outcome == "blocked"


def test_a_name_inside_chinese_text_needs_review(airlock, demo_tables) -> None:  # type: ignore[no-untyped-def]
    name = demo_tables["persons"].column("name").to_pylist()[1]
    report = run_checks([FileItem("note.txt", f"据统计客户{name}的收入较高".encode())],
                        airlock["ctx"])
    res = report.result("identifiers")
    assert res.outcome == "review" and report.outcome == "review"
    assert name not in json.dumps(report.to_dict("requester"), ensure_ascii=False)
    assert res.details["weak"]["note.txt"]


def test_without_an_index_nothing_passes(airlock) -> None:  # type: ignore[no-untyped-def]
    ctx = replace(airlock["ctx"], identifiers=None)
    assert run_checks([frame(airlock["people"])], ctx).outcome == "blocked"


# -- small cells ---------------------------------------------------------------------------
def test_values_of_small_groups_are_flagged(airlock) -> None:  # type: ignore[no-untyped-def]
    rel = airlock["old"]
    counts = [r[1] for r in rel.rows]
    assert any(c < 20 for c in counts), counts
    report = run_checks([frame(rel)], airlock["ctx"])
    res = report.result("small_cells")
    assert res.outcome == "review"
    assert res.details["items"]["result.csv"]["rows"] == sum(c < 20 for c in counts)
    # the averages of a small group, without the count beside them, are flagged too
    small = [(r[0], r[2]) for r in rel.rows if r[1] < 20]
    item = FrameItem("avg", ("education", "avg_income"), tuple(small), (rel.release_id,))
    assert outcome(run_checks([item], airlock["ctx"]), "small_cells") == "review"
    # and with a threshold below every group, nothing is
    lenient = replace(airlock["ctx"], min_group_count=min(min(counts), 0) or -1)
    assert outcome(run_checks([frame(rel)], lenient), "small_cells") == "pass"


def test_a_release_without_counts_has_unknown_group_sizes(airlock, engine, tiny_vault) -> None:  # type: ignore[no-untyped-def]
    state = airlock["state"]
    pol = policy(tiny_vault.catalog)
    rel = Gate(pol).answer("SELECT gender, avg(age) AS a FROM persons GROUP BY gender",
                           member="alice", executor=engine, request_id="r-avg",
                           ledger=SqliteLedger.existing(state, "w"))
    res = run_checks([frame(rel)], airlock["ctx"]).result("small_cells")
    assert res.outcome == "pass"
    assert res.details["group_sizes_not_released"] == [rel.release_id]


# -- images, free text, types and limits -----------------------------------------------------
def png(text: tuple[str, str] | None = None, extra: bytes = b"",
        chunk: bytes | None = None) -> bytes:
    def c(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    parts = [b"\x89PNG\r\n\x1a\n", c(b"IHDR", ihdr)]
    if text:
        parts.append(c(b"iTXt", text[0].encode() + b"\x00\x00\x00\x00\x00" +
                       text[1].encode()))
    if chunk:
        parts.append(c(chunk, b"hidden"))
    parts += [c(b"IDAT", zlib.compress(b"\x00\x00")), c(b"IEND", b""), extra]
    return b"".join(parts)


def test_images_and_free_text_always_need_review(airlock) -> None:  # type: ignore[no-untyped-def]
    for item in (FileItem("chart.png", png(text=("Title", "Income by district"))),
                 FileItem("chart.svg", b'<svg xmlns="http://www.w3.org/2000/svg"/>'),
                 FileItem("notes.txt", b"Incomes differ by district.\n")):
        report = run_checks([item], airlock["ctx"])
        assert outcome(report, "human_review") == "review", item.name
        assert report.outcome == "review"


@pytest.mark.parametrize(("item", "words"), [
    (FileItem("x.png", png(extra=b"PK\x03\x04secret")), "after the end"),
    (FileItem("x.png", png(chunk=b"exTr")), "unknown type"),
    (FileItem("x.png", b"not a png"), "not a PNG"),
    (FileItem("x.json", b"{nope"), "not valid JSON"),
    (FileItem("x.csv", b"\xff\xfe\x00a"), "not UTF-8"),
    (FileItem("x.parquet", b"PAR1 nope PAR1"), "Parquet"),
    (FileItem("x.exe", b"MZ"), "cannot be exported"),
    (FileItem("x.csv", b"a\n1\n", media_type="image/png"), "declared as image/png"),
    (FileItem("x.svg", b"<html></html>"), "not an SVG"),
])
def test_content_that_is_not_what_its_name_says_is_blocked(airlock, item: FileItem,  # type: ignore[no-untyped-def]
                                                           words: str) -> None:
    report = run_checks([item], airlock["ctx"])
    res = report.result("types")
    assert res.outcome == "block" and report.outcome == "blocked"
    assert words in res.message


def test_limits_block(airlock) -> None:  # type: ignore[no-untyped-def]
    rel = airlock["people"]
    ctx = replace(airlock["ctx"], limits=Limits(max_items=2, max_item_bytes=100,
                                                max_total_bytes=150, max_rows=3))
    items = [frame(rel, "a"), frame(rel, "A"), frame(rel, "c")]
    res = run_checks(items, ctx).result("limits")
    assert res.outcome == "block"
    for words in ("3 items", "repeat", "bytes", "rows"):
        assert words in res.message
    assert run_checks([], airlock["ctx"]).result("limits").outcome == "block"


# -- differencing ----------------------------------------------------------------------------
def test_overlap_with_earlier_approved_exports_is_flagged(airlock) -> None:  # type: ignore[no-untyped-def]
    rel = airlock["people"]
    first = run_checks([frame(rel)], airlock["ctx"], "e-1", "first")
    prior = replace(first.fingerprint, export_id="e-1", title="first")
    assert Fingerprint.from_dict(json.loads(json.dumps(prior.to_dict()))) == prior
    ctx: CheckContext = replace(airlock["ctx"], prior_exports=(prior,))
    res = run_checks([frame(rel)], ctx).result("differencing")
    assert res.outcome == "review"
    overlap = res.details["overlaps"][0]
    assert overlap["export_id"] == "e-1" and overlap["shared_release_ids"] == [rel.release_id]
    assert overlap["shared_groups"] == len(rel.rows)
    other = run_checks([frame(airlock["old"])], ctx).result("differencing")
    assert other.outcome == "pass"
