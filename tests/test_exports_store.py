"""The review state machine: transitions, separation of duties, the two-person rule, and an
audit record for every step."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatekit import policy
from sandbox.exports import (
    DuplicateApprovalError,
    ExportBlockedError,
    ExportHeldError,
    ExportInputError,
    ExportNotFoundError,
    ExportRevokedError,
    ExportStateError,
    ExportStore,
    FileItem,
    FrameItem,
    IdentifierIndex,
    NotRequesterError,
    SelfApprovalError,
    normalise,
    state_context,
)
from sandbox.gate import Gate, Release
from sandbox.ledger import SqliteLedger
from sandbox.policy import ExportParams, Policy
from sandbox.state import State

SQL = ("SELECT district, count(*) AS people, avg(income) AS avg_income FROM persons "
       "GROUP BY district")


@pytest.fixture(scope="module")
def index(tiny_vault) -> IdentifierIndex:  # type: ignore[no-untyped-def]
    return IdentifierIndex.load(tiny_vault.catalog, tiny_vault.kms, build_missing=False)


class World:
    """A workspace 'w' with one answered query, its export store and check context."""

    def __init__(self, path: Path, tiny_vault: Any, engine: Any, index: IdentifierIndex,
                 approvals: int = 1) -> None:
        base = policy(tiny_vault.catalog)
        self.policy: Policy = replace(base, export=ExportParams(20, approvals))
        self.state = State(path, Ed25519PrivateKey.generate())
        self.gate = Gate(self.policy)
        ledger = SqliteLedger.open(self.state, "w", self.policy.id, self.policy.budget)
        self.release: Release = self.gate.answer(SQL, member="alice", ledger=ledger,
                                                 executor=engine, request_id="r-1")
        self.ctx = state_context(self.state, "w", index, min_group_count=20, gate=self.gate)
        self.store = ExportStore(self.state)

    def frame(self, name: str = "by_district", **kw: Any) -> FrameItem:
        r = self.release
        return FrameItem(name, tuple(r.columns), tuple(tuple(x) for x in r.rows),
                         (r.release_id,), **kw)

    def submit(self, requester: str = "alice", items: list[Any] | None = None,
               checks: bool = True, **kw: Any) -> Any:
        return self.store.submit(workspace="w", requester=requester, title="Incomes",
                                 purpose="underwriting model calibration",
                                 items=[self.frame()] if items is None else items,
                                 policy=self.policy,
                                 context=self.ctx if checks else None, **kw)

    def exports_log(self) -> list[dict[str, Any]]:
        return list(self.state.records(kind="export."))


@pytest.fixture
def world(state_location, tiny_vault, engine, index) -> World:  # type: ignore[no-untyped-def]
    """On both back ends of the state database (SQLite, PostgreSQL: tests/pgkit.py)."""
    return World(state_location, tiny_vault, engine, index)


@pytest.fixture
def world2(state_location, tiny_vault, engine, index) -> World:  # type: ignore[no-untyped-def]
    return World(state_location, tiny_vault, engine, index, approvals=2)


def test_submit_checks_and_records(world: World) -> None:
    req = world.submit()
    assert req.state == "checked" and req.report is not None and req.report.outcome == "pass"
    assert req.approvals_required == 1 and req.min_group_count == 20
    assert req.policy_hash == world.policy.content_hash
    recs = world.exports_log()
    assert [r["kind"] for r in recs] == ["export.submitted", "export.checked"]
    sub, chk = recs
    assert sub["export_id"] == req.id and sub["member"] == "alice" and sub["actor"] == "alice"
    assert sub["items"][0]["sha256"] == req.items[0].sha256
    assert sub["items"][0]["name"] == "by_district.csv"
    assert chk["outcome"] == "pass" and chk["rules_version"] == req.report.rules_version
    assert chk["report_sha256"] == req.report.digest()
    assert [e.seq for e in req.events] == [r["seq"] for r in recs]
    d = req.to_dict("requester")
    assert d["state"] == "checked" and d["checks"]["outcome"] == "pass"
    assert world.store.item_data(req.id, 0) == world.frame().data
    assert world.state.verify().ok


def test_self_approval_is_refused(world: World) -> None:
    req = world.submit()
    size = world.state.size()
    with pytest.raises(SelfApprovalError) as info:
        world.store.decide(req.id, "alice", "approve")
    assert info.value.code == "export.self_approval"
    assert "own request" in info.value.message
    for decision in ("reject", "return"):
        with pytest.raises(SelfApprovalError):
            world.store.decide(req.id, "alice", decision, "no")
    assert world.state.size() == size  # nothing recorded
    assert world.store.get(req.id).state == "checked"


def test_one_approval_releases(world: World) -> None:
    req = world.submit()
    req = world.store.decide(req.id, "audrey", "approve", "fine")
    assert req.state == "approved" and req.approvals == ["audrey"]
    req = world.store.release(req.id, "alice")
    assert req.state == "released" and req.bundle_sha256
    data = world.store.download(req.id, "alice")
    assert data[:2] == b"PK"
    kinds = [r["kind"] for r in world.exports_log()]
    assert kinds == ["export.submitted", "export.checked", "export.approved",
                     "export.released", "export.downloaded"]
    approved = world.exports_log()[2]
    assert (approved["actor"], approved["approvals"], approved["approvals_required"],
            approved["comment"]) == ("audrey", 1, 1, "fine")
    assert world.state.verify().ok


def test_two_person_rule(world2: World) -> None:
    w = world2
    req = w.submit()
    assert req.approvals_required == 2
    req = w.store.decide(req.id, "audrey", "approve")
    assert req.state == "checked" and req.approvals == ["audrey"]
    with pytest.raises(ExportStateError):
        w.store.release(req.id, "alice")  # one approval is not enough
    with pytest.raises(DuplicateApprovalError) as info:
        w.store.decide(req.id, "audrey", "approve")
    assert info.value.code == "export.duplicate_approval"
    assert "different reviewers" in info.value.message
    with pytest.raises(SelfApprovalError):
        w.store.decide(req.id, "alice", "approve")
    req = w.store.decide(req.id, "ramon", "approve")
    assert req.state == "approved" and req.approvals == ["audrey", "ramon"]
    assert [r["approvals"] for r in w.exports_log() if r["kind"] == "export.approved"] == [1, 2]


def test_a_returned_request_is_revised_and_approvals_start_again(world2: World) -> None:
    w = world2
    req = w.submit()
    w.store.decide(req.id, "audrey", "approve")
    req = w.store.decide(req.id, "ramon", "return", "round the averages, please")
    assert req.state == "returned"
    with pytest.raises(NotRequesterError):
        w.store.resubmit(req.id, "bob", [w.frame()], context=w.ctx)
    rounded = FrameItem("by_district", tuple(w.release.columns),
                        tuple((d, n, round(a)) for d, n, a in w.release.rows),
                        (w.release.release_id,))
    req = w.store.resubmit(req.id, "alice", [rounded], context=w.ctx)
    assert req.state == "checked" and req.revision == 2 and req.approvals == []
    assert req.items[0].sha256 != w.exports_log()[0]["items"][0]["sha256"]
    req = w.store.decide(req.id, "audrey", "approve")
    assert req.state == "checked"  # audrey's approval of revision 1 does not count
    req = w.store.decide(req.id, "ramon", "approve")
    assert req.state == "approved"
    recs = w.exports_log()
    assert [(r["kind"], r["revision"]) for r in recs] == [
        ("export.submitted", 1), ("export.checked", 1), ("export.approved", 1),
        ("export.returned", 1), ("export.submitted", 2), ("export.checked", 2),
        ("export.approved", 2), ("export.approved", 2)]
    assert recs[3]["comment"] == "round the averages, please"


@pytest.mark.parametrize(("setup", "action"), [
    ([], "release"),
    ([], "revoke"),
    ([], "download"),
    ([], "resubmit"),
    (["approve"], "approve"),
    (["approve"], "reject"),
    (["approve", "release"], "withdraw"),
    (["approve", "release"], "approve"),
    (["reject"], "approve"),
    (["reject"], "withdraw"),
    (["withdraw"], "approve"),
    (["withdraw"], "withdraw"),
    (["approve", "release", "revoke"], "release"),
])
def test_illegal_transitions_are_refused(world: World, setup: list[str], action: str) -> None:
    req = world.submit()
    s = world.store

    def do(step: str) -> Any:
        return {
            "approve": lambda: s.decide(req.id, "audrey", "approve"),
            "reject": lambda: s.decide(req.id, "audrey", "reject", "no"),
            "release": lambda: s.release(req.id, "alice"),
            "revoke": lambda: s.revoke(req.id, "audrey", "leaked"),
            "download": lambda: s.download(req.id, "alice"),
            "withdraw": lambda: s.withdraw(req.id, "alice"),
            "resubmit": lambda: s.resubmit(req.id, "alice", [world.frame()]),
        }[step]()

    for step in setup:
        do(step)
    before = (s.get(req.id).state, world.state.size())
    with pytest.raises((ExportStateError, ExportRevokedError)) as info:
        do(action)
    assert info.value.code in ("export.state", "export.revoked")
    assert (s.get(req.id).state, world.state.size()) == before


def test_decisions_need_a_checked_request(world: World) -> None:
    req = world.submit(checks=False)
    assert req.state == "submitted" and req.report is None
    with pytest.raises(ExportStateError) as info:
        world.store.decide(req.id, "audrey", "approve")
    assert "submitted" in info.value.message and "checked" in info.value.message
    req = world.store.check(req.id, world.ctx)
    assert req.state == "checked" and req.report is not None
    assert req.report.outcome == "pass"  # read back from the stored CSV
    with pytest.raises(ExportStateError):
        world.store.check(req.id, world.ctx)


def test_only_the_requester_withdraws(world: World) -> None:
    req = world.submit()
    with pytest.raises(NotRequesterError) as info:
        world.store.withdraw(req.id, "audrey")
    assert info.value.code == "export.not_requester"
    world.store.decide(req.id, "audrey", "approve")
    req = world.store.withdraw(req.id, "alice", "not needed any more")
    assert req.state == "withdrawn"
    rec = world.exports_log()[-1]
    assert (rec["kind"], rec["actor"], rec["comment"]) == ("export.withdrawn", "alice",
                                                          "not needed any more")


def test_revocation_after_release_is_logged_and_visible(world: World) -> None:
    req = world.submit()
    world.store.decide(req.id, "audrey", "approve")
    world.store.release(req.id, "alice")
    with pytest.raises(SelfApprovalError):
        world.store.revoke(req.id, "alice", "oops")
    with pytest.raises(ExportInputError):
        world.store.revoke(req.id, "audrey", "   ")
    req = world.store.revoke(req.id, "audrey", "a group turned out to be too small")
    assert req.state == "revoked"
    seen = req.to_dict("requester")
    assert seen["events"][-1]["event"] == "revoked"
    assert seen["events"][-1]["comment"] == "a group turned out to be too small"
    with pytest.raises(ExportRevokedError) as info:
        world.store.download(req.id, "alice")
    assert "too small" in info.value.message
    assert world.exports_log()[-1]["kind"] == "export.revoked"


def decoy_of(value: str, index: IdentifierIndex) -> str:
    """A value shaped like ``value`` (same length, same kinds of characters) that is not in
    the vault's identifier index."""
    digits = [i for i, ch in enumerate(value) if ch.isdigit()]
    for k in range(1, 10):
        out = list(value)
        for i in digits[6:14]:
            out[i] = str((int(out[i]) + k) % 10)
        cand = "".join(out)
        if not index.find([normalise(cand)]):
            return cand
    raise AssertionError("no decoy found")


