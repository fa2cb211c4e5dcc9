"""Export items as the service receives them, and properties of the checks over them."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox import identifier_index as idx
from sandbox.exports import (
    CheckContext,
    ExportInputError,
    FileItem,
    FrameItem,
    IdentifierIndex,
    ReleaseRecord,
    item_from_dict,
    item_to_dict,
    run_checks,
)

KEY = bytes(range(32))
RELEASE = {"release_id": "r1", "policy": "p", "columns": ["district", "people", "avg_income"],
           "rows": [["Siming", 408, 52544.369928400956], ["Haicang", 220, 65541.28205128205],
                    ["Huli", 12, 15295.79002624672]],
           "ci95": [[None, 2.9, 812.5], [None, 2.9, 1130.25], [None, 2.9, 4100.0]],
           "mechanisms": {"people": "discrete_laplace (scale 2)",
                          "avg_income": "discrete_laplace (scale 1, 2)"},
           "epsilon": 0.5, "delta": 0.0, "suppressed_groups": 0, "noisy": True}


def context(**kw: Any) -> CheckContext:
    rec = ReleaseRecord.from_response(RELEASE, count_columns=["people"], member="alice")
    index = IdentifierIndex.from_values(KEY, {"persons": ["0071234567", "王伟华"]})
    return CheckContext(index, {"r1": rec}.get, lambda: [rec], **kw)


def test_release_record_from_a_stored_answer() -> None:
    rec = ReleaseRecord.from_response(RELEASE, count_columns=["people", "nope"])
    assert rec.key_columns == ("district",) and rec.count_columns == ("people",)
    assert rec.epsilon == 0.5 and rec.rows[2] == ("Huli", 12, 15295.79002624672)


def test_items_round_trip_through_json() -> None:
    frame = FrameItem("t", ("a", "b"), ((1, "x"), (2.5, None)), ("r1",), ("round",))
    file = FileItem("chart.png", b"\x89PNG...", release_ids=("r1",))
    for item in (frame, file):
        assert item_from_dict(item_to_dict(item)) == item
    assert item_to_dict(file)["data_base64"] == base64.b64encode(b"\x89PNG...").decode()
    assert file.media_type == "image/png" and frame.filename == "t.csv"
    assert frame.data == b"a,b\n1,x\n2.5,\n"


@pytest.mark.parametrize("d", [
    "frame",
    {"kind": "table"},
    {"kind": "frame", "name": "t", "columns": ["a"], "rows": [[1, 2]]},
    {"kind": "frame", "name": "../etc", "columns": [], "rows": []},
    {"kind": "frame", "name": "t", "columns": "a", "rows": []},
    {"kind": "frame", "name": "t", "columns": [], "rows": [], "colour": 1},
    {"kind": "frame", "name": "t", "columns": [], "rows": [], "postprocessing": ["log"]},
    {"kind": "frame", "name": "t", "columns": [], "rows": [], "release_ids": ["a b"]},
    {"kind": "file", "name": "a.csv", "data_base64": "***"},
])
def test_bad_items_are_input_errors(d: Any) -> None:
    with pytest.raises(ExportInputError) as info:
        item_from_dict(d)
    assert info.value.code == "export.invalid"


def test_a_dataframe_brings_its_release_id() -> None:
    df = pd.DataFrame(RELEASE["rows"], columns=RELEASE["columns"])
    df.attrs["release"] = {"release_id": "r1"}
    item = FrameItem.from_pandas("by_district", df)
    assert item.release_ids == ("r1",)
    assert item.rows[0] == ("Siming", 408, 52544.369928400956)
    assert type(item.rows[0][1]) is int  # numpy scalars become plain values
    strict = run_checks([item], context(min_group_count=20))
    assert strict.outcome == "review"  # Huli's 12 people
    assert strict.result("small_cells").details["items"]["by_district.csv"]["examples"] == [
        "row 3"]
    assert run_checks([item], context(min_group_count=10)).outcome == "pass"


def test_identifiers_written_with_leading_zeros_in_csv_are_found() -> None:
    report = run_checks([FileItem("a.csv", b"district,code\nSiming,0071234567\n")], context())
    assert report.result("identifiers").outcome == "block"
    report = run_checks([FileItem("a.csv", b"district,code\nSiming,71234567\n")], context())
    assert report.result("identifiers").outcome == "pass"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_selection_of_released_values_passes_provenance(data: st.DataObject) -> None:
    rows = data.draw(st.lists(st.sampled_from(RELEASE["rows"]), min_size=1, max_size=6))
    cols = data.draw(st.lists(st.sampled_from([0, 1, 2]), min_size=1, max_size=3, unique=True))
    digits = data.draw(st.sampled_from([None, 0, 1, 2]))

    def shown(v: Any) -> Any:
        return round(v, digits) if digits is not None and isinstance(v, float) else v

    item = FrameItem("sel", tuple(RELEASE["columns"][c] for c in cols),
                     tuple(tuple(shown(r[c]) for c in cols) for r in rows), ("r1",))
    assert run_checks([item], context()).result("provenance").outcome == "pass"


@settings(max_examples=60, deadline=None)
@given(st.floats(min_value=-1e7, max_value=1e7, allow_nan=False).filter(
    lambda x: all(abs(x - v) > 1.0 for r in RELEASE["rows"] + RELEASE["ci95"]
                  for v in r if isinstance(v, int | float))))
def test_a_number_from_nowhere_needs_review(x: float) -> None:
    item = FrameItem("x", ("district", "value"), (("Siming", x),), ("r1",))
    assert run_checks([item], context()).result("provenance").outcome == "review"


def test_orphaned_index_files_are_removed(catalog, keystore, demo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from sandbox.ingest import ingest
    from sandbox.operations import remove_dataset
    from sandbox.spec import load_spec

    dv = ingest(catalog, keystore, demo_dir / "districts.parquet",
                load_spec(demo_dir / "districts.yaml"))
    path = idx.index_path(idx.home_of(catalog), dv.name, dv.storage_id)
    assert path.exists()
    stray = path.with_name("0" * 32 + ".idx")  # e.g. left by a crash mid-removal
    stray.write_bytes(b"x")
    remove_dataset(catalog, "districts")  # removes the version's index with it
    assert not path.exists() and not stray.exists() and not path.parent.exists()
    assert idx.remove_orphans(catalog) == []
