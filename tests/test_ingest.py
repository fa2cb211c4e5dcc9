"""Ingest: CSV/Parquet sources checked against their spec, encrypted, and registered."""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import re
import sqlite3
import textwrap
import time

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from sandbox.catalog import Catalog, DatasetVersion
from sandbox.errors import (
    ConfigError,
    IngestError,
    InputError,
    KeyStoreMissingError,
    MalformedRowError,
    SpecError,
    TypeMismatchError,
)
from sandbox.ingest import gc_orphans, ingest
from sandbox.keys import FileKeyStore
from sandbox.operations import ALL_GROUPS
from sandbox.settings import Paths
from sandbox.spec import load_spec
from sandbox.vault import EncryptedWriter, open_encrypted, read_batches

ALL_TYPES_SPEC = """\
dataset: everything
title: Every column type
columns:
  - {name: pid, type: string, role: privacy_unit, grade: important}
  - {name: n16, type: int16, role: attribute, grade: general}
  - {name: n32, type: int32, role: attribute, grade: general}
  - {name: n64, type: int64, role: sensitive, grade: core}
  - {name: x, type: float64, role: sensitive, grade: core}
  - {name: flag, type: bool, role: attribute, grade: general}
  - {name: day, type: date, role: attribute, grade: general}
  - {name: ts, type: timestamp, role: attribute, grade: general}
  - {name: note, type: string, role: attribute, grade: general}
  - {name: full_name, type: string, role: identifier, grade: core}
"""
ALL_TYPES_CSV = (
    "\n".join(
        [
            "pid,n16,n32,n64,x,flag,day,ts,note,full_name",
            "p1,-32768,2147483647,9223372036854775807,1.5,true,2020-02-29,2021-03-04 05:06:07,"
            '"hello, world",张三',
            "p2,,,,,,,,,李四",
            "p3,32767,-2147483648,-9223372036854775808,-0.25,false,1970-01-01,1970-01-01 00:00:00,"
            '"say ""hi""",王五',
            "p4,0,0,0,0,1,2038-01-19,2038-01-19 03:14:08,,Zoë",
        ]
    )
    + "\n"
)
ALL_TYPES_EXPECTED = pa.table(
    {
        "pid": pa.array(["p1", "p2", "p3", "p4"], pa.string()),
        "n16": pa.array([-32768, None, 32767, 0], pa.int16()),
        "n32": pa.array([2**31 - 1, None, -(2**31), 0], pa.int32()),
        "n64": pa.array([2**63 - 1, None, -(2**63), 0], pa.int64()),
        "x": pa.array([1.5, None, -0.25, 0.0], pa.float64()),
        "flag": pa.array([True, None, False, True], pa.bool_()),
        "day": pa.array(
            [dt.date(2020, 2, 29), None, dt.date(1970, 1, 1), dt.date(2038, 1, 19)], pa.date32()
        ),
        "ts": pa.array(
            [
                dt.datetime(2021, 3, 4, 5, 6, 7),
                None,
                dt.datetime(1970, 1, 1),
                dt.datetime(2038, 1, 19, 3, 14, 8),
            ],
            pa.timestamp("us"),
        ),
        "note": pa.array(["hello, world", "", 'say "hi"', ""], pa.string()),
        "full_name": pa.array(["张三", "李四", "王五", "Zoë"], pa.string()),
    }
)

SMALL_SPEC = """\
dataset: small
columns:
  - {name: pid, type: string, role: privacy_unit, grade: important}
  - {name: age, type: int16, role: quasi_identifier, grade: general}
  - {name: income, type: int64, role: sensitive, grade: core}
  - {name: phone, type: string, role: identifier, grade: core}
"""


def _write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text, encoding="utf-8")
    return path


def _decrypt(catalog: Catalog, kms: FileKeyStore, dv: DatasetVersion) -> pa.Table:
    """Every column of every file, decrypted through the verification path."""
    parts = []
    for f in dv.files:
        ref = dv.file_ref(f)
        pf = open_encrypted(
            catalog.storage_dir(dv.name, dv.storage_id) / f.file_name,
            ref,
            list(f.keys),
            kms,
            ALL_GROUPS,
        )
        parts.extend(read_batches(pf, ref, pf.schema_arrow.names))
    return pa.concat_tables(parts)


