"""Master keys: the file key store, envelope wrapping, and keys from the environment."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import stat

import pytest

from sandbox.errors import (
    ConfigError,
    KeyDestroyedError,
    KeyNotFoundError,
    KeyStoreError,
    KeyStoreMissingError,
    KeyUnwrapError,
)
from sandbox.keys import FileKeyStore, StaticKms, load_kms, wrapped_key_id
from sandbox.settings import Paths

AAD = b"sandbox/dek/v1|persons|sid|part-00000.parquet|analytic"
DEK = bytes(range(32))


def _b64key(seed: int = 7) -> str:
    return base64.b64encode(bytes((seed + i) % 256 for i in range(32))).decode()


def _mode(path: pathlib.Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the file key store ---------------------------------------------------------------


def test_init_creates_private_directory_and_file(paths: Paths) -> None:
    ks = FileKeyStore(paths.keystore)
    key_id = ks.init()
    assert _mode(paths.keystore) == 0o700
    assert _mode(ks.path) == 0o600
    doc = json.loads(ks.path.read_text())
    assert [k["id"] for k in doc["keys"]] == [key_id]
    assert len(base64.b64decode(doc["keys"][0]["material"])) == 32
    assert ks.active_key_id() == key_id
    assert [(k.id, k.state) for k in ks.list_keys()] == [(key_id, "active")]


def test_init_tightens_an_existing_open_directory(paths: Paths) -> None:
    paths.keystore.mkdir(mode=0o755)
    os.chmod(paths.keystore, 0o755)
    FileKeyStore(paths.keystore).init()
    assert _mode(paths.keystore) == 0o700


def test_list_keys_never_shows_material(keystore: FileKeyStore) -> None:
    material = json.loads(keystore.path.read_text())["keys"][0]["material"]
    shown = repr(keystore.list_keys())
    assert "material" not in shown
    assert material not in shown


def test_init_twice_is_refused_and_keeps_the_key(keystore: FileKeyStore) -> None:
    before = keystore.path.read_bytes()
    with pytest.raises(KeyStoreError, match="already initialised") as info:
        keystore.init()
    assert info.value.hint and "rotate" in info.value.hint
    assert keystore.path.read_bytes() == before


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_key_file_readable_by_others_is_refused(keystore: FileKeyStore, mode: int) -> None:
    os.chmod(keystore.path, mode)
    with pytest.raises(KeyStoreError, match="readable by other users") as info:
        keystore.active_key_id()
    assert "chmod 600" in (info.value.hint or "")
    with pytest.raises(KeyStoreError):
        keystore.wrap(DEK, AAD)


def test_missing_key_store_is_a_clear_error(paths: Paths) -> None:
    ks = FileKeyStore(paths.keystore)
    for call in (
        ks.active_key_id,
        ks.list_keys,
        ks.create_key,
        lambda: ks.destroy("mk-x"),
        lambda: ks.activate("mk-x"),
    ):
        with pytest.raises(KeyStoreMissingError) as info:
            call()
        assert "keys init" in (info.value.hint or "")
    assert not paths.keystore.exists()


def test_damaged_key_store_is_reported(keystore: FileKeyStore) -> None:
    keystore.path.write_text("{not json")
    with pytest.raises(KeyStoreError, match="damaged"):
        keystore.active_key_id()


# -- wrapping -----------------------------------------------------------------------


def test_wrap_unwrap_round_trip(keystore: FileKeyStore) -> None:
    wrapped = keystore.wrap(DEK, AAD)
    assert wrapped_key_id(wrapped) == keystore.active_key_id()
    assert DEK.hex() not in wrapped and base64.urlsafe_b64encode(DEK).decode() not in wrapped
    assert keystore.unwrap(wrapped, AAD) == DEK
    # Random nonces: wrapping twice gives different blobs that both open.
    again = keystore.wrap(DEK, AAD)
    assert again != wrapped
    assert keystore.unwrap(again, AAD) == DEK


@pytest.mark.parametrize(
    "other_aad",
    [
        AAD.replace(b"persons", b"loans"),
        AAD.replace(b"|sid|", b"|sie|"),
        AAD.replace(b"part-00000", b"part-00001"),
        AAD.replace(b"analytic", b"identifier"),
        b"",
    ],
)
def test_unwrap_with_other_aad_fails(keystore: FileKeyStore, other_aad: bytes) -> None:
    wrapped = keystore.wrap(DEK, AAD)
    with pytest.raises(KeyUnwrapError) as info:
        keystore.unwrap(wrapped, other_aad)
    assert info.value.code == "keys.unwrap_failed"


def test_tampered_wrapped_blob_fails(keystore: FileKeyStore) -> None:
    wrapped = keystore.wrap(DEK, AAD)
    prefix, kid, blob = wrapped.split(".")
    raw = base64.urlsafe_b64decode(blob)
    for i in (0, 5, 11, 12, len(raw) // 2, len(raw) - 1):  # nonce, ciphertext, tag
        bad = bytearray(raw)
        bad[i] ^= 0x01
        tampered = f"{prefix}.{kid}.{base64.urlsafe_b64encode(bytes(bad)).decode()}"
        with pytest.raises(KeyUnwrapError):
            keystore.unwrap(tampered, AAD)
    for broken in (
        f"{prefix}.{kid}.",
        f"{prefix}.{kid}.!!!!",
        f"{prefix}.{kid}.{blob[:-8]}",
        "sbk0.x.y",
        "garbage",
        f"{prefix}.{kid}.{blob}.x",
    ):
        with pytest.raises(KeyUnwrapError):
            keystore.unwrap(broken, AAD)


def test_wrapped_key_names_an_unknown_master_key(keystore: FileKeyStore) -> None:
    wrapped = keystore.wrap(DEK, AAD)
    blob = wrapped.split(".")[2]
    with pytest.raises(KeyNotFoundError):
        keystore.unwrap(f"sbk1.mk-00000000-deadbeef.{blob}", AAD)


def test_same_id_other_material_fails_to_unwrap(keystore: FileKeyStore) -> None:
    wrapped = keystore.wrap(DEK, AAD)
    doc = json.loads(keystore.path.read_text())
    doc["keys"][0]["material"] = _b64key(99)
    keystore.path.write_text(json.dumps(doc))
    with pytest.raises(KeyUnwrapError):
        keystore.unwrap(wrapped, AAD)


# -- lifecycle -----------------------------------------------------------------------


def test_rotation_lifecycle_and_destroy(keystore: FileKeyStore) -> None:
    old = keystore.active_key_id()
    wrapped_old = keystore.wrap(DEK, AAD)
    new = keystore.create_key("pending")
    assert keystore.pending_key_id() == new
    assert keystore.active_key_id() == old
    keystore.activate(new)
    states = {k.id: k.state for k in keystore.list_keys()}
    assert states == {old: "retired", new: "active"}
    assert keystore.pending_key_id() is None
    # A retired key still unwraps what it wrapped; new wraps use the new key.
    assert keystore.unwrap(wrapped_old, AAD) == DEK
    assert wrapped_key_id(keystore.wrap(DEK, AAD)) == new

    keystore.destroy(old)
    assert {k.id: k.state for k in keystore.list_keys()}[old] == "destroyed"
    assert json.loads(keystore.path.read_text())["keys"][0]["material"] is None
    with pytest.raises(KeyDestroyedError) as info:
        keystore.unwrap(wrapped_old, AAD)
    assert info.value.code == "keys.destroyed"
    with pytest.raises(KeyDestroyedError):
        keystore.wrap(DEK, AAD, key_id=old)
    with pytest.raises(KeyDestroyedError):
        keystore.activate(old)


def test_destroying_the_active_key_is_refused(keystore: FileKeyStore) -> None:
    active = keystore.active_key_id()
    wrapped = keystore.wrap(DEK, AAD)
    with pytest.raises(KeyStoreError, match="active") as info:
        keystore.destroy(active)
    assert not isinstance(info.value, KeyDestroyedError)
    assert "rotate" in (info.value.hint or "")
    assert keystore.unwrap(wrapped, AAD) == DEK


def test_unknown_key_ids_are_not_found(keystore: FileKeyStore) -> None:
    with pytest.raises(KeyNotFoundError):
        keystore.destroy("mk-19700101-00000000")
    with pytest.raises(KeyNotFoundError):
        keystore.activate("mk-19700101-00000000")


def test_saved_file_stays_private_after_changes(keystore: FileKeyStore) -> None:
    keystore.create_key("pending")
    assert _mode(keystore.path) == 0o600
    assert not [p for p in keystore.directory.iterdir() if ".tmp-" in p.name]


# -- keys from the environment ---------------------------------------------------------


def test_static_kms_from_env_variable(paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_MASTER_KEY", _b64key())
    kms = load_kms(paths.keystore)
    assert isinstance(kms, StaticKms)
    wrapped = kms.wrap(DEK, AAD)
    assert kms.unwrap(wrapped, AAD) == DEK
    assert [k.state for k in kms.list_keys()] == ["active"]
    assert kms.active_key_id().startswith("ext-")
    assert _b64key() not in kms.active_key_id()
    # The environment key never creates or needs a key store, and cannot be changed here.
    assert not paths.keystore.exists()
    for change in (kms.create_key, lambda: kms.destroy(kms.active_key_id())):
        with pytest.raises(KeyStoreError, match="read-only"):
            change()

    # Another key in the environment does not open what the first one wrapped.
    monkeypatch.setenv("SANDBOX_MASTER_KEY", _b64key(seed=8))
    with pytest.raises(KeyNotFoundError):
        load_kms(paths.keystore).unwrap(wrapped, AAD)


def test_static_kms_from_key_file(
    paths: Paths, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_text(_b64key() + "\n")
    monkeypatch.setenv("SANDBOX_MASTER_KEY_FILE", str(key_file))
    kms = load_kms(paths.keystore)
    assert isinstance(kms, StaticKms)
    # Same key as the environment variable would give: same id, interchangeable wraps.
    assert kms.active_key_id() == StaticKms(base64.b64decode(_b64key())).active_key_id()
    assert kms.unwrap(kms.wrap(DEK, AAD), AAD) == DEK


@pytest.mark.parametrize(
    "value",
    [
        "not base64 at all!",
        base64.b64encode(b"x" * 16).decode(),  # too short
        base64.b64encode(b"x" * 33).decode(),  # too long
        "é" * 44,  # not ASCII
    ],
)
def test_bad_master_key_in_env_is_refused(
    paths: Paths, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("SANDBOX_MASTER_KEY", value)
    with pytest.raises(KeyStoreError, match="SANDBOX_MASTER_KEY") as info:
        load_kms(paths.keystore)
    assert info.value.hint and "base64" in info.value.hint
    assert value not in info.value.message


def test_empty_master_key_variable_counts_as_unset(
    paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDBOX_MASTER_KEY", "")
    assert isinstance(load_kms(paths.keystore), FileKeyStore)


@pytest.mark.parametrize(
    "content",
    [b"short", b"\xff\xfe\x00binary", base64.b64encode(b"k" * 31)],
)
def test_bad_master_key_file_is_refused(
    paths: Paths, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, content: bytes
) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_bytes(content)
    monkeypatch.setenv("SANDBOX_MASTER_KEY_FILE", str(key_file))
    with pytest.raises(KeyStoreError, match="not a base64-encoded 32-byte key") as info:
        load_kms(paths.keystore)
    assert str(key_file) in info.value.message


def test_missing_master_key_file_is_refused(
    paths: Paths, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDBOX_MASTER_KEY_FILE", str(tmp_path / "absent.key"))
    with pytest.raises(KeyStoreError, match="cannot read the master key file"):
        load_kms(paths.keystore)


def test_env_key_takes_precedence_over_file_store(
    keystore: FileKeyStore, paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(load_kms(paths.keystore), FileKeyStore)
    monkeypatch.setenv("SANDBOX_MASTER_KEY", _b64key())
    assert isinstance(load_kms(paths.keystore), StaticKms)


# -- where keys live ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("home_rel", "keystore_rel"),
    [
        ("home", "home"),
        ("home", "home/keys"),
        ("home", "home/a/b/keystore"),
        ("home", "home/x/../keys"),
        ("home", "other/../home/keys"),  # a '..' must not hide where the key store is
        ("other/../home", "home/keys"),
        ("home/", "home/./keys"),
    ],
)
def test_keystore_inside_home_is_refused(
    tmp_path: pathlib.Path, home_rel: str, keystore_rel: str
) -> None:
    with pytest.raises(ConfigError, match="inside the home") as info:
        Paths.resolve(f"{tmp_path}/{home_rel}", f"{tmp_path}/{keystore_rel}")
    assert "SANDBOX_KEYSTORE" in (info.value.hint or "")


def test_keystore_beside_home_is_accepted(tmp_path: pathlib.Path) -> None:
    p = Paths.resolve(tmp_path / "home", tmp_path / "home-keys")
    assert p.home == tmp_path / "home" and p.keystore == tmp_path / "home-keys"
    assert p.catalog_db == tmp_path / "home" / "catalog.sqlite"


def test_keystore_inside_home_from_environment_is_refused(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDBOX_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("SANDBOX_KEYSTORE", str(tmp_path / "h" / "ks"))
    with pytest.raises(ConfigError):
        Paths.resolve()
