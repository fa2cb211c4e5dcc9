"""Check-and-charge is atomic across processes and threads: a budget is never overspent.

One member's budget admits exactly ``N`` queries of epsilon 0.1. Many processes (started
with 'spawn', each with its own ``State`` connection) or threads (each with its own
connection) try to reserve far more than that at the same time. Exactly ``N`` must
succeed, every success and every refusal must be in the log, and the log must verify.
Each test runs on both back ends of the state database (SQLite, PostgreSQL).
"""

from __future__ import annotations

import json
import multiprocessing
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from sandbox.dp import Cost, compose
from sandbox.ledger import BudgetExceededError, SqliteLedger
from sandbox.policy import BudgetPolicy
from sandbox.state import State

COST = 0.1
BUDGET = 2.5
# what the budget admits under the ledger's accounting (zCDP at the budget's delta: 26)
N = max(n for n in range(1, 100) if compose([Cost(COST)] * n, 1e-6).epsilon <= BUDGET)
PROCESSES, ATTEMPTS = 6, 20
THREADS, THREAD_ATTEMPTS = 8, 10


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def _setup(path: Path | str, key: Ed25519PrivateKey) -> None:
    state = State(path, key)
    try:
        ledger = SqliteLedger.open(state, "ws", "credit_underwriting",
                                   BudgetPolicy(100.0, 1e-6, "monthly"))
        ledger.set_budget("alice", epsilon=BUDGET, actor="operator")  # exactly N queries
        ledger.set_budget("bob", epsilon=1.0, actor="operator")
    finally:
        state.close()


def hammer(path: str, key_raw: bytes, worker: int, attempts: int, go, results) -> None:  # type: ignore[no-untyped-def]
    """One process or thread: its own connection, many reservations, closed in turn."""
    state = State(path, Ed25519PrivateKey.from_private_bytes(key_raw))
    try:
        ledger = SqliteLedger.existing(state, "ws")
        go.wait()
        ok: list[str] = []
        refused = 0
        for i in range(attempts):
            member = "bob" if i % 7 == 6 else "alice"  # some traffic on another budget
            try:
                r = ledger.reserve(member, Cost(COST), sql=f"SELECT {worker}, {i}")
            except BudgetExceededError:
                refused += member == "alice"
                continue
            if member == "alice":
                ok.append(r.id)
            if i % 3 == 2:
                ledger.fail(r, "engine.timeout")  # a failed query still costs
            else:
                ledger.commit(r, release_id=f"{worker}-{i}", rows=1)
        results.put((worker, ok, refused))
    except BaseException as exc:  # report, do not hang the parent
        results.put((worker, None, repr(exc)))
    finally:
        state.close()


def _check(path: Path | str, key: Ed25519PrivateKey, outcomes: list, attempts: int) -> None:  # type: ignore[type-arg]
    for _, ok, refused in outcomes:
        assert ok is not None, f"a worker crashed: {refused}"
    successes = [cid for _, ok, _ in outcomes for cid in ok]
    refusals = sum(refused for _, _, refused in outcomes)
    assert len(successes) == N, f"{len(successes)} reservations succeeded, budget admits {N}"
    assert len(set(successes)) == N
    assert len(successes) + refusals == attempts
    state = State(path, key)
    try:
        ledger = SqliteLedger.existing(state, "ws")
        b = ledger.balance("alice")
        assert b.epsilon_spent == pytest.approx(compose([Cost(COST)] * N, 1e-6).epsilon)
        assert b.epsilon_spent <= b.epsilon_total + 1e-9
        assert ledger.balance("bob").epsilon_spent <= 1.0 + 1e-9
        rows = dict(state.con.execute(
            "SELECT id, state FROM charges WHERE member = 'alice'").fetchall())
        assert set(rows) == set(successes)
        assert set(rows.values()) <= {"committed", "failed"}
        records = [json.loads(t) for (t,) in state.con.execute(
            "SELECT body FROM audit_records ORDER BY seq")]
        assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
        per_charge: dict[str, list[str]] = {}
        for r in records:
            if r["kind"].startswith("query.") and r["kind"] != "query.refused":
                per_charge.setdefault(r["charge_id"], []).append(r["kind"])
        for cid in successes:
            assert per_charge[cid][0] == "query.charged" and len(per_charge[cid]) == 2
            assert per_charge[cid][1] == {"committed": "query.answered",
                                          "failed": "query.failed"}[rows[cid]]
        refused_recs = [r for r in records if r["kind"] == "query.refused"
                        and r["member"] == "alice"]
        assert len(refused_recs) == refusals
        assert all(r["rule"] == "budget.exhausted" for r in refused_recs)
        report = state.verify()
        assert report.ok, report.problems
        assert report.records == len(records)
    finally:
        state.close()


