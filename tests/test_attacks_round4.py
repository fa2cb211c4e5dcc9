"""Fourth review round, as an attacker: the audit trail's attribution (actor and policy of
every query record, ad-hoc ledgers, budget changes), grading at review, the console's
query log, and SQL text stored on the PostgreSQL back end.

Findings, fixed in the same round (each test failed before its fix):

* the actor of a command-line query was whatever ``$LOGNAME``/``$USER`` said; now the
  password database's name for the effective uid;
* an ad-hoc ledger took the budget of the last policy file that charged it; now its
  defaults are the first policy's, and another policy id is refused;
* the floors of a lower grade were dropped when a higher grade was exposed; now the
  strictest floor of every exposed grade holds;
* ``grading.yaml`` with ``grades: []`` (or ``0``, ``""``) was read as "no changes";
* on PostgreSQL one stored answer holding a NUL character made ``released_answer`` fail for
  every release of the workspace (``::jsonb``); answers are now matched on their text and
  read in Python, and a value PostgreSQL cannot store is a clean state error;
* the query log's text filter missed non-ASCII text typed exactly; the database now folds
  both sides with one ``LOWER``;
* the query log printed workspace and actor names whole; they are cut on the page, and new
  ad-hoc ledger names follow the workspace name rule.

Held (plain tests): provisioned workspaces' ledgers are never charged from the command
line (names with case, whitespace or invisible characters included), budget changes on
them need the operator's hub token and a member, core columns need accepting however they
are declared, the text filter finds ``%``, ``_``, quotes, backslashes, ``?``, ``%s`` and
``$$`` literally on both back ends, a member's SQL cannot pass for a record of a charge,
and hostile records render escaped.
"""

from __future__ import annotations

import getpass
import json
import os
import pathlib
import pwd
import shutil
import sqlite3
import subprocess
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_audit_cli import POLICY, SANDBOX, Home, _error

from gatekit import CORE_COLUMNS, POLICIES
from sandbox import audit_pages as ap
from sandbox.catalog import Catalog
from sandbox.errors import ConfigError, InputError
from sandbox.gate import Gate
from sandbox.grading import DEFAULT_RULES, GradeRule, grade, load_rules
from sandbox.keys import FileKeyStore
from sandbox.ledger_state import StateLedger, released_answer
from sandbox.policy import BudgetPolicy, load_policy
from sandbox.scenarios import Scenarios
from sandbox.service import console, console_views
from sandbox.state import State
from sandbox.workspaces import Workspaces

KEY = Ed25519PrivateKey.generate()
SQL = "SELECT COUNT(*) AS n FROM persons"
CREDIT = POLICIES / "credit_underwriting.yaml"
ME = pwd.getpwuid(os.geteuid()).pw_name


# -- a home with demo data, a reviewed scenario and a provisioned workspace ---------------
@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    root = tmp_path_factory.mktemp("round4")
    h = Home(root / "home", root / "keystore")
    h.ok("demo", "--size", "tiny")
    keystore = FileKeyStore(h.keystore)
    catalog = Catalog(h.home / "catalog.sqlite", h.home / "vault")
    state = State(h.db, keystore.audit_signing_key())
    try:
        sv, _ = Scenarios(state).review(pathlib.Path(POLICY), catalog.resolve, reviewer="board",
                                        reference="R-4", actor="oscar",
                                        accept_core=CORE_COLUMNS["credit_underwriting"])
        Workspaces(state).create("risk", scenario=sv.id, version=sv.version,
                                 members=["alice"], epsilon=3, delta=None,
                                 expires="2099-01-01", actor="oscar")
    finally:
        state.close()
        catalog.close()
    h.ok("query", "--policy", POLICY, "--member", "bob", SQL)  # adhoc:credit-underwriting
    shutil.copytree(h.home, root / "pristine")
    return h


@pytest.fixture
def fresh(home: Home, tmp_path: pathlib.Path) -> Home:
    """A private copy of the module's home, to write to."""
    copy = Home(tmp_path / "home", home.keystore)
    shutil.copytree(home.home.parent / "pristine", copy.home)
    return copy


def _ledger_rows(h: Home) -> list[tuple]:
    return h.rows("SELECT name, state, epsilon FROM workspaces ORDER BY name")


