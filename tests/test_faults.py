"""Crashes, damaged files and a full disk leave the ledger and the audit log consistent.

* A process answering a query is killed (``os._exit``) at every step of ``Gate.answer``;
  after ``State.recover`` no charge lacks its records, no record lacks its charge, nothing
  is charged twice, the balance is the composition of the charges and the log verifies.
* A damaged state database is refused with a clear ``StateError`` and left untouched.
* A full disk (``RLIMIT_FSIZE`` in a child process) makes writes fail with a clear error
  and no half-written state; once space is back, everything works and verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from gatekit import policy
from sandbox.dp import Cost, compose
from sandbox.errors import ConfigError
from sandbox.gate import Gate
from sandbox.ledger import SqliteLedger
from sandbox.policy import BudgetPolicy
from sandbox.state import State, StateError

TESTS = Path(__file__).resolve().parent
KEY = Ed25519PrivateKey.generate()
KEY_HEX = KEY.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()
SQL = "SELECT district, count(*) AS n FROM persons GROUP BY district"
CLOSING = {"committed": "query.answered", "failed": "query.failed",
           "cancelled": "query.cancelled", "interrupted": "query.interrupted"}

# Runs Gate.answer over the tiny vault in a process of its own and dies at one step.
CHILD = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path

    cfg = json.loads(sys.argv[1])
    sys.path.insert(0, cfg["tests"])
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from gatekit import policy
    from sandbox.catalog import Catalog
    from sandbox.engine import Engine
    from sandbox.gate import Gate
    from sandbox.keys import FileKeyStore
    from sandbox.ledger import SqliteLedger
    from sandbox.state import State

    step = cfg["step"]

    def die(where):
        if where == step:
            print("died", where, flush=True)
            os._exit(1)

    catalog = Catalog(Path(cfg["catalog_db"]), Path(cfg["vault_dir"]))
    kms = FileKeyStore(Path(cfg["keystore"]))
    engine = Engine.from_catalog(catalog, kms, [(n, None) for n in ("persons", "loans",
                                 "districts")], memory_limit="256MB", threads=1)
    gate = Gate(policy(catalog))
    state = State(Path(cfg["state"]), Ed25519PrivateKey.from_private_bytes(
        bytes.fromhex(cfg["key"])))
    ledger = SqliteLedger.existing(state, "ws")

    append = state.append
    def dying_append(con, kind, **kw):
        seq = append(con, kind, **kw)
        die({"query.charged": "in_reserve", "query.answered": "in_commit"}.get(kind))
        return seq  # (dies inside the transaction, before COMMIT)
    state.append = dying_append

    reserve, commit = ledger.reserve, ledger.commit
    def dying_reserve(*a, **kw):
        die("before_reserve")
        r = reserve(*a, **kw)
        die("after_reserve")
        return r
    def dying_commit(*a, **kw):
        die("before_commit")  # the noisy release exists, not yet recorded
        commit(*a, **kw)
        die("after_commit")
    ledger.reserve, ledger.commit = dying_reserve, dying_commit

    class Executor:
        def execute(self, sql, params=None, timeout_s=None):
            die("before_execute")
            table = engine.execute(sql, params, timeout_s)
            die("after_execute")
            return table
        def bind(self, sql):
            return engine.bind(sql)
        def postprocess(self, sql, table):
            return engine.postprocess(sql, table)
        def is_unique(self, table, column):
            return engine.is_unique(table, column)
        def column_range(self, table, column):
            return engine.column_range(table, column)

    release = gate.answer(cfg["sql"], member="alice", ledger=ledger, executor=Executor())
    print("answered", len(release.rows), flush=True)
''')

# step -> (charge state after recovery or None for no charge, reservations recovered)
STEPS = {
    "none": ("committed", 0),
    "before_reserve": (None, 0),
    "in_reserve": (None, 0),
    "after_reserve": ("interrupted", 1),
    "before_execute": ("interrupted", 1),
    "after_execute": ("interrupted", 1),
    "before_commit": ("interrupted", 1),
    "in_commit": ("interrupted", 1),
    "after_commit": ("committed", 0),
}


def _open_workspace(path: Path, budget: BudgetPolicy) -> None:
    state = State(path, KEY)
    try:
        SqliteLedger.open(state, "ws", "credit_underwriting", budget)
    finally:
        state.close()


def check_consistent(state: State) -> dict[str, str]:
    """The invariants every crash must leave intact; returns charge id -> state."""
    records = [json.loads(t) for (t,) in state.con.execute(
        "SELECT body FROM audit_records ORDER BY seq")]
    charges = {cid: (st, opened, closed) for cid, st, opened, closed in state.con.execute(
        "SELECT id, state, opened_seq, closed_seq FROM charges")}
    per_charge: dict[str, list[dict]] = {}  # type: ignore[type-arg]
    for r in records:
        if r["kind"].startswith("query.") and r["kind"] != "query.refused":
            assert r["charge_id"] in charges, f"record #{r['seq']} ({r['kind']}) has no charge"
            per_charge.setdefault(r["charge_id"], []).append(r)
    for cid, (st, opened, closed) in charges.items():
        recs = per_charge.get(cid, [])
        assert recs and recs[0]["kind"] == "query.charged" and recs[0]["seq"] == opened, cid
        assert st != "reserved", "recovery left a reservation open"
        assert [r["kind"] for r in recs[1:]] == [CLOSING[st]], recs  # closed exactly once
        assert recs[1]["seq"] == closed
    ledger = SqliteLedger.existing(state, "ws")
    rows = state.con.execute("SELECT epsilon, delta, rho, zcdp_epsilon, zcdp_delta FROM charges "
                             "WHERE member = 'alice' AND state != 'cancelled'").fetchall()
    b = ledger.balance("alice")
    want = compose([Cost(*r) for r in rows])
    assert (b.epsilon_spent, b.delta_spent) == (want.epsilon, want.delta)
    assert b.epsilon_spent <= b.epsilon_total + 1e-9
    report = state.verify()
    assert report.ok, report.problems
    return {cid: st for cid, (st, _, _) in charges.items()}


@pytest.mark.slow
def test_killed_at_every_step_of_answer(tiny_vault, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    paths = tiny_vault.paths
    cost = Gate(policy(tiny_vault.catalog)).check(SQL).plan.cost
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
    procs = {}
    for step in STEPS:
        db = tmp_path / f"{step}.sqlite"
        _open_workspace(db, BudgetPolicy(10.0, 1e-5, "monthly"))
        cfg = {"tests": str(TESTS), "catalog_db": str(paths.catalog_db),
               "vault_dir": str(paths.vault_dir), "keystore": str(tiny_vault.kms.directory),
               "state": str(db), "key": KEY_HEX, "sql": SQL, "step": step}
        procs[step] = subprocess.Popen([sys.executable, str(script), json.dumps(cfg)],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, env=env)
    for step, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        if step == "none":
            assert proc.returncode == 0 and out.startswith("answered"), err
        else:
            assert proc.returncode == 1 and out.strip() == f"died {step}", (step, out, err)
        want_state, want_recovered = STEPS[step]
        state = State(tmp_path / f"{step}.sqlite", KEY)
        try:
            assert state.recover(stale_after_s=0) == want_recovered, step
            charges = check_consistent(state)
            assert list(charges.values()) == ([want_state] if want_state else []), step
            b = SqliteLedger.existing(state, "ws").balance("alice")
            assert b.epsilon_spent == pytest.approx(cost.epsilon if want_state else 0.0)
            assert state.recover(stale_after_s=0) == 0  # recovery is idempotent
            if want_state is None:  # nothing at all was written for this query
                assert state.size() == 0, step
        finally:
            state.close()


# -- damaged files ---------------------------------------------------------------------------
def _log(path: Path, n: int = 300) -> None:
    state = State(path, KEY, checkpoint_every=64)
    try:
        ledger = SqliteLedger.open(state, "ws", "p", BudgetPolicy(100.0, 1e-5, "monthly"))
        for i in range(n):
            ledger.commit(ledger.reserve(f"m{i % 5}", Cost(0.01), sql="SELECT " + "x" * 200))
    finally:
        state.close()  # checkpoints the WAL into the file


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refused(path: Path) -> StateError:
    before = _digest(path)
    siblings = sorted(p.name for p in path.parent.iterdir())
    with pytest.raises(StateError) as info:
        State(path, KEY)
    err = info.value
    assert "is damaged or not a database" in err.message and str(path) in err.message
    assert err.hint and "backup" in err.hint
    assert err.code == "state.error"
    assert err.__cause__ is None and err.__suppress_context__  # no sqlite traceback chained
    assert _digest(path) == before, "the damaged file was written to"
    assert sorted(p.name for p in path.parent.iterdir()) == siblings  # no -wal/-shm left
    return err


@pytest.mark.parametrize("size", [5000, 100, 16])
def test_garbage_file_is_refused(tmp_path: Path, size: int) -> None:
    path = tmp_path / "state.sqlite"
    path.write_bytes(os.urandom(size))
    _refused(path)


@pytest.mark.parametrize("keep", [0.5, 0.1, 0.9])
def test_truncated_database_is_refused(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "state.sqlite"
    _log(path)
    data = path.read_bytes()
    assert len(data) > 100_000
    path.write_bytes(data[: int(len(data) * keep) // 4096 * 4096 or 4096])
    _refused(path)


def test_overwritten_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    _log(path, 20)
    data = bytearray(path.read_bytes())
    data[:16] = b"not sqlite at all"[:16]
    path.write_bytes(bytes(data))
    _refused(path)


def test_unreachable_location_is_not_called_damaged(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        State(tmp_path / "missing-dir" / "state.sqlite", KEY)
    assert "cannot open the state database" in info.value.message
    assert "damaged" not in info.value.message
    assert not (tmp_path / "missing-dir").exists()


# -- a full disk --------------------------------------------------------------------------------
FULL_DISK_CHILD = textwrap.dedent('''
    import json, resource, signal, sys
    from pathlib import Path
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from sandbox.dp import Cost
    from sandbox.ledger import SqliteLedger
    from sandbox.state import State, StateError

    path, key_hex, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
    state = State(Path(path), Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key_hex)))
    ledger = SqliteLedger.existing(state, "ws")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    out = {}
    big = "SELECT count(*) FROM persons -- " + "x" * 20000
    for name, fn in [
        ("reserve", lambda: ledger.reserve("alice", Cost(0.1), sql=big)),
        ("refused", lambda: ledger.refused("alice", big, "gate.x", "no")),
        ("set_budget", lambda: ledger.set_budget("alice", epsilon=9.0)),
        ("record", lambda: state.record("audit.read", what=big, filters={})),
        ("checkpoint", lambda: state.checkpoint()),
    ]:
        try:
            fn()
            out[name] = "ok"
        except StateError as exc:
            out[name] = ["StateError", exc.message, exc.hint]
        except BaseException as exc:
            out[name] = [type(exc).__name__, str(exc), None]
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space is back
    r = ledger.reserve("alice", Cost(0.1), sql="SELECT count(*) FROM persons")
    ledger.commit(r, release_id="after", rows=1)
    out["after"] = r.id
    state.close()
    print(json.dumps(out))
''')


@pytest.mark.slow
def test_full_disk(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    _log(path, 40)
    state = State(path, KEY)
    size0, charges0 = state.size(), state.con.execute("SELECT count(*) FROM charges").fetchone()
    state.close()
    script = tmp_path / "full.py"
    script.write_text(FULL_DISK_CHILD)
    # The limit is far below the database (and every write goes to the WAL first).
    proc = subprocess.run([sys.executable, str(script), str(path), KEY_HEX, "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for name in ("reserve", "refused", "set_budget", "record", "checkpoint"):
        kind, message, hint = out[name]
        assert kind == "StateError", out[name]
        assert "could not be saved" in message and "nothing was recorded" in message
        assert "disk space" in hint
    state = State(path, KEY)
    try:
        # Nothing of the failed attempts was written; the one after the disk cleared was.
        assert state.size() == size0 + 2
        assert state.con.execute("SELECT count(*) FROM charges").fetchone()[0] == charges0[0] + 1
        assert [r["kind"] for r in state.records(member="alice")] == [
            "query.charged", "query.answered"]
        assert SqliteLedger.existing(state, "ws").balance("alice").epsilon_spent == \
            pytest.approx(0.1)
        charges = check_consistent(state)
        assert charges[out["after"]] == "committed"
    finally:
        state.close()