def observable(doc: dict[str, Any]) -> dict[str, Any]:
    """A requester's view without what differs between any two requests (ids, times, the
    hashes of their own bytes): what is left must not depend on the vault."""
    out = json.loads(json.dumps(doc))
    for key in ("id", "created", "updated"):
        out[key] = "*"
    for e in out["events"]:
        e["time"] = "*"
    for it in out["items"]:
        it["sha256"] = "*"
    return out


def test_an_identifier_hit_looks_like_any_request_to_its_requester(  # type: ignore[no-untyped-def]
        world: World, index, demo_tables) -> None:
    idn = demo_tables["persons"].column("id_number").to_pylist()[0]
    decoy = decoy_of(idn, index)
    s = world.store
    leak = world.submit(items=[FrameItem("t", ("district", "who"), (("Siming", idn),))])
    clean = world.submit(items=[FrameItem("t", ("district", "who"), (("Siming", decoy),))])
    # the truth, for reviewers: the scan blocked one of them
    assert leak.report is not None and leak.report.result("identifiers").outcome == "block"
    assert clean.report is not None and clean.report.result("identifiers").outcome == "pass"
    assert leak.flagged and not clean.flagged
    assert leak.to_dict("reviewer")["flagged"] == {"identifier_hits": 1, "strong": 1,
                                                   "weak": 0}
    # the requester: the same state, checks, items, events
    a, b = leak.to_dict("requester"), clean.to_dict("requester")
    assert observable(a) == observable(b)
    assert a["state"] == "checked"
    text = json.dumps(a, ensure_ascii=False).lower()
    for word in ("identifier", "blocked", "flagged", "kept", idn.lower()):
        assert word not in text, word
    # withdrawing and downloading answer the same too
    for action in (lambda r: s.download(r.id, "alice"),):
        errs = []
        for r in (leak, clean):
            with pytest.raises(ExportStateError) as info:
                action(r)
            errs.append(info.value.to_dict()["message"].replace(r.id, "*"))
        assert errs[0] == errs[1]
    assert observable(s.withdraw(leak.id, "alice").to_dict("requester")) == \
        observable(s.withdraw(clean.id, "alice").to_dict("requester"))


