"""Signed bundles: an untouched bundle verifies; any changed byte of a file, the manifest or
its signature, an added or removed file, another key or a bad proof fails."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
import zipfile
import zlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_exports_store import World

from sandbox import audit
from sandbox.exports import FileItem, IdentifierIndex, verify_bundle
from sandbox.exports.bundle import MANIFEST, SIGNATURE, _zip, body_digest


def _png() -> bytes:
    def c(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))

    return b"".join([b"\x89PNG\r\n\x1a\n", c(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)),
                     c(b"IDAT", zlib.compress(b"\x00\x00")), c(b"IEND", b"")])


@pytest.fixture(scope="module")
def released(tmp_path_factory, tiny_vault, engine):  # type: ignore[no-untyped-def]
    """A released export of a frame, a chart and a JSON file, approved by two reviewers."""
    index = IdentifierIndex.load(tiny_vault.catalog, tiny_vault.kms, build_missing=False)
    w = World(tmp_path_factory.mktemp("bundle") / "state.sqlite", tiny_vault, engine, index,
              approvals=2)
    rel = w.release
    doc = json.dumps({"columns": rel.columns, "data": rel.rows}).encode()
    items = [w.frame(), FileItem("chart.png", _png()),
             FileItem("summary.json", doc, release_ids=(rel.release_id,))]
    req = w.submit(items=items)
    assert req.report is not None and req.report.outcome == "review"  # the image
    w.store.decide(req.id, "audrey", "approve", "chart checked")
    w.store.decide(req.id, "ramon", "approve")
    w.store.release(req.id, "alice")
    data = w.store.download(req.id, "alice")
    yield w, req.id, data


def test_an_untouched_bundle_verifies(released) -> None:  # type: ignore[no-untyped-def]
    w, export_id, data = released
    key = w.state.public_key
    for pinned in (None, key, audit.public_hex(key)):
        report = verify_bundle(data, pinned)
        assert report.ok, report.problems
    assert report.export_id == export_id
    assert report.files == ["files/by_district.csv", "files/chart.png", "files/summary.json"]
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(data)).read(MANIFEST))
    assert [f["sha256"] for f in manifest["files"]] == [
        i.sha256 for i in w.store.get(export_id).items]
    assert manifest["releases"] == [{"release_id": w.release.release_id, "epsilon": 0.5,
                                     "delta": 0.0}]
    assert manifest["policy"] == {"id": w.policy.id, "version": None,
                                  "content_hash": w.policy.content_hash}
    assert manifest["rules_version"] == manifest["checks"]["rules_version"]
    assert [(d["reviewer"], d["decision"]) for d in manifest["decisions"]] == [
        ("audrey", "approved"), ("ramon", "approved")]
    rec = manifest["audit_proof"]["record"]
    assert rec["kind"] == "export.released" and rec["export_id"] == export_id
    body = {k: v for k, v in manifest.items() if k not in ("signing_key", "audit_proof")}
    assert rec["manifest_sha256"] == body_digest(body)
    assert w.store.download(export_id, "audrey") == data  # the kept bundle, same bytes
    assert w.state.verify().ok


def test_it_verifies_from_a_file(released, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bundle.zip"
    path.write_bytes(released[2])
    assert verify_bundle(path).ok and verify_bundle(str(path)).ok


def _members(data: bytes) -> dict[str, bytes]:
    zf = zipfile.ZipFile(io.BytesIO(data))
    return {i.filename: zf.read(i) for i in zf.infolist()}


def _rezip(members: dict[str, bytes]) -> bytes:
    """Packed the sandbox's own way: only the changed content can make verification fail."""
    return _zip(list(members.items()))


REPACKED = "byte for byte"


def test_any_changed_byte_of_any_member_fails(released) -> None:  # type: ignore[no-untyped-def]
    """Every byte of every file, of the manifest and of the signature, changed in turn (the
    zip rebuilt so that its own CRCs are right): each must fail."""
    members = _members(released[2])
    assert set(members) == {MANIFEST, SIGNATURE, "files/by_district.csv", "files/chart.png",
                            "files/summary.json"}
    checked = 0
    for name, content in members.items():
        for pos in range(len(content)):
            changed = bytearray(content)
            changed[pos] ^= 0x01
            report = verify_bundle(_rezip({**members, name: bytes(changed)}))
            assert not report.ok, (name, pos)
            assert [q for q in report.problems if REPACKED not in q], (name, pos)
            checked += 1
    assert checked == sum(len(c) for c in members.values()) > 1000


def test_any_flipped_byte_of_the_zip_fails(released) -> None:  # type: ignore[no-untyped-def]
    data = released[2]
    for pos in range(len(data)):
        changed = bytearray(data)
        changed[pos] ^= 0xFF
        report = verify_bundle(bytes(changed))
        assert not report.ok and report.problems, pos


def test_a_re_packed_bundle_fails_but_says_the_content_is_intact(released) -> None:  # type: ignore[no-untyped-def]
    members = _members(released[2])
    assert _rezip(members) == released[2]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    report = verify_bundle(out.getvalue())
    assert not report.ok and len(report.problems) == 1 and REPACKED in report.problems[0]


def test_added_and_removed_files_fail(released) -> None:  # type: ignore[no-untyped-def]
    members = _members(released[2])
    added = verify_bundle(_rezip({**members, "files/extra.csv": b"a\n1\n"}))
    assert not added.ok and any("not in the manifest" in p for p in added.problems)
    gone = dict(members)
    del gone["files/chart.png"]
    removed = verify_bundle(_rezip(gone))
    assert not removed.ok and any("missing" in p for p in removed.problems)
    for part in (MANIFEST, SIGNATURE):
        rest = {k: v for k, v in members.items() if k != part}
        assert not verify_bundle(_rezip(rest)).ok
    assert not verify_bundle(b"not a zip").ok


def test_another_key_fails(released) -> None:  # type: ignore[no-untyped-def]
    other = Ed25519PrivateKey.generate()
    report = verify_bundle(released[2], other.public_key())
    assert not report.ok and any("another key" in p for p in report.problems)
    assert not verify_bundle(released[2], "zz").ok


def test_a_re_signed_edit_fails(released) -> None:  # type: ignore[no-untyped-def]
    """Editing a file, fixing its hash in the manifest and signing with one's own key still
    fails: the inclusion proof pins the log's key and the manifest digest."""
    members = _members(released[2])
    manifest = json.loads(members[MANIFEST])
    csv = members["files/by_district.csv"].replace(b"Siming", b"Simind")
    manifest["files"][0]["sha256"] = hashlib.sha256(csv).hexdigest()
    attacker = Ed25519PrivateKey.generate()
    manifest["signing_key"] = audit.public_hex(attacker)
    text = json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True).encode() + b"\n"
    forged = {**members, "files/by_district.csv": csv, MANIFEST: text,
              SIGNATURE: base64.b64encode(attacker.sign(text)) + b"\n"}
    report = verify_bundle(_rezip(forged))
    assert not report.ok and any("inclusion proof" in p for p in report.problems)
    # with the log's own key (only the sandbox has it) the proof would hold but not the digest
    w = released[0]
    manifest["signing_key"] = audit.public_hex(w.state.signer)
    text = json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True).encode() + b"\n"
    forged = {**forged, MANIFEST: text,
              SIGNATURE: base64.b64encode(w.state.signer.sign(text)) + b"\n"}
    report = verify_bundle(_rezip(forged))
    assert not report.ok and any("recorded in the audit log" in p for p in report.problems)
