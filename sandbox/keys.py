"""Master keys and envelope encryption of data keys.

Master keys never touch data: they only wrap random 256-bit data keys with
AES-256-GCM. Each wrap is bound by associated data to the dataset, file and
column group the data key belongs to, so a wrapped key copied to another file
fails to unwrap. ``Kms`` is the seam where an external KMS or HSM can replace
the file key store.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import secrets
import stat
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import (
    KeyDestroyedError,
    KeyNotFoundError,
    KeyStoreError,
    KeyStoreMissingError,
    KeyUnwrapError,
)
from .fsutil import atomic_write_bytes

WRAP_PREFIX = "sbk1"
KEY_BYTES = 32
STATES = ("pending", "active", "retired", "destroyed")


@dataclass
class MasterKeyInfo:
    """What may be shown about a master key: never its material."""

    id: str
    state: str
    created: str
    changed: str


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def _seal(key: bytes, key_id: str, plaintext: bytes, aad: bytes) -> str:
    nonce = secrets.token_bytes(12)
    ct = AESGCM(key).encrypt(nonce, plaintext, key_id.encode() + b"|" + aad)
    return f"{WRAP_PREFIX}.{key_id}.{base64.urlsafe_b64encode(nonce + ct).decode()}"


def wrapped_key_id(wrapped: str) -> str:
    """The id of the master key that wrapped ``wrapped`` (readable without any key)."""
    parts = wrapped.split(".")
    if len(parts) != 3 or parts[0] != WRAP_PREFIX:
        raise KeyUnwrapError(
            "a wrapped data key is malformed",
            "the catalog entry was damaged; restore the catalog from a backup",
        )
    return parts[1]


def _open(key: bytes, wrapped: str, aad: bytes) -> bytes:
    key_id = wrapped_key_id(wrapped)
    try:
        blob = base64.urlsafe_b64decode(wrapped.split(".")[2])
        return AESGCM(key).decrypt(blob[:12], blob[12:], key_id.encode() + b"|" + aad)
    except (InvalidTag, binascii.Error, ValueError):
        raise KeyUnwrapError(
            "a data key failed to unwrap: it belongs to another file or column group, "
            "or it was altered",
            "run `sandbox dataset verify` to find the damaged dataset; restore it from "
            "a backup or ingest it again",
        ) from None


class Kms(ABC):
    """Wraps and unwraps data keys; the only code that sees master key material."""

    read_only: bool = True

    @abstractmethod
    def _material(self, key_id: str) -> bytes: ...

    @abstractmethod
    def active_key_id(self) -> str: ...

    @abstractmethod
    def list_keys(self) -> list[MasterKeyInfo]: ...

    def wrap(self, plaintext: bytes, aad: bytes, key_id: str | None = None) -> str:
        kid = key_id or self.active_key_id()
        return _seal(self._material(kid), kid, plaintext, aad)

    def unwrap(self, wrapped: str, aad: bytes) -> bytes:
        return _open(self._material(wrapped_key_id(wrapped)), wrapped, aad)

    @abstractmethod
    def audit_signing_key(self) -> Ed25519PrivateKey:
        """The Ed25519 key that signs audit-log checkpoints."""

    # Lifecycle operations exist only on writable key stores.
    def _read_only(self) -> KeyStoreError:
        return KeyStoreError(
            "this master key comes from the environment or a mounted secret and is read-only",
            "rotate it in your secret manager, or use the file key store (unset "
            "SANDBOX_MASTER_KEY and SANDBOX_MASTER_KEY_FILE)",
        )

    def create_key(self, state: str = "pending") -> str:
        raise self._read_only()

    def activate(self, key_id: str) -> None:
        raise self._read_only()

    def destroy(self, key_id: str) -> None:
        raise self._read_only()


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        key = b""
    if len(key) != KEY_BYTES:
        raise KeyStoreError(
            f"the master key in {where} is not a base64-encoded 32-byte key",
            "generate one with: python -c \"import os,base64;"
            "print(base64.b64encode(os.urandom(32)).decode())\"",
        )
    return key


class StaticKms(Kms):
    """One master key handed in by the environment or a mounted secret file."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        digest = hashlib.sha256(b"sandbox-master-key-id|" + key).hexdigest()
        self._id = f"ext-{digest[:12]}"

    @classmethod
    def from_env(cls) -> StaticKms | None:
        if value := os.environ.get("SANDBOX_MASTER_KEY"):
            return cls(_decode_key(value, "SANDBOX_MASTER_KEY"))
        if path := os.environ.get("SANDBOX_MASTER_KEY_FILE"):
            try:
                # Never decode errors that would quote bytes of the secret in the message.
                text = Path(path).read_bytes().decode("ascii", errors="replace")
            except OSError as exc:
                raise KeyStoreError(
                    f"cannot read the master key file {path}: {exc.strerror or exc}",
                    "check SANDBOX_MASTER_KEY_FILE and the secret mount",
                ) from None
            return cls(_decode_key(text, path))
        return None

    def _material(self, key_id: str) -> bytes:
        if key_id != self._id:
            raise KeyNotFoundError(
                f"data was wrapped with master key {key_id}, but the configured key is {self._id}",
                "configure the master key that was used when the data was ingested",
            )
        return self._key

    def active_key_id(self) -> str:
        return self._id

    def list_keys(self) -> list[MasterKeyInfo]:
        return [MasterKeyInfo(self._id, "active", "-", "-")]

    def audit_signing_key(self) -> Ed25519PrivateKey:
        # Derived, so that a container needs one secret only.
        seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=b"sandbox audit checkpoint signing v1").derive(self._key)
        return Ed25519PrivateKey.from_private_bytes(seed)


