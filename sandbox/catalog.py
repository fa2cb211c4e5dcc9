"""The dataset registry (SQLite): datasets, versions, files, wrapped data keys.

The catalog is the only place wrapped data keys live. Each dataset version is
stored under its own random storage id, so an interrupted ingest leaves at most
an unreferenced directory (collected by ``gc_orphans``) and never a half entry.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import CatalogCorruptError, ConfigError, DatasetNotFoundError
from .spec import DatasetSpec
from .vault import FileRef, WrappedKey, WrittenFile

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT NOT NULL, version INTEGER NOT NULL, storage_id TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL, description TEXT NOT NULL, owner TEXT NOT NULL, source TEXT NOT NULL,
    public INTEGER NOT NULL, row_count INTEGER NOT NULL, spec_json TEXT NOT NULL,
    created_at TEXT NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS files (
    storage_id TEXT NOT NULL REFERENCES datasets(storage_id) ON DELETE CASCADE,
    file_name TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL, rows INTEGER NOT NULL,
    PRIMARY KEY (storage_id, file_name));
CREATE TABLE IF NOT EXISTS data_keys (
    storage_id TEXT NOT NULL, file_name TEXT NOT NULL, key_group TEXT NOT NULL,
    ref TEXT NOT NULL, wrapped TEXT NOT NULL,
    PRIMARY KEY (storage_id, file_name, ref),
    FOREIGN KEY (storage_id, file_name) REFERENCES files(storage_id, file_name) ON DELETE CASCADE);
"""


@dataclass(frozen=True)
class StoredFile:
    file_name: str
    size: int
    sha256: str
    rows: int
    keys: tuple[WrappedKey, ...]


@dataclass(frozen=True)
class DatasetVersion:
    spec: DatasetSpec
    version: int
    storage_id: str
    row_count: int
    created_at: str
    files: tuple[StoredFile, ...]

    @property
    def name(self) -> str:
        return self.spec.name

    def file_ref(self, f: StoredFile) -> FileRef:
        return FileRef(self.spec.name, self.storage_id, f.file_name)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name, "version": self.version, "title": self.spec.title,
            "description": self.spec.description, "owner": self.spec.owner,
            "source": self.spec.source, "public": self.spec.public, "row_count": self.row_count,
            "created_at": self.created_at,
            "files": [{"file": f.file_name, "size": f.size, "sha256": f.sha256, "rows": f.rows}
                      for f in self.files],
            "columns": [c.__dict__ for c in self.spec.columns],
        }


