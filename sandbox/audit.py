"""The tamper-evident audit log: records, Merkle tree heads, signed checkpoints.

Every decision is a record: canonical JSON with a schema version, a sequence
number and the leaf hash of the record before it. The records form an RFC 6962
Merkle tree; checkpoints (tree size, root hash, time) are signed with Ed25519.
``verify`` recomputes everything from the record bodies and names the first
record that does not fit: edited, removed, inserted, reordered, or cut off after
a checkpoint the auditor kept. This module is pure: storage is in ``state``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .errors import InputError
from .merkle import Frontier, leaf_hash, verify_inclusion

SCHEMA_VERSION = 1
LOG_ID = "sandbox-audit-log"

# kind -> fields a record of that kind carries besides the common ones (docs/audit-events.md)
KINDS: dict[str, tuple[str, ...]] = {
    "query.charged": ("charge_id", "sql", "sql_sha256", "sql_length", "rewritten_sql", "epsilon",
                      "delta", "rho", "policy"),
    "query.answered": ("charge_id", "release_id", "values_digest", "rows", "epsilon", "delta",
                       "suppressed_groups", "policy"),
    "query.failed": ("charge_id", "error_code", "epsilon", "delta", "policy"),
    "query.cancelled": ("charge_id", "policy"),
    "query.interrupted": ("charge_id", "epsilon", "delta"),
    "query.refused": ("sql", "sql_sha256", "sql_length", "rule", "message", "dummy", "policy"),
    "query.replayed": ("charge_id", "release_id", "sql", "sql_sha256", "sql_length",
                       "epsilon", "delta", "policy"),
    "query.dummy": ("release_id", "sql", "sql_sha256", "sql_length", "rows", "noise_epsilon",
                    "noise_delta", "error_code", "epsilon", "delta", "policy"),
    "budget.changed": ("operation", "epsilon_total", "delta_total", "refresh"),
    "key.rotated": ("new_key", "retired", "rewrapped"),
    "key.destroyed": ("key_id",),
    "dataset.added": ("dataset", "version", "rows", "sha256"),
    "dataset.removed": ("dataset", "versions"),
    "audit.read": ("what", "filters"),
    "scenario.approved": ("scenario", "version", "content_hash", "title", "reviewer",
                          "reference", "datasets", "source", "grades", "accepted_core"),
    "workspace.created": ("scenario", "scenario_version", "content_hash", "members", "epsilon",
                          "delta", "refresh", "expires"),
    "workspace.member_added": (),
    "workspace.member_removed": (),
    "workspace.suspended": ("previous_state", "reason"),
    "workspace.resumed": ("previous_state",),
    "workspace.closed": ("previous_state",),
    "workspace.extended": ("previous_expires", "expires"),
    "workspace.scenario_changed": ("scenario", "previous_version", "scenario_version",
                                   "content_hash"),
    "workspace.hub_synced": ("state", "users_created", "group_members", "servers_stopped"),
    "workspace.hub_failed": ("error",),
    "export.submitted": ("export_id", "revision", "title", "purpose", "items"),
    "export.checked": ("export_id", "revision", "rules_version", "outcome", "results",
                       "report_sha256"),
    "export.approved": ("export_id", "revision", "comment", "approvals", "approvals_required"),
    "export.rejected": ("export_id", "revision", "comment"),
    "export.returned": ("export_id", "revision", "comment"),
    "export.withdrawn": ("export_id", "revision", "comment"),
    "export.released": ("export_id", "revision", "manifest_sha256", "files"),
    "export.revoked": ("export_id", "revision", "comment"),
    "export.downloaded": ("export_id", "revision", "bundle_sha256"),
    "export.flagged": ("export_id", "revision", "rule", "strong", "weak", "items", "recent",
                       "limit", "held"),
    "export.held": ("export_id", "title", "recent", "limit", "window_s"),
    "request.invalid": ("endpoint", "code", "message", "input"),
    "limits.exceeded": ("limit", "endpoint", "count", "window_s"),
}
COMMON = ("v", "seq", "time", "kind", "workspace", "member", "actor", "prev")

# A record keeps at most this many characters of a member's SQL (and of the rewritten SQL),
# then TRUNCATED; the hash and length of the whole text identify it beyond the cap.
SQL_CAP = 2_000
TRUNCATED = "… [truncated]"


@dataclass(frozen=True)
class Capped:
    text: str  # what a record stores: at most SQL_CAP characters, then TRUNCATED if cut
    sha256: str  # hex SHA-256 of the whole text in UTF-8
    length: int  # characters of the whole text


def cap_text(text: str, cap: int = SQL_CAP) -> Capped:
    """What to store of an untrusted text: its start, and the hash and length of all of it.

    Lone surrogates (text that is not valid Unicode) never make this fail: they are hashed
    as their ``surrogatepass`` bytes and stored escaped (``\\ud800``), so that the record
    can always be encoded.
    """
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    start = text[:cap]
    stored = start.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > cap or len(stored) > cap:
        stored = stored[:cap] + TRUNCATED
    return Capped(stored, digest, len(text))


def canonical(obj: Any) -> bytes:
    """The one byte encoding that is hashed and signed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def now_iso() -> str:
    """The log's time format: UTC ISO 8601 with microseconds (sorts as text)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_when(text: str, option: str, end: bool = False) -> str:
    """YYYY-MM-DD or ISO 8601 -> the log's UTC time format; a date ``end`` takes its whole day.

    Here, beside ``now_iso``, so that every reader of the log (the command line, the web
    console) filters by time in the format the records are written in."""
    try:
        if _DATE.match(text):
            t = dt.datetime.combine(dt.date.fromisoformat(text), dt.time(), tzinfo=dt.UTC)
            t += dt.timedelta(days=1) if end else dt.timedelta(0)
        elif "T" in text or " " in text:
            t = dt.datetime.fromisoformat(text)
            t = t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)
        else:
            raise ValueError(text)
    except (ValueError, OverflowError):
        raise InputError(f"{option} {_excerpt(text, 40)!r} is not a date or time",
                         f"write {option} as YYYY-MM-DD (UTC) or a full ISO 8601 time such as "
                         "2026-11-23T08:00:00Z") from None
    return t.isoformat(timespec="microseconds")


def _excerpt(text: str, limit: int) -> str:
    """Untrusted input quoted in an error: one line, no control characters, cut at ``limit``."""
    out = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return out[:limit - 1] + "…" if len(out) > limit else out


def make_body(seq: int, prev: str, kind: str, *, workspace: str | None, member: str | None,
              actor: str | None, time: str | None = None, **fields: Any) -> dict[str, Any]:
    if kind not in KINDS:
        raise ValueError(f"unknown audit record kind {kind!r}")
    unknown = set(fields) - set(KINDS[kind])
    if unknown:
        raise ValueError(f"{kind} records have no field(s) {sorted(unknown)}")
    body = {"v": SCHEMA_VERSION, "seq": seq, "time": time or now_iso(), "kind": kind,
            "workspace": workspace, "member": member, "actor": actor, "prev": prev}
    body.update({k: fields.get(k) for k in KINDS[kind]})
    return body


def record_leaf(body: dict[str, Any]) -> bytes:
    return leaf_hash(canonical(body))


def values_digest(rows: Any) -> str:
    """SHA-256 of the released values, so a release can later be matched to the log."""
    return hashlib.sha256(canonical(rows)).hexdigest()


# -- checkpoints ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    tree_size: int
    root_hash: str  # hex
    time: str
    public_key: str  # hex, raw Ed25519
    signature: str  # base64

    def signed_bytes(self) -> bytes:
        return canonical({"log": LOG_ID, "tree_size": self.tree_size,
                          "root_hash": self.root_hash, "time": self.time})

    def verify_signature(self, public_key: Ed25519PublicKey | None = None) -> bool:
        try:
            key = public_key or Ed25519PublicKey.from_public_bytes(
                bytes.fromhex(self.public_key))
            key.verify(base64.b64decode(self.signature, validate=True), self.signed_bytes())
        except (InvalidSignature, ValueError, binascii.Error):
            return False
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"log": LOG_ID, "tree_size": self.tree_size, "root_hash": self.root_hash,
                "time": self.time, "public_key": self.public_key, "signature": self.signature}

    @classmethod
    def from_dict(cls, d: Any) -> Checkpoint:
        try:
            if d.get("log") != LOG_ID:
                raise ValueError
            cp = cls(int(d["tree_size"]), str(d["root_hash"]), str(d["time"]),
                     str(d["public_key"]), str(d["signature"]))
            bytes.fromhex(cp.root_hash)
        except (AttributeError, KeyError, TypeError, ValueError):
            raise InputError("this is not a sandbox audit checkpoint",
                             "use a file written by `sandbox audit checkpoint --out`") from None
        return cp


def public_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def sign_checkpoint(key: Ed25519PrivateKey, tree_size: int, root: bytes,
                    time: str | None = None) -> Checkpoint:
    unsigned = Checkpoint(tree_size, root.hex(), time or now_iso(), public_hex(key), "")
    signature = base64.b64encode(key.sign(unsigned.signed_bytes())).decode()
    return Checkpoint(tree_size, root.hex(), unsigned.time, unsigned.public_key, signature)


# -- verification --------------------------------------------------------------------------
@dataclass
class StoredRecord:
    seq: int
    body: str  # canonical JSON as stored
    leaf: str  # hex, as stored


@dataclass
class VerifyReport:
    records: int = 0
    checkpoints: int = 0
    root_hash: str = ""
    problems: list[str] = field(default_factory=list)
    first_bad: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def bad(self, seq: int | None, message: str) -> None:
        if seq is not None and self.first_bad is None:
            self.first_bad = seq
        self.problems.append(message)


def verify(records: Iterable[StoredRecord], checkpoints: Iterable[Checkpoint],
           public_key: Ed25519PublicKey, external: Checkpoint | None = None) -> VerifyReport:
    """Recompute every leaf, the chain and every tree head; check every checkpoint."""
    report = VerifyReport()
    wanted: dict[int, list[tuple[str, Checkpoint]]] = {}
    for cp in checkpoints:
        report.checkpoints += 1
        if not cp.verify_signature(public_key):
            report.bad(None, f"stored checkpoint at size {cp.tree_size} has a bad signature")
        wanted.setdefault(cp.tree_size, []).append(("the stored checkpoint", cp))
    if external is not None:
        if not external.verify_signature(public_key):
            report.bad(None, "the checkpoint file's signature does not verify with this log's "
                       "key (altered, or from another log)")
        wanted.setdefault(external.tree_size, []).append(("your checkpoint", external))

    frontier = Frontier()
    for label, cp in wanted.pop(0, []):  # a checkpoint of the empty log (no record to wait for)
        if frontier.root().hex() != cp.root_hash:
            report.bad(None, f"{label} at size 0 is not the head of an empty log (altered)")
    prev = ""
    position = 0
    for rec in records:
        position += 1
        _check_record(rec, position, prev, report)
        leaf = record_leaf_from_text(rec.body)
        frontier.append(leaf)
        prev = leaf.hex()
        for label, cp in wanted.pop(position, []):
            if frontier.root().hex() != cp.root_hash:
                report.bad(None, f"{label} at size {cp.tree_size} does not match the "
                           f"records: a record at or before #{cp.tree_size} was altered, "
                           "removed, inserted or reordered")
    report.records = position
    report.root_hash = frontier.root().hex()
    for size, items in sorted(wanted.items()):
        for label, _ in items:
            report.bad(position + 1, f"{label} covers {size} records but the log has only "
                       f"{position}: records after #{position} were removed (truncated)")
    return report


def record_leaf_from_text(text: str) -> bytes:
    try:
        return record_leaf(json.loads(text))
    except ValueError:
        return leaf_hash(text.encode())


def _check_record(rec: StoredRecord, position: int, prev: str, report: VerifyReport) -> None:
    if report.first_bad is not None:
        return  # name only the first bad record; tree heads still check the rest
    try:
        body = json.loads(rec.body)
    except ValueError:
        report.bad(rec.seq, f"record #{rec.seq} is not valid JSON (altered)")
        return
    if rec.seq != position:
        what = "removed" if rec.seq > position else "inserted or reordered"
        report.bad(rec.seq, f"record #{rec.seq} stands at position {position}: a record was "
                   f"{what} before it")
        return
    if not isinstance(body, dict) or body.get("seq") != rec.seq:
        report.bad(rec.seq, f"record #{rec.seq} carries sequence number "
                   f"{body.get('seq') if isinstance(body, dict) else '?'} (reordered or altered)")
        return
    if canonical(body).decode() != rec.body:
        report.bad(rec.seq, f"record #{rec.seq} is not in canonical form (altered)")
        return
    if record_leaf(body).hex() != rec.leaf:
        report.bad(rec.seq, f"record #{rec.seq} does not match its stored hash (altered)")
        return
    if body.get("prev") != prev:
        report.bad(rec.seq, f"record #{rec.seq} does not follow the record before it (a record "
                   "before it was altered, removed or inserted)")


def proof_document(seq: int, body: str, size: int, path: list[bytes],
                   checkpoint: Checkpoint) -> dict[str, Any]:
    """An inclusion proof anyone can check with `sandbox audit check-proof` or by hand."""
    return {"record": json.loads(body), "leaf_index": seq - 1, "tree_size": size,
            "leaf_hash": record_leaf_from_text(body).hex(),
            "audit_path": [p.hex() for p in path], "checkpoint": checkpoint.to_dict()}


def check_proof(doc: Any, public_key: Ed25519PublicKey | None = None) -> bool:
    """Check a proof document: signature of its checkpoint, then the audit path."""
    try:
        cp = Checkpoint.from_dict(doc["checkpoint"])
        if not cp.verify_signature(public_key):
            return False
        leaf = record_leaf(doc["record"])
        if leaf.hex() != doc["leaf_hash"] or cp.tree_size != doc["tree_size"]:
            return False
        path = [bytes.fromhex(p) for p in doc["audit_path"]]
        return verify_inclusion(leaf, int(doc["leaf_index"]), cp.tree_size, path,
                                bytes.fromhex(cp.root_hash))
    except (KeyError, TypeError, ValueError, InputError):
        return False


def iter_leaves(records: Iterable[StoredRecord]) -> Iterator[bytes]:
    for r in records:
        yield record_leaf_from_text(r.body)
