"""The keyed identifier index: a hash of every identifier value in the vault.

At ingest every value of a dataset's ``identifier`` columns (names, ID numbers, phones) is
normalised (``sandbox.exports.identifiers``) and hashed with HMAC-SHA256 under a key of its
own; the first 16 bytes of each digest go into one index file per dataset version. Values
are never stored in clear, and without the key (wrapped by the KMS, like data keys) the
digests cannot be tested against guesses. The export airlock scans an export by hashing its
tokens the same way, through ``IdentifierIndex.find``.

It lives beside the vault, not in the airlock, because building it decrypts identifier
columns under the KMS: the airlock only needs something with ``find`` and ``lengths``
(``sandbox.exports.checks.IdentifierLookup``) and never loads keys or vault code itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .catalog import Catalog, DatasetVersion
from .errors import KeyDestroyedError, SandboxError
from .exports.errors import IdentifierIndexError
from .exports.identifiers import MAX_CANDIDATE, cell_text, indexable, normalise
from .fsutil import atomic_write_bytes, fsync_dir, sha256_file
from .keys import Kms, wrapped_key_id
from .vault import GROUP_FOOTER, GROUP_IDENTIFIER, open_encrypted, read_batches

EXPORTS_DIR = "exports"
INDEX_DIR = "identifiers"
KEY_FILE = "identifier-key"
KEY_AAD = b"sandbox/identifier-index-key/v1"
MAGIC = b"SBIDX2\n\x00"
DIGEST_BYTES = 16
_HEADER = len(MAGIC) + 8 + 8 + 8  # magic, key fingerprint, lengths bitmap, count


# -- the keyed hash ------------------------------------------------------------------------
class Mac:
    """HMAC-SHA256 truncated to 16 bytes, with the key's pads hashed once (3x faster than
    ``hmac.digest`` per value on short inputs; equal to it, see the tests)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the identifier index key must be 32 bytes")
        block = key.ljust(64, b"\x00")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        self.fingerprint = self.full(b"\x00sandbox identifier index fingerprint")[:8]

    def full(self, data: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def digest(self, norm: str) -> bytes:
        return self.full(norm.encode())[:DIGEST_BYTES]


def _exports_dir(home: Path) -> Path:
    path = home / EXPORTS_DIR
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def key_path(home: Path) -> Path:
    return home / EXPORTS_DIR / KEY_FILE


def index_key(home: Path, kms: Kms) -> bytes:
    """The HMAC key: 32 random bytes made on first use, kept wrapped by the KMS in the home.

    `sandbox keys rotate` re-wraps it with the data keys (``rewrap_key``) and `keys destroy`
    refuses while it is wrapped under the key to destroy. A key found wrapped under an
    older master key is re-wrapped too. One whose master key was destroyed anyway (a home
    from before rotation covered this key) is replaced by a new key: the indexes made with
    the old one are rebuilt by ``ensure_indexes`` (the service does that at start), and
    without this every later ingest would fail.
    """
    path = _exports_dir(home) / KEY_FILE
    if not path.exists():
        _create(path, kms)
    wrapped = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        key = kms.unwrap(wrapped, KEY_AAD)
    except KeyDestroyedError:
        key = secrets.token_bytes(32)
        os.replace(_staged(path, kms.wrap(key, KEY_AAD)), path)
        fsync_dir(path.parent)
        return key
    with contextlib.suppress(SandboxError, OSError):  # best effort: the key still works
        if wrapped_key_id(wrapped) != kms.active_key_id():
            os.replace(_staged(path, kms.wrap(key, KEY_AAD)), path)
            fsync_dir(path.parent)
    return key


def _create(path: Path, kms: Kms) -> None:
    tmp = _staged(path, kms.wrap(secrets.token_bytes(32), KEY_AAD))
    try:
        os.link(tmp, path)  # exactly one process or thread creates the key
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def key_wrapped_by(home: Path) -> str | None:
    """The id of the master key wrapping the index key (None: no key made yet)."""
    try:
        wrapped = key_path(home).read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    return wrapped_key_id(wrapped)


def rewrap_key(home: Path, kms: Kms, key_id: str) -> bool:
    """Wrap the index key under master key ``key_id`` (a rotation's new key, still pending);
    True if it was re-wrapped, False if it already was or none exists yet."""
    path = key_path(home)
    current = key_wrapped_by(home)
    if current is None or current == key_id:
        return False
    key = kms.unwrap(path.read_text(encoding="ascii", errors="replace").strip(), KEY_AAD)
    os.replace(_staged(path, kms.wrap(key, KEY_AAD, key_id=key_id)), path)
    fsync_dir(path.parent)
    return True


def _staged(path: Path, wrapped: str) -> Path:
    """A complete, durable file beside ``path`` under a name no other writer uses."""
    tmp = path.with_name(f".{path.name}.new-{os.getpid()}-{secrets.token_hex(6)}")
    atomic_write_bytes(tmp, wrapped.encode() + b"\n", 0o600)
    return tmp


def index_path(home: Path, dataset: str, storage_id: str) -> Path:
    return home / EXPORTS_DIR / INDEX_DIR / dataset / f"{storage_id}.idx"


# -- building ------------------------------------------------------------------------------
class IndexWriter:
    """Collects digests of identifier values while a dataset version is written."""

    def __init__(self, mac: Mac, columns: Iterable[str]) -> None:
        self.mac, self.columns = mac, list(columns)
        self._buf = bytearray()
        self._lengths = 0  # bit n-1 set: some value has n characters

    def add_table(self, table: pa.Table) -> None:
        for name in self.columns:  # distinct values first: names repeat a lot
            self.add_values(pc.unique(table.column(name)).to_pylist())

    def add_values(self, values: Iterable[object]) -> None:
        digest, buf = self.mac.digest, self._buf
        for v in values:
            text = cell_text(v)
            if text is None:
                continue
            norm = normalise(text)
            if indexable(norm):
                buf += digest(norm)
                self._lengths |= 1 << (len(norm) - 1)

    def content(self) -> bytes:
        """The index file: header, then the sorted, distinct digests."""
        arr = np.frombuffer(bytes(self._buf), dtype=">u8").reshape(-1, 2).astype(np.uint64)
        if len(arr):
            arr = arr[np.lexsort((arr[:, 1], arr[:, 0]))]
            keep = np.ones(len(arr), dtype=bool)
            keep[1:] = np.any(arr[1:] != arr[:-1], axis=1)
            arr = arr[keep]
        body = arr.astype(">u8").tobytes()
        return (MAGIC + self.mac.fingerprint + self._lengths.to_bytes(8, "big") +
                len(arr).to_bytes(8, "big") + body)

    def write(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write_bytes(path, self.content(), 0o600)


def writer_for(home: Path, kms: Kms, columns: Iterable[str]) -> IndexWriter:
    return IndexWriter(Mac(index_key(home, kms)), columns)


def home_of(catalog: Catalog) -> Path:
    """The sandbox home: where the catalog lives (see ``sandbox.settings.Paths``)."""
    return Path(catalog.db_path).parent


def build_index(catalog: Catalog, kms: Kms, dv: DatasetVersion,
                home: Path | None = None) -> Path:
    """Index an already-ingested version by decrypting only its identifier columns."""
    home = home or home_of(catalog)
    writer = writer_for(home, kms, dv.spec.identifier_columns)
    base = catalog.storage_dir(dv.name, dv.storage_id)
    if writer.columns:
        for f in dv.files:
            ref = dv.file_ref(f)
            path = base / f.file_name
            if path.exists() and (path.stat().st_size != f.size or sha256_file(path) != f.sha256):
                raise IdentifierIndexError(
                    f"{ref.describe()} does not match its catalog record (SHA-256 differs)",
                    "run `sandbox dataset verify`; restore the file or ingest it again")
            pf = open_encrypted(path, ref, list(f.keys), kms,
                                frozenset({GROUP_FOOTER, GROUP_IDENTIFIER}))
            for table in read_batches(pf, ref, writer.columns):
                writer.add_table(table)
    out = index_path(home, dv.name, dv.storage_id)
    writer.write(out)
    return out


def _read_header(path: Path) -> tuple[bytes, int] | None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEADER)
            size = os.fstat(fh.fileno()).st_size
    except OSError:
        return None
    if len(head) != _HEADER or head[:len(MAGIC)] != MAGIC:
        return None
    count = int.from_bytes(head[-8:], "big")
    if size != _HEADER + count * DIGEST_BYTES:
        return None
    return head[len(MAGIC):len(MAGIC) + 8], count


def ensure_indexes(catalog: Catalog, kms: Kms, home: Path | None = None) -> list[DatasetVersion]:
    """Build the index of every catalog version that has none, or one made with another key
    (existing vaults, a lost key file). Returns the versions indexed now."""
    home = home or home_of(catalog)
    fingerprint = Mac(index_key(home, kms)).fingerprint
    built = []
    for dv in catalog.all_versions():
        header = _read_header(index_path(home, dv.name, dv.storage_id))
        if header is None or header[0] != fingerprint:
            build_index(catalog, kms, dv, home)
            built.append(dv)
    return built


def remove_orphans(catalog: Catalog, home: Path | None = None) -> list[Path]:
    """Delete index files of versions no longer in the catalog (after `dataset remove`)."""
    root = (home or home_of(catalog)) / EXPORTS_DIR / INDEX_DIR
    known = catalog.known_storage_ids()
    removed = []
    for path in sorted(root.glob("*/*.idx")) if root.exists() else []:
        if path.stem not in known:
            path.unlink(missing_ok=True)
            removed.append(path)
    for d in root.iterdir() if root.exists() else []:
        if d.is_dir() and not any(d.iterdir()):
            shutil.rmtree(d, ignore_errors=True)
    return removed


# -- looking up ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Table:
    dataset: str
    hi: np.ndarray
    lo: np.ndarray
    lengths: frozenset[int]


class IdentifierIndex:
    """Every identifier digest of the vault; ``find`` answers which candidates are in it."""

    def __init__(self, key: bytes, tables: list[_Table]) -> None:
        self.mac = Mac(key)
        self._tables = tables

    @property
    def size(self) -> int:
        return sum(len(t.hi) for t in self._tables)

    @property
    def lengths(self) -> frozenset[int]:
        """Lengths of the indexed values: only candidates of these lengths are hashed."""
        return frozenset().union(*(t.lengths for t in self._tables))

    @classmethod
    def from_values(cls, key: bytes, values: dict[str, Iterable[object]]) -> IdentifierIndex:
        """An index of plain values per dataset name (tests, small tools)."""
        tables = []
        for dataset, vals in values.items():
            w = IndexWriter(Mac(key), [])
            w.add_values(vals)
            tables.append(_parse(dataset, w.content()))
        return cls(key, tables)

    @classmethod
    def load(cls, catalog: Catalog, kms: Kms, home: Path | None = None,
             build_missing: bool = True) -> IdentifierIndex:
        """The index of every dataset version in the catalog; missing ones are built first
        (or, with ``build_missing=False``, an error: the scan must never silently skip)."""
        home = home or home_of(catalog)
        if build_missing:
            ensure_indexes(catalog, kms, home)
        key = index_key(home, kms)
        fingerprint = Mac(key).fingerprint
        tables = []
        for dv in catalog.all_versions():
            path = index_path(home, dv.name, dv.storage_id)
            header = _read_header(path)
            if header is None or header[0] != fingerprint:
                raise IdentifierIndexError(
                    f"the identifier index of dataset '{dv.name}' version {dv.version} is "
                    "missing, damaged or made with another key",
                    "rebuild it: sandbox.identifier_index.ensure_indexes (the service does "
                    "this at start)")
            tables.append(_parse(f"{dv.name}@{dv.version}", path.read_bytes()))
        return cls(key, tables)

    def find(self, items: Collection[str]) -> dict[str, str]:
        """The candidates (normalised strings) found, each with the dataset it belongs to."""
        if not items or not self._tables:
            return {}
        order = list(items)
        q = np.frombuffer(b"".join(self.mac.digest(c) for c in order),
                          dtype=">u8").reshape(-1, 2).astype(np.uint64)
        found: dict[str, str] = {}
        for t in self._tables:
            left = np.searchsorted(t.hi, q[:, 0], "left")
            right = np.searchsorted(t.hi, q[:, 0], "right")
            for i in np.flatnonzero(right > left):
                if np.any(t.lo[left[i]:right[i]] == q[i, 1]):
                    found.setdefault(order[i], t.dataset)
        return found


def _parse(dataset: str, content: bytes) -> _Table:
    bits = int.from_bytes(content[_HEADER - 16:_HEADER - 8], "big")
    count = int.from_bytes(content[_HEADER - 8:_HEADER], "big")
    arr = np.frombuffer(content, dtype=">u8", offset=_HEADER,
                        count=count * 2).reshape(-1, 2).astype(np.uint64)
    return _Table(dataset, np.ascontiguousarray(arr[:, 0]), np.ascontiguousarray(arr[:, 1]),
                  frozenset(n + 1 for n in range(MAX_CANDIDATE) if bits >> n & 1))
