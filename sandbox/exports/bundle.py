"""Signed export bundles, and their verification anywhere, without the key store.

A bundle is a zip of ``manifest.json``, ``manifest.sig`` and ``files/<name>`` (exactly the
bytes that were checked and approved), packed one fixed way so that it is byte for byte
reproducible from its members. The manifest lists each file's SHA-256 and size,
the releases the files come from with their epsilon and delta, the scenario policy (id,
version, content hash), the check results and their rules version, the reviewers'
decisions, and an inclusion proof of the export's ``export.released`` audit record. That
record holds the SHA-256 of the manifest (without the proof), so the files, the manifest
and the log are bound together; ``manifest.sig`` is an Ed25519 signature of
``manifest.json`` by the audit log's signing key. ``verify_bundle`` fails on any changed
byte of the zip, of a file or of the manifest, on missing or extra files, and on a bad
proof.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .. import audit

if TYPE_CHECKING:
    from .model import ExportRequest, StoredItem

FORMAT = "sandbox-export-bundle/1"
MANIFEST, SIGNATURE, FILES_DIR = "manifest.json", "manifest.sig", "files/"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed: the same content gives the same zip
UNSIGNED = ("signing_key", "audit_proof")  # manifest keys outside the logged digest


def manifest_body(req: ExportRequest,
                  files: Sequence[tuple[StoredItem, bytes]]) -> dict[str, Any]:
    """Everything the release record's digest covers (deterministic for a request)."""
    report = req.report
    return {
        "format": FORMAT, "export_id": req.id, "workspace": req.workspace,
        "requester": req.requester, "title": req.title, "purpose": req.purpose,
        "revision": req.revision,
        "files": [{"name": it.name, "kind": it.kind, "media_type": it.media_type,
                   "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                   "release_ids": it.meta.get("release_ids", []),
                   "postprocessing": it.meta.get("postprocessing", [])}
                  for it, data in files],
        "releases": [] if report is None else [r.__dict__ for r in report.releases],
        "policy": {"id": req.policy_id, "version": req.policy_version,
                   "content_hash": req.policy_hash},
        "rules_version": None if report is None else report.rules_version,
        "checks": None if report is None else report.to_dict("requester"),
        "approvals_required": req.approvals_required,
        "decisions": [{"reviewer": e.actor, "decision": e.event, "comment": e.comment,
                       "time": e.time, "audit_seq": e.seq} for e in req.decisions],
    }


def body_digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(audit.canonical(body)).hexdigest()


def build(body: dict[str, Any], files: Sequence[tuple[StoredItem, bytes]],
          proof: dict[str, Any], signer: Ed25519PrivateKey) -> bytes:
    """The bundle's bytes: files, manifest (body, signing key, proof) and its signature."""
    manifest = {**body, "signing_key": audit.public_hex(signer), "audit_proof": proof}
    text = json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True).encode() + b"\n"
    return _zip([(MANIFEST, text), (SIGNATURE, base64.b64encode(signer.sign(text)) + b"\n"),
                 *((FILES_DIR + it.name, data) for it, data in files)])


