"""Encrypted Parquet at rest (Parquet Modular Encryption, written by pyarrow).

Every file has three key groups: the footer, the analytic columns, and the
identifier columns, which are kept under keys of their own. pyarrow generates a
data key per column and one for the footer; each is wrapped by the ``Kms`` with
associated data naming the dataset, storage id, file and group, and stored
wrapped in the catalog (the file's footer holds only an opaque reference).
Rotation therefore re-wraps catalog rows and never rewrites data; a file or
wrapped key moved elsewhere fails authentication.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe

from .errors import IntegrityError, SandboxError, VaultError
from .fsutil import sha256_file
from .keys import Kms

GROUP_FOOTER = "footer"
GROUP_ANALYTIC = "analytic"
GROUP_IDENTIFIER = "identifier"
READ_GROUPS_ANALYTIC = frozenset({GROUP_FOOTER, GROUP_ANALYTIC})
_NO_CACHE = dt.timedelta(seconds=1)


@dataclass(frozen=True)
class FileRef:
    """Where one encrypted file belongs: what its data keys are bound to."""

    dataset: str
    storage_id: str
    file_name: str

    def aad(self, group: str) -> bytes:
        return f"sandbox/dek/v1|{self.dataset}|{self.storage_id}|{self.file_name}|{group}".encode()

    def describe(self) -> str:
        return f"dataset '{self.dataset}' file {self.file_name}"


@dataclass(frozen=True)
class WrappedKey:
    group: str
    ref: str
    wrapped: str


class _KmsBridge(pe.KmsClient):
    """pyarrow's view of our Kms for one file: wraps on write, unwraps allowed groups on read."""

    def __init__(self, kms: Kms, file: FileRef, wrapped: dict[str, WrappedKey],
                 groups: frozenset[str]) -> None:
        pe.KmsClient.__init__(self)
        self.kms, self.file, self.wrapped, self.groups = kms, file, wrapped, groups

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        group = master_key_identifier
        ref = f"{group}:{secrets.token_hex(8)}"
        self.wrapped[ref] = WrappedKey(group, ref, self.kms.wrap(key_bytes, self.file.aad(group)))
        return ref

    def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
        group = master_key_identifier
        if group not in self.groups:
            raise VaultError(
                f"{self.file.describe()}: the '{group}' column group may not be decrypted here",
                "identifier columns are never loaded for analysis",
            )
        entry = self.wrapped.get(wrapped_key)
        if entry is None or entry.group != group:
            raise IntegrityError(
                f"{self.file.describe()} does not match its catalog record (key reference differs)",
                "the file was replaced or moved; run `sandbox dataset verify` and re-ingest it",
            )
        return self.kms.unwrap(entry.wrapped, self.file.aad(group))


def _factory(kms: Kms, file: FileRef, wrapped: dict[str, WrappedKey],
             groups: frozenset[str]) -> tuple[pe.CryptoFactory, pe.KmsConnectionConfig]:
    # A fresh factory per file: pyarrow caches keys per factory, and our binding is per file.
    factory = pe.CryptoFactory(lambda _cfg: _KmsBridge(kms, file, wrapped, groups))
    config = pe.KmsConnectionConfig(kms_instance_id=f"sandbox-{secrets.token_hex(8)}")
    return factory, config


@dataclass
class WrittenFile:
    file_name: str
    size: int
    sha256: str
    rows: int
    keys: list[WrappedKey]


class EncryptedWriter:
    """Streams record batches into one encrypted Parquet file.

    Identifier columns go under their own column key; every other column under the
    analytic key; the footer (schema, column names, statistics) is encrypted too.
    """

    def __init__(self, path: Path, file: FileRef, schema: pa.Schema,
                 identifier_columns: list[str], kms: Kms, row_group_size: int = 1_000_000):
        self.path, self.file, self.row_group_size = path, file, row_group_size
        self.rows = 0
        self._wrapped: dict[str, WrappedKey] = {}
        factory, config = _factory(kms, file, self._wrapped, frozenset())
        ident = [n for n in schema.names if n in identifier_columns]
        analytic = [n for n in schema.names if n not in identifier_columns]
        column_keys = {g: cols for g, cols in ((GROUP_ANALYTIC, analytic),
                                               (GROUP_IDENTIFIER, ident)) if cols}
        enc = pe.EncryptionConfiguration(
            footer_key=GROUP_FOOTER, column_keys=column_keys, encryption_algorithm="AES_GCM_V1",
            plaintext_footer=False, double_wrapping=False, cache_lifetime=_NO_CACHE,
            internal_key_material=True, data_key_length_bits=256,
        )
        props = factory.file_encryption_properties(config, enc)
        self._writer = pq.ParquetWriter(
            str(path), schema, compression="zstd", encryption_properties=props,
            write_statistics=False,
        )

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        self._writer.write(batch, row_group_size=self.row_group_size)
        self.rows += batch.num_rows

    def close(self) -> WrittenFile:
        self._writer.close()
        with open(self.path, "rb") as fh:
            os.fsync(fh.fileno())
        return WrittenFile(self.path.name, self.path.stat().st_size, sha256_file(self.path),
                           self.rows, list(self._wrapped.values()))

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        self.path.unlink(missing_ok=True)


def open_encrypted(path: Path, file: FileRef, keys: list[WrappedKey], kms: Kms,
                   groups: frozenset[str] = READ_GROUPS_ANALYTIC) -> pq.ParquetFile:
    """Open an encrypted file for reading; only the listed key groups can be decrypted."""
    wrapped = {k.ref: k for k in keys}
    factory, config = _factory(kms, file, wrapped, groups)
    props = factory.file_decryption_properties(config, pe.DecryptionConfiguration(
        cache_lifetime=_NO_CACHE))
    if not path.exists():
        raise IntegrityError(f"{file.describe()} is missing from the vault ({path})",
                             "restore the vault directory from a backup or ingest again")
    try:
        return pq.ParquetFile(str(path), decryption_properties=props)
    except SandboxError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise _integrity(file) from exc


def read_batches(pf: pq.ParquetFile, file: FileRef, columns: list[str]) -> Iterator[pa.Table]:
    """Yield the file's row groups (decrypted, only ``columns``) with clear errors."""
    try:
        for i in range(pf.num_row_groups):
            yield pf.read_row_group(i, columns=columns, use_threads=True)
    except SandboxError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise _integrity(file) from exc


def _integrity(file: FileRef) -> IntegrityError:
    return IntegrityError(
        f"{file.describe()} failed authentication: it is truncated, altered, or was written "
        "with other keys",
        "run `sandbox dataset verify`; restore the file from a backup or ingest the dataset again",
    )