def _vault_leftovers(vault: pathlib.Path) -> list[str]:
    """Regular files, and directories deeper than one level (a storage id), under the vault."""
    return sorted(
        str(p.relative_to(vault))
        for p in vault.rglob("*")
        if p.is_file() or len(p.relative_to(vault).parts) > 1
    )


def _small_csv(rows: int, bad: dict[int, str] | None = None) -> str:
    """Header plus ``rows`` good rows; ``bad`` replaces the row on a given file line."""
    lines = ["pid,age,income,phone"]
    lines += [f"P{i:05d},{20 + i % 50},{1000 * i},1390000{i:04d}" for i in range(rows)]
    for line, text in (bad or {}).items():
        lines[line - 1] = text
    return "\n".join(lines) + "\n"


# -- round trips ----------------------------------------------------------------------


def test_parquet_round_trip(
    ingest_demo, catalog: Catalog, keystore: FileKeyStore, demo_tables: dict[str, pa.Table]
) -> None:
    for name, dv in ingest_demo().items():
        assert dv.version == 1 and dv.row_count == demo_tables[name].num_rows
        got = _decrypt(catalog, keystore, dv)
        assert got.schema == dv.spec.arrow_schema()
        assert got.equals(demo_tables[name].cast(dv.spec.arrow_schema()))
        assert sum(f.rows for f in dv.files) == dv.row_count


def test_csv_round_trip_of_every_type(
    catalog: Catalog, keystore: FileKeyStore, tmp_path: pathlib.Path
) -> None:
    spec = load_spec(_write(tmp_path / "spec.yaml", ALL_TYPES_SPEC))
    dv = ingest(catalog, keystore, _write(tmp_path / "data.csv", ALL_TYPES_CSV), spec)
    assert (dv.name, dv.version, dv.row_count) == ("everything", 1, 4)
    assert dv.spec.identifier_columns == ["full_name"]
    got = _decrypt(catalog, keystore, dv)
    assert got.schema == ALL_TYPES_EXPECTED.schema
    assert got.equals(ALL_TYPES_EXPECTED)


def test_csv_of_demo_persons_round_trip(
    catalog: Catalog,
    keystore: FileKeyStore,
    demo_dir: pathlib.Path,
    tmp_path: pathlib.Path,
    demo_tables: dict[str, pa.Table],
) -> None:
    source = demo_tables["persons"].slice(0, 400)
    csv_path = tmp_path / "persons.csv"
    pacsv.write_csv(source, csv_path)
    dv = ingest(catalog, keystore, csv_path, load_spec(demo_dir / "persons.yaml"))
    assert _decrypt(catalog, keystore, dv).equals(source.cast(dv.spec.arrow_schema()))


def test_parquet_types_are_converted_to_the_spec(
    catalog: Catalog, keystore: FileKeyStore, tmp_path: pathlib.Path
) -> None:
    src = pa.table(
        {
            "pid": ["a", "b"],
            "age": pa.array([30, 41], pa.int64()),  # spec: int16
            "income": pa.array([5, 6], pa.int32()),  # spec: int64
            "phone": ["13900000000", "13900000001"],
        }
    )
    pq.write_table(src, tmp_path / "s.parquet")
    spec = load_spec(_write(tmp_path / "spec.yaml", SMALL_SPEC))
    dv = ingest(catalog, keystore, tmp_path / "s.parquet", spec)
    got = _decrypt(catalog, keystore, dv)
    assert got.schema.field("age").type == pa.int16()
    assert got.schema.field("income").type == pa.int64()
    assert got.column("age").to_pylist() == [30, 41]


def test_readding_creates_a_new_version(
    ingest_demo, catalog: Catalog, keystore: FileKeyStore, demo_tables: dict[str, pa.Table]
) -> None:
    v1 = ingest_demo("districts")["districts"]
    v2 = ingest_demo("districts")["districts"]
    assert (v1.version, v2.version) == (1, 2)
    assert v1.storage_id != v2.storage_id
    assert catalog.versions("districts") == [1, 2]
    assert catalog.get("districts").version == 2
    assert catalog.names() == ["districts"]
    for dv in (catalog.get("districts", 1), catalog.get("districts", 2)):
        assert _decrypt(catalog, keystore, dv).equals(
            demo_tables["districts"].cast(dv.spec.arrow_schema())
        )


