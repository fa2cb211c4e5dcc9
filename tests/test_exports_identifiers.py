"""The identifier index: normalisation, the keyed hash, files built at ingest, key handling."""

from __future__ import annotations

import hmac
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox import identifier_index as idx
from sandbox.catalog import Catalog
from sandbox.exports import identifiers as ids
from sandbox.exports.errors import IdentifierIndexError
from sandbox.ingest import ingest
from sandbox.keys import FileKeyStore
from sandbox.operations import rotate_master_key
from sandbox.spec import load_spec

KEY = bytes(range(32))


# -- normalising and candidates ------------------------------------------------------------
@pytest.mark.parametrize(("text", "norm"), [
    ("AB 12-34", "ab1234"),
    ("ab1234", "ab1234"),
    ("ＡＢ１２３４", "ab1234"),  # full-width
    ("a.b_1/2 3\t4", "ab1234"),
    ("350203 19900101 123X", "35020319900101123x"),
    ("李 龙-斌", "李龙斌"),
    ("Straße", "strasse"),  # case folding, not just lower()
])
def test_normalise(text: str, norm: str) -> None:
    assert ids.normalise(text) == norm


@given(st.text(max_size=40))
def test_normalise_is_idempotent_and_alphanumeric(text: str) -> None:
    n = ids.normalise(text)
    assert ids.normalise(n) == n
    assert n == "" or n.isalnum()


def test_short_values_are_not_indexable() -> None:
    assert not ids.indexable("12345")  # ordinary numbers
    assert ids.indexable("123456")
    assert not ids.indexable("abc")
    assert ids.indexable("abcd")
    assert ids.indexable("王伟")  # a two-character Chinese name
    assert not ids.indexable("王")
    assert not ids.indexable("a" * 65)


def strong(text: str) -> set[str]:
    return {c for c, s in ids.candidates(text) if s}


@pytest.mark.parametrize("text", [
    "AB 12-34", "ab1234", "name: AB 12-34", "id=ab1234;", "(ab)1234", "x ab 12 34 y",
    "ＡＢ１２３４", "AB.12.34",
])
def test_candidates_find_a_value_in_any_spelling(text: str) -> None:
    assert "ab1234" in strong(text)


def test_candidates_find_phones_and_id_numbers_inside_text() -> None:
    assert "13812345678" in strong("call +86 138 1234 5678 today")
    assert "13812345678" in strong("tel:138-1234-5678")
    assert "35020319900101123x" in strong("ID 350203199001011234".replace("1234", "123X"))


def test_names_inside_chinese_text_are_weak_candidates() -> None:
    found = dict(ids.candidates("客户李龙斌的收入"))
    assert found.get("李龙斌") is False  # found, but only as a substring of running text
    assert found.get("客户李龙斌的收入") is True
    assert dict(ids.candidates("李龙斌"))["李龙斌"] is True


@given(st.binary(min_size=0, max_size=80))
def test_mac_is_hmac_sha256(data: bytes) -> None:
    assert idx.Mac(KEY).full(data) == hmac.digest(KEY, data, "sha256")


# -- the index -----------------------------------------------------------------------------
def test_index_finds_values_and_nothing_else() -> None:
    index = idx.IdentifierIndex.from_values(KEY, {"persons": ["AB 12-34", "李龙斌", None,
                                                              "13812345678", "12"]})
    assert index.size == 3  # "12" is too short to index
    found = index.find(["ab1234", "李龙斌", "13812345678", "ab12345", "李龙"])
    assert found == {"ab1234": "persons", "李龙斌": "persons", "13812345678": "persons"}
    other = idx.IdentifierIndex.from_values(bytes(32), {"persons": ["AB 12-34"]})
    assert other.find(["ab1234"]) == {"ab1234": "persons"}
    mixed = idx.IdentifierIndex(bytes(32), index._tables)  # another key: digests differ
    assert mixed.find(["ab1234"]) == {}


def test_ingest_builds_an_index_per_version(tiny_vault, demo_tables) -> None:  # type: ignore[no-untyped-def]
    home = tiny_vault.paths.home
    index = idx.IdentifierIndex.load(tiny_vault.catalog, tiny_vault.kms, build_missing=False)
    persons = demo_tables["persons"]
    for column in ("name", "id_number", "phone"):
        values = persons.column(column).to_pylist()[:50]
        found = index.find({ids.normalise(v) for v in values})
        assert set(found) == {ids.normalise(v) for v in values}
        assert set(found.values()) == {"persons@1"}
    loan_ids = demo_tables["loans"].column("loan_id").to_pylist()[:10]
    assert set(index.find({ids.normalise(v) for v in loan_ids}).values()) == {"loans@1"}
    # analytic values are not identifiers
    assert index.find({ids.normalise(str(v)) for v in persons.column("income").to_pylist()}) == {}
    for dv in tiny_vault.versions.values():
        path = idx.index_path(home, dv.name, dv.storage_id)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "exports").stat().st_mode) == 0o700


