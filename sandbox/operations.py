"""Operator procedures over catalog, vault and keys: verify, remove, rotate."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

from .catalog import Catalog, DatasetVersion
from .errors import SandboxError
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


def verify_dataset(catalog: Catalog, kms: Kms, dv: DatasetVersion) -> VerifyResult:
    """Check sizes and SHA-256 of every file, then decrypt every page (GCM tags)."""
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
    rewrapped: int


def rotate_master_key(catalog: Catalog, kms: FileKeyStore) -> RotationResult:
    """New master key; re-wrap every data key; check every file opens; retire the old key.

    Safe to run again after a crash: a pending key from an unfinished rotation is reused,
    and every key that is still readable stays readable at each step.
    """
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
    for dv in catalog.all_versions():
        for f in dv.files:
            ref = dv.file_ref(f)
            for k in f.keys:
                kms.unwrap(k.wrapped, ref.aad(k.group))
            open_encrypted(catalog.storage_dir(dv.name, dv.storage_id) / f.file_name, ref,
                           list(f.keys), kms, ALL_GROUPS)
    kms.activate(new)
    retired = [k.id for k in kms.list_keys() if k.state == "retired"]
    return RotationResult(new, [old_active] if old_active in retired else [], len(updates))


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