def test_large_sources_are_split_into_row_groups_and_files(
    ingest_demo, catalog: Catalog, keystore: FileKeyStore, demo_tables: dict[str, pa.Table]
) -> None:
    seen: list[int] = []
    dv = ingest_demo("persons", row_group_size=300, rows_per_file=900, progress=seen.append)[
        "persons"
    ]
    assert [f.file_name for f in dv.files] == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert [f.rows for f in dv.files] == [900, 900, 200]
    first = catalog.storage_dir(dv.name, dv.storage_id) / dv.files[0].file_name
    f0 = dv.files[0]
    pf = open_encrypted(first, dv.file_ref(f0), list(f0.keys), keystore, ALL_GROUPS)
    assert [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)] == [300] * 3
    assert seen and seen[-1] == 2000 and seen == sorted(seen)
    assert _decrypt(catalog, keystore, dv).equals(
        demo_tables["persons"].cast(dv.spec.arrow_schema())
    )


# -- bad rows -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "line", "fields"),
    [
        ({7: "P9,30,100,13900000000,extra"}, 7, 5),
        ({4: "P9,30,100"}, 4, 3),
        ({2: "P9"}, 2, 1),
        ({12: 'P9,30,"100,5",13900000000,x'}, 12, 5),
    ],
)
def test_malformed_csv_row_names_file_and_line(
    catalog: Catalog,
    keystore: FileKeyStore,
    tmp_path: pathlib.Path,
    bad: dict[int, str],
    line: int,
    fields: int,
) -> None:
    source = _write(tmp_path / "data.csv", _small_csv(12, bad))
    spec = load_spec(_write(tmp_path / "spec.yaml", SMALL_SPEC))
    with pytest.raises(MalformedRowError) as info:
        ingest(catalog, keystore, source, spec)
    assert info.value.message == f"{source}:{line}: expected 4 fields, found {fields}"
    assert info.value.code == "ingest.malformed_row"
    assert info.value.hint
    assert catalog.names() == []


def test_line_numbers_count_blank_lines_and_quoted_newlines(
    catalog: Catalog, keystore: FileKeyStore, tmp_path: pathlib.Path
) -> None:
    text = (
        "pid,age,income,phone\n"
        "P1,20,1,13900000001\n"
        "\n"
        '"P\n2",21,2,13900000002\n'
        "P3,22,3,13900000003\n"
        "P4,23,3,13900000004,oops\n"
    )
    source = _write(tmp_path / "data.csv", text)
    spec = load_spec(_write(tmp_path / "spec.yaml", SMALL_SPEC))
    with pytest.raises(MalformedRowError) as info:
        ingest(catalog, keystore, source, spec)
    assert info.value.message == f"{source}:7: expected 4 fields, found 5"


@pytest.mark.parametrize(
    ("line", "row", "column", "ctype"),
    [
        (5, "P9,30,12abc7,13900000000", "income", "int64"),
        (3, "P9,forty,100,13900000000", "age", "int16"),
        (9, "P9,40000,100,13900000000", "age", "int16"),  # out of int16 range
        (2, "P9,3.5,100,13900000000", "age", "int16"),
    ],
)
def test_bad_value_is_a_type_mismatch_without_the_value(
    catalog: Catalog,
    keystore: FileKeyStore,
    tmp_path: pathlib.Path,
    line: int,
    row: str,
    column: str,
    ctype: str,
) -> None:
    source = _write(tmp_path / "data.csv", _small_csv(10, {line: row}))
    spec = load_spec(_write(tmp_path / "spec.yaml", SMALL_SPEC))
    with pytest.raises(TypeMismatchError) as info:
        ingest(catalog, keystore, source, spec)
    msg = info.value.message
    assert msg == f"{source}:{line}: column '{column}' does not hold a valid {ctype} value"
    for value in row.split(",")[1:]:  # beyond the file's own path, which may hold digits
        assert value not in str(info.value).replace(str(source), "")
    assert catalog.names() == []


@pytest.mark.parametrize(
    ("ctype", "value"),
    [("bool", "yes"), ("bool", "True"), ("date", "2020-13-01"), ("float64", "1,5")],
)
def test_other_type_mismatches_in_csv(
    catalog: Catalog, keystore: FileKeyStore, tmp_path: pathlib.Path, ctype: str, value: str
) -> None:
    spec = load_spec(
        _write(
            tmp_path / "spec.yaml",
            textwrap.dedent(f"""\
        dataset: t
        columns:
          - {{name: pid, type: string, role: privacy_unit, grade: important}}
          - {{name: v, type: {ctype}, role: attribute, grade: general}}
        """),
        )
    )
    quoted = f'"{value}"' if "," in value else value
    source = _write(tmp_path / "d.csv", f"pid,v\nP1,\nP2,{quoted}\n")
    with pytest.raises(TypeMismatchError) as info:
        ingest(catalog, keystore, source, spec)
    assert info.value.message == f"{source}:3: column 'v' does not hold a valid {ctype} value"
    assert value not in str(info.value)


