"""Tests for the synthetic Xiamen demo data generator (sandbox.demo)."""

from __future__ import annotations

import datetime as dt
import pathlib
import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from sandbox import demo

SEED = 20261123
DATASETS = ("persons", "loans", "districts")
# Written out independently of the module so a drift in either is caught.
SPEC_TO_ARROW = {
    "string": pa.string(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us"),
}
XIAMEN = {
    "Siming": ("350203", "思明区"),
    "Haicang": ("350205", "海沧区"),
    "Huli": ("350206", "湖里区"),
    "Jimei": ("350211", "集美区"),
    "Tong'an": ("350212", "同安区"),
    "Xiang'an": ("350213", "翔安区"),
}
EXPECTED_ROLES = {
    "persons": {
        "person_id": "privacy_unit",
        "name": "identifier",
        "id_number": "identifier",
        "phone": "identifier",
        "district": "quasi_identifier",
        "age": "quasi_identifier",
        "gender": "quasi_identifier",
        "education": "quasi_identifier",
        "income": "sensitive",
        "credit_score": "sensitive",
        "employed": "attribute",
        "registered_on": "attribute",
    },
    "loans": {
        "loan_id": "identifier",
        "person_id": "privacy_unit",
        "amount": "sensitive",
        "term_months": "attribute",
        "rate": "sensitive",
        "purpose": "attribute",
        "status": "sensitive",
        "issued_on": "attribute",
    },
    "districts": {
        "district": "attribute",
        "district_code": "attribute",
        "name_zh": "attribute",
        "area_km2": "attribute",
    },
}


def _id_check_char(first17: str) -> str:
    """ISO 7064 MOD 11-2 as specified in GB 11643-1999."""
    weights = [2 ** (17 - i) % 11 for i in range(17)]
    total = sum(int(c) * w for c, w in zip(first17, weights, strict=True))
    return "10X98765432"[total % 11]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("demo_tiny")
    calls: list[tuple[str, int]] = []
    paths = demo.generate(out, "tiny", seed=SEED, progress=lambda d, n: calls.append((d, n)))
    return {
        "dir": out,
        "paths": paths,
        "calls": calls,
        "persons": pq.read_table(out / "persons.parquet"),
        "loans": pq.read_table(out / "loans.parquet"),
        "districts": pq.read_table(out / "districts.parquet"),
        "specs": {
            d: yaml.safe_load((out / f"{d}.yaml").read_text(encoding="utf-8")) for d in DATASETS
        },
    }


def test_writes_all_files_and_returns_their_paths(tiny: dict) -> None:
    names = sorted(p.name for p in tiny["paths"])
    assert names == sorted(f"{d}.{ext}" for d in DATASETS for ext in ("parquet", "yaml"))
    assert all(p.parent == tiny["dir"] and p.stat().st_size > 0 for p in tiny["paths"])
    assert tiny["persons"].num_rows == demo.SIZES["tiny"] == 2_000
    assert demo.SIZES["small"] == 100_000 and demo.SIZES["large"] == 2_000_000


def test_progress_reports_final_row_counts(tiny: dict) -> None:
    last = {d: n for d, n in tiny["calls"]}
    assert last == {"persons": 2_000, "loans": tiny["loans"].num_rows, "districts": 6}
    for d in ("persons", "loans"):
        counts = [n for name, n in tiny["calls"] if name == d]
        assert counts == sorted(counts) and counts[0] > 0


def test_same_seed_is_byte_identical(tiny: dict, tmp_path: pathlib.Path) -> None:
    again = demo.generate(tmp_path, "tiny", seed=SEED)
    for a, b in zip(tiny["paths"], again, strict=True):
        assert a.name == b.name
        assert a.read_bytes() == b.read_bytes(), a.name


def test_different_seed_gives_different_data(tiny: dict, tmp_path: pathlib.Path) -> None:
    demo.generate(tmp_path, "tiny", seed=SEED + 1)
    other_p = pq.read_table(tmp_path / "persons.parquet")
    other_l = pq.read_table(tmp_path / "loans.parquet")
    assert other_p.schema == tiny["persons"].schema
    for col in ("name", "id_number", "phone", "age", "income"):
        assert other_p[col] != tiny["persons"][col], col
    assert other_l.num_rows != tiny["loans"].num_rows or other_l != tiny["loans"]
    # The public lookup table does not depend on the seed.
    assert pq.read_table(tmp_path / "districts.parquet") == tiny["districts"]
    spec = yaml.safe_load((tmp_path / "persons.yaml").read_text(encoding="utf-8"))
    assert spec["source"] == f"sandbox demo-data generator, seed {SEED + 1}, size tiny"


def test_id_numbers_are_valid_and_consistent(tiny: dict) -> None:
    persons = tiny["persons"].to_pydict()
    as_of = dt.date(2026, 11, 23)
    assert np.datetime64(as_of) == demo.AS_OF
    regions = set(demo.BIRTH_REGION_CODES)
    born_in_xiamen = 0
    for id_number, age, gender in zip(
        persons["id_number"], persons["age"], persons["gender"], strict=True
    ):
        assert re.fullmatch(r"\d{17}[\dX]", id_number), id_number
        assert id_number[17] == _id_check_char(id_number[:17]), id_number
        assert id_number[:6] in regions
        born_in_xiamen += id_number[:6] in {code for code, _ in XIAMEN.values()}
        birth = dt.datetime.strptime(id_number[6:14], "%Y%m%d").date()
        exact_age = as_of.year - birth.year - ((as_of.month, as_of.day) < (birth.month, birth.day))
        assert exact_age == age, (id_number, age)
        seq = int(id_number[14:17])
        assert 1 <= seq <= 998
        assert (seq % 2 == 1) == (gender == "M"), (id_number, gender)
    assert 0.4 < born_in_xiamen / len(persons["id_number"]) < 0.95


def test_chunked_generation_keeps_keys_unique(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tiny fits one chunk; force many chunks and row groups to test cross-chunk state."""
    monkeypatch.setattr(demo, "CHUNK_PERSONS", 300)
    monkeypatch.setattr(demo, "ROW_GROUP_ROWS", 1_000)
    calls: list[tuple[str, int]] = []
    demo.generate(tmp_path / "a", "tiny", seed=7, progress=lambda d, n: calls.append((d, n)))
    assert [n for d, n in calls if d == "persons"] == [*range(300, 2_000, 300), 2_000]
    persons = pq.read_table(tmp_path / "a" / "persons.parquet")
    loans = pq.read_table(tmp_path / "a" / "loans.parquet")
    for table, col in ((persons, "person_id"), (persons, "id_number"), (persons, "phone")):
        assert len(set(table[col].to_pylist())) == table.num_rows, col
    assert len(set(loans["loan_id"].to_pylist())) == loans.num_rows
    assert set(loans["person_id"].to_pylist()) == set(persons["person_id"].to_pylist())
    assert persons["person_id"].to_pylist() == [f"P{i:07d}" for i in range(1, 2_001)]
    for name, table in (("persons", persons), ("loans", loans)):
        meta = pq.ParquetFile(tmp_path / "a" / f"{name}.parquet").metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        assert sizes[:-1] == [1_000] * (len(sizes) - 1) and 0 < sizes[-1] <= 1_000
        assert sum(sizes) == table.num_rows
    demo.generate(tmp_path / "b", "tiny", seed=7)
    for name in ("persons.parquet", "loans.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_phone_suffix_permutation_is_a_bijection() -> None:
    """Phones are unique by construction, not by luck: the keyed map must be a bijection."""
    for domain, key in ((1_000, 1), (100_000, 20261123)):
        out = demo._permute(np.arange(domain), domain, key)
        assert np.array_equal(np.sort(out), np.arange(domain))
        assert not np.array_equal(out, np.arange(domain))


def test_check_digit_helper_matches_known_example() -> None:
    # The worked example from GB 11643-1999 (11010519491231002X).
    assert _id_check_char("11010519491231002") == "X"


def test_keys_are_unique(tiny: dict) -> None:
    persons, loans = tiny["persons"], tiny["loans"]
    for col in ("person_id", "id_number", "phone", "name"):
        values = persons[col].to_pylist()
        if col == "name":  # names may repeat, like in real life, but not too often
            assert len(set(values)) > 0.8 * len(values)
        else:
            assert len(set(values)) == len(values), col
    loan_ids = loans["loan_id"].to_pylist()
    assert len(set(loan_ids)) == len(loan_ids)
    assert all(re.fullmatch(r"P\d{7}", p) for p in persons["person_id"].to_pylist())
    assert all(re.fullmatch(r"L\d{9}", x) for x in loan_ids)


def test_every_loan_has_a_person_and_every_person_a_loan(tiny: dict) -> None:
    person_ids = set(tiny["persons"]["person_id"].to_pylist())
    per_person = Counter(tiny["loans"]["person_id"].to_pylist())
    assert set(per_person) == person_ids
    assert min(per_person.values()) >= 1
    assert tiny["loans"].num_rows / len(person_ids) > 4
    assert max(per_person.values()) >= 20  # skewed: some heavy borrowers
    assert max(per_person.values()) <= 80


def test_value_ranges(tiny: dict) -> None:
    p = tiny["persons"].to_pydict()
    loans = tiny["loans"].to_pydict()
    assert min(p["age"]) >= 18 and max(p["age"]) <= 90
    assert min(p["credit_score"]) >= 300 and max(p["credit_score"]) <= 850
    assert min(p["income"]) > 0
    assert set(p["gender"]) == {"F", "M"}
    assert set(p["district"]) == set(XIAMEN)
    assert 2 <= len(set(p["education"])) <= 6
    assert all(re.fullmatch(r"1[3589]\d{9}", x) for x in p["phone"])
    assert all(re.fullmatch(r"[\u4e00-\u9fff]{2,4}", x) for x in p["name"])
    assert dt.date(2005, 1, 1) <= min(p["registered_on"])
    assert max(p["registered_on"]) <= dt.date(2026, 6, 30)
    assert any(p["employed"]) and not all(p["employed"])

    assert min(loans["amount"]) >= 1_000 and max(loans["amount"]) <= 2_000_000
    assert set(loans["term_months"]) <= {6, 12, 24, 36, 60, 120, 240, 360}
    assert len(set(loans["term_months"])) >= 6
    assert min(loans["rate"]) >= 0.03 and max(loans["rate"]) <= 0.18
    assert set(loans["purpose"]) == {"consumer", "business", "mortgage", "auto", "education"}
    assert set(loans["status"]) == {"current", "repaid", "overdue", "default"}
    assert dt.date(2015, 1, 1) <= min(loans["issued_on"])
    assert max(loans["issued_on"]) <= dt.date(2026, 10, 31)


def test_attributes_are_correlated(tiny: dict) -> None:
    p = tiny["persons"].to_pydict()
    log_income = np.log(np.array(p["income"], dtype=float))
    credit = np.array(p["credit_score"], dtype=float)
    assert np.corrcoef(log_income, credit)[0, 1] > 0.3
    edu = np.array(p["education"])
    assert np.median(log_income[edu == "postgraduate"]) > np.median(log_income[edu == "primary"])

    by_id = dict(zip(p["person_id"], p["credit_score"], strict=True))
    loans = tiny["loans"].to_pydict()
    loan_credit = np.array([by_id[x] for x in loans["person_id"]], dtype=float)
    assert np.corrcoef(np.array(loans["rate"]), loan_credit)[0, 1] < -0.3
    bad = np.isin(np.array(loans["status"]), ["overdue", "default"])
    assert bad[loan_credit < 550].mean() > 3 * bad[loan_credit > 700].mean()
    amount = np.array(loans["amount"], dtype=float)
    purpose = np.array(loans["purpose"])
    assert np.median(amount[purpose == "mortgage"]) > 5 * np.median(amount[purpose == "consumer"])


def test_districts_lookup_table(tiny: dict) -> None:
    rows = tiny["districts"].to_pylist()
    assert {r["district"]: (r["district_code"], r["name_zh"]) for r in rows} == XIAMEN
    areas = {r["district"]: r["area_km2"] for r in rows}
    assert all(50 < a < 800 for a in areas.values())
    assert areas["Tong'an"] == max(areas.values())  # the largest district by land area
    assert 1_500 < sum(areas.values()) < 1_800  # Xiamen's land area is ~1,700 km²


@pytest.mark.parametrize("dataset", DATASETS)
def test_parquet_schema_matches_yaml_spec(tiny: dict, dataset: str) -> None:
    spec = tiny["specs"][dataset]
    schema = tiny[dataset].schema
    assert schema.names == [c["name"] for c in spec["columns"]]
    for col in spec["columns"]:
        assert schema.field(col["name"]).type == SPEC_TO_ARROW[col["type"]], col["name"]
    # Also as stored in the Parquet footer, not just after reading back.
    stored = pq.read_schema(tiny["dir"] / f"{dataset}.parquet")
    assert [f.type for f in stored] == [SPEC_TO_ARROW[c["type"]] for c in spec["columns"]]


@pytest.mark.parametrize("dataset", DATASETS)
def test_spec_shape_and_roles(tiny: dict, dataset: str) -> None:
    text = (tiny["dir"] / f"{dataset}.yaml").read_text(encoding="utf-8")
    spec = tiny["specs"][dataset]
    assert list(spec) == [
        "spec_version",
        "dataset",
        "title",
        "description",
        "owner",
        "source",
        "public",
        "columns",
    ]
    assert spec["spec_version"] == 1 and spec["dataset"] == dataset
    assert spec["source"] == f"sandbox demo-data generator, seed {SEED}, size tiny"
    assert all(isinstance(spec[k], str) and spec[k] for k in ("title", "description", "owner"))
    assert spec["public"] is (dataset == "districts")
    assert "\\u" not in text  # allow_unicode: Chinese stays readable in the YAML
    for col in spec["columns"]:
        assert list(col) == ["name", "type", "role", "grade", "description"]
        assert col["grade"] in {"general", "important", "core"}
        assert col["description"]
    roles = {c["name"]: c["role"] for c in spec["columns"]}
    assert roles == EXPECTED_ROLES[dataset]
    grades = {c["name"]: c["grade"] for c in spec["columns"]}
    if dataset == "persons":
        assert all(grades[c] == "core" for c in ("name", "id_number", "phone"))
        assert grades["income"] in {"important", "core"}
        assert grades["credit_score"] in {"important", "core"}
    if dataset == "districts":
        assert set(grades.values()) == {"general"}


def test_unknown_size_raises(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "nope"
    with pytest.raises(ValueError, match="unknown demo data size 'huge'"):
        demo.generate(out, "huge")
    assert not out.exists()
