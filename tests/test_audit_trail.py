"""Who did what under which policy: every query record names its actor and policy text,
command-line queries charge visibly ad-hoc ledgers, and a reviewed scenario's ledger is
charged only under its reviewed text (through the real console script)."""

from __future__ import annotations

import getpass
import hashlib
import pathlib
import sqlite3

import pytest
from test_audit_cli import POLICY, Home, _error

from gatekit import CORE_COLUMNS
from sandbox.catalog import Catalog
from sandbox.keys import FileKeyStore
from sandbox.scenarios import Scenarios
from sandbox.state import State

SQL = "SELECT COUNT(*) AS n FROM persons"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    root = tmp_path_factory.mktemp("trail")
    h = Home(root / "home", root / "keystore")
    h.ok("demo", "--size", "tiny")
    return h


def _review(h: Home) -> None:
    """Approve the policy as `sandbox scenario review` does (that command needs a hub)."""
    keystore = FileKeyStore(h.keystore)
    catalog = Catalog(h.home / "catalog.sqlite", h.home / "vault")
    state = State(h.db, keystore.audit_signing_key())
    try:
        Scenarios(state).review(pathlib.Path(POLICY), catalog.resolve, reviewer="board",
                                reference="R-1", actor="oscar",
                                accept_core=CORE_COLUMNS["credit_underwriting"])
    finally:
        state.close()
        catalog.close()


def _queries(h: Home, workspace: str) -> list[dict]:
    return h.log("--workspace", workspace, "--kind", "query.")


def test_cli_query_records_name_the_os_user_and_the_policy_text(home: Home) -> None:
    home.ok("query", "--policy", POLICY, "--member", "ana", SQL)
    _error(home("query", "--policy", POLICY, "--member", "ana", "SELECT name FROM persons"),
           "gate.unknown_column")
    records = _queries(home, "adhoc:credit-underwriting")
    assert [r["kind"] for r in records] == ["query.charged", "query.answered", "query.refused"]
    sha = hashlib.sha256(pathlib.Path(POLICY).read_bytes()).hexdigest()
    for r in records:
        assert r["actor"] == getpass.getuser()
        assert r["policy"] == {"id": "credit-underwriting", "version": None, "sha256": sha}
    shown = home.ok("budget", "show", "--workspace", "adhoc:credit-underwriting")
    assert "adhoc:credit-underwriting  ad-hoc" in shown


def test_an_edited_policy_is_attributed_to_its_own_text(home: Home,
                                                        tmp_path: pathlib.Path) -> None:
    edited = tmp_path / "generous.yaml"
    edited.write_text(pathlib.Path(POLICY).read_text().replace("epsilon_max: 2.0",
                                                               "epsilon_max: 1000"))
    home.ok("query", "--policy", str(edited), "--member", "ana", "--workspace",
            "adhoc:trial", SQL)
    (charged, _) = _queries(home, "adhoc:trial")
    assert charged["policy"]["sha256"] == hashlib.sha256(edited.read_bytes()).hexdigest()
    assert charged["policy"]["version"] is None


def test_a_typo_in_workspace_is_an_error_not_a_fresh_budget(home: Home) -> None:
    home.ok("query", "--policy", POLICY, "--member", "ana", SQL)  # adhoc:credit-underwriting
    before = home.rows("SELECT count(*) FROM workspaces")
    err = _error(home("query", "--policy", POLICY, "--member", "ana", "--workspace",
                      "adhoc-credit-underwriting", SQL), "workspace.not_found")
    assert "did you mean 'adhoc:credit-underwriting'?" in err
    assert home.rows("SELECT count(*) FROM workspaces") == before


def test_a_reviewed_scenarios_ledger_takes_only_its_reviewed_text(home: Home,
                                                                 tmp_path: pathlib.Path) -> None:
    # a ledger named after the scenario, as command-line queries made before ad-hoc names
    con = sqlite3.connect(home.db)
    with con:
        con.execute("INSERT INTO workspaces (name, policy_id, epsilon, delta, refresh) "
                    "VALUES ('credit-underwriting', 'credit-underwriting', 10, 1e-5, 'monthly')")
    con.close()
    _review(home)
    edited = tmp_path / "edited.yaml"
    edited.write_text(pathlib.Path(POLICY).read_text() + "\n# edited\n")
    err = _error(home("query", "--policy", str(edited), "--member", "ana", "--workspace",
                      "credit-underwriting", SQL), "workspace.policy_mismatch")
    assert "never reviewed" in err and "adhoc:credit-underwriting" in err
    home.ok("query", "--policy", POLICY, "--member", "ana", "--workspace",
            "credit-underwriting", SQL)
    (charged, answered) = _queries(home, "credit-underwriting")
    assert charged["policy"]["version"] == answered["policy"]["version"] == 1


def test_an_adhoc_ledger_keeps_its_policy_and_a_sane_name(home: Home) -> None:
    home.ok("query", "--policy", POLICY, "--member", "ana", SQL)  # adhoc:credit-underwriting
    other = str(pathlib.Path(POLICY).with_name("population_livelihood.yaml"))
    err = _error(home("query", "--policy", other, "--member", "ana", "--workspace",
                      "adhoc:credit-underwriting", SQL), "ledger.error")
    assert "belongs to the policy 'credit-underwriting'" in err
    err = _error(home("query", "--policy", POLICY, "--member", "ana", "--workspace",
                      "adhoc:" + "x" * 300, SQL), "input.invalid")
    assert "invalid ad-hoc ledger name" in err and "x" * 100 not in err