def test_parquet_values_too_large_for_the_spec_type(
    catalog: Catalog, keystore: FileKeyStore, tmp_path: pathlib.Path
) -> None:
    src = pa.table(
        {
            "pid": ["a", "b", "c"],
            "age": pa.array([30, 70_000, 41], pa.int64()),
            "income": pa.array([5, 6, 7], pa.int64()),
            "phone": ["13900000000", "13900000001", "13900000002"],
        }
    )
    pq.write_table(src, tmp_path / "s.parquet")
    spec = load_spec(_write(tmp_path / "spec.yaml", SMALL_SPEC))
    with pytest.raises(TypeMismatchError) as info:
        ingest(catalog, keystore, tmp_path / "s.parquet", spec)
    assert "column 'age'" in info.value.message and "int16" in info.value.message
    assert "70000" not in str(info.value)
    assert catalog.names() == []


def test_parquet_text_in_a_numeric_column(
    catalog: Catalog, keystore: FileKeyStore, tmp_path: pathlib.Path
) -> None:
    src = pa.table({"pid": ["a"], "age": ["thirty"], "income": [1], "phone": ["1"]})
    pq.write_table(src, tmp_path / "s.parquet")
    spec = load_spec(_write(tmp_path / "spec.yaml", SMALL_SPEC))
    with pytest.raises(TypeMismatchError, match="column 'age' has type string") as info:
        ingest(catalog, keystore, tmp_path / "s.parquet", spec)
    assert "thirty" not in str(info.value)


# -- spec problems ----------------------------------------------------------------------

BAD_SPEC = """\
spec_version: 1
dataset: Bad-Name
colour: blue
public: false
columns:
  - name: pid
    type: string
    role: attribute
    grade: general
  - name: amount
    type: money
    role: sensitive
    grade: core
  - name: amount
    type: int64
    role: secret
    grade: top
    extra: 1
"""


def test_spec_problems_are_all_listed_with_file_and_line(tmp_path: pathlib.Path) -> None:
    path = _write(tmp_path / "bad.yaml", BAD_SPEC)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    expected = [
        (3, "unknown key 'colour'"),
        (2, "invalid dataset name 'Bad-Name'"),
        (11, "column 'amount': unknown type 'money'"),
        (18, "unknown column key 'extra'"),
        (14, "column 'amount' is declared twice"),
        (16, "column 'amount': unknown role 'secret'"),
        (17, "column 'amount': unknown grade 'top'"),
        (5, "a non-public dataset needs exactly one column with role privacy_unit (found 0)"),
    ]
    problems = info.value.problems
    assert len(problems) == len(expected)
    for line, text in expected:
        assert any(p.startswith(f"{path}:{line}: {text}") for p in problems), (line, text)
    assert info.value.message.startswith(f"8 problem(s) in dataset spec {path}")
    for p in problems:
        assert p in info.value.message
    assert info.value.code == "spec.invalid"


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("dataset: t\ncolumns: []\n", 2, "'columns' must be a non-empty list"),
        (
            "dataset: t\ncolumns:\n  - {name: a, type: string, role: identifier, grade: core}\n",
            2,
            "every column is an identifier",
        ),
        (
            "dataset: t\npublic: true\ncolumns:\n"
            "  - {name: a, type: string, role: privacy_unit, grade: core}\n",
            1,
            "public dataset cannot have a column with role privacy_unit",
        ),
        (
            "dataset: t\npublic: maybe\ncolumns:\n"
            "  - {name: a, type: string, role: privacy_unit, grade: core}\n",
            2,
            "'public' must be true or false",
        ),
        (
            "dataset: t\ncolumns:\n  - {name: a, type: string, role: privacy_unit, grade: core}\n"
            "  - {name: b, type: string, role: privacy_unit, grade: core}\n",
            2,
            "exactly one column with role privacy_unit (found 2)",
        ),
        (
            "dataset: t\ncolumns:\n  - {name: 9a, type: string, role: privacy_unit, grade: core}\n",
            3,
            "invalid column name '9a'",
        ),
        (
            "title: x\ncolumns:\n  - {name: a, type: string, role: privacy_unit, grade: core}\n",
            1,
            "missing 'dataset'",
        ),
        (
            "dataset: t\nspec_version: 2\ncolumns:\n"
            "  - {name: a, type: string, role: privacy_unit, grade: core}\n",
            2,
            "spec_version must be 1",
        ),
    ],
)
def test_single_spec_problems(tmp_path: pathlib.Path, text: str, line: int, fragment: str) -> None:
    path = _write(tmp_path / "s.yaml", text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert any(p.startswith(f"{path}:{line}: ") and fragment in p for p in info.value.problems), (
        info.value.problems
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("dataset: t\ndataset: u\n", ":2: duplicate key 'dataset'"),
        ("dataset: [unclosed\n", ":2: "),
        ("- just\n- a list\n", "must be a YAML mapping"),
    ],
)
def test_unreadable_specs(tmp_path: pathlib.Path, text: str, fragment: str) -> None:
    path = _write(tmp_path / "s.yaml", text)
    with pytest.raises(InputError) as info:
        load_spec(path)
    assert fragment in info.value.message and str(path) in info.value.message
    assert info.value.hint


