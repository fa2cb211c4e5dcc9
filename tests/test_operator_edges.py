"""What a new operator ran into (issue 17, keys and rough edges), each on a real home and key
store: rotation covers every key the master key wraps, errors name their real cause, and
the inputs spreadsheets and hand-written YAML produce are read or refused clearly."""

from __future__ import annotations

import json
import os
import pathlib
import pty
import subprocess
import sys
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gatekit import POLICIES
from sandbox import identifier_index as idx
from sandbox.catalog import Catalog
from sandbox.engine import Engine
from sandbox.errors import EmptyUnitError, KeyInUseError, SpecError, error_lines
from sandbox.exports import FrameItem, IdentifierIndex, run_checks, state_context
from sandbox.gate import Gate
from sandbox.ingest import ingest
from sandbox.keys import FileKeyStore
from sandbox.ledger import SqliteLedger
from sandbox.operations import destroy_master_key, rotate_master_key
from sandbox.policy import EPSILON_FLOOR, PolicyError, load_policy
from sandbox.settings import Paths
from sandbox.spec import load_spec
from sandbox.sql.refusal import Refusal
from sandbox.state import State

SANDBOX = pathlib.Path(sys.executable).with_name("sandbox")
CREDIT = POLICIES / "credit_underwriting.yaml"


@dataclass
class Run:
    rc: int
    out: str
    err: str


def run(env: dict[str, str], *args: str, cwd: pathlib.Path | None = None,
        stdin: str = "") -> Run:
    proc = subprocess.run([str(SANDBOX), *args], env=env, input=stdin, capture_output=True,
                          text=True, timeout=180, cwd=cwd)
    assert "Traceback" not in proc.stderr, proc.stderr
    return Run(proc.returncode, proc.stdout, proc.stderr)


def ok(r: Run) -> str:
    assert r.rc == 0, r.err
    return r.out


def refused(r: Run, code: str) -> str:
    """One ``error [code]`` line first, a hint last, exit 2; returns standard error."""
    assert r.rc == 2, (r.rc, r.err)
    lines = r.err.splitlines()
    assert lines[0].startswith(f"error [{code}]: "), lines
    assert lines[-1].startswith("hint: "), lines
    return r.err


def add(env: dict[str, str], demo_dir: pathlib.Path, name: str) -> None:
    ok(run(env, "dataset", "add", name, str(demo_dir / f"{name}.parquet"), "--spec",
           str(demo_dir / f"{name}.yaml")))


# -- keys: rotation covers every wrapped key ----------------------------------------------------
@pytest.mark.slow
def test_rotate_destroy_old_then_ingest_query_and_export(cli_env, paths: Paths,
                                                         demo_dir: pathlib.Path) -> None:
    """The reported sequence: rotate, destroy the old key, then a new dataset. Before the fix
    the identifier index key stayed wrapped under the destroyed key and every later
    `dataset add` failed with keys.destroyed."""
    ok(run(cli_env, "keys", "init"))
    add(cli_env, demo_dir, "persons")
    add(cli_env, demo_dir, "districts")
    fingerprint = idx.Mac(idx.index_key(paths.home, FileKeyStore(paths.keystore))).fingerprint
    out = ok(run(cli_env, "keys", "rotate"))
    assert "and the identifier index key" in out
    (old,) = ok(run(cli_env, "keys", "list", "--state", "retired", "-q")).split()
    assert "destroyed" in ok(run(cli_env, "keys", "destroy", old))

    add(cli_env, demo_dir, "loans")  # a new dataset: its index is made with the same key
    assert "loans@1: ok" in ok(run(cli_env, "dataset", "verify"))
    answer = json.loads(ok(run(cli_env, "query", "--policy", str(CREDIT), "--member", "ana",
                               "--format", "json", "SELECT l.status, count(*) AS n FROM loans "
                               "l JOIN persons p ON l.person_id = p.person_id GROUP BY "
                               "l.status")))
    assert sorted(r[0] for r in answer["rows"]) == ["current", "default", "overdue", "repaid"]

    # The airlock: the index key is the one from before the rotation (every index, old
    # and new, loads without a rebuild) and still finds identifiers of both datasets.
    kms = FileKeyStore(paths.keystore)
    catalog = Catalog(paths.catalog_db, paths.vault_dir)
    state = State(paths.state_db, kms.audit_signing_key())
    try:
        index = IdentifierIndex.load(catalog, kms, build_missing=False)
        assert index.mac.fingerprint == fingerprint
        pol = load_policy(CREDIT, catalog.resolve)
        gate = Gate(pol)
        engine = Engine.from_catalog(catalog, kms, [(t.dataset, t.version)
                                                    for t in pol.tables.values()])
        ledger = SqliteLedger.open(state, "w", pol.id, pol.budget)
        rel = gate.answer("SELECT status, count(*) AS n FROM loans GROUP BY status",
                          member="ana", ledger=ledger, executor=engine)
        ctx = state_context(state, "w", index, min_group_count=1, gate=gate)
        clean = FrameItem("loans", tuple(rel.columns), tuple(map(tuple, rel.rows)),
                          (rel.release_id,))
        assert run_checks([clean], ctx).outcome != "blocked"
        persons = pq.read_table(demo_dir / "persons.parquet").slice(0, 1).to_pylist()[0]
        loan_id = pq.read_table(demo_dir / "loans.parquet").column("loan_id")[0].as_py()
        for secret in (persons["id_number"], loan_id):
            leak = FrameItem("leak", (*rel.columns, "note"),
                             tuple((*r, secret) for r in rel.rows), (rel.release_id,))
            report = run_checks([leak], ctx)
            assert report.result("identifiers").outcome == "block", secret
    finally:
        state.close()
        catalog.close()