def _zip(members: Sequence[tuple[str, bytes]]) -> bytes:
    """The one way a bundle is packed: stored (every byte of the zip's data is a byte of a
    member), fixed times and attributes, so the same members give the same bytes anywhere
    and ``verify_bundle`` can insist on exactly these bytes."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, ZIP_TIME)
            info.create_system = 3
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return out.getvalue()


@dataclass
class BundleReport:
    ok: bool = False
    export_id: str | None = None
    files: list[str] = field(default_factory=list)
    signing_key: str | None = None
    record_seq: int | None = None
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _key(pinned: Ed25519PublicKey | str | None, manifest: dict[str, Any],
         problems: list[str]) -> Ed25519PublicKey | None:
    stated = manifest.get("signing_key")
    try:
        if pinned is None:
            return Ed25519PublicKey.from_public_bytes(bytes.fromhex(str(stated)))
        key = pinned if isinstance(pinned, Ed25519PublicKey) else \
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(pinned.strip()))
    except ValueError:
        problems.append("the signing key is not an Ed25519 public key")
        return None
    if audit.public_hex(key) != stated:
        problems.append("the bundle was signed with another key than the one you pinned")
    return key


def verify_bundle(source: bytes | str | os.PathLike[str],
                  public_key: Ed25519PublicKey | str | None = None) -> BundleReport:
    """Check signature, file hashes and the audit-log inclusion proof; never raises on a
    bad bundle. Pin the log's key (``sandbox audit verify`` prints it) to trust more than
    the key the bundle names."""
    report = BundleReport()
    p = report.problems
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except Exception:  # zipfile raises many kinds on damaged input: all mean "not valid"
        p.append("this is not a zip file (or it is damaged)")
        return report
    names = [i.filename for i in infos]
    for n in sorted({n for n in names if names.count(n) > 1}):
        p.append(f"'{n}' appears more than once in the zip")
    members: dict[str, bytes] = {}
    for info in infos:
        try:
            members[info.filename] = zf.read(info)
        except Exception:  # any damage (CRC, header, compression) is a failed verification
            p.append(f"'{info.filename}' is damaged in the zip (altered)")
    if len(members) == len(infos) and _zip(list(members.items())) != data:
        p.append("the zip is not byte for byte the bundle the sandbox packed (altered or "
                 "re-packed; the checks below tell whether any content changed)")
    text, sig = members.get(MANIFEST), members.get(SIGNATURE)
    if text is None or sig is None:
        p.append(f"the bundle has no {MANIFEST if text is None else SIGNATURE}")
        return report
    try:
        manifest = json.loads(text)
        assert isinstance(manifest, dict) and manifest.get("format") == FORMAT
    except (ValueError, AssertionError):
        p.append(f"{MANIFEST} is not a {FORMAT} manifest (altered)")
        return report
    report.export_id, report.signing_key = manifest.get("export_id"), manifest.get("signing_key")
    key = _key(public_key, manifest, p)
    if key is not None:
        try:
            raw = base64.b64decode(sig.removesuffix(b"\n"), validate=True)
            if base64.b64encode(raw) + b"\n" != sig:  # one encoding only: every byte counts
                raise ValueError
            key.verify(raw, text)
        except (InvalidSignature, binascii.Error, ValueError):
            p.append(f"the signature in {SIGNATURE} does not match {MANIFEST} (altered)")
    _check_files(manifest, members, report)
    _check_proof(manifest, key, report)
    report.ok = not p
    return report


def _check_files(manifest: dict[str, Any], members: dict[str, bytes],
                 report: BundleReport) -> None:
    p = report.problems
    listed = manifest.get("files")
    if not isinstance(listed, list):
        p.append(f"{MANIFEST} lists no files (altered)")
        return
    expected = set()
    for f in listed:
        name = FILES_DIR + str(f.get("name") if isinstance(f, dict) else f)
        expected.add(name)
        report.files.append(name)
        data = members.get(name)
        if data is None:
            p.append(f"'{name}' is listed in the manifest but missing from the bundle")
        elif hashlib.sha256(data).hexdigest() != f.get("sha256") or len(data) != f.get("size"):
            p.append(f"'{name}' does not match its SHA-256 in the manifest (altered)")
    for name in sorted(set(members) - expected - {MANIFEST, SIGNATURE}):
        p.append(f"'{name}' is in the bundle but not in the manifest (added)")


def _check_proof(manifest: dict[str, Any], key: Ed25519PublicKey | None,
                 report: BundleReport) -> None:
    p = report.problems
    proof = manifest.get("audit_proof")
    if not isinstance(proof, dict) or key is None or not audit.check_proof(proof, key):
        p.append("the audit-log inclusion proof does not verify (altered, or from another log)")
        return
    record = proof["record"]
    report.record_seq = record.get("seq")
    body = {k: v for k, v in manifest.items() if k not in UNSIGNED}
    files = [{"name": f.get("name"), "sha256": f.get("sha256")}
             for f in manifest.get("files") or [] if isinstance(f, dict)]
    if record.get("kind") != "export.released" or \
            record.get("export_id") != manifest.get("export_id"):
        p.append("the proven audit record is not the release of this export")
    elif record.get("manifest_sha256") != body_digest(body):
        p.append("the manifest differs from the one recorded in the audit log at release "
                 "(altered)")
    elif record.get("files") != files:
        p.append("the files differ from those recorded in the audit log at release")