def _budget_rows(h: Home) -> list[tuple]:
    return h.rows("SELECT workspace, member, epsilon_total FROM budgets ORDER BY 1, 2")


# -- 1. attribution -------------------------------------------------------------------------
def test_the_actor_of_a_cli_query_is_the_os_user_not_an_environment_variable(
        fresh: Home) -> None:
    result = fresh("query", "--policy", POLICY, "--member", "bob", "--epsilon", "0.3", SQL,
                   LOGNAME="alice", USER="alice", LNAME="alice", USERNAME="alice")
    assert result.rc == 0, result.err
    charged = fresh.log("--kind", "query.charged")[-1]
    assert charged["actor"] == ME


def test_a_login_name_that_is_not_utf8_is_no_internal_error(fresh: Home) -> None:
    env = {os.fsencode(k): os.fsencode(v) for k, v in fresh.env.items()}
    env[b"LOGNAME"] = b"x\xffy"
    proc = subprocess.run([str(SANDBOX), "query", "--policy", POLICY, "--member", "bob", SQL],
                          env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_an_edited_policy_cannot_raise_an_adhoc_ledgers_budget_silently(
        fresh: Home, tmp_path: pathlib.Path) -> None:
    generous = tmp_path / "generous.yaml"
    text = CREDIT.read_text()
    assert "\n  epsilon: 10\n" in text
    generous.write_text(text.replace("\n  epsilon: 10\n", "\n  epsilon: 1000\n"))
    fresh.ok("query", "--policy", str(generous), "--member", "ana", SQL)
    (bob,) = [r for r in json.loads(fresh.ok("budget", "show", "--format", "json",
                                             "--workspace", "adhoc:credit-underwriting"))
              if r["member"] == "bob"]
    changed = fresh.log("--kind", "budget.changed")
    assert bob["epsilon_total"] == 10 or changed, (bob, changed)


@pytest.mark.parametrize("name", ["risk", "RISK", "risk ", "risk\u200b", "ri\u0455k",
                                  "adhoc:risk\n"])
def test_a_provisioned_workspace_is_never_charged_from_the_command_line(
        home: Home, name: str) -> None:
    before = (_ledger_rows(home), home.rows("SELECT count(*) FROM charges"))
    result = home("query", "--policy", POLICY, "--member", "alice", "--workspace", name, SQL)
    if name.startswith("adhoc:"):  # a new ad-hoc ledger of its own, never the workspace
        assert result.rc == 0, result.err
        assert home.rows("SELECT state FROM workspaces WHERE name = ?", name) == [("ad-hoc",)]
        assert home.rows("SELECT count(*) FROM charges WHERE workspace = 'risk'") == [(0,)]
        return
    _error(result, "ledger.error" if name == "risk" else "workspace.not_found")
    _error(home("query", "--dummy", "--policy", POLICY, "--member", "alice", "--workspace",
                name, SQL), "ledger.error" if name == "risk" else "workspace.not_found")
    assert (_ledger_rows(home), home.rows("SELECT count(*) FROM charges")) == before


def test_no_workspace_can_be_named_like_an_adhoc_ledger(home: Home) -> None:
    keystore = FileKeyStore(home.keystore)
    state = State(home.db, keystore.audit_signing_key())
    try:
        with pytest.raises(InputError, match="invalid workspace name"):
            Workspaces(state).create("adhoc:credit-underwriting", scenario="credit-underwriting",
                                     version=None, members=["alice"], epsilon=1, delta=None,
                                     expires="2099-01-01", actor="oscar")
    finally:
        state.close()


@pytest.mark.parametrize(("args", "code"), [
    (("grant", "--member", "alice", "--epsilon", "100"), "auth.operator_required"),
    (("set", "--member", "alice", "--epsilon", "100"), "auth.operator_required"),
    (("grant", "--member", "mallory", "--epsilon", "100", "--new-member"),
     "workspace.unknown_member"),
    (("set", "--member", "bob", "--epsilon", "100", "--new-member"), "workspace.unknown_member"),
])
def test_a_provisioned_workspaces_budget_needs_the_token_and_a_member(
        home: Home, args: tuple[str, ...], code: str) -> None:
    before = (_budget_rows(home), home.rows("SELECT count(*) FROM audit_records"))
    env = {k: "" for k in ("JUPYTERHUB_API_TOKEN",)}
    _error(home("budget", args[0], "--workspace", "risk", *args[1:], **env), code)
    # a token the hub cannot check writes nothing either
    _error(home("budget", args[0], "--workspace", "risk", *args[1:],
                "--hub-url", "http://127.0.0.1:9/hub/api", JUPYTERHUB_API_TOKEN="forged"),
           "hub.error" if code == "auth.operator_required" else code)
    assert (_budget_rows(home), home.rows("SELECT count(*) FROM audit_records")) == before


def test_an_adhoc_ledger_grants_only_members_it_has_seen(home: Home) -> None:
    before = _budget_rows(home)
    for member in ("bobb",):
        _error(home("budget", "grant", "--workspace", "adhoc:credit-underwriting", "--member",
                    member, "--epsilon", "5"), "workspace.unknown_member")
    for member in ("Bob", "bob\u200b"):  # look-alikes are no member names
        _error(home("budget", "grant", "--workspace", "adhoc:credit-underwriting", "--member",
                    member, "--epsilon", "5", "--new-member"), "input.invalid")
    assert _budget_rows(home) == before


# -- 2. grading at review -------------------------------------------------------------------
def _variant(tmp_path: pathlib.Path, old: str, new: str) -> pathlib.Path:
    text = CREDIT.read_text()
    assert old in text, old
    path = tmp_path / "variant.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


def _grade(tiny_vault: Any, path: pathlib.Path, accept: tuple[str, ...] = (),
           rules: dict[str, GradeRule] = DEFAULT_RULES) -> Any:
    resolve = tiny_vault.catalog.resolve
    return grade(load_policy(path, resolve), resolve, rules, accept)


def test_a_core_column_declared_as_a_filter_must_be_accepted(tiny_vault: Any,
                                                             tmp_path: pathlib.Path) -> None:
    path = _variant(tmp_path, "income: {role: measure, bounds: [0, 2000000]}", "income: filter")
    g = _grade(tiny_vault, path, ("loans.amount", "persons.credit_score"))
    assert g.problems == ["persons.income is core data (核心数据): accept it explicitly with "
                          "--accept-core persons.income"]


def test_a_core_column_under_a_second_alias_must_be_accepted_under_it(
        tiny_vault: Any, tmp_path: pathlib.Path) -> None:
    path = _variant(tmp_path, "  districts:\n", "  people:\n    dataset: persons\n    version: 1\n"
                    "    privacy_unit: person_id\n    max_rows_per_unit: 1\n    columns:\n"
                    "      credit_score: {role: measure, bounds: [300, 850]}\n  districts:\n")
    g = _grade(tiny_vault, path, CORE_COLUMNS["credit_underwriting"])
    assert g.problems == ["people.credit_score is core data (核心数据): accept it explicitly "
                          "with --accept-core people.credit_score"]


@pytest.mark.parametrize("name", ["Persons.Income", " persons.income", "persons.income ",
                                  "persons.income\u200b", "income", "persons.*",
                                  "persons.person_id", "persons.id_number"])
def test_accept_core_takes_only_exact_names(tiny_vault: Any, name: str) -> None:
    accept = ("loans.amount", "persons.credit_score", name)
    g = _grade(tiny_vault, CREDIT, accept)
    assert "persons.income is core data (核心数据): accept it explicitly with --accept-core " \
           "persons.income" in g.problems
    assert any(p.startswith(f"--accept-core {name}: not a core column") for p in g.problems)


def test_exposing_a_core_column_does_not_loosen_the_important_floors(
        tiny_vault: Any) -> None:
    rules = {**DEFAULT_RULES, "important": GradeRule(epsilon_max=3.0, min_group_count=50,
                                                     approvals=2)}
    g = _grade(tiny_vault, CREDIT, CORE_COLUMNS["credit_underwriting"], rules)
    assert any("min_group_count 20 is below 50" in p for p in g.problems), g.problems
    assert any("approvals 1 is below 2" in p for p in g.problems), g.problems


@pytest.mark.parametrize("value", ["[]", "0", "''", "false"])
def test_a_grading_file_of_the_wrong_shape_is_an_error(tmp_path: pathlib.Path,
                                                       value: str) -> None:
    path = tmp_path / "grading.yaml"
    path.write_text(f"grades: {value}\n")
    with pytest.raises(ConfigError):
        load_rules(path)


@pytest.mark.parametrize("text", [
    "grades:\n  core: {epsilon_max: .inf}\n", "grades:\n  core: {epsilon_max: .nan}\n",
    "grades:\n  core: {approvals: 0}\n", "grades:\n  core: {approvals: true}\n",
    "grades:\n  core: null\n", "grades:\n  core: {epsilon_max: null}\n",
    "grades:\n  Core: {epsilon_max: 9}\n", "grades:\n  core: {epsilon_max: '9'}\n",
    "grades:\n  1: {epsilon_max: 9}\n", "- core\n", "grades:\n  core: [1]\n",
])
def test_grading_files_that_would_loosen_or_crash_are_errors(tmp_path: pathlib.Path,
                                                             text: str) -> None:
    path = tmp_path / "grading.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_rules(path)


# -- 3. the console's query log -------------------------------------------------------------
ODD = ["100%", "a_b", "it's", "back\\slash", 'say "hi"', "%s", "?", "$$x$$", "--", "/*"]


@pytest.fixture
def odd_state(state_location: pathlib.Path | str) -> Any:
    s = State(state_location, KEY)
    yield s
    s.close()


def test_stored_sql_with_placeholders_and_quotes_is_intact_and_found_literally(
        odd_state: State) -> None:
    led = StateLedger.open(odd_state, "adhoc:w", "p", BudgetPolicy(100.0, 1e-5, "none"),
                           attribution={"actor": "o'p", "policy": {"id": "p"}})
    sqls = {}
    for i, odd in enumerate(ODD):
        sql = f"SELECT count(*) AS n{i} FROM t WHERE c = '{odd}' -- {odd}\x00 {odd}"
        led.refused("ana", sql, "gate.syntax", f"near {odd}")
        sqls[odd] = sql
    seqs = {r["sql"]: r["seq"] for r in odd_state.records()}
    assert set(seqs) == set(sqls.values())
    assert all(r["actor"] == "o'p" for r in odd_state.records())
    for odd, sql in sqls.items():
        pg = ap.page(odd_state.con, ap.Filters(text=odd))
        found = {r["sql"] for r in pg.records}
        assert sql in found, odd
        # literal: a record is found only when it holds the text
        assert all(odd in s for s in found), (odd, found)
        assert ap.one(odd_state.con, seqs[sql])["sql"] == sql
    assert ap.page(odd_state.con, ap.Filters(text="%%")).records == []
    assert odd_state.verify().ok


def test_non_ascii_text_is_found_as_typed(odd_state: State) -> None:
    """Found as typed, ASCII letters in any case: the database folds both sides with the
    same LOWER (non-ASCII letters fold only where its locale does: not in SQLite)."""
    odd_state.record("query.refused", workspace="w", member="ana", sql="SELECT 'ÄRGER Ωmega'",
                     rule="gate.syntax", message="m")
    assert len(ap.page(odd_state.con, ap.Filters(text="ÄRGER")).records) == 1
    assert len(ap.page(odd_state.con, ap.Filters(text="ÄrGeR Ωmega")).records) == 1
    assert ap.page(odd_state.con, ap.Filters(text="ÄRGERX")).records == []


def test_a_members_sql_cannot_pass_for_a_record_of_a_charge(odd_state: State) -> None:
    with odd_state.transaction() as con:
        odd_state.append(con, "query.charged", workspace="w", member="ana", charge_id="c1",
                         sql="SELECT 1", epsilon=0.1)
        forged = '"},"charge_id":"c1","kind":"query.answered","x":{"'
        odd_state.append(con, "query.refused", workspace="w", member="ana",
                         sql=f'SELECT "charge_id":"c1" {forged}', rule="r", message="m")
        seq = odd_state.append(con, "query.answered", workspace="w", member="ana",
                               charge_id="c1", release_id="rel", epsilon=0.1)
    (answered,) = ap.page(odd_state.con, ap.Filters(kind="query.answered")).records
    assert answered["seq"] == seq
    assert [r["kind"] for r in ap.related(odd_state.con, answered)] == ["query.charged"]
    assert ap.charge_records(odd_state.con, [answered])["c1"]["sql"] == "SELECT 1"


EVIL = '<script>alert(1)</script>"\'><img src=x onerror=alert(2)>'


def _record(seq: int, **fields: Any) -> dict[str, Any]:
    return {"seq": seq, "time": "2026-12-06T07:00:00.000000+00:00", "kind": "query.refused",
            "workspace": "adhoc:" + EVIL, "member": "ana", "actor": EVIL,
            "policy": {"id": EVIL, "version": None, "sha256": EVIL}, "sql": EVIL,
            "rule": EVIL, "message": EVIL, **fields}


def test_hostile_records_render_escaped_on_the_log_and_record_pages() -> None:
    records = [_record(3), _record(2, kind="query.charged", charge_id=EVIL,
                                   rewritten_sql=EVIL * 50, delta=EVIL),
               _record(1, kind="query." + EVIL, sql=None, charge_id=EVIL)]
    pg = ap.Page(records, None, None, 3, False)
    form = {"workspace": EVIL, "member": EVIL, "kind": "", "since": "", "until": "",
            "text": EVIL}
    pages = [console.show_page("console/queries.html", "/p/", "Query log", EVIL, "queries",
                               names=[EVIL], **console_views.log_context("/p/console/", form,
                                                                         pg, {})),
             console.show_page("console/record.html", "/p/", "Record", EVIL, rec=records[1],
                               others=records[::2], asked=EVIL, asked_in=None,
                               truncated=False, rewritten=EVIL, stored=json.dumps(records[1]),
                               log="/p/console/queries")]
    for html in pages:
        assert "<script" not in html and "<img" not in html and "'>" not in html
        assert "&lt;script&gt;" in html


def test_long_names_do_not_make_a_heavy_page() -> None:
    long = "adhoc:" + "w" * 20_000
    records = [_record(i, workspace=long, actor="x" * 20_000, sql="SELECT 1", message="m",
                       rule="gate.syntax") for i in range(100, 0, -1)]
    pg = ap.Page(records, None, None, 100, False)
    html = console.show_page("console/queries.html", "/p/", "Query log", "aud", "queries",
                             names=[], **console_views.log_context("/p/console/", {}, pg, {}))
    assert len(html.encode()) < 300_000, len(html.encode())


# -- 4. PostgreSQL: stored answers ----------------------------------------------------------
def test_one_answer_holding_nul_does_not_break_the_workspaces_releases(
        odd_state: State, tiny_vault: Any, engine: Any, request: Any,
        state_location: pathlib.Path | str) -> None:
    gate = Gate(load_policy(CREDIT, tiny_vault.catalog.resolve))
    led = StateLedger.open(odd_state, "ws", gate.policy.id, BudgetPolicy(10.0, 1e-5, "none"))
    first = gate.answer(SQL, member="bob", ledger=led, executor=engine, request_id="r1")
    nul = ("SELECT CASE WHEN district = 'Siming' THEN 'a\x00b' ELSE 'c' END AS k, "
           "COUNT(*) AS n FROM persons GROUP BY k")
    poisoned = gate.answer(nul, member="mallory", ledger=led, executor=engine,
                           request_id="r2")
    assert "a\x00b" in [row[0] for row in poisoned.to_dict()["rows"]]
    found = released_answer(odd_state.con, "ws", first.release_id)
    assert found is not None and found.member == "bob"


def test_cli_records_name_the_reviewed_policy_only_for_reviewed_text(home: Home) -> None:
    """The actor and policy of the module's first query (bob, the shipped text): the
    scenario was reviewed from this very file, so its version is named."""
    (charged,) = [r for r in home.log("--kind", "query.charged")
                  if r["workspace"] == "adhoc:credit-underwriting"][:1]
    assert charged["actor"] in (getpass.getuser(), ME)
    assert charged["policy"]["id"] == "credit-underwriting"
    assert charged["policy"]["version"] == 1
    assert sqlite3.connect(home.db).execute("SELECT count(*) FROM charges WHERE workspace = "
                                            "'risk'").fetchone() == (0,)