def test_destroy_refuses_while_only_the_index_key_is_under_the_old_key(
        catalog: Catalog, keystore: FileKeyStore, demo_dir: pathlib.Path) -> None:
    ingest(catalog, keystore, demo_dir / "districts.parquet",
           load_spec(demo_dir / "districts.yaml"))
    home = idx.home_of(catalog)
    old = keystore.active_key_id()
    rotate_master_key(catalog, keystore)
    assert idx.key_wrapped_by(home) == keystore.active_key_id()
    idx.rewrap_key(home, keystore, old)  # as a rotation before this fix left it
    with pytest.raises(KeyInUseError) as info:
        destroy_master_key(catalog, keystore, old, force=False)
    assert info.value.code == "keys.in_use"
    assert "still wraps the identifier index key" in info.value.message
    assert "keys rotate" in (info.value.hint or "") and "--force" not in (info.value.hint or "")
    assert keystore.get(old).state == "retired"
    rotate_master_key(catalog, keystore)  # re-wraps it
    assert destroy_master_key(catalog, keystore, old) == []
    ingest(catalog, keystore, demo_dir / "persons.parquet", load_spec(demo_dir / "persons.yaml"))


def test_a_home_broken_by_the_old_rotation_recovers(catalog: Catalog, keystore: FileKeyStore,
                                                    demo_dir: pathlib.Path) -> None:
    """The index key under a destroyed master key (what the old rotation left): a new index
    key is made, the next ingest works, and the older indexes are rebuilt with it."""
    ingest(catalog, keystore, demo_dir / "persons.parquet", load_spec(demo_dir / "persons.yaml"))
    old = keystore.active_key_id()
    rotate_master_key(catalog, keystore)
    idx.rewrap_key(idx.home_of(catalog), keystore, old)
    keystore.destroy(old)  # below the check of `keys destroy`, as before the fix
    ingest(catalog, keystore, demo_dir / "loans.parquet", load_spec(demo_dir / "loans.yaml"))
    assert idx.key_wrapped_by(idx.home_of(catalog)) == keystore.active_key_id()
    assert [dv.name for dv in idx.ensure_indexes(catalog, keystore)] == ["persons"]
    assert IdentifierIndex.load(catalog, keystore, build_missing=False).size > 0


def test_verify_with_a_group_readable_key_file_says_chmod(cli_env, paths: Paths,
                                                          demo_dir: pathlib.Path) -> None:
    ok(run(cli_env, "keys", "init"))
    add(cli_env, demo_dir, "districts")
    key_file = paths.keystore / "master-keys.json"
    os.chmod(key_file, 0o640)
    r = run(cli_env, "dataset", "verify")
    err = refused(r, "keys.error")
    assert f"chmod 600 {key_file}" in err
    assert "FAILED" not in r.out and "restore" not in err and "backup" not in err
    os.chmod(key_file, 0o600)
    assert "districts@1: ok" in ok(run(cli_env, "dataset", "verify"))


# -- ingest: spreadsheet CSV, rows without a unit --------------------------------------------
SPEC = """dataset: t
columns:
  - {name: pid, type: string, role: privacy_unit, grade: important}
  - {name: n, type: int32, role: sensitive, grade: important}
"""


