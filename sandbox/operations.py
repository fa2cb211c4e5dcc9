"""Operator procedures over catalog, vault and keys: verify, remove, rotate."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

from .catalog import Catalog, DatasetVersion
from .errors import (
    KeyDestroyedError,
    KeyInUseError,
    KeyNotFoundError,
    KeyStoreError,
    KeyUnwrapError,
    SandboxError,
)
from .fsutil import sha256_file
from .keys import FileKeyStore, Kms, wrapped_key_id
from .vault import GROUP_ANALYTIC, GROUP_FOOTER, GROUP_IDENTIFIER, open_encrypted, read_batches

ALL_GROUPS = frozenset({GROUP_FOOTER, GROUP_ANALYTIC, GROUP_IDENTIFIER})


@dataclass
class VerifyResult:
    name: str
    version: int
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    key_problems: int = 0  # of the problems: keys that are destroyed or not in the key store


# Errors of one dataset's keys; any other key store error (unreadable, badly protected or
# missing key store) is the operator's setup, not the data's, and stops verify at once.
DATASET_KEY_ERRORS = (KeyDestroyedError, KeyNotFoundError)


def verify_dataset(catalog: Catalog, kms: Kms, dv: DatasetVersion) -> VerifyResult:
    """Check sizes and SHA-256 of every file, then decrypt every page (GCM tags).

    Raises the key store's own error (e.g. a key file others can read) instead of marking
    the dataset damaged: the data is fine, and the fix is on the key store.
    """
    result = VerifyResult(dv.name, dv.version)
    base = catalog.storage_dir(dv.name, dv.storage_id)
    for f in dv.files:
        path = base / f.file_name
        ref = dv.file_ref(f)
        if not path.exists():
            result.problems.append(f"{f.file_name}: missing from the vault")
            continue
        if path.stat().st_size != f.size or sha256_file(path) != f.sha256:
            result.problems.append(f"{f.file_name}: SHA-256 differs from the catalog (altered)")
            continue
        try:
            pf = open_encrypted(path, ref, list(f.keys), kms, ALL_GROUPS)
            rows = sum(t.num_rows for t in read_batches(pf, ref, pf.schema_arrow.names))
            if rows != f.rows:
                result.problems.append(f"{f.file_name}: holds {rows} rows, catalog says {f.rows}")
        except KeyStoreError as exc:
            if isinstance(exc, DATASET_KEY_ERRORS):
                result.problems.append(f"{f.file_name}: {exc.message}")
                result.key_problems += 1
            elif isinstance(exc, KeyUnwrapError):
                result.problems.append(f"{f.file_name}: {exc.message}")
            else:
                raise
        except SandboxError as exc:
            result.problems.append(f"{f.file_name}: {exc.message}")
    result.ok = not result.problems
    return result


def remove_dataset(catalog: Catalog, name: str, version: int | None = None) -> list[int]:
    """Unregister first (atomic), then delete the files and their identifier index: never a
    catalog row without files."""
    from .identifier_index import remove_orphans

    gone = catalog.unregister(name, version)
    for dv in gone:
        shutil.rmtree(catalog.storage_dir(dv.name, dv.storage_id), ignore_errors=True)
    remove_orphans(catalog)
    return [dv.version for dv in gone]


@dataclass
class RotationResult:
    new_key: str
    retired: list[str]
    rewrapped: int  # data keys
    others: list[str] = field(default_factory=list)  # other keys re-wrapped (by name)


INDEX_KEY = "identifier index key"


def rotate_master_key(catalog: Catalog, kms: FileKeyStore) -> RotationResult:
    """New master key; re-wrap every key the old one wraps (every data key in the catalog,
    and the identifier index key in the home); check every file opens; retire the old key.

    Safe to run again after a crash: a pending key from an unfinished rotation is reused,
    and every key that is still readable stays readable at each step.
    """
    from .identifier_index import home_of, rewrap_key

    old_active = kms.active_key_id()
    new = kms.pending_key_id() or kms.create_key("pending")
    updates: list[tuple[str, str, str, str]] = []
    versions = catalog.all_versions()
    for dv in versions:
        for f in dv.files:
            ref = dv.file_ref(f)
            for k in f.keys:
                if wrapped_key_id(k.wrapped) == new:
                    continue
                plain = kms.unwrap(k.wrapped, ref.aad(k.group))
                updates.append((dv.storage_id, f.file_name, k.ref,
                                kms.wrap(plain, ref.aad(k.group), key_id=new)))
    catalog.replace_wrapped_keys(updates)
    home = home_of(catalog)
    others = [INDEX_KEY] if rewrap_key(home, kms, new) else []
    for dv in catalog.all_versions():
        for f in dv.files:
            ref = dv.file_ref(f)
            for k in f.keys:
                kms.unwrap(k.wrapped, ref.aad(k.group))
            open_encrypted(catalog.storage_dir(dv.name, dv.storage_id) / f.file_name, ref,
                           list(f.keys), kms, ALL_GROUPS)
    kms.activate(new)
    # Again once active: a process that read the index key during the rotation may have
    # re-wrapped it under the then active (old) key; a no-op otherwise.
    rewrap_key(home, kms, new)
    retired = [k.id for k in kms.list_keys() if k.state == "retired"]
    return RotationResult(new, [old_active] if old_active in retired else [], len(updates),
                          others)


def keys_in_use(catalog: Catalog) -> dict[str, list[str]]:
    """Master key id -> datasets (name@version) whose data keys it wraps."""
    use: dict[str, list[str]] = {}
    for dv in catalog.all_versions():
        for f in dv.files:
            for k in f.keys:
                label = f"{dv.name}@{dv.version}"
                ids = use.setdefault(wrapped_key_id(k.wrapped), [])
                if label not in ids:
                    ids.append(label)
    return use


def other_keys_in_use(catalog: Catalog) -> dict[str, list[str]]:
    """Master key id -> the keys other than data keys it wraps (the identifier index key).

    The audit signing key is not listed: it is kept in the key store itself, not wrapped.
    """
    from .identifier_index import home_of, key_wrapped_by

    holder = key_wrapped_by(home_of(catalog))
    return {holder: [INDEX_KEY]} if holder else {}


def destroy_master_key(catalog: Catalog, kms: FileKeyStore, key_id: str,
                       force: bool = False) -> list[str]:
    """Erase a retired master key; refused while it wraps anything still in use.

    With ``force`` the datasets it wraps become unreadable (crypto-shredding); the identifier
    index key is moved to the active key first, so the export airlock and later ingests keep
    working. Returns the datasets made unreadable.
    """
    from .identifier_index import home_of, rewrap_key

    kms.get(key_id)  # an unknown id is keys.not_found, before anything else
    datasets = keys_in_use(catalog).get(key_id, [])
    others = other_keys_in_use(catalog).get(key_id, [])
    active = kms.active_key_id()
    if key_id != active and (datasets or others) and not force:
        what = [f"data keys of {', '.join(datasets)}"] if datasets else []
        raise KeyInUseError(
            f"master key {key_id} still wraps the {' and the '.join(what + others)}",
            "run `sandbox keys rotate` first (it re-wraps every key under a new master key), "
            "then destroy the retired key" + (
                "; or pass --force to make those datasets unreadable" if datasets else ""))
    if key_id != active and others:
        rewrap_key(home_of(catalog), kms, active)
    kms.destroy(key_id)
    return datasets