@pytest.mark.slow
def test_processes_never_overspend(state_location: Path | str) -> None:
    key = Ed25519PrivateKey.generate()
    path = state_location  # a SQLite file, or a PostgreSQL database (tests/pgkit.py)
    _setup(path, key)
    ctx = multiprocessing.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=hammer, args=(str(path), _raw(key), w, ATTEMPTS, go, results))
             for w in range(PROCESSES)]
    for p in procs:
        p.start()
    try:
        go.set()
        outcomes = [results.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():  # pragma: no cover - only if something hangs
                p.kill()
    assert [p.exitcode for p in procs] == [0] * PROCESSES
    alice_attempts = PROCESSES * sum(1 for i in range(ATTEMPTS) if i % 7 != 6)
    _check(path, key, outcomes, alice_attempts)


def test_threads_never_overspend(state_location: Path | str) -> None:
    import queue

    key = Ed25519PrivateKey.generate()
    path = state_location  # a SQLite file, or a PostgreSQL database (tests/pgkit.py)
    _setup(path, key)
    go, results = threading.Event(), queue.Queue()  # type: ignore[var-annotated]
    threads = [threading.Thread(target=hammer, args=(str(path), _raw(key), w, THREAD_ATTEMPTS,
                                                     go, results))
               for w in range(THREADS)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    outcomes = [results.get_nowait() for _ in threads]
    alice_attempts = THREADS * sum(1 for i in range(THREAD_ATTEMPTS) if i % 7 != 6)
    _check(path, key, outcomes, alice_attempts)


def test_threads_with_cancellations_stay_within_budget(state_location: Path | str) -> None:
    """Refunds race with reservations: whatever the interleaving, never over budget."""
    key = Ed25519PrivateKey.generate()
    path = state_location  # a SQLite file, or a PostgreSQL database (tests/pgkit.py)
    _setup(path, key)
    errors: list[BaseException] = []
    go = threading.Event()

    def work(w: int) -> None:
        state = State(path, key)
        try:
            ledger = SqliteLedger.existing(state, "ws")
            go.wait()
            for i in range(12):
                try:
                    r = ledger.reserve("alice", Cost(COST), sql=f"SELECT {w}, {i}")
                except BudgetExceededError:
                    continue
                if (w + i) % 4 == 0:
                    ledger.cancel(r)
                else:
                    ledger.commit(r)
                b = ledger.balance("alice")
                assert b.epsilon_spent <= b.epsilon_total + 1e-9, b
        except BaseException as exc:
            errors.append(exc)
        finally:
            state.close()

    threads = [threading.Thread(target=work, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    state = State(path, key)
    try:
        kept = state.con.execute("SELECT count(*) FROM charges WHERE member = 'alice' AND "
                                 "state != 'cancelled'").fetchone()[0]
        assert kept <= N
        assert state.con.execute("SELECT count(*) FROM charges WHERE state = 'reserved'"
                                 ).fetchone()[0] == 0
        assert state.verify().ok
    finally:
        state.close()