def _spec(tmp_path: pathlib.Path, text: str = SPEC) -> pathlib.Path:
    path = tmp_path / "t.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_with_a_byte_order_mark_is_read(catalog: Catalog, keystore: FileKeyStore,
                                            tmp_path: pathlib.Path) -> None:
    src = tmp_path / "excel.csv"
    src.write_bytes("\ufeffpid,n\r\nP1,1\r\nP2,2\r\n".encode())  # "CSV UTF-8" of a spreadsheet
    dv = ingest(catalog, keystore, src, load_spec(_spec(tmp_path)))
    assert dv.row_count == 2 and [c.name for c in dv.spec.columns] == ["pid", "n"]


def test_csv_with_a_byte_order_mark_names_its_bad_line(catalog: Catalog, keystore: FileKeyStore,
                                                       tmp_path: pathlib.Path) -> None:
    src = tmp_path / "excel.csv"
    src.write_bytes("\ufeffpid,n\nP1,1\nP2,x\n".encode())
    with pytest.raises(Exception) as info:
        ingest(catalog, keystore, src, load_spec(_spec(tmp_path)))
    assert f"{src}:3: column 'n'" in str(info.value)


@pytest.mark.parametrize(("body", "line", "more"), [
    ("pid,n\nP1,1\n,2\nP3,3\n", 3, None),
    ('pid,n\nP1,1\nP2,2\n"",3\n  ,4\nP5,5\n\t,6\n', 4, 2),
])
def test_empty_privacy_units_in_csv_are_refused(catalog: Catalog, keystore: FileKeyStore,
                                                tmp_path: pathlib.Path, body: str, line: int,
                                                more: int | None) -> None:
    src = tmp_path / "people.csv"
    src.write_text(body, encoding="utf-8")
    with pytest.raises(EmptyUnitError) as info:
        ingest(catalog, keystore, src, load_spec(_spec(tmp_path)))
    message = info.value.message
    assert info.value.code == "ingest.empty_unit"
    assert message.startswith(f"{src}:{line}: the privacy unit 'pid' is empty")
    assert (f"({more} more row(s) like it)" in message) if more else "more row" not in message
    assert "fill in 'pid'" in (info.value.hint or "")
    assert catalog.names() == [] and not list(catalog.vault_dir.rglob("*.parquet"))


def test_null_privacy_units_in_parquet_and_integer_units_are_refused(
        catalog: Catalog, keystore: FileKeyStore, tmp_path: pathlib.Path) -> None:
    src = tmp_path / "people.parquet"
    pq.write_table(pa.table({"pid": ["P1", None, "P3", " ", None], "n": [1, 2, 3, 4, 5]}), src)
    with pytest.raises(EmptyUnitError) as info:
        ingest(catalog, keystore, src, load_spec(_spec(tmp_path)))
    assert info.value.message.startswith(f"{src}: row 2: the privacy unit 'pid' is empty "
                                         "(2 more row(s) like it)")
    spec = _spec(tmp_path, SPEC.replace("pid, type: string", "pid, type: int64"))
    csv = tmp_path / "ints.csv"
    csv.write_text("pid,n\n1,1\n2,2\n,3\n", encoding="utf-8")
    with pytest.raises(EmptyUnitError, match=rf"^{csv}:4: the privacy unit 'pid' is empty;"):
        ingest(catalog, keystore, csv, load_spec(spec))
    assert catalog.names() == []


# -- the dataset spec: flow mappings cut at commas --------------------------------------------
def test_a_flow_mapping_cut_at_a_comma_says_to_quote(tmp_path: pathlib.Path) -> None:
    path = _spec(tmp_path, SPEC.replace(
        "grade: important}\n  - {name: n",
        "grade: important, description: Person key, stable across years}\n  - {name: n"))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:3: unknown column key 'stable across years'")
    assert "a comma ends the value" in problem and 'description: "a, b"' in problem
    quoted = _spec(tmp_path, SPEC.replace(
        "grade: important}\n  - {name: n",
        'grade: important, description: "Person key, stable across years"}\n  - {name: n'))
    assert load_spec(quoted).column("pid").description == "Person key, stable across years"