def test_missing_spec_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(InputError, match="not found") as info:
        load_spec(tmp_path / "absent.yaml")
    assert info.value.hint


def test_spec_name_override_is_validated(tmp_path: pathlib.Path) -> None:
    path = _write(tmp_path / "s.yaml", SMALL_SPEC)
    assert load_spec(path, name_override="other").name == "other"
    with pytest.raises(SpecError, match="invalid dataset name 'No Way'"):
        load_spec(path, name_override="No Way")


# -- source and spec disagree ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_source_column_missing_from_spec(
    catalog: Catalog, keystore: FileKeyStore, tmp_path: pathlib.Path, kind: str
) -> None:
    table = pa.table(
        {
            "pid": ["a"],
            "age": pa.array([1], pa.int16()),
            "income": [2],
            "phone": ["3"],
            "hobby": ["chess"],
        }
    )
    source = tmp_path / f"s.{kind}"
    pacsv.write_csv(table, source) if kind == "csv" else pq.write_table(table, source)
    spec = load_spec(_write(tmp_path / "spec.yaml", SMALL_SPEC))
    with pytest.raises(IngestError, match=r"column\(s\) hobby are not described in the spec"):
        ingest(catalog, keystore, source, spec)
    assert catalog.names() == []


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_spec_column_missing_from_source(
    catalog: Catalog, keystore: FileKeyStore, tmp_path: pathlib.Path, kind: str
) -> None:
    table = pa.table({"pid": ["a"], "age": pa.array([1], pa.int16()), "phone": ["3"]})
    source = tmp_path / f"s.{kind}"
    pacsv.write_csv(table, source) if kind == "csv" else pq.write_table(table, source)
    spec = load_spec(_write(tmp_path / "spec.yaml", SMALL_SPEC))
    with pytest.raises(IngestError, match=r"declares column\(s\) income that"):
        ingest(catalog, keystore, source, spec)


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("data.txt", b"pid\nP1\n", "unsupported source type '.txt'"),
        ("empty.csv", b"", "the file is empty"),
        ("header.csv", b"pid,age,income,phone\n", "has no data rows"),
        (
            "latin1.csv",
            "pid,age,income,phone\nJosé,1,2,3\n".encode("latin-1"),
            ":1: the file is not UTF-8",
        ),
        ("broken.parquet", b"PAR1 this is not parquet PAR1", "not a readable Parquet file"),
        ("dupe.csv", b"pid,age,income,phone,age\n", "repeats a column name"),
    ],
)
def test_unusable_sources(
    catalog: Catalog,
    keystore: FileKeyStore,
    tmp_path: pathlib.Path,
    name: str,
    content: bytes,
    fragment: str,
) -> None:
    source = tmp_path / name
    source.write_bytes(content)
    spec = load_spec(_write(tmp_path / "spec.yaml", SMALL_SPEC))
    with pytest.raises(IngestError, match=re.escape(fragment)):
        ingest(catalog, keystore, source, spec)
    assert _vault_leftovers(catalog.vault_dir) == []


def test_missing_source(catalog: Catalog, keystore: FileKeyStore, tmp_path: pathlib.Path) -> None:
    spec = load_spec(_write(tmp_path / "spec.yaml", SMALL_SPEC))
    with pytest.raises(IngestError, match="source file not found"):
        ingest(catalog, keystore, tmp_path / "absent.csv", spec)


