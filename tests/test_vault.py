"""Encryption at rest: what the encrypted files hide, and how every way of tampering fails.

The read paths under test are the engine's (``Engine.load_dataset``: analytic columns
only) and the operator's (``verify_dataset``: every column group).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sqlite3

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sandbox.catalog import Catalog, DatasetVersion
from sandbox.engine import Engine
from sandbox.errors import (
    IntegrityError,
    KeyDestroyedError,
    KeyNotFoundError,
    KeyStoreMissingError,
    KeyUnwrapError,
    SandboxError,
    VaultError,
)
from sandbox.fsutil import sha256_file
from sandbox.keys import FileKeyStore, Kms, StaticKms, wrapped_key_id
from sandbox.operations import ALL_GROUPS, rotate_master_key, verify_dataset
from sandbox.settings import Paths
from sandbox.vault import GROUP_IDENTIFIER, open_encrypted, read_batches


def _path(catalog: Catalog, dv: DatasetVersion, index: int = 0) -> pathlib.Path:
    return catalog.storage_dir(dv.name, dv.storage_id) / dv.files[index].file_name


def _load(catalog: Catalog, kms: Kms, dv: DatasetVersion) -> pa.Table:
    """Load through the engine's read path and return every loaded row, sorted."""
    eng = Engine(memory_limit="512MB", threads=1)
    try:
        loaded = eng.load_dataset(catalog, kms, dv)
        eng.lock()
        cols = ", ".join(dv.spec.analytic_columns)
        table = eng.execute(f"SELECT {cols} FROM {loaded.name}")
    finally:
        eng._con.close()
    return _sorted(table.cast(dv.spec.arrow_schema(dv.spec.analytic_columns)))


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([(n, "ascending") for n in table.column_names])


def _expected(source: pa.Table, dv: DatasetVersion) -> pa.Table:
    schema = dv.spec.arrow_schema(dv.spec.analytic_columns)
    return _sorted(source.select(schema.names).cast(schema))


def _read_all_groups(catalog: Catalog, kms: Kms, dv: DatasetVersion, index: int = 0) -> pa.Table:
    f = dv.files[index]
    ref = dv.file_ref(f)
    pf = open_encrypted(_path(catalog, dv, index), ref, list(f.keys), kms, ALL_GROUPS)
    return pa.concat_tables(read_batches(pf, ref, pf.schema_arrow.names))