def test_an_unknown_key_on_its_own_line_has_no_comma_note(tmp_path: pathlib.Path) -> None:
    path = _spec(tmp_path, SPEC + "  - name: x\n    type: int32\n    role: attribute\n"
                 "    grade: general\n    colour:\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert "colour" in info.value.problems[0] and "comma" not in info.value.problems[0]


# -- policies: every problem once, sorted; the epsilon floor ------------------------------------
BAD_POLICY = """\
id: bad
title: Bad
tables:
  persons:
    dataset: persons
    version: zero
    privacy_unit: person_id
    columns:
      district: dimension
      income: {role: measure, bounds: [0, 1e6]}
      nope: dimension
  loans:
    dataset: loans
    version: 9
    privacy_unit: person_id
    columns:
      amount: {role: measure, bounds: [0, 100]}
      colour: dimension
  gone:
    dataset: no_such_dataset
    columns:
      x: dimension
joins:
  - [persons.person_id, loans.person_id]
  - [persons.nope, gone.x]
privacy:
  epsilon_default: 1e-7
  epsilon_max: 0.5
  delta: 1e-6
budget:
  epsilon: 1.0e-300
  delta: 1e-5
"""


def _problems(tiny_vault, tmp_path: pathlib.Path, text: str) -> list[str]:  # type: ignore[no-untyped-def]
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(path, tiny_vault.catalog.resolve)
    return [p.removeprefix(f"{path}:") for p in info.value.problems]


def test_policy_problems_are_all_reported_once_sorted_by_line(tiny_vault,  # type: ignore[no-untyped-def]
                                                              tmp_path) -> None:
    problems = _problems(tiny_vault, tmp_path, BAD_POLICY)
    lines = [int(p.split(":", 1)[0]) for p in problems]
    assert lines == sorted(lines)
    assert lines == [6, 10, 11, 14, 18, 20, 27, 29, 32], problems
    text = "\n".join(problems)
    # a bad version hides neither the table's column errors nor another table's
    assert "version must be a positive integer" in problems[0]
    assert "write 1.0e+6" in problems[1]
    assert "has no column 'nope'" in problems[2]
    assert "version 9 is not in the catalog (the latest is version 1" in problems[3]
    assert "has no column 'colour'" in problems[4]
    assert "no_such_dataset" in problems[5]
    # no cascades: joins of broken tables, comparisons with invalid values
    assert "join" not in text and "larger than" not in text and "smaller than" not in text
    assert "got the text '1e-7'" in problems[6] and "write 1.0e-7" in problems[6]
    assert "write 1.0e-6" in problems[7]
    assert "write 1.0e-5" in problems[8]  # budget.epsilon is not compared with an invalid value


def test_a_missing_section_is_one_problem(tiny_vault, tmp_path) -> None:  # type: ignore[no-untyped-def]
    good = CREDIT.read_text(encoding="utf-8")
    without = good.split("privacy:\n", 1)[0] + "budget:" + good.split("budget:", 1)[1]
    problems = _problems(tiny_vault, tmp_path, without)
    assert len(problems) == 1 and "missing 'privacy' section" in problems[0], problems
    problems = _problems(tiny_vault, tmp_path, good.replace("privacy:\n", "privacy: 3\n"
                                                            "unused:\n", 1))
    assert [p for p in problems if "privacy" in p and "epsilon" in p] == [], problems


@pytest.mark.parametrize("key", ["epsilon_default", "epsilon_max"])
def test_policy_epsilon_below_the_floor_is_refused(tiny_vault, tmp_path, key) -> None:  # type: ignore[no-untyped-def]
    good = CREDIT.read_text(encoding="utf-8")
    value = {"epsilon_default": "0.5", "epsilon_max": "2.0"}[key]
    problems = _problems(tiny_vault, tmp_path,
                         good.replace(f"{key}: {value}", f"{key}: 1.0e-300"))
    (problem,) = problems
    assert f"privacy.{key} is 1e-300, below the floor of {EPSILON_FLOOR:g}" in problem
    assert f"write at least {EPSILON_FLOOR:g}" in problem


def test_query_epsilon_below_the_floor_names_the_floor(tiny_vault) -> None:  # type: ignore[no-untyped-def]
    gate = Gate(load_policy(CREDIT, tiny_vault.catalog.resolve))
    with pytest.raises(Refusal) as info:
        gate.check("SELECT count(*) FROM persons", 1e-300)
    assert info.value.code == "gate.epsilon"
    assert f"{EPSILON_FLOOR:g} is the floor in every scenario" in (info.value.hint or "")
    with pytest.raises(Refusal) as info:
        gate.check("SELECT count(*) FROM persons", 50)  # above the maximum: no floor talk
    assert "floor" not in (info.value.hint or "")
    gate.check("SELECT count(*) FROM persons", EPSILON_FLOOR)


def test_policy_check_lists_problems_between_the_error_and_the_hint(cli_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ok(run(cli_env, "keys", "init"))
    path = tmp_path / "p.yaml"
    path.write_text(CREDIT.read_text(encoding="utf-8").replace("epsilon: 10", "epsilon: 1e1")
                    .replace("delta: 1.0e-7", "delta: 1e-7"), encoding="utf-8")
    err = refused(run(cli_env, "policy", "check", str(path)), "policy.invalid")
    lines = err.splitlines()
    assert lines[0].endswith("problem(s) in policy " + str(path))
    listed = [ln for ln in lines[1:-1]]
    assert all(ln.startswith("  - ") for ln in listed) and len(listed) >= 2
    assert "sandbox.error" not in err


def test_error_lines_list_a_policys_problems_once() -> None:
    exc = PolicyError("2 problem(s) in policy p.yaml: p.yaml:1: a; p.yaml:2: b", "fix it",
                      ["p.yaml:1: a", "p.yaml:2: b"])
    assert error_lines(exc) == ["error [policy.invalid]: 2 problem(s) in policy p.yaml",
                                "  - p.yaml:1: a", "  - p.yaml:2: b", "hint: fix it"]


# -- which home -----------------------------------------------------------------------------
def test_an_empty_default_home_is_named_instead_of_blaming_the_policy(cli_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in cli_env.items() if k != "SANDBOX_HOME"}
    env["HOME"] = str(tmp_path / "user")
    default = tmp_path / "user" / ".local" / "share" / "sandbox"
    err = refused(run(env, "policy", "check", str(CREDIT)), "policy.invalid")
    hint = err.splitlines()[-1]
    assert f"the home {default} (from the default, as neither --home nor SANDBOX_HOME is set)" \
        in hint
    assert "which is empty (no datasets)" in hint and "set SANDBOX_HOME or pass --home" in hint
    assert "fix the policy" not in hint
    err = refused(run(env, "dataset", "show", "persons"), "catalog.not_found")
    assert "which is empty" in err
    r = run(env, "dataset", "list")
    assert r.rc == 0 and f"no datasets in the home {default}" in r.err

    other = tmp_path / "other"
    err = refused(run(env, "--home", str(other), "query", "--policy", str(CREDIT), "--member",
                      "ana", "SELECT count(*) FROM persons"), "policy.invalid")
    assert f"the home {other} (from --home), which is empty" in err
    err = refused(run({**env, "SANDBOX_HOME": str(other)}, "dataset", "show", "x"),
                  "catalog.not_found")
    assert "(from SANDBOX_HOME)" in err


def test_a_missing_version_of_a_held_dataset_does_not_blame_the_home(cli_env, demo_dir,  # type: ignore[no-untyped-def]
                                                                     tmp_path) -> None:
    ok(run(cli_env, "keys", "init"))
    add(cli_env, demo_dir, "districts")
    err = refused(run(cli_env, "dataset", "show", "districts", "--version", "3"),
                  "catalog.not_found")
    assert "this command used" not in err
    err = refused(run(cli_env, "dataset", "show", "persons"), "catalog.not_found")
    assert "(from SANDBOX_HOME), which holds 1 dataset(s): districts" in err
    assert "known datasets: districts" in err  # the catalog's own hint is kept


# -- dataset remove: scripts and terminals -----------------------------------------------------
def _on_terminal(env: dict[str, str], args: list[str], answer: bytes) -> Run:
    """Run with standard input on a pseudo-terminal and type ``answer`` at the prompt."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([str(SANDBOX), *args], env=env, stdin=slave,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(slave)
    try:
        time.sleep(0.5)
        os.write(master, answer)
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(master)
    return Run(proc.returncode, out.decode(), err.decode())


def test_dataset_remove_without_a_terminal_needs_yes(cli_env, demo_dir) -> None:  # type: ignore[no-untyped-def]
    ok(run(cli_env, "keys", "init"))
    add(cli_env, demo_dir, "districts")
    r = run(cli_env, "dataset", "remove", "districts")
    err = refused(r, "input.confirmation_required")
    assert "Aborted" not in err and "no terminal to ask on" in err
    assert "sandbox dataset remove districts --yes" in err.splitlines()[-1]
    assert "districts" in ok(run(cli_env, "dataset", "list"))

    r = _on_terminal(cli_env, ["dataset", "remove", "districts"], b"n\n")
    assert "remove every version of districts?" in r.out
    assert "not confirmed" in refused(r, "input.confirmation_required")
    assert "districts" in ok(run(cli_env, "dataset", "list"))
    r = _on_terminal(cli_env, ["dataset", "remove", "districts"], b"y\n")
    assert r.rc == 0 and "removed districts version(s) 1" in r.out, r.err