def test_identifiers_are_never_stored_in_clear(tiny_vault, demo_tables) -> None:  # type: ignore[no-untyped-def]
    home = tiny_vault.paths.home / "exports"
    blob = b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())
    for v in demo_tables["persons"].column("phone").to_pylist()[:20]:
        assert v.encode() not in blob
    for v in demo_tables["persons"].column("name").to_pylist()[:20]:
        assert v.encode() not in blob
    key_file = home / idx.KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert idx.index_key(tiny_vault.paths.home, tiny_vault.kms) not in key_file.read_bytes()


def test_build_index_of_an_existing_version_matches_ingest(tiny_vault, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dv = tiny_vault.versions["persons"]
    home = tiny_vault.paths.home
    at_ingest = idx.index_path(home, dv.name, dv.storage_id).read_bytes()
    # rebuild into a copy of the home's key file so the session's vault stays untouched
    other = tmp_path / "home"
    (other / "exports").mkdir(parents=True)
    (other / "exports" / idx.KEY_FILE).write_bytes((home / "exports" / idx.KEY_FILE).read_bytes())
    out = idx.build_index(tiny_vault.catalog, tiny_vault.kms, dv, other)
    assert out.read_bytes() == at_ingest


def test_missing_index_is_built_or_refused(catalog: Catalog, keystore: FileKeyStore,  # type: ignore[no-untyped-def]
                                           demo_dir: Path) -> None:
    dv = ingest(catalog, keystore, demo_dir / "districts.parquet",
                load_spec(demo_dir / "districts.yaml"))
    home = idx.home_of(catalog)
    path = idx.index_path(home, dv.name, dv.storage_id)
    path.unlink()  # a vault ingested before the airlock existed
    with pytest.raises(IdentifierIndexError) as info:
        idx.IdentifierIndex.load(catalog, keystore, build_missing=False)
    assert "districts" in info.value.message
    assert idx.ensure_indexes(catalog, keystore) == [dv]
    assert path.exists() and idx.ensure_indexes(catalog, keystore) == []
    path.write_bytes(path.read_bytes()[:-3])  # damaged: rebuilt
    assert idx.ensure_indexes(catalog, keystore) == [dv]
    assert idx.IdentifierIndex.load(catalog, keystore).size == 0  # no identifier columns


def test_failed_ingest_leaves_no_index(catalog: Catalog, keystore: FileKeyStore,  # type: ignore[no-untyped-def]
                                       demo_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "persons.csv"
    src.write_text("person_id,name\nP1,x\n")
    with pytest.raises(Exception):  # noqa: B017 - any ingest error
        ingest(catalog, keystore, src, load_spec(demo_dir / "persons.yaml"))
    root = idx.home_of(catalog) / "exports" / "identifiers"
    assert not any(p.is_file() for p in root.rglob("*")) if root.exists() else True


def test_key_survives_rotation_and_destruction_of_the_old_master_key(  # type: ignore[no-untyped-def]
        catalog: Catalog, keystore: FileKeyStore, demo_dir: Path) -> None:
    ingest(catalog, keystore, demo_dir / "persons.parquet", load_spec(demo_dir / "persons.yaml"))
    home = idx.home_of(catalog)
    key = idx.index_key(home, keystore)
    old = keystore.active_key_id()
    rotate_master_key(catalog, keystore)
    assert idx.index_key(home, keystore) == key  # read with the retired key, re-wrapped
    keystore.destroy(old)
    assert idx.index_key(home, keystore) == key
    assert idx.IdentifierIndex.load(catalog, keystore, build_missing=False).size > 0


def test_concurrent_first_use_makes_one_key(paths, keystore) -> None:  # type: ignore[no-untyped-def]
    paths.ensure_home()
    barrier = threading.Barrier(8)

    def first_use() -> bytes:
        barrier.wait()
        return idx.index_key(paths.home, keystore)

    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: first_use(), range(8)))
    assert len(set(keys)) == 1 and len(keys[0]) == 32
    assert not [p for p in (paths.home / "exports").iterdir() if p.name.startswith(".")]


@settings(max_examples=25)
@given(st.lists(st.text(min_size=1, max_size=12), max_size=30))
def test_index_file_round_trip(values: list[str]) -> None:
    w = idx.IndexWriter(idx.Mac(KEY), ["c"])
    w.add_table(pa.table({"c": pa.array(values, pa.string())}))
    content = w.content()
    norms = {ids.normalise(v) for v in values if ids.indexable(ids.normalise(v))}
    assert len(content) == idx._HEADER + 16 * len(norms)
    index = idx.IdentifierIndex(KEY, [idx._parse("d", content)])
    assert set(index.find(norms | {"zzzzzzzz"})) == norms - {"zzzzzzzz"}
    assert index.lengths == {len(n) for n in norms}