def _flip(path: pathlib.Path, offset: int, mask: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def _sql(paths: Paths, query: str, params: tuple[object, ...] = ()) -> None:
    con = sqlite3.connect(paths.catalog_db)
    try:
        with con:
            con.execute(query, params)
    finally:
        con.close()


def _wrapped_rows(paths: Paths) -> dict[tuple[str, str, str], tuple[str, str]]:
    con = sqlite3.connect(paths.catalog_db)
    try:
        return {
            (s, f, r): (g, w)
            for s, f, g, r, w in con.execute(
                "SELECT storage_id, file_name, key_group, ref, wrapped FROM data_keys"
            )
        }
    finally:
        con.close()


# -- what the files hide ---------------------------------------------------------------


def _needles(tables: dict[str, pa.Table]) -> set[bytes]:
    """Plaintext that must never appear: identifiers, keys, labels, column names.

    Values are at least 6 bytes long (column names at least 5), so a chance match in
    ciphertext of this size is practically impossible.
    """
    values: set[str] = set()
    persons, loans, districts = tables["persons"], tables["loans"], tables["districts"]
    for col in ("name", "id_number", "phone", "person_id"):
        values.update(persons.column(col).to_pylist()[:300])
    values.update(loans.column("loan_id").to_pylist()[:300])
    for col in ("district", "education"):
        values.update(persons.column(col).unique().to_pylist())
    for col in ("purpose", "status"):
        values.update(loans.column(col).unique().to_pylist())
    for col in ("district_code", "name_zh"):
        values.update(districts.column(col).to_pylist())
    needles = {v.encode() for v in values if len(v.encode()) >= 6}
    names = {n for t in tables.values() for n in t.column_names}
    needles |= {n.encode() for n in names if len(n) >= 5}
    # Raw little-endian numbers as PLAIN pages would store them.
    needles |= {
        v.to_bytes(8, "little", signed=True) for v in persons.column("income").to_pylist()[:50]
    }
    return needles


def test_plaintext_control_finds_the_needles(
    demo_tables: dict[str, pa.Table], tmp_path: pathlib.Path
) -> None:
    """The scan below is meaningful: an unencrypted, uncompressed file is full of needles."""
    needles = _needles(demo_tables)
    found = 0
    for name, table in demo_tables.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(table, path, compression="none", use_dictionary=False)
        data = path.read_bytes()
        found += sum(n in data for n in needles)
    assert found > 0.9 * len(needles)


def test_encrypted_files_contain_no_plaintext(
    ingest_demo, catalog: Catalog, demo_tables: dict[str, pa.Table]
) -> None:
    versions = ingest_demo()
    needles = _needles(demo_tables)
    assert len(needles) > 1000
    for dv in versions.values():
        data = _path(catalog, dv).read_bytes()
        leaked = sorted(n for n in needles if n in data)
        assert leaked == [], f"{dv.name}: plaintext in the encrypted file: {leaked[:5]}"
        assert data[:4] == b"PARE" and data[-4:] == b"PARE"  # encrypted footer mode
        assert b"PAR1" not in data


def test_catalog_holds_no_identifier_values(
    ingest_demo, paths: Paths, demo_tables: dict[str, pa.Table]
) -> None:
    ingest_demo()
    persons = demo_tables["persons"]
    needles = {
        v.encode()
        for c in ("name", "id_number", "phone")
        for v in persons.column(c).to_pylist()[:300]
        if len(v.encode()) >= 6
    }
    files = [p for p in paths.home.rglob("*") if p.is_file() and "vault" not in p.parts]
    assert any(p.name == "catalog.sqlite" for p in files)
    for p in files:
        data = p.read_bytes()
        assert not [n for n in needles if n in data], p


def test_plain_parquet_readers_cannot_open_the_file(ingest_demo, catalog: Catalog) -> None:
    path = _path(catalog, ingest_demo("persons")["persons"])
    with pytest.raises((OSError, pa.ArrowException)):
        pq.read_table(path)


# -- reading with the wrong keys ------------------------------------------------------


def test_round_trip_through_the_engine_read_path(
    ingest_demo, catalog: Catalog, keystore: FileKeyStore, demo_tables: dict[str, pa.Table]
) -> None:
    for name, dv in ingest_demo().items():
        assert _load(catalog, keystore, dv).equals(_expected(demo_tables[name], dv))


def test_fresh_key_store_cannot_read(ingest_demo, catalog: Catalog, paths: Paths) -> None:
    dv = ingest_demo("persons")["persons"]
    shutil.move(paths.keystore, paths.keystore.with_name("keystore-elsewhere"))
    with pytest.raises(KeyStoreMissingError):
        _load(catalog, FileKeyStore(paths.keystore), dv)
    fresh = FileKeyStore(paths.keystore)
    fresh.init()
    with pytest.raises(KeyNotFoundError) as info:
        _load(catalog, fresh, dv)
    assert info.value.hint
    result = verify_dataset(catalog, fresh, dv)
    assert not result.ok and "not in the key store" in result.problems[0]


def test_same_key_id_with_other_material_cannot_read(
    ingest_demo, catalog: Catalog, keystore: FileKeyStore
) -> None:
    dv = ingest_demo("persons")["persons"]
    doc = json.loads(keystore.path.read_text())
    doc["keys"][0]["material"] = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY="
    keystore.path.write_text(json.dumps(doc))
    with pytest.raises(KeyUnwrapError):
        _load(catalog, keystore, dv)
    assert not verify_dataset(catalog, keystore, dv).ok


def test_other_environment_key_cannot_read(
    catalog: Catalog, demo_dir: pathlib.Path, demo_tables: dict[str, pa.Table]
) -> None:
    from sandbox.ingest import ingest
    from sandbox.spec import load_spec

    kms = StaticKms(b"k" * 32)
    dv = ingest(
        catalog, kms, demo_dir / "districts.parquet", load_spec(demo_dir / "districts.yaml")
    )
    assert _load(catalog, kms, dv).equals(_expected(demo_tables["districts"], dv))
    with pytest.raises(KeyNotFoundError):
        _load(catalog, StaticKms(b"K" * 32), dv)


# -- single-byte tampering -------------------------------------------------------------


def _offsets(size: int) -> list[int]:
    """About 40 offsets: leading magic, spread over the pages, the footer and its tail."""
    spread = [int(20 + i * (size - 600) / 23) for i in range(24)]
    head = [0, 1, 2, 3, 4, 5, 8, 13]
    tail = [size - k for k in (1, 3, 4, 5, 8, 9, 60, 150, 300)]
    return sorted(set(head + spread + tail))


def test_any_flipped_byte_fails_the_engine_read_path(
    ingest_demo, catalog: Catalog, keystore: FileKeyStore
) -> None:
    dv = ingest_demo("persons")["persons"]
    path = _path(catalog, dv)
    original = path.read_bytes()
    offsets = _offsets(len(original))
    assert len(offsets) >= 40
    for offset in offsets:
        _flip(path, offset)
        with pytest.raises(IntegrityError) as info:
            _load(catalog, keystore, dv)
        assert "part-00000.parquet" in info.value.message, offset
        assert info.value.hint and "verify" in info.value.hint
        result = verify_dataset(catalog, keystore, dv)
        assert not result.ok and "SHA-256" in result.problems[0], offset
        path.write_bytes(original)
    assert verify_dataset(catalog, keystore, dv).ok


def test_flipped_bytes_never_decrypt_to_garbage(
    ingest_demo,
    catalog: Catalog,
    keystore: FileKeyStore,
    paths: Paths,
    demo_tables: dict[str, pa.Table],
) -> None:
    """Even when the catalog's checksum is forged to match, decryption authenticates pages.

    Parquet Modular Encryption does not cover the leading magic bytes, and a few length
    fields tolerate changes in bits they ignore; such a file must then decrypt to exactly
    the original data. Everything else must fail with a SandboxError.
    """
    dv = ingest_demo("persons")["persons"]
    path = _path(catalog, dv)
    original = path.read_bytes()
    good_all = _read_all_groups(catalog, keystore, dv)
    good_analytic = _expected(demo_tables["persons"], dv)
    offsets = _offsets(len(original))
    failed = 0
    for offset in offsets:
        _flip(path, offset)
        _sql(
            paths,
            "UPDATE files SET sha256=? WHERE storage_id=?",
            (sha256_file(path), dv.storage_id),
        )
        forged = catalog.get("persons")
        try:
            assert _read_all_groups(catalog, keystore, forged).equals(good_all), offset
        except SandboxError as exc:
            assert isinstance(exc, IntegrityError | KeyUnwrapError), (offset, exc)
            failed += 1
        try:
            assert _load(catalog, keystore, forged).equals(good_analytic), offset
        except SandboxError as exc:
            assert isinstance(exc, IntegrityError | KeyUnwrapError), (offset, exc)
        path.write_bytes(original)
    # Only the four magic bytes (at most a couple more) may go unnoticed by decryption.
    assert failed >= len(offsets) - 6


def test_truncated_file_fails(ingest_demo, catalog: Catalog, keystore: FileKeyStore) -> None:
    dv = ingest_demo("districts")["districts"]
    path = _path(catalog, dv)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(IntegrityError):
        _load(catalog, keystore, dv)
    assert "SHA-256" in verify_dataset(catalog, keystore, dv).problems[0]


# -- rotation and destruction ---------------------------------------------------------


def test_rotation_rewraps_keys_and_leaves_files_untouched(
    ingest_demo, catalog: Catalog, keystore: FileKeyStore, paths: Paths
) -> None:
    versions = ingest_demo()
    files = {p: sha256_file(p) for p in paths.vault_dir.rglob("*.parquet")}
    assert len(files) == 3
    rows_before = {n: _load(catalog, keystore, dv) for n, dv in versions.items()}
    wrapped_before = _wrapped_rows(paths)
    old = keystore.active_key_id()

    result = rotate_master_key(catalog, keystore)

    new = keystore.active_key_id()
    assert result.new_key == new != old
    assert result.retired == [old]
    assert result.rewrapped == len(wrapped_before)
    assert {k.id: k.state for k in keystore.list_keys()} == {old: "retired", new: "active"}
    wrapped_after = _wrapped_rows(paths)
    assert wrapped_after.keys() == wrapped_before.keys()
    for key, (group, wrapped) in wrapped_after.items():
        assert group == wrapped_before[key][0]
        assert wrapped != wrapped_before[key][1]
        assert wrapped_key_id(wrapped) == new
        assert wrapped_key_id(wrapped_before[key][1]) == old
    assert {p: sha256_file(p) for p in files} == files
    after = {n: catalog.get(n) for n in versions}
    for n, dv in after.items():
        assert dv.storage_id == versions[n].storage_id
        assert _load(catalog, keystore, dv).equals(rows_before[n])

    # The old key wraps nothing any more: destroying it loses nothing.
    keystore.destroy(old)
    for n, dv in after.items():
        assert _load(catalog, keystore, dv).equals(rows_before[n])
        assert verify_dataset(catalog, keystore, dv).ok


def test_rotation_twice_and_data_stays_readable(
    ingest_demo, catalog: Catalog, keystore: FileKeyStore
) -> None:
    dv = ingest_demo("districts")["districts"]
    before = _load(catalog, keystore, dv)
    first = rotate_master_key(catalog, keystore)
    second = rotate_master_key(catalog, keystore)
    assert second.new_key != first.new_key and second.retired == [first.new_key]
    assert _load(catalog, keystore, catalog.get("districts")).equals(before)


def test_destroying_a_key_that_still_wraps_data_makes_it_unreadable(
    ingest_demo, catalog: Catalog, keystore: FileKeyStore
) -> None:
    dv = ingest_demo("districts")["districts"]
    old = keystore.active_key_id()
    new = keystore.create_key("pending")
    keystore.activate(new)  # no re-wrap: the data keys still depend on the old key
    _load(catalog, keystore, dv)
    keystore.destroy(old)
    with pytest.raises(KeyDestroyedError) as info:
        _load(catalog, keystore, dv)
    assert old in info.value.message
    result = verify_dataset(catalog, keystore, dv)
    assert not result.ok and "destroyed" in result.problems[0]
    with pytest.raises(KeyDestroyedError):
        rotate_master_key(catalog, keystore)


# -- keys and files moved between places ----------------------------------------------


@pytest.fixture
def two_files(ingest_demo, catalog: Catalog) -> DatasetVersion:
    """persons stored as two encrypted files of 1,000 rows each."""
    dv = ingest_demo("persons", row_group_size=500, rows_per_file=1000)["persons"]
    assert [f.rows for f in dv.files] == [1000, 1000]
    return dv


def _first_ref(dv: DatasetVersion, index: int, group: str) -> tuple[str, str]:
    key = next(k for k in dv.files[index].keys if k.group == group)
    return key.ref, key.wrapped


@pytest.mark.parametrize("group", ["footer", "analytic"])
def test_wrapped_key_copied_from_another_file_fails(
    two_files: DatasetVersion, catalog: Catalog, keystore: FileKeyStore, paths: Paths, group: str
) -> None:
    dv = two_files
    ref_a, _ = _first_ref(dv, 0, group)
    _, wrapped_b = _first_ref(dv, 1, group)
    _sql(
        paths,
        "UPDATE data_keys SET wrapped=? WHERE storage_id=? AND file_name=? AND ref=?",
        (wrapped_b, dv.storage_id, dv.files[0].file_name, ref_a),
    )
    tampered = catalog.get("persons")
    with pytest.raises(KeyUnwrapError):
        _load(catalog, keystore, tampered)
    result = verify_dataset(catalog, keystore, tampered)
    assert not result.ok and result.problems[0].startswith(dv.files[0].file_name)
    assert "failed to unwrap" in result.problems[0]


def test_identifier_key_copied_from_another_file_fails_verification(
    two_files: DatasetVersion,
    catalog: Catalog,
    keystore: FileKeyStore,
    paths: Paths,
    demo_tables: dict[str, pa.Table],
) -> None:
    dv = two_files
    ref_a, _ = _first_ref(dv, 0, GROUP_IDENTIFIER)
    _, wrapped_b = _first_ref(dv, 1, GROUP_IDENTIFIER)
    _sql(
        paths,
        "UPDATE data_keys SET wrapped=? WHERE storage_id=? AND file_name=? AND ref=?",
        (wrapped_b, dv.storage_id, dv.files[0].file_name, ref_a),
    )
    tampered = catalog.get("persons")
    # The analytic read path never unwraps identifier keys, so it is unaffected ...
    assert _load(catalog, keystore, tampered).equals(_expected(demo_tables["persons"], dv))
    # ... while verification, which decrypts every group, notices.
    result = verify_dataset(catalog, keystore, tampered)
    assert not result.ok and "failed to unwrap" in result.problems[0]


def test_wrapped_key_from_another_dataset_fails(
    ingest_demo, catalog: Catalog, keystore: FileKeyStore, paths: Paths
) -> None:
    versions = ingest_demo("persons", "loans")
    ref_p, _ = _first_ref(versions["persons"], 0, "footer")
    _, wrapped_l = _first_ref(versions["loans"], 0, "footer")
    _sql(paths, "UPDATE data_keys SET wrapped=? WHERE ref=?", (wrapped_l, ref_p))
    with pytest.raises(KeyUnwrapError):
        _load(catalog, keystore, catalog.get("persons"))


def test_wrapped_key_from_another_version_fails(
    ingest_demo, catalog: Catalog, keystore: FileKeyStore, paths: Paths
) -> None:
    v1 = ingest_demo("districts")["districts"]
    v2 = ingest_demo("districts")["districts"]
    assert (v1.version, v2.version) == (1, 2)
    ref_1, _ = _first_ref(v1, 0, "analytic")
    _, wrapped_2 = _first_ref(v2, 0, "analytic")
    _sql(paths, "UPDATE data_keys SET wrapped=? WHERE ref=?", (wrapped_2, ref_1))
    with pytest.raises(KeyUnwrapError):
        _load(catalog, keystore, catalog.get("districts", 1))
    _load(catalog, keystore, catalog.get("districts", 2))


def test_file_swapped_with_another_file_fails(
    two_files: DatasetVersion, catalog: Catalog, keystore: FileKeyStore, paths: Paths
) -> None:
    dv = two_files
    a, b = _path(catalog, dv, 0), _path(catalog, dv, 1)
    shutil.copyfile(b, a)
    with pytest.raises(IntegrityError, match="SHA-256"):
        _load(catalog, keystore, dv)
    # Even with the checksum forged, B's footer names keys that A's catalog rows lack.
    _sql(
        paths,
        "UPDATE files SET sha256=?, size=? WHERE storage_id=? AND file_name=?",
        (sha256_file(a), a.stat().st_size, dv.storage_id, dv.files[0].file_name),
    )
    with pytest.raises(IntegrityError, match="key reference differs"):
        _load(catalog, keystore, catalog.get("persons"))


# -- identifier columns ---------------------------------------------------------------


def test_identifier_group_cannot_be_decrypted_on_the_analytic_path(
    ingest_demo, catalog: Catalog, keystore: FileKeyStore
) -> None:
    dv = ingest_demo("persons")["persons"]
    f = dv.files[0]
    ref = dv.file_ref(f)
    pf = open_encrypted(_path(catalog, dv), ref, list(f.keys), keystore)  # default groups
    assert pf.read(columns=["district", "income"]).num_rows == 2000
    for cols in (["name"], ["id_number"], ["district", "phone"], None):
        with pytest.raises(VaultError, match="identifier") as info:
            pf.read(columns=cols)
        assert not isinstance(info.value, IntegrityError)
    with pytest.raises(VaultError, match="identifier"):
        list(read_batches(pf, ref, ["name"]))
    # With every group allowed (verification) the identifiers do decrypt.
    assert _read_all_groups(catalog, keystore, dv).column("name").null_count == 0


class _RecordingKeyStore(FileKeyStore):
    def __init__(self, directory: pathlib.Path) -> None:
        super().__init__(directory)
        self.aads: list[bytes] = []

    def unwrap(self, wrapped: str, aad: bytes) -> bytes:
        self.aads.append(aad)
        return super().unwrap(wrapped, aad)


def test_engine_never_unwraps_identifier_keys(ingest_demo, catalog: Catalog, paths: Paths) -> None:
    versions = ingest_demo("persons", "loans")
    kms = _RecordingKeyStore(paths.keystore)
    eng = Engine(memory_limit="512MB", threads=1)
    for dv in versions.values():
        table = eng.load_dataset(catalog, kms, dv)
        assert [c for c, _ in table.columns] == dv.spec.analytic_columns
    groups = {aad.rsplit(b"|", 1)[1] for aad in kms.aads}
    assert groups == {b"footer", b"analytic"}
    # Verification, by contrast, does unwrap them: the recorder would have seen it.
    verify_dataset(catalog, kms, versions["persons"])
    assert any(aad.endswith(b"|identifier") for aad in kms.aads)


# -- verify_dataset -------------------------------------------------------------------


def test_verify_reports_ok_tampered_and_missing(
    ingest_demo, catalog: Catalog, keystore: FileKeyStore
) -> None:
    versions = ingest_demo()
    for dv in versions.values():
        result = verify_dataset(catalog, keystore, dv)
        assert result.ok and result.problems == []
        assert (result.name, result.version) == (dv.name, 1)

    loans, persons = versions["loans"], versions["persons"]
    _flip(_path(catalog, loans), len(_path(catalog, loans).read_bytes()) // 2)
    result = verify_dataset(catalog, keystore, loans)
    assert not result.ok
    assert result.problems == ["part-00000.parquet: SHA-256 differs from the catalog (altered)"]

    _path(catalog, persons).unlink()
    result = verify_dataset(catalog, keystore, persons)
    assert not result.ok
    assert result.problems == ["part-00000.parquet: missing from the vault"]
    with pytest.raises(IntegrityError, match="missing"):
        _load(catalog, keystore, persons)

    assert verify_dataset(catalog, keystore, versions["districts"]).ok


def test_verify_reports_row_count_mismatch(
    ingest_demo, catalog: Catalog, keystore: FileKeyStore, paths: Paths
) -> None:
    dv = ingest_demo("districts")["districts"]
    _sql(paths, "UPDATE files SET rows=7")
    result = verify_dataset(catalog, keystore, catalog.get("districts"))
    assert result.problems == ["part-00000.parquet: holds 6 rows, catalog says 7"]
    assert dv.row_count == 6