class Catalog:
    def __init__(self, db_path: Path, vault_dir: Path) -> None:
        self.db_path, self.vault_dir = db_path, vault_dir
        try:
            self._con = sqlite3.connect(db_path, isolation_level=None, timeout=30)
            self._con.execute("PRAGMA foreign_keys=ON")
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=FULL")
            self._con.executescript(_SCHEMA)
            row = self._con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self._con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                                  (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                raise CatalogCorruptError(f"catalog schema version {row[0]} is not supported",
                                          "upgrade the sandbox package")
        except sqlite3.DatabaseError as exc:
            raise CatalogCorruptError(
                f"the catalog database {db_path} cannot be opened: {exc}",
                "restore it from a backup; the encrypted files alone cannot be read without it",
            ) from None
        except sqlite3.Error as exc:  # pragma: no cover - e.g. permissions
            raise ConfigError(f"cannot open the catalog {db_path}: {exc}") from None

    def close(self) -> None:
        self._con.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._con.execute("BEGIN IMMEDIATE")
        try:
            yield self._con
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")

    # -- reading -------------------------------------------------------------
    def storage_dir(self, name: str, storage_id: str) -> Path:
        return self.vault_dir / name / storage_id

    def names(self) -> list[str]:
        return [r[0] for r in self._con.execute("SELECT DISTINCT name FROM datasets ORDER BY 1")]

    def versions(self, name: str) -> list[int]:
        return [r[0] for r in self._con.execute(
            "SELECT version FROM datasets WHERE name=? ORDER BY version", (name,))]

    def get(self, name: str, version: int | None = None) -> DatasetVersion:
        if version is None:
            row = self._con.execute(
                "SELECT version, storage_id, row_count, spec_json, created_at FROM datasets "
                "WHERE name=? ORDER BY version DESC LIMIT 1", (name,)).fetchone()
        else:
            row = self._con.execute(
                "SELECT version, storage_id, row_count, spec_json, created_at FROM datasets "
                "WHERE name=? AND version=?", (name, version)).fetchone()
        if row is None:
            known = ", ".join(self.names()) or "none"
            what = f"dataset '{name}'" + (f" version {version}" if version is not None else "")
            raise DatasetNotFoundError(f"{what} is not in the catalog",
                                       f"known datasets: {known}; see `sandbox dataset list`")
        ver, storage_id, rows, spec_json, created = row
        files = []
        for fname, size, sha, frows in self._con.execute(
                "SELECT file_name, size, sha256, rows FROM files WHERE storage_id=? "
                "ORDER BY file_name", (storage_id,)):
            keys = tuple(WrappedKey(g, r, w) for g, r, w in self._con.execute(
                "SELECT key_group, ref, wrapped FROM data_keys WHERE storage_id=? AND "
                "file_name=? ORDER BY key_group, ref", (storage_id, fname)))
            files.append(StoredFile(fname, size, sha, frows, keys))
        return DatasetVersion(DatasetSpec.from_dict(json.loads(spec_json)), ver, storage_id,
                              rows, created, tuple(files))

    def resolve(self, name: str, version: int | None) -> tuple[DatasetSpec, int] | None:
        """(spec, version) of a dataset, or None: what policy loading needs from the catalog."""
        try:
            dv = self.get(name, version)
        except DatasetNotFoundError:
            return None
        return dv.spec, dv.version

    def all_versions(self) -> list[DatasetVersion]:
        rows = self._con.execute("SELECT name, version FROM datasets ORDER BY name, version")
        return [self.get(n, v) for n, v in rows.fetchall()]

    # -- writing -------------------------------------------------------------
    def register(self, spec: DatasetSpec, storage_id: str, files: list[WrittenFile]) -> int:
        """Record a fully written, durable dataset version; returns its version number."""
        created = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
        with self.transaction() as con:
            (last,) = con.execute("SELECT COALESCE(MAX(version), 0) FROM datasets WHERE name=?",
                                  (spec.name,)).fetchone()
            version = last + 1
            con.execute(
                "INSERT INTO datasets VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (spec.name, version, storage_id, spec.title, spec.description, spec.owner,
                 spec.source, int(spec.public), sum(f.rows for f in files),
                 json.dumps(spec.to_dict(), ensure_ascii=False), created))
            for f in files:
                con.execute("INSERT INTO files VALUES (?,?,?,?,?)",
                            (storage_id, f.file_name, f.size, f.sha256, f.rows))
                con.executemany("INSERT INTO data_keys VALUES (?,?,?,?,?)",
                                [(storage_id, f.file_name, k.group, k.ref, k.wrapped)
                                 for k in f.keys])
        return version

    def unregister(self, name: str, version: int | None = None) -> list[DatasetVersion]:
        """Remove one version (or all) from the catalog; returns what was removed."""
        gone = [self.get(name, version)] if version is not None else \
            [self.get(name, v) for v in self.versions(name)]
        if not gone:
            self.get(name)  # raises a clear not-found error
        with self.transaction() as con:
            for dv in gone:
                con.execute("DELETE FROM datasets WHERE storage_id=?", (dv.storage_id,))
        return gone

    def replace_wrapped_keys(self, updates: list[tuple[str, str, str, str]]) -> None:
        """Atomically store re-wrapped keys: (storage_id, file_name, ref, wrapped)."""
        with self.transaction() as con:
            for storage_id, fname, ref, wrapped in updates:
                cur = con.execute(
                    "UPDATE data_keys SET wrapped=? WHERE storage_id=? AND file_name=? AND "
                    "ref=?", (wrapped, storage_id, fname, ref))
                if cur.rowcount != 1:
                    raise CatalogCorruptError("a data key vanished during rotation",
                                              "run `sandbox keys rotate` again")

    def known_storage_ids(self) -> set[str]:
        return {r[0] for r in self._con.execute("SELECT storage_id FROM datasets")}