def test_an_identifier_hit_can_only_be_rejected_and_its_content_is_not_kept(  # type: ignore[no-untyped-def]
        world: World, demo_tables) -> None:
    idn = demo_tables["persons"].column("id_number").to_pylist()[0]
    leak = FrameItem("leak", ("district", idn), (("Siming", idn),))  # in a header too
    req = world.submit(items=[leak])
    assert req.state == "checked" and req.report is not None and req.report.blocked
    assert not req.items[0].kept and req.items[0].meta["columns"] == 2  # names dropped
    with pytest.raises(ExportNotFoundError):
        world.store.item_data(req.id, 0)
    recs = world.exports_log()
    assert [r["kind"] for r in recs] == ["export.submitted", "export.checked",
                                         "export.flagged"]
    flag = recs[2]
    assert (flag["export_id"], flag["actor"], flag["member"], flag["rule"]) == (
        req.id, "sandbox:checks", "alice", "identifiers")
    assert (flag["strong"], flag["weak"], flag["items"], flag["recent"], flag["limit"],
            flag["held"]) == (2, 0, ["leak.csv"], 1, 3, False)
    assert [e.event for e in req.events] == ["submitted", "checked", "flagged"]
    assert "flagged" not in [e["event"] for e in req.to_dict("requester")["events"]]
    rows = world.state.con.execute("SELECT data, meta FROM export_items").fetchall()
    dump = "".join(bytes(d).decode(errors="replace") for d, _ in rows if d is not None) + \
        "".join(m for _, m in rows)
    log = "".join(json.dumps(r, ensure_ascii=False) for r in world.state.records())
    requester_view = json.dumps(req.to_dict("requester"), ensure_ascii=False)
    reviewer_view = json.dumps(req.to_dict("reviewer"), ensure_ascii=False)
    for text in (dump, log, requester_view, reviewer_view):
        assert idn not in text
    assert "header #2" in reviewer_view  # reviewers see where, never the value
    # never approved, never returned (a return would invite variants), never released
    for decision in ("approve", "return"):
        with pytest.raises(ExportBlockedError) as info:
            world.store.decide(req.id, "audrey", decision, "x")
        assert info.value.code == "export.blocked"
    with pytest.raises(ExportStateError):
        world.store.release(req.id, "audrey")
    with pytest.raises(ExportStateError):
        world.store.download(req.id, "alice")
    req = world.store.decide(req.id, "audrey", "reject", "Not approved after review.")
    assert req.state == "rejected"
    assert world.state.verify().ok


