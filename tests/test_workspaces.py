"""Scenario reviews and workspace records (no hub): versions, pinning, lifecycle, refusals.

The hub mirror and the CLI are tested against a real hub in test_workspaces_hub.py and,
with real logins and servers, in test_workspaces_e2e.py.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_vault
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekit import CORE_COLUMNS, ROOT
from sandbox.catalog import Catalog
from sandbox.errors import InputError, SandboxError
from sandbox.keys import FileKeyStore
from sandbox.ledger import SqliteLedger
from sandbox.scenarios import ScenarioNotFoundError, Scenarios, load_approved
from sandbox.state import State
from sandbox.workspaces import (
    WorkspaceError,
    WorkspaceForbiddenError,
    WorkspaceNotFoundError,
    Workspaces,
    WorkspaceUnavailableError,
)

POLICY = ROOT / "policies" / "credit_underwriting.yaml"
CORE = CORE_COLUMNS["credit_underwriting"]
FUTURE = "2099-12-31"


@pytest.fixture
def env(paths, keystore: FileKeyStore, catalog: Catalog, ingest_demo,
        tmp_path: Path) -> Iterator[tuple[State, Catalog, Path]]:
    ingest_demo()
    policy = tmp_path / "credit_underwriting.yaml"
    shutil.copy(POLICY, policy)
    state = State(paths.state_db, keystore.audit_signing_key())
    yield state, catalog, policy
    state.close()


def approve(state: State, catalog: Catalog, policy: Path) -> int:
    sv, _ = Scenarios(state).review(policy, catalog.resolve, reviewer="board",
                                    reference="DRB-1", actor="oscar", accept_core=CORE)
    return sv.version


def create(state: State, name: str = "ws", members: tuple[str, ...] = ("alice", "bob"),
           **kw: object) -> Workspaces:
    store = Workspaces(state)
    args: dict[str, object] = dict(scenario="credit-underwriting", version=None,
                                   members=list(members), epsilon=5.0, delta=None,
                                   expires=FUTURE, actor="oscar")
    args.update(kw)
    store.create(name, **args)  # type: ignore[arg-type]
    return store


def activate(store: Workspaces, name: str = "ws") -> None:
    store.hub_synced(name, "oscar", {"users_created": [], "group_members": [],
                                     "servers_stopped": []})


def kinds(state: State) -> list[str]:
    return [r["kind"] for r in state.records()]


# -- scenario review ------------------------------------------------------------------------
def test_review_stores_version_hash_reviewer_and_audit_record(env) -> None:
    state, catalog, policy = env
    sv, stored = Scenarios(state).review(policy, catalog.resolve, reviewer="Data board",
                                         reference="DRB-2026-014", actor="oscar",
                                         accept_core=CORE)
    assert stored and sv.version == 1 and sv.id == "credit-underwriting"
    assert sv.text == policy.read_text() and sv.file_status() == "file matches the review"
    assert sv.datasets == {"persons": 1, "loans": 1, "districts": 1}
    (rec,) = state.records(kind="scenario.approved")
    assert rec["actor"] == "oscar" and rec["reviewer"] == "Data board"
    assert rec["reference"] == "DRB-2026-014" and rec["content_hash"] == sv.content_hash
    # the same file again is not a new version and writes nothing
    again, stored = Scenarios(state).review(policy, catalog.resolve, reviewer="x",
                                            reference="y", actor="oscar", accept_core=CORE)
    assert not stored and again.version == 1 and kinds(state).count("scenario.approved") == 1


def test_edited_file_is_reported_and_not_served_until_re_reviewed(env, paths) -> None:
    state, catalog, policy = env
    approve(state, catalog, policy)
    text = policy.read_text()
    policy.write_text(text.replace("epsilon_max: 2.0", "epsilon_max: 1.5"))
    assert "epsilon_max: 1.5" in policy.read_text()
    sv1 = Scenarios(state).get("credit-underwriting")
    assert sv1.file_status() == "policy changed since review; re-review required"
    served = load_approved(sv1, catalog.resolve, paths.home / "scenarios")
    assert served.privacy.epsilon_max == 2.0  # the approved text, not the edited file
    assert approve(state, catalog, policy) == 2
    sv2 = Scenarios(state).get("credit-underwriting")
    assert load_approved(sv2, catalog.resolve, paths.home / "scenarios").privacy.epsilon_max == 1.5
    # a workspace stays on its version until the operator upgrades it
    store = create(state, version=1)
    assert store.get("ws").scenario_version == 1
    assert store.upgrade("ws", None, "oscar").scenario_version == 2
    with pytest.raises(WorkspaceError, match="already uses"):
        store.upgrade("ws", None, "oscar")


def test_review_pins_dataset_versions(env, paths, ingest_demo) -> None:
    state, catalog, policy = env
    approve(state, catalog, policy)
    ingest_demo("persons")  # persons v2 arrives after the review
    sv = Scenarios(state).get("credit-underwriting")
    served = load_approved(sv, catalog.resolve, paths.home / "scenarios")
    assert served.tables["persons"].version == 1


def test_tampered_stored_text_is_refused(env, paths) -> None:
    state, catalog, policy = env
    approve(state, catalog, policy)
    state.con.execute("UPDATE scenarios SET text = text || '# extra'")
    with pytest.raises(SandboxError, match="does not match its hash"):
        load_approved(Scenarios(state).get("credit-underwriting"), catalog.resolve,
                      paths.home / "scenarios")


@pytest.mark.parametrize("change, match", [
    (lambda t: t.replace("dataset: persons", "dataset: nobody"), "nobody"),
    (lambda t: "::: not yaml", "policy"),
])
def test_invalid_policy_is_not_approved(env, change, match) -> None:
    state, catalog, policy = env
    policy.write_text(change(policy.read_text()))
    size = state.size()
    with pytest.raises(SandboxError, match=match):
        approve(state, catalog, policy)
    assert state.size() == size and Scenarios(state).ids() == []


@pytest.mark.parametrize("reviewer, reference", [("", "R-1"), ("board", " "), ("b" * 300, "R")])
def test_review_needs_reviewer_and_reference(env, reviewer: str, reference: str) -> None:
    state, catalog, policy = env
    with pytest.raises(InputError):
        Scenarios(state).review(policy, catalog.resolve, reviewer=reviewer,
                                reference=reference, actor="oscar")
    assert Scenarios(state).ids() == []


# -- workspaces -----------------------------------------------------------------------------
@pytest.mark.parametrize("kw, error, match", [
    ({"scenario": "nope"}, ScenarioNotFoundError, "no approved scenario 'nope'"),
    ({"version": 7}, ScenarioNotFoundError, "version 7"),
    ({"expires": "2020-01-01"}, InputError, "in the past"),
    ({"expires": "31/03/2027"}, InputError, "not a date"),
    ({"members": ("alice", "Bad Name")}, InputError, "invalid member name"),
    ({"members": ()}, InputError, "at least one member"),
    ({"epsilon": 0.0}, InputError, "positive"),
    ({"epsilon": -1.0}, InputError, "positive"),
    ({"epsilon": float("nan")}, InputError, "positive"),
    ({"delta": 1.0}, InputError, "below 1"),
])
def test_bad_create_leaves_no_state(env, kw, error, match) -> None:
    state, catalog, policy = env
    approve(state, catalog, policy)
    size = state.size()
    with pytest.raises(error, match=match):
        create(state, **kw)
    assert Workspaces(state).names() == [] and state.size() == size
    assert state.con.execute("SELECT count(*) FROM members").fetchone()[0] == 0


def test_bad_names_and_duplicates(env) -> None:
    state, catalog, policy = env
    approve(state, catalog, policy)
    for bad in ("", "Has Space", "../x", "-lead", "x" * 65):
        with pytest.raises(InputError, match="invalid workspace name"):
            create(state, name=bad)
    create(state)
    size = state.size()
    with pytest.raises(WorkspaceError, match="already exists"):
        create(state)
    assert state.size() == size


def test_access_follows_records_state_and_expiry(env) -> None:
    state, catalog, policy = env
    approve(state, catalog, policy)
    store = create(state, expires=dt.date.today().isoformat())
    with pytest.raises(WorkspaceUnavailableError) as info:
        store.access("ws", "alice")
    assert info.value.code == "workspace.provisioning"
    activate(store)
    assert store.access("ws", "alice").name == "ws"
    with pytest.raises(WorkspaceForbiddenError):
        store.access("ws", "carol")
    with pytest.raises(WorkspaceNotFoundError):
        store.access("nope", "alice")
    # the last day is usable to its end (UTC), the next instant is not
    end = dt.datetime.combine(dt.date.today() + dt.timedelta(days=1), dt.time(), dt.UTC)
    assert store.access("ws", "alice", now=end - dt.timedelta(seconds=1))
    with pytest.raises(WorkspaceUnavailableError) as info:
        store.access("ws", "alice", now=end)
    assert info.value.code == "workspace.expired" and info.value.hint
    store.suspend("ws", "oscar", reason="review")
    with pytest.raises(WorkspaceUnavailableError) as info:
        store.access("ws", "alice")
    assert info.value.code == "workspace.suspended"
    store.resume("ws", "oscar")
    store.remove_member("ws", "alice", "oscar")
    with pytest.raises(WorkspaceForbiddenError):
        store.access("ws", "alice")
    assert store.access("ws", "bob")
    store.close("ws", "oscar")
    with pytest.raises(WorkspaceUnavailableError) as info:
        store.access("ws", "bob")
    assert info.value.code == "workspace.closed"


def test_closing_is_final_and_freezes_the_ledger(env) -> None:
    state, catalog, policy = env
    approve(state, catalog, policy)
    store = create(state)
    activate(store)
    store.close("ws", "oscar")
    for action in (lambda: store.resume("ws", "oscar"), lambda: store.suspend("ws", "oscar"),
                   lambda: store.add_member("ws", "carol", "oscar"),
                   lambda: store.set_budget("ws", "bob", epsilon=9, delta=None, actor="o"),
                   lambda: store.close("ws", "oscar"),
                   lambda: store.extend("ws", FUTURE, "oscar")):
        size = state.size()
        with pytest.raises(WorkspaceError):
            action()
        assert state.size() == size
    assert store.get("ws").state == "closed"
    # the freeze holds in the ledger itself, whatever command reaches it (`budget set`)
    size = state.size()
    with pytest.raises(SandboxError, match="frozen"):
        SqliteLedger.existing(state, "ws").set_budget("bob", epsilon=9.0, actor="o")
    assert state.size() == size


def test_budgets_are_per_member_and_changes_audited(env) -> None:
    state, catalog, policy = env
    approve(state, catalog, policy)
    store = create(state, epsilon=3.0)
    activate(store)
    rec = store.get("ws")
    assert store.ledger(rec).balance("alice").epsilon_total == 3.0
    assert rec.delta == 1e-5  # the scenario's delta when none is given
    store.set_budget("ws", "alice", epsilon=7.0, delta=None, actor="oscar")
    assert store.ledger(rec).balance("alice").epsilon_total == 7.0
    assert store.ledger(rec).balance("bob").epsilon_total == 3.0
    with pytest.raises(WorkspaceError, match="not a member"):
        store.set_budget("ws", "carol", epsilon=1.0, delta=None, actor="oscar")
    with pytest.raises(InputError):
        store.set_budget("ws", "alice", epsilon=-2.0, delta=None, actor="oscar")


def test_every_action_is_in_the_audit_log_and_it_verifies(env) -> None:
    state, catalog, policy = env
    approve(state, catalog, policy)
    store = create(state)
    activate(store)
    store.add_member("ws", "carol", "oscar")
    store.remove_member("ws", "bob", "oscar")
    store.suspend("ws", "oscar", reason="check")
    store.resume("ws", "oscar")
    store.extend("ws", "2099-06-30", "oscar")
    store.set_budget("ws", "alice", epsilon=2.0, delta=None, actor="oscar")
    store.hub_failed("ws", "oscar", "hub down")
    store.close("ws", "oscar")
    assert [k for k in kinds(state) if k.startswith(("workspace.", "scenario.", "budget."))] == [
        "scenario.approved", "workspace.created", "workspace.hub_synced",
        "workspace.member_added", "workspace.member_removed", "workspace.suspended",
        "workspace.resumed", "workspace.extended", "budget.changed", "workspace.hub_failed",
        "workspace.closed"]
    assert all(r["actor"] == "oscar" for r in state.records() if r["kind"] != "budget.changed")
    assert state.verify().ok


def test_ad_hoc_ledger_cannot_take_over_a_workspace(env) -> None:
    from sandbox.ledger import SqliteLedger
    from sandbox.policy import BudgetPolicy

    state, catalog, policy = env
    approve(state, catalog, policy)
    create(state)
    with pytest.raises(SandboxError, match="provisioned workspace"):
        SqliteLedger.open(state, "ws", "x", BudgetPolicy(100, 0.1, "none"))
    SqliteLedger.open(state, "cli-ledger", "x", BudgetPolicy(100, 0.1, "none"))
    with pytest.raises(WorkspaceError, match="sandbox query --workspace cli-ledger"):
        create(state, name="cli-ledger")


def test_old_state_database_gains_the_workspace_columns(paths, keystore) -> None:
    paths.ensure_home()
    con = sqlite3.connect(paths.state_db)
    con.execute("CREATE TABLE workspaces (name TEXT PRIMARY KEY, policy_id TEXT NOT NULL, "
                "epsilon REAL NOT NULL, delta REAL NOT NULL, refresh TEXT NOT NULL)")
    con.execute("INSERT INTO workspaces VALUES ('old', 'p', 1, 0, 'none')")
    con.commit()
    con.close()
    state = State(paths.state_db, keystore.audit_signing_key())
    try:
        assert Workspaces(state).names() == []  # an ad-hoc ledger is not a workspace
        row = state.con.execute("SELECT state FROM workspaces WHERE name = 'old'").fetchone()
        assert row == ("ad-hoc",)
    finally:
        state.close()


@pytest.fixture(scope="module")
def shared_vault(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path):
    base = tmp_path_factory.mktemp("shared")
    vault = make_vault(base, demo_dir)
    yield base, vault.kms, vault.catalog
    vault.catalog.close()


OPS = st.lists(st.tuples(st.sampled_from(["add", "remove", "suspend", "resume", "close"]),
                         st.sampled_from(["alice", "bob", "carol"])), max_size=12)


@settings(max_examples=30, deadline=None)
@given(ops=OPS)
def test_access_agrees_with_a_model_and_with_the_log(shared_vault, ops) -> None:
    """Whatever operators do, access() matches a simple model, refused changes write
    nothing, and replaying the log's records gives the same members and state."""
    import tempfile

    base, kms, catalog = shared_vault
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        state = State(Path(tmp) / "state.sqlite", kms.audit_signing_key())
        try:
            approve(state, catalog, POLICY)
            store = create(state)
            activate(store)
            members, status = {"alice", "bob"}, "active"
            for op, who in ops:
                size = state.size()
                allowed = {"add": status != "closed" and who not in members,
                           "remove": who in members, "suspend": status == "active",
                           "resume": status == "suspended",
                           "close": status != "closed"}[op]
                action = {"add": lambda w=who: store.add_member("ws", w, "o"),
                          "remove": lambda w=who: store.remove_member("ws", w, "o"),
                          "suspend": lambda: store.suspend("ws", "o"),
                          "resume": lambda: store.resume("ws", "o"),
                          "close": lambda: store.close("ws", "o")}[op]
                if allowed:
                    action()
                    members = (members | {who} if op == "add" else members - {who}
                               if op == "remove" else members)
                    status = {"suspend": "suspended", "resume": "active",
                              "close": "closed"}.get(op, status)
                else:
                    with pytest.raises(WorkspaceError):
                        action()
                    assert state.size() == size
                for person in ("alice", "bob", "carol"):
                    try:
                        store.access("ws", person)
                        ok = True
                    except WorkspaceError:
                        ok = False
                    assert ok == (person in members and status == "active")
            replay: set[str] = set()
            replay_state = "provisioning"
            for r in state.records(workspace="ws"):
                kind = r["kind"]
                if kind == "workspace.created":
                    replay = set(r["members"])
                elif kind == "workspace.member_added":
                    replay.add(r["member"])
                elif kind == "workspace.member_removed":
                    replay.discard(r["member"])
                elif kind == "workspace.hub_synced":
                    replay_state = r["state"]
                elif kind in ("workspace.suspended", "workspace.resumed", "workspace.closed"):
                    replay_state = {"workspace.suspended": "suspended",
                                    "workspace.resumed": "active",
                                    "workspace.closed": "closed"}[kind]
            assert replay == members == set(store.get("ws").members)
            assert replay_state == status == store.get("ws").state
            assert state.verify().ok
        finally:
            state.close()
