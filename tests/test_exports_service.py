"""The export airlock through the real service and the real CLI, against a real hub.

Developers submit through the service (their hub token); auditors decide with
`sandbox export approve|reject|return|revoke` (their own hub token carrying
custom:sandbox:review); anyone verifies a bundle with `sandbox export verify`.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests
from conftest import make_vault
from test_service import (  # noqa: F401  (fixtures)
    POLICY,
    Hub,
    Svc,
    assert_clean,
    free_port,
    hub,
    rid,
    start_service,
    stop,
    write_config,
)

from gatekit import CORE_COLUMNS
from sandbox.exports import normalise
from sandbox.settings import Paths
from sandbox.state import State
from sandbox.workspaces import provision_local

SANDBOX = Path(sys.executable).parent / "sandbox"
WS, WS2 = "credit-x", "credit-two"  # WS2: the policy asks for two approvals
SQL = "SELECT purpose, count(*) AS n, avg(amount) AS a FROM loans GROUP BY purpose"
REVIEW = ["custom:sandbox:review"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Paths:
    base = tmp_path_factory.mktemp("exports")
    vault = make_vault(base, demo_dir)
    paths, catalog = vault.paths, vault.catalog
    state = State(paths.state_db, vault.kms.audit_signing_key())
    two = base / "credit_two.yaml"
    text = POLICY.read_text()
    assert "approvals: 1" in text
    two.write_text(text.replace("id: credit-underwriting", "id: credit-two")
                   .replace("approvals: 1", "approvals: 2"))
    try:
        for ws, policy in ((WS, POLICY), (WS2, two)):
            provision_local(state, catalog.resolve, policy, ws, ["alice", "carol", "rita"],
                            epsilon=50, expires="2099-12-31", actor="test",
                            accept_core=CORE_COLUMNS["credit_underwriting"])
    finally:
        catalog.close()
        state.close()
    return paths


@pytest.fixture(scope="module")
def service(hub: Hub, home: Paths, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
            ) -> Iterator[Svc]:
    config = write_config(tmp_path_factory.mktemp("exp-svc") / "service.yaml", home,
                          max_export_bytes=200_000, export_hit_limit=100)
    svc = start_service(hub, config, free_port())
    yield svc
    stop(svc.proc)


@pytest.fixture(scope="module")
def tokens(hub: Hub) -> dict[str, str]:  # noqa: F811
    return {"alice": hub.token("alice"), "carol": hub.token("carol"),
            "rita": hub.token("rita", scopes=["custom:sandbox:query", *REVIEW]),
            "audrey": hub.token("audrey", scopes=REVIEW),
            "ramon": hub.token("ramon", scopes=REVIEW)}


@pytest.fixture(scope="module")
def identifier(demo_dir: Path) -> str:
    """A real ID number from the data (what must never leave)."""
    return str(pq.read_table(demo_dir / "persons.parquet", columns=["id_number"])
               .column(0)[3].as_py())


def cli(hub: Hub, home: Paths, *args: str, token: str | None = None,  # noqa: F811
        ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SANDBOX_", "JUPYTERHUB_"))}
    env.update(SANDBOX_HOME=str(home.home), SANDBOX_KEYSTORE=str(home.keystore),
               JUPYTERHUB_API_URL=hub.api)
    if token:
        env["JUPYTERHUB_API_TOKEN"] = token
    out = subprocess.run([str(SANDBOX), *args], env=env, capture_output=True, text=True,
                         timeout=120)
    if ok:
        assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out


def release(svc: Svc, token: str, ws: str = WS) -> dict:
    r = svc.call("POST", f"workspaces/{ws}/query", token, json={"sql": SQL, "request_id": rid()})
    assert r.status_code == 200, r.text
    return r.json()


def frame_of(rel: dict, name: str = "by_purpose") -> dict:
    return {"kind": "frame", "name": name, "columns": rel["columns"], "rows": rel["rows"],
            "release_ids": [rel["release_id"]]}


def submit(svc: Svc, token: str, items: list[dict], ws: str = WS, **kw: str
           ) -> requests.Response:
    body = {"title": kw.get("title", "loan mix"), "purpose": kw.get("purpose", "report"),
            "items": items, "request_id": rid()}
    return svc.call("POST", f"workspaces/{ws}/exports", token, json=body)


def test_a_frame_of_released_noisy_values_passes_the_checks(service: Svc, tokens) -> None:
    rel = release(service, tokens["alice"])
    r = submit(service, tokens["alice"], [frame_of(rel)])
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["state"] == "checked" and doc["checks"]["outcome"] == "pass", doc["checks"]
    rules = {c["rule"] for c in doc["checks"]["results"]}
    assert rules >= {"provenance", "small_cells", "types", "limits"}
    assert "identifiers" not in rules  # for auditors only (docs/exports.md)
    listed = service.call("GET", f"workspaces/{WS}/exports", tokens["alice"]).json()
    assert doc["id"] in [x["id"] for x in listed]


def reviewer_view(hub: Hub, home: Paths, eid: str) -> dict:  # noqa: F811
    return json.loads(cli(hub, home, "export", "show", eid, "--format", "json").stdout)


@pytest.mark.parametrize("variant", [
    lambda v: v, lambda v: v.lower(), lambda v: " ".join(v[i:i + 4] for i in range(0, len(v), 4)),
    lambda v: f"note: {v[:6]}-{v[6:14]}-{v[14:]} checked",
])
def test_an_identifier_in_any_column_is_found_and_shown_to_auditors_only(
        service: Svc, hub: Hub, home: Paths, tokens, identifier: str,  # noqa: F811
        variant) -> None:
    rel = release(service, tokens["alice"])
    rows = [list(row) for row in rel["rows"]]
    rows[0][0] = variant(identifier)
    r = submit(service, tokens["alice"], [{"kind": "frame", "name": "leak",
                                           "columns": rel["columns"], "rows": rows,
                                           "release_ids": [rel["release_id"]]}])
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["state"] == "checked" and doc["checks"]["outcome"] != "blocked"
    text = r.text.lower()
    assert identifier.lower() not in text and normalise(identifier) not in text
    shown = service.call("GET", f"workspaces/{WS}/exports/{doc['id']}", tokens["alice"])
    assert identifier.lower() not in shown.text.lower()
    truth = reviewer_view(hub, home, doc["id"])
    assert truth["checks"]["outcome"] == "blocked" and truth["flagged"]["strong"] >= 1
    assert identifier.lower() not in json.dumps(truth).lower()


def test_an_identifier_in_a_file_is_found(service: Svc, hub: Hub, home: Paths,  # noqa: F811
                                          tokens, identifier: str) -> None:
    data = f"district,who\nSiming,{identifier}\n".encode()
    r = submit(service, tokens["alice"], [{"kind": "file", "name": "list.csv",
                                           "media_type": "text/csv",
                                           "data_base64": base64.b64encode(data).decode()}])
    assert r.status_code == 201 and r.json()["state"] == "checked"
    assert identifier not in r.text
    assert reviewer_view(hub, home, r.json()["id"])["checks"]["outcome"] == "blocked"


# What differs between any two requests whatever they hold: ids, hashes, times.
VOLATILE = re.compile(r"[0-9a-f]{64}|[0-9a-f]{32}|\d{4}-\d\d-\d\dT[0-9:.]+\+00:00")


def observed(r: requests.Response) -> tuple[int, str | None, str]:
    """Everything a requester can observe of a response, but what VOLATILE matches."""
    return r.status_code, r.headers.get("Content-Type"), VOLATILE.sub("*", r.text)


def decoy_of(value: str) -> str:
    """Shaped like the ID number (same length and characters), but another number."""
    return value[:6] + "".join(str((int(ch) + 5) % 10) for ch in value[6:14]) + value[14:]


def test_the_requester_cannot_tell_an_identifier_of_the_vault_from_another_value(
        service: Svc, hub: Hub, home: Paths, tokens, identifier: str) -> None:  # noqa: F811
    """The membership oracle: a guessed ID number must not be answered differently
    whether or not that person is in the data (submit, show, list, download, withdraw)."""
    decoy = decoy_of(identifier)
    assert decoy != identifier and len(decoy) == len(identifier)
    rel = release(service, tokens["alice"])

    def frame(value: str) -> dict:
        rows = [list(row) for row in rel["rows"]]
        rows[0][0] = value
        return {"kind": "frame", "name": "people", "columns": rel["columns"], "rows": rows,
                "release_ids": [rel["release_id"]]}

    def one(eid: str) -> requests.Response:
        return service.call("GET", f"workspaces/{WS}/exports/{eid}", tokens["alice"])

    def listed(eid: str) -> str:
        r = service.call("GET", f"workspaces/{WS}/exports", tokens["alice"])
        assert r.status_code == 200
        entry = next(x for x in r.json() if x["id"] == eid)
        return VOLATILE.sub("*", json.dumps(entry, ensure_ascii=False))

    subs = [submit(service, tokens["alice"], [frame(v)], title="people", purpose="check")
            for v in (identifier, decoy)]
    leak, clean = (r.json()["id"] for r in subs)
    assert observed(subs[0]) == observed(subs[1])
    assert subs[0].status_code == 201 and subs[0].json()["state"] == "checked"
    words = subs[0].text.lower()
    for word in ("identifier", "blocked", "flagged", "kept"):
        assert word not in words, word
    # auditors see the truth: the scan matched one, not the other
    truth = {eid: reviewer_view(hub, home, eid) for eid in (leak, clean)}
    ids = {eid: next(c for c in truth[eid]["checks"]["results"] if c["rule"] == "identifiers")
           for eid in (leak, clean)}
    assert ids[leak]["outcome"] == "block" and ids[clean]["outcome"] == "pass"
    assert truth[leak]["flagged"] == {"identifier_hits": 1, "strong": 1, "weak": 0}
    assert truth[clean]["flagged"] is None
    rows = {x["id"]: x for x in json.loads(cli(hub, home, "export", "list", "--state",
                                               "checked", "--format", "json").stdout)}
    assert (rows[leak]["flagged"], rows[clean]["flagged"]) == ("identifier hits", "")
    assert "flagged    identifier hits: 1 place(s)" in cli(hub, home, "export", "show",
                                                           leak).stdout
    # it can never be approved (nor returned, which would invite variants)
    for decision, extra in (("approve", []), ("return", ["--comment", "x"])):
        out = cli(hub, home, "export", decision, leak, *extra, token=tokens["audrey"],
                  ok=False)
        assert out.returncode == 2 and "export.blocked" in out.stderr
    for _ in range(2):  # the same, before and after the auditors' attempts
        assert observed(one(leak)) == observed(one(clean))
        assert listed(leak) == listed(clean)
    # downloading (not released) and withdrawing answer the same
    bundles = [service.call("GET", f"workspaces/{WS}/exports/{eid}/bundle", tokens["alice"])
               for eid in (leak, clean)]
    assert bundles[0].status_code == 409 and observed(bundles[0]) == observed(bundles[1])
    gone = [service.call("POST", f"workspaces/{WS}/exports/{eid}/withdraw", tokens["alice"],
                         json={"comment": "not needed"}) for eid in (leak, clean)]
    assert gone[0].status_code == 200 and observed(gone[0]) == observed(gone[1])
    assert observed(one(leak)) == observed(one(clean)) and listed(leak) == listed(clean)
    # the hit is an audit record auditors list; nothing of it is the value
    log = cli(hub, home, "audit", "log", "--kind", "export.flagged", "--format",
              "jsonl").stdout
    flags = [json.loads(x) for x in log.splitlines()]
    mine = [f for f in flags if f["export_id"] == leak]
    assert len(mine) == 1 and mine[0]["member"] == "alice" and mine[0]["strong"] == 1
    assert not [f for f in flags if f["export_id"] == clean]
    assert identifier not in log and normalise(identifier) not in log


def test_repeated_identifier_hits_hold_the_members_export_requests(
        hub: Hub, home: Paths, tokens, identifier: str,  # noqa: F811
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """A second service on the same home with export_hit_limit 2: carol's third request
    (whatever it holds) is refused with one generic message; auditors see why."""
    config = write_config(tmp_path_factory.mktemp("held-svc") / "service.yaml", home,
                          max_export_bytes=200_000, export_hit_limit=2)
    svc = start_service(hub, config, free_port())
    try:
        rel = release(svc, tokens["carol"])
        leak = {"kind": "file", "name": "who.csv", "media_type": "text/csv",
                "data_base64": base64.b64encode(f"who\n{identifier}\n".encode()).decode()}
        firsts = [submit(svc, tokens["carol"], [leak]) for _ in range(2)]
        assert [r.status_code for r in firsts] == [201, 201]
        assert [r.json()["state"] for r in firsts] == ["checked", "checked"]
        for items in ([frame_of(rel)], [leak]):  # held: clean or not
            r = submit(svc, tokens["carol"], items)
            assert r.status_code == 403, r.text
            assert_clean(r)
            err = r.json()["error"]
            assert err["code"] == "export.held"
            assert err["message"] == ("your export requests are held for review; contact "
                                      "the auditors")
            assert "identifier" not in r.text.lower() and "block" not in r.text.lower()
        assert submit(svc, tokens["rita"], [frame_of(rel)]).status_code == 201  # others: not held
        # the client raises it like any export error
        from sandbox.client import ExportError, Sandbox

        sb = Sandbox(WS, url=svc.base.removesuffix("api/v1/"), token=tokens["carol"])
        with pytest.raises(ExportError) as info:
            sb.export({"notes.txt": b"hello"}, title="t", purpose="p")
        assert info.value.code == "export.held"
    finally:
        stop(svc.proc)
    recs = [json.loads(x) for x in cli(hub, home, "audit", "log", "--kind", "export.",
                                       "--format", "jsonl").stdout.splitlines()]
    flags = [r for r in recs if r["kind"] == "export.flagged" and r["member"] == "carol"]
    assert [(f["recent"], f["limit"], f["held"]) for f in flags] == [(1, 2, False),
                                                                     (2, 2, True)]
    held = [r for r in recs if r["kind"] == "export.held"]
    assert [h["member"] for h in held] == ["carol"] * 3
    assert held[0]["recent"] == 2 and held[0]["limit"] == 2


def test_bad_uploads_get_clear_errors(service: Svc, tokens) -> None:
    cases = [
        ({"title": "x", "purpose": "y", "items": "nope"}, 400, "input.invalid"),
        ({"title": "x", "purpose": "y", "items": [{"kind": "exe"}]}, 400, "export.invalid"),
        ({"title": "x", "purpose": "y", "items": []}, 400, "export.invalid"),
        ({"title": "", "purpose": "y", "items": [{"kind": "file", "name": "a.txt",
                                                  "data_base64": "aGk="}]}, 400,
         "export.invalid"),
    ]
    for body, status, code in cases:
        r = service.call("POST", f"workspaces/{WS}/exports", tokens["alice"], json=body)
        assert r.status_code == status and r.json()["error"]["code"] == code, (body, r.text)
        assert_clean(r)
    # a type that may never leave is blocked by the checks (recorded, then rejected)
    r = service.call("POST", f"workspaces/{WS}/exports", tokens["alice"], json={
        "title": "x", "purpose": "y",
        "items": [{"kind": "file", "name": "run.sh", "data_base64": "aGk="}]})
    assert r.status_code == 201 and r.json()["state"] == "rejected"
    types = next(c for c in r.json()["checks"]["results"] if c["rule"] == "types")
    assert types["outcome"] == "block"
    big = {"title": "x", "purpose": "y", "items": [{"kind": "file", "name": "a.txt",
                                                    "data_base64": "A" * 300_000}]}
    r = service.call("POST", f"workspaces/{WS}/exports", tokens["alice"], json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "limits.body_too_large"


def test_review_self_approval_two_person_rule_bundle_and_verify(
        service: Svc, hub: Hub, home: Paths, tokens, tmp_path: Path) -> None:  # noqa: F811
    rel = release(service, tokens["rita"], WS2)
    doc = submit(service, tokens["rita"], [frame_of(rel)], ws=WS2).json()
    eid = doc["id"]
    assert doc["approvals_required"] == 2 and doc["state"] == "checked"
    # a developer's token cannot decide; the requester (also an auditor) cannot either
    out = cli(hub, home, "export", "approve", eid, token=tokens["alice"], ok=False)
    assert out.returncode == 2 and "custom:sandbox:review" in out.stderr
    out = cli(hub, home, "export", "approve", eid, token=tokens["rita"], ok=False)
    assert out.returncode == 2 and "export.self_approval" in out.stderr
    # two different auditors are needed
    assert "checked (1/2 approvals)" in cli(hub, home, "export", "approve", eid,
                                            token=tokens["audrey"]).stdout
    out = cli(hub, home, "export", "approve", eid, token=tokens["audrey"], ok=False)
    assert out.returncode == 2 and "export.duplicate_approval" in out.stderr
    r = service.call("GET", f"workspaces/{WS2}/exports/{eid}/bundle", tokens["rita"])
    assert r.status_code == 409 and r.json()["error"]["code"] == "export.state"
    assert "released" in cli(hub, home, "export", "approve", eid, token=tokens["ramon"]).stdout
    # others cannot see or fetch it
    for path in (f"exports/{eid}", f"exports/{eid}/bundle"):
        r = service.call("GET", f"workspaces/{WS2}/{path}", tokens["carol"])
        assert r.status_code == 404 and r.json()["error"]["code"] == "export.not_found"
    r = service.call("GET", f"workspaces/{WS2}/exports/{eid}/bundle", tokens["rita"])
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/zip"
    bundle = tmp_path / "bundle.zip"
    bundle.write_bytes(r.content)
    ok = cli(hub, home, "export", "verify", str(bundle))
    assert ok.stdout.startswith("OK: export " + eid)
    names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    assert "manifest.json" in names and "manifest.sig" in names
    # any changed byte fails: in a file, in the manifest
    for offset in (len(r.content) // 3, r.content.index(b'"export_id"') + 2):
        bad = bytearray(r.content)
        bad[offset] ^= 0x01
        (tmp_path / "bad.zip").write_bytes(bytes(bad))
        out = cli(hub, home, "export", "verify", str(tmp_path / "bad.zip"), ok=False)
        assert out.returncode == 2 and "FAILED" in out.stderr
    # the log holds every step and verifies
    log = cli(hub, home, "audit", "log", "--kind", "export.", "--format", "jsonl").stdout
    kinds = [json.loads(x)["kind"] for x in log.splitlines() if json.loads(x)["export_id"] == eid]
    assert kinds == ["export.submitted", "export.checked", "export.approved",
                     "export.approved", "export.released", "export.downloaded"]
    assert cli(hub, home, "audit", "verify").returncode == 0
    # revocation: visible to the requester, no more downloads
    cli(hub, home, "export", "revoke", eid, "--comment", "wrong period", token=tokens["ramon"])
    r = service.call("GET", f"workspaces/{WS2}/exports/{eid}/bundle", tokens["rita"])
    assert r.status_code == 410 and "wrong period" in r.json()["error"]["message"]
    assert service.call("GET", f"workspaces/{WS2}/exports/{eid}",
                        tokens["rita"]).json()["state"] == "revoked"


def test_return_withdraw_and_reject(service: Svc, hub: Hub, home: Paths,  # noqa: F811
                                    tokens) -> None:
    rel = release(service, tokens["carol"])
    eid = submit(service, tokens["carol"], [frame_of(rel)]).json()["id"]
    out = cli(hub, home, "export", "return", eid, token=tokens["audrey"], ok=False)
    assert out.returncode == 2  # a return needs a comment
    cli(hub, home, "export", "return", eid, "--comment", "add units", token=tokens["audrey"])
    doc = service.call("GET", f"workspaces/{WS}/exports/{eid}", tokens["carol"]).json()
    assert doc["state"] == "returned" and doc["events"][-1]["comment"] == "add units"
    r = service.call("POST", f"workspaces/{WS}/exports/{eid}/resubmit", tokens["alice"],
                     json={"items": [frame_of(rel)]})
    assert r.status_code == 404  # only the requester may change it
    r = service.call("POST", f"workspaces/{WS}/exports/{eid}/resubmit", tokens["carol"],
                     json={"items": [frame_of(rel, "by_purpose_units")],
                           "title": "loan mix (units)"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert (doc["state"], doc["revision"], doc["title"]) == ("checked", 2, "loan mix (units)")
    cli(hub, home, "export", "return", eid, "--comment", "still no", token=tokens["audrey"])
    r = service.call("POST", f"workspaces/{WS}/exports/{eid}/withdraw", tokens["alice"],
                     json={})
    assert r.status_code == 404  # not alice's
    r = service.call("POST", f"workspaces/{WS}/exports/{eid}/withdraw", tokens["carol"],
                     json={"comment": "not needed"})
    assert r.status_code == 200 and r.json()["state"] == "withdrawn"
    eid2 = submit(service, tokens["carol"], [frame_of(rel)]).json()["id"]
    cli(hub, home, "export", "reject", eid2, "--comment", "no", token=tokens["audrey"])
    listed = json.loads(cli(hub, home, "export", "list", "--format", "json").stdout)
    states = {x["id"]: x["state"] for x in listed}
    assert states[eid] == "withdrawn" and states[eid2] == "rejected"
    shown = cli(hub, home, "export", "show", eid2).stdout
    assert "rejected by audrey: no" in shown


def test_client_export_roundtrip(service: Svc, hub: Hub, home: Paths, tokens,  # noqa: F811
                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox.client import ExportError, Sandbox

    sb = Sandbox(WS, url=service.base.removesuffix("api/v1/"), token=tokens["alice"])
    df = sb.sql(SQL, epsilon=0.5)
    status = sb.export({"mix": df, "notes.txt": b"noisy counts, see release ids"},
                       title="mix", purpose="board report")
    assert status["state"] == "checked" and "human_review" in json.dumps(status["checks"])
    assert status["id"] in set(sb.exports()["id"])
    cli(hub, home, "export", "approve", status["id"], token=tokens["audrey"])
    monkeypatch.chdir(tmp_path)
    path = sb.download(status["id"])
    assert cli(hub, home, "export", "verify", path).returncode == 0
    with pytest.raises(ExportError) as info:
        sb.withdraw(status["id"])
    assert info.value.code == "export.state"
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_the_export_quota_holds_and_withdrawing_frees_it(
        hub: Hub, home: Paths, tokens,  # noqa: F811
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """A second service on the same home with export_quota_bytes 60,000: rita's second
    40,000-byte request is refused (403, an audit record), carol is still served, and
    withdrawing the first makes room again."""
    config = write_config(tmp_path_factory.mktemp("quota-svc") / "service.yaml", home,
                          max_export_bytes=200_000, export_hit_limit=100,
                          export_quota_bytes=60_000)
    svc = start_service(hub, config, free_port())

    def notes(size: int) -> dict:
        return {"kind": "file", "name": "notes.txt", "media_type": "text/plain",
                "data_base64": base64.b64encode(b"n" * size).decode()}

    try:
        for ws in (WS, WS2):  # start from nothing awaiting a decision (the quota spans both)
            for x in svc.call("GET", f"workspaces/{ws}/exports", tokens["rita"]).json():
                if x["state"] in ("submitted", "checked", "returned"):
                    r = svc.call("POST", f"workspaces/{ws}/exports/{x['id']}/withdraw",
                                 tokens["rita"], json={})
                    assert r.status_code == 200, r.text
        first = submit(svc, tokens["rita"], [notes(40_000)])
        assert first.status_code == 201, first.text
        r = submit(svc, tokens["rita"], [notes(40_000)], ws=WS2)
        assert r.status_code == 403, r.text
        assert_clean(r)
        err = r.json()["error"]
        assert err["code"] == "limits.export_quota"
        assert "58.6 KiB" in err["message"] and "39.1 KiB is in use" in err["message"]
        assert err["hint"] == ("withdraw requests you no longer need, or wait for a "
                               "reviewer's decision")
        assert submit(svc, tokens["carol"], [notes(1_000)]).status_code == 201  # others: served
        eid = first.json()["id"]
        r = svc.call("POST", f"workspaces/{WS}/exports/{eid}/withdraw", tokens["rita"],
                     json={"comment": "make room"})
        assert r.status_code == 200 and r.json()["state"] == "withdrawn"
        assert "kept" not in r.text
        again = submit(svc, tokens["rita"], [notes(40_000)], ws=WS2)
        assert again.status_code == 201, again.text
    finally:
        stop(svc.proc)
    assert "content not kept" in cli(hub, home, "export", "show", eid).stdout
    recs = [json.loads(x) for x in cli(hub, home, "audit", "log", "--kind", "limits.exceeded",
                                       "--format", "jsonl").stdout.splitlines()]
    mine = [r for r in recs if r["limit"] == "export_quota_bytes"]
    assert [(r["member"], r["workspace"], r["endpoint"], r["count"], r["window_s"])
            for r in mine] == [("rita", WS2, f"POST /workspaces/{WS2}/exports", 1, None)]
    assert cli(hub, home, "audit", "verify").returncode == 0