def test_a_check_the_requester_may_see_still_rejects_at_once(world: World,  # type: ignore[no-untyped-def]
                                                             demo_tables) -> None:
    idn = demo_tables["persons"].column("id_number").to_pylist()[0]
    bad = FileItem("run.sh", b"echo hi")
    leak = FrameItem("leak", ("district", "who"), (("Siming", idn),))
    for items in ([bad], [bad, leak]):
        req = world.submit(items=items)
        assert req.state == "rejected" and not any(i.kept for i in req.items)
        seen = req.to_dict("requester")
        assert seen["checks"]["outcome"] == "blocked"
        assert seen["events"][-1]["comment"] == (
            "blocked by the automatic checks (types); the content was not kept")
        assert "identifier" not in json.dumps(seen).lower()


def test_repeated_identifier_hits_hold_the_members_requests(  # type: ignore[no-untyped-def]
        world: World, demo_tables, monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox.exports import store as storemod

    s = ExportStore(world.state, hit_limit=2, hit_window_s=3600)
    world.store = s
    ids = demo_tables["persons"].column("id_number").to_pylist()
    names = demo_tables["persons"].column("name").to_pylist()
    weak = FileItem("note.txt", f"据统计客户{names[1]}的收入较高".encode())
    assert world.submit(items=[weak]).flagged  # a name in running text: flagged, not held
    first = world.submit(items=[FrameItem("a", ("who",), ((ids[1],),))])
    world.submit(requester="bob", items=[FrameItem("a", ("who",), ((ids[2],),))])
    assert not s.held("alice") and s.recent_hits("alice") == 1
    world.submit()  # clean requests do not count
    second = world.submit(items=[FrameItem("b", ("who",), ((ids[3],),))])
    assert second.state == "checked" and s.held("alice")
    flags = [r for r in world.exports_log() if r["kind"] == "export.flagged"]
    assert [(r["member"], r["strong"], r["weak"], r["recent"], r["held"]) for r in flags] == [
        ("alice", 0, 1, 0, False), ("alice", 1, 0, 1, False), ("bob", 1, 0, 1, False),
        ("alice", 1, 0, 2, True)]
    # held: any further request, clean or not, is refused with one generic message
    size = world.state.size()
    for items in (None, [FrameItem("c", ("who",), ((ids[4],),))]):
        with pytest.raises(ExportHeldError) as info:
            world.submit(items=items)
        err = info.value.to_dict()
        assert err["code"] == "export.held"
        assert err["message"] == "your export requests are held for review; contact the auditors"
        assert "identifier" not in json.dumps(err) and "block" not in json.dumps(err)
    s.decide(first.id, "audrey", "reject", "Not approved after review.")
    with pytest.raises(ExportHeldError):  # a rejection does not lift the hold
        world.submit()
    held = [r for r in world.exports_log() if r["kind"] == "export.held"]
    assert len(held) == 3 and world.state.size() == size + 4  # + the rejection
    assert (held[0]["member"], held[0]["recent"], held[0]["limit"], held[0]["window_s"],
            held[0]["title"]) == ("alice", 2, 2, 3600, "Incomes")
    assert world.submit(requester="bob").state == "checked"  # others are not held
    # a returned request cannot be resubmitted while held either
    ret = world.submit(requester="carol")
    s.decide(ret.id, "audrey", "return", "units?")
    for i in (5, 6):
        world.submit(requester="carol", items=[FrameItem("x", ("who",), ((ids[i],),))])
    with pytest.raises(ExportHeldError):
        s.resubmit(ret.id, "carol", [world.frame()], context=world.ctx)
    # the window passes: hits age out
    later = storemod._utcnow() + dt.timedelta(seconds=3601)
    monkeypatch.setattr(storemod, "_utcnow", lambda: later)
    assert not s.held("alice")
    assert world.submit().state == "checked"
    assert world.state.verify().ok


def test_repeated_request_id_is_one_request(world: World) -> None:
    first = world.submit(request_id="u-1")
    again = world.submit(request_id="u-1")
    assert again.id == first.id
    assert len(world.store.list(workspace="w")) == 1
    assert len(world.exports_log()) == 2


def test_differencing_against_earlier_approved_exports(world: World) -> None:
    first = world.submit()
    second = world.submit()
    assert second.report is not None and second.report.outcome == "pass"  # nothing approved
    world.store.decide(first.id, "audrey", "approve")
    third = world.submit()
    assert third.report is not None
    res = third.report.result("differencing")
    assert res.outcome == "review"
    assert [o["export_id"] for o in res.details["overlaps"]] == [first.id]


def test_listing_and_input_errors(world: World) -> None:
    a = world.submit()
    b = world.submit(requester="bob")
    world.store.decide(b.id, "audrey", "reject", "not within the purpose")
    s = world.store
    assert [r.id for r in s.list(workspace="w")] == [a.id, b.id]
    assert [r.id for r in s.list(requester="bob")] == [b.id]
    assert [r.id for r in s.list(states=["rejected"])] == [b.id]
    assert s.list(workspace="other") == []
    with pytest.raises(ExportNotFoundError):
        s.get("nope")
    with pytest.raises(ExportInputError):
        s.decide(a.id, "audrey", "reject")  # a rejection needs a comment
    with pytest.raises(ExportInputError):
        s.decide(a.id, "audrey", "maybe")
    with pytest.raises(ExportInputError):
        world.submit(items=[])
    with pytest.raises(ExportInputError):
        s.submit(workspace="w", requester="alice", title=" ", purpose="p",
                 items=[world.frame()], policy=world.policy)


def test_every_transition_is_in_the_log_and_the_log_verifies(world2: World) -> None:
    w = world2
    s = w.store
    a = w.submit()
    s.decide(a.id, "audrey", "approve", "ok")
    s.decide(a.id, "ramon", "approve", "ok")
    s.release(a.id, "alice")
    s.download(a.id, "alice")
    s.revoke(a.id, "audrey", "superseded")
    b = w.submit(requester="bob")
    s.decide(b.id, "audrey", "return", "explain the purpose")
    s.resubmit(b.id, "bob", [w.frame()], purpose="for the pricing model", context=w.ctx)
    s.withdraw(b.id, "bob")
    c = w.submit(checks=False)
    s.check(c.id, w.ctx)
    s.decide(c.id, "ramon", "reject", "duplicate of an earlier export")
    for req in (s.get(a.id), s.get(b.id), s.get(c.id)):
        logged = [(r["seq"], r["kind"]) for r in w.exports_log() if r["export_id"] == req.id]
        assert logged == [(e.seq, f"export.{e.event}") for e in req.events]
    assert s.get(a.id).state == "revoked"
    assert s.get(b.id).state == "withdrawn" and s.get(b.id).revision == 2
    assert s.get(c.id).state == "rejected"
    report = w.state.verify()
    assert report.ok, report.problems


# -- the storage quota ----------------------------------------------------------------------
def quota_records(world: World) -> list[dict[str, Any]]:
    return list(world.state.records(kind="limits.exceeded"))


def kept_bytes(world: World, export_id: str) -> int:
    """Bytes of item content and bundle the database still holds for a request."""
    (items,) = world.state.con.execute(
        "SELECT coalesce(sum(length(data)), 0) FROM export_items WHERE export_id = ?",
        (export_id,)).fetchone()
    (bundle,) = world.state.con.execute(
        "SELECT coalesce(length(bundle), 0) FROM export_requests WHERE id = ?",
        (export_id,)).fetchone()
    return int(items) + int(bundle)


def test_the_quota_refuses_before_anything_is_stored(world: World) -> None:
    from sandbox.exports import ExportQuotaError
    from sandbox.exports.store import _size

    n = len(world.frame().data)
    quota = 2 * n + n // 2
    s = world.store = ExportStore(world.state, quota_bytes=quota)
    a, b = world.submit(request_id="first"), world.submit()
    assert s.quota_used("alice") == 2 * n
    size = world.state.size()
    rows = world.state.con.execute("SELECT count(*) FROM export_items").fetchone()
    with pytest.raises(ExportQuotaError) as info:
        world.submit()
    err = info.value.to_dict()
    assert err["code"] == "limits.export_quota"
    assert _size(quota) in err["message"] and f"{_size(2 * n)} is in use" in err["message"]
    assert err["hint"] == ("withdraw requests you no longer need, or wait for a reviewer's "
                           "decision")
    # nothing stored: no request, no item, only the limit's audit record
    assert [r.id for r in s.list(requester="alice")] == [a.id, b.id]
    assert world.state.con.execute("SELECT count(*) FROM export_items").fetchone() == rows
    assert world.state.size() == size + 1
    (rec,) = quota_records(world)
    assert (rec["member"], rec["actor"], rec["workspace"], rec["limit"], rec["endpoint"],
            rec["count"], rec["window_s"]) == ("alice", "alice", "w", "export_quota_bytes",
                                               "POST /workspaces/w/exports", 1, None)
    # each refusal is a record; a retry of a stored request (its id) is answered as before
    with pytest.raises(ExportQuotaError):
        world.submit(request_id="second")
    assert len(quota_records(world)) == 2
    assert world.submit(request_id="first").id == a.id and len(quota_records(world)) == 2
    # other members have quotas of their own
    assert world.submit(requester="bob").state == "checked"
    assert s.quota_used("bob") == n and s.quota_used("alice") == 2 * n
    assert world.state.verify().ok


def test_the_quota_is_checked_again_in_the_transaction(world: World,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Two submissions of one member racing past the early check still add up."""
    from sandbox.exports import ExportQuotaError

    n = len(world.frame().data)
    s = world.store = ExportStore(world.state, quota_bytes=n + n // 2)
    world.submit()
    monkeypatch.setattr(s, "_refuse_over_quota", lambda *a: None)
    with pytest.raises(ExportQuotaError):
        world.submit()
    assert len(s.list(requester="alice")) == 1 and len(quota_records(world)) == 1
    assert world.state.verify().ok


def test_withdrawing_and_rejecting_free_the_quota_and_the_space(world: World) -> None:
    from sandbox.exports import ExportQuotaError
    from sandbox.service.console_previews import preview

    n = len(world.frame().data)
    s = world.store = ExportStore(world.state, quota_bytes=2 * n)
    a, b = world.submit(), world.submit()
    with pytest.raises(ExportQuotaError):
        world.submit()
    assert kept_bytes(world, a.id) == n
    a = s.withdraw(a.id, "alice", "not needed")
    assert s.quota_used("alice") == n and kept_bytes(world, a.id) == 0
    c = world.submit()  # now it fits
    assert c.state == "checked"
    b = s.decide(b.id, "audrey", "reject", "not within the purpose")
    assert s.quota_used("alice") == n and kept_bytes(world, b.id) == 0
    for req in (a, b):
        # names, sizes and hashes stay; the column names go with the content
        (it,) = req.items
        assert (it.name, it.size, it.sha256) == ("by_district.csv", n, c.items[0].sha256)
        assert not it.kept and it.meta["columns"] == 3
        assert req.to_dict("reviewer")["items"][0]["kept"] is False
        assert "kept" not in req.to_dict("requester")["items"][0]
        with pytest.raises(ExportNotFoundError) as info:
            s.item_data(req.id, 0)
        assert "withdrawn and rejected" in (info.value.hint or "")
        with pytest.raises(ExportStateError):
            s.download(req.id, "alice")
    assert "requester withdrew" in preview("/", s, a, a.items[0])["why"]
    assert "was rejected" in preview("/", s, b, b.items[0])["why"]
    assert world.state.verify().ok


def test_a_resubmission_counts_with_its_earlier_revisions(world: World) -> None:
    from sandbox.exports import ExportQuotaError

    n = len(world.frame().data)
    s = world.store = ExportStore(world.state, quota_bytes=2 * n + n // 2)
    a = world.submit()
    s.decide(a.id, "audrey", "return", "units?")
    assert s.quota_used("alice") == n  # returned: still awaiting the requester
    a = s.resubmit(a.id, "alice", [world.frame()], context=world.ctx)
    assert a.revision == 2 and s.quota_used("alice") == 2 * n  # revision 1 is kept too
    s.decide(a.id, "audrey", "return", "still no units")
    size = world.state.size()
    with pytest.raises(ExportQuotaError):
        s.resubmit(a.id, "alice", [world.frame()], context=world.ctx)
    assert (s.get(a.id).state, s.get(a.id).revision) == ("returned", 2)
    assert world.state.size() == size + 1
    assert quota_records(world)[-1]["endpoint"] == f"POST /workspaces/w/exports/{a.id}/resubmit"
    a = s.withdraw(a.id, "alice")  # every revision is dropped
    assert s.quota_used("alice") == 0 and kept_bytes(world, a.id) == 0
    assert world.state.con.execute("SELECT count(*) FROM export_items WHERE export_id = ? AND "
                                   "data IS NULL", (a.id,)).fetchone() == (2,)


def test_approved_exports_leave_the_quota_and_keep_their_bundle(world2: World) -> None:
    w = world2
    n = len(w.frame().data)
    s = w.store = ExportStore(w.state, quota_bytes=n)
    a = w.submit()
    s.decide(a.id, "audrey", "approve")
    assert s.quota_used("alice") == n  # one approval of two: still awaiting a decision
    s.decide(a.id, "ramon", "approve")
    assert s.quota_used("alice") == 0
    s.release(a.id, "alice")
    b = w.submit()  # fits: the approved request does not count
    assert b.state == "checked"
    data = s.download(a.id, "alice")
    assert data[:2] == b"PK" and kept_bytes(w, a.id) == n + len(data)
    s.revoke(a.id, "audrey", "superseded")
    assert kept_bytes(w, a.id) == n + len(data)  # revoked: kept, never downloaded again


def test_the_quota_does_not_tell_whether_the_identifier_scan_dropped_content(  # type: ignore[no-untyped-def]
        world: World, index, demo_tables) -> None:
    """The scan drops the content of a request it blocks; the quota counts the sizes the
    request was submitted with, so what is in use is the same as for a made-up value."""
    from sandbox.exports import ExportQuotaError

    idn = demo_tables["persons"].column("id_number").to_pylist()[0]
    leak = FrameItem("t", ("district", "who"), (("Siming", idn),))
    clean = FrameItem("t", ("district", "who"), (("Siming", decoy_of(idn, index)),))
    s = world.store = ExportStore(world.state, quota_bytes=len(leak.data) + 10)
    messages = []
    for member, item in (("alice", leak), ("bob", clean)):
        req = world.submit(requester=member, items=[item])
        assert req.state == "checked"
        assert s.quota_used(member) == len(item.data)
        with pytest.raises(ExportQuotaError) as info:
            world.submit(requester=member, items=[item])
        messages.append(info.value.to_dict())
    assert s.get(s.list(requester="alice")[0].id).items[0].kept is False  # dropped
    assert messages[0] == messages[1]


def test_content_kept_by_earlier_versions_is_dropped_at_start(world: World) -> None:
    a = world.submit()
    b = world.submit()
    world.state.con.execute("UPDATE export_requests SET state = 'withdrawn' WHERE id = ?",
                            (a.id,))  # as earlier versions left a withdrawal
    assert kept_bytes(world, a.id) > 0
    ExportStore(world.state)
    assert kept_bytes(world, a.id) == 0 and kept_bytes(world, b.id) > 0