# -- all or nothing ---------------------------------------------------------------------


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_ingest_failing_half_way_leaves_nothing(
    catalog: Catalog,
    keystore: FileKeyStore,
    demo_dir: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    exc_type: type[BaseException],
) -> None:
    original = EncryptedWriter.write
    written: list[pathlib.Path] = []

    def write_then_fail(self: EncryptedWriter, batch: pa.Table) -> None:
        if written:
            assert written[0].exists() and written[0].stat().st_size > 0  # really half way
            raise exc_type("the disk caught fire")
        original(self, batch)
        written.append(self.path)

    monkeypatch.setattr(EncryptedWriter, "write", write_then_fail)
    with pytest.raises(exc_type, match="caught fire"):
        ingest(
            catalog,
            keystore,
            demo_dir / "persons.parquet",
            load_spec(demo_dir / "persons.yaml"),
            row_group_size=200,
        )
    assert written, "the first row group was never written"
    assert catalog.names() == []
    assert _vault_leftovers(catalog.vault_dir) == []
    con = sqlite3.connect(catalog.db_path)
    assert [
        con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        for t in ("datasets", "files", "data_keys")
    ] == [0, 0, 0]
    con.close()


def test_ingest_failing_at_registration_leaves_nothing(
    catalog: Catalog,
    keystore: FileKeyStore,
    demo_dir: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: object, **kwargs: object) -> int:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(Catalog, "register", refuse)
    with pytest.raises(sqlite3.OperationalError):
        ingest(
            catalog,
            keystore,
            demo_dir / "districts.parquet",
            load_spec(demo_dir / "districts.yaml"),
        )
    assert _vault_leftovers(catalog.vault_dir) == []


def test_failed_ingest_keeps_the_previous_version(
    ingest_demo,
    catalog: Catalog,
    keystore: FileKeyStore,
    demo_dir: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    v1 = ingest_demo("districts")["districts"]
    before = sorted(p for p in catalog.vault_dir.rglob("*") if p.is_file())
    bad = tmp_path / "districts.csv"
    bad.write_text("district,district_code,name_zh,area_km2\nX,1,y,big\n")
    with pytest.raises(TypeMismatchError):
        ingest(catalog, keystore, bad, load_spec(demo_dir / "districts.yaml"))
    assert catalog.versions("districts") == [1]
    assert catalog.get("districts").storage_id == v1.storage_id
    assert sorted(p for p in catalog.vault_dir.rglob("*") if p.is_file()) == before


def test_unwritable_home_is_a_config_error(tmp_path: pathlib.Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a regular file where a directory should be")
    for home in (blocker / "home", blocker):
        p = Paths.resolve(home, tmp_path / "keystore")
        with pytest.raises(ConfigError, match="cannot write to the home directory") as info:
            p.ensure_home()
        assert str(home) in info.value.message
        assert "--home" in (info.value.hint or "")


def test_missing_key_store_fails_before_anything_is_written(
    catalog: Catalog, paths: Paths, demo_dir: pathlib.Path
) -> None:
    kms = FileKeyStore(paths.keystore)
    with pytest.raises(KeyStoreMissingError):
        ingest(catalog, kms, demo_dir / "persons.parquet", load_spec(demo_dir / "persons.yaml"))
    assert list(catalog.vault_dir.iterdir()) == []
    assert not paths.keystore.exists()
    assert catalog.names() == []


# -- leftovers of killed ingests ------------------------------------------------------------


def test_gc_orphans_removes_only_old_unreferenced_directories(
    ingest_demo, catalog: Catalog
) -> None:
    dv = ingest_demo("districts")["districts"]
    old = catalog.vault_dir / ".staging" / "deadbeef"
    young = catalog.vault_dir / "persons" / "cafebabe"
    for d in (old, young):
        d.mkdir(parents=True)
        (d / "part-00000.parquet").write_bytes(b"half written")
    hours_ago = time.time() - 7200
    os.utime(old, (hours_ago, hours_ago))
    kept = catalog.storage_dir(dv.name, dv.storage_id)
    os.utime(kept, (hours_ago, hours_ago))
    assert gc_orphans(catalog) == [old]
    assert not old.exists() and young.exists() and kept.exists()
    assert gc_orphans(catalog, min_age_s=0) == [young]
    assert kept.exists()