class FileKeyStore(Kms):
    """Master keys in a JSON file (0600) inside a private directory (0700)."""

    read_only = False
    FILE = "master-keys.json"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / self.FILE

    # -- storage -------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if not self.directory.is_dir():
            raise KeyStoreMissingError(
                f"no key store at {self.directory}",
                "run `sandbox keys init`, or set SANDBOX_KEYSTORE / --keystore to the right place",
            )
        lock_path = self.directory / ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _load(self) -> list[dict[str, str | None]]:
        if not self.path.exists():
            raise KeyStoreMissingError(
                f"no key store at {self.directory}",
                "run `sandbox keys init`, or set SANDBOX_KEYSTORE / --keystore to the right place",
            )
        mode = self.path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyStoreError(
                f"the key store file {self.path} is readable by other users",
                f"restrict it with: chmod 600 {self.path}",
            )
        try:
            doc = json.loads(self.path.read_text())
            keys = doc["keys"]
            assert doc.get("format") == 1 and isinstance(keys, list)
            for k in keys:
                assert k["state"] in STATES and isinstance(k["id"], str)
        except (ValueError, KeyError, AssertionError, TypeError):
            raise KeyStoreError(
                f"the key store file {self.path} is damaged",
                "restore it from your key backup",
            ) from None
        return keys

    def _save(self, keys: list[dict[str, str | None]]) -> None:
        data = json.dumps({"format": 1, "keys": keys}, indent=2).encode()
        atomic_write_bytes(self.path, data, 0o600)

    # -- lifecycle -----------------------------------------------------------
    def init(self) -> str:
        """Create the key store with a first active master key."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.directory, 0o700)
        except OSError as exc:
            raise KeyStoreError(
                f"cannot create the key store directory {self.directory}: {exc.strerror or exc}",
                "choose a writable location with --keystore or SANDBOX_KEYSTORE",
            ) from None
        with self._locked():
            if self.path.exists():
                raise KeyStoreError(
                    f"the key store at {self.directory} is already initialised",
                    "use `sandbox keys list`; to replace keys use `sandbox keys rotate`",
                )
            key_id = self._new_id()
            self._save([self._new_entry(key_id, "active")])
        return key_id

    @staticmethod
    def _new_id() -> str:
        return f"mk-{dt.date.today():%Y%m%d}-{secrets.token_hex(4)}"

    @staticmethod
    def _new_entry(key_id: str, state: str) -> dict[str, str | None]:
        now = _now()
        material = base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()
        return {"id": key_id, "state": state, "created": now, "changed": now,
                "material": material}

    def create_key(self, state: str = "pending") -> str:
        with self._locked():
            keys = self._load()
            key_id = self._new_id()
            keys.append(self._new_entry(key_id, state))
            self._save(keys)
        return key_id

    def activate(self, key_id: str) -> None:
        """Make ``key_id`` the active key; the previous active key is retired."""
        with self._locked():
            keys = self._load()
            entry = self._find(keys, key_id)
            if entry["state"] == "destroyed":
                raise KeyDestroyedError(f"master key {key_id} is destroyed and cannot be used")
            for k in keys:
                if k["state"] == "active" and k["id"] != key_id:
                    k["state"], k["changed"] = "retired", _now()
            entry["state"], entry["changed"] = "active", _now()
            self._save(keys)

    def destroy(self, key_id: str) -> None:
        """Erase a retired key's material: data still wrapped under it becomes unreadable."""
        with self._locked():
            keys = self._load()
            entry = self._find(keys, key_id)
            if entry["state"] == "active":
                raise KeyStoreError(
                    f"master key {key_id} is active and cannot be destroyed",
                    "run `sandbox keys rotate` first; then destroy the retired key",
                )
            entry["state"], entry["changed"], entry["material"] = "destroyed", _now(), None
            self._save(keys)

    # -- use -----------------------------------------------------------------
    def get(self, key_id: str) -> MasterKeyInfo:
        """One key's public facts; KeyNotFoundError for an unknown id."""
        k = self._find(self._load(), key_id)
        return MasterKeyInfo(str(k["id"]), str(k["state"]), str(k["created"]), str(k["changed"]))

    @staticmethod
    def _find(keys: list[dict[str, str | None]], key_id: str) -> dict[str, str | None]:
        for k in keys:
            if k["id"] == key_id:
                return k
        raise KeyNotFoundError(
            f"master key {key_id} is not in the key store",
            "check that SANDBOX_KEYSTORE points at the key store used when the data was ingested",
        )

    def _material(self, key_id: str) -> bytes:
        entry = self._find(self._load(), key_id)
        if entry["state"] == "destroyed" or not entry.get("material"):
            raise KeyDestroyedError(
                f"master key {key_id} was destroyed; data wrapped under it cannot be read",
                "ingest the dataset again from its source",
            )
        return base64.b64decode(str(entry["material"]))

    def active_key_id(self) -> str:
        for k in self._load():
            if k["state"] == "active":
                return str(k["id"])
        raise KeyStoreError("the key store has no active master key", "run `sandbox keys rotate`")

    def pending_key_id(self) -> str | None:
        for k in self._load():
            if k["state"] == "pending":
                return str(k["id"])
        return None

    def list_keys(self) -> list[MasterKeyInfo]:
        return [
            MasterKeyInfo(str(k["id"]), str(k["state"]), str(k["created"]), str(k["changed"]))
            for k in self._load()
        ]

    SIGNING_FILE = "audit-signing-key"

    def audit_signing_key(self) -> Ed25519PrivateKey:
        """Created on first use, kept beside the master keys (0600); never rotated with them."""
        self._load()  # the store must exist and be private
        path = self.directory / self.SIGNING_FILE
        with self._locked():
            if not path.exists():
                seed = secrets.token_bytes(32)
                atomic_write_bytes(path, base64.b64encode(seed) + b"\n", 0o600)
            try:
                seed = base64.b64decode(path.read_bytes().strip(), validate=True)
                return Ed25519PrivateKey.from_private_bytes(seed)
            except (binascii.Error, ValueError):
                raise KeyStoreError(f"the audit signing key {path} is damaged",
                                    "restore it from your key backup") from None


def load_kms(keystore: Path) -> Kms:
    """The configured key source: environment or secret file first, else the file store."""
    return StaticKms.from_env() or FileKeyStore(keystore)


def key_info_dicts(kms: Kms) -> list[dict[str, str]]:
    return [asdict(k) for k in kms.list_keys()]
