"""Request ids make retries safe: a request is charged once, whatever happens."""

from __future__ import annotations

import sqlite3

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatekit import policy
from sandbox.dp import Cost
from sandbox.gate import Gate
from sandbox.ledger import (
    DuplicateRequestError,
    RequestConflictError,
    SqliteLedger,
    request_digest,
)
from sandbox.policy import BudgetPolicy
from sandbox.state import State


@pytest.fixture
def ledger(tmp_path, tiny_vault):  # type: ignore[no-untyped-def]
    pol = policy(tiny_vault.catalog)
    state = State(tmp_path / "state.sqlite", Ed25519PrivateKey.generate())
    yield SqliteLedger.open(state, "w", pol.id, pol.budget), Gate(pol), state
    state.close()


def test_a_retried_request_is_charged_once_and_gets_the_same_answer(ledger, engine) -> None:  # type: ignore[no-untyped-def]
    led, gate, state = ledger
    sql = "SELECT district, count(*) FROM persons GROUP BY district"
    first = gate.answer(sql, member="ann", ledger=led, executor=engine, request_id="r-1")
    spent = led.balance("ann").epsilon_spent
    with pytest.raises(DuplicateRequestError):
        gate.answer(sql, member="ann", ledger=led, executor=engine, request_id="r-1")
    assert led.balance("ann").epsilon_spent == spent
    prior = led.prior("ann", "r-1")
    assert prior is not None and prior.state == "committed"
    assert prior.response == first.to_dict()
    assert led.prior("bob", "r-1") is None  # ids are per member
    assert state.verify().ok


def test_an_interrupted_request_stays_charged_once(ledger, engine) -> None:  # type: ignore[no-untyped-def]
    led, gate, state = ledger
    q = gate.check("SELECT count(*) FROM persons")
    led.reserve("ann", q.plan.cost, sql=q.sql, request_id="r-2")  # then the process dies
    assert state.recover(stale_after_s=0) == 1
    prior = led.prior("ann", "r-2")
    assert prior is not None and prior.state == "interrupted" and prior.response is None
    with pytest.raises(DuplicateRequestError):
        gate.answer(q.sql, member="ann", ledger=led, executor=engine, request_id="r-2")
    assert led.balance("ann").epsilon_spent == pytest.approx(q.plan.cost.epsilon)
    assert state.verify().ok


def test_request_digest_is_of_the_sql_and_epsilon_as_sent() -> None:
    sql = "SELECT count(*) FROM persons"
    d = request_digest(sql, None)
    assert len(d) == 64 and d == request_digest(sql, None)
    assert d != request_digest(sql + " ", None)
    assert d != request_digest(sql, 0.5)  # the default written out is another request
    assert request_digest(sql, 1) == request_digest(sql, 1.0)
    assert request_digest(sql, 0.5) != request_digest(sql, 0.25)
    # never an error, whatever was sent
    assert request_digest("SELECT '\ud800'", 10 ** 400) != request_digest("SELECT '\ud800'", None)
    assert request_digest("SELECT '\\ud800'", None) != request_digest("SELECT '\ud800'", None)
    assert request_digest(sql, float("nan")) == request_digest(sql, float("nan"))


def test_a_reused_request_id_with_another_question_is_a_conflict(ledger, engine) -> None:  # type: ignore[no-untyped-def]
    led, gate, state = ledger
    sql = "SELECT district, count(*) FROM persons GROUP BY district"
    digest = request_digest(sql, None)
    gate.answer(sql, member="ann", ledger=led, executor=engine, request_id="r-3",
                request_digest=digest)
    spent, size = led.balance("ann").epsilon_spent, state.size()
    prior = led.prior("ann", "r-3")
    assert prior is not None and prior.digest == digest and prior.state == "committed"
    assert not prior.conflicts(digest)  # a retry: replayed by the service
    other = request_digest("SELECT count(*) FROM persons", None)
    assert prior.conflicts(other)
    assert not prior.conflicts(None)
    # Racing past prior(), the ledger itself refuses the reused id: no charge, no record.
    with pytest.raises(RequestConflictError, match="r-3 was already used for a different "
                       "query") as info:
        gate.answer("SELECT count(*) FROM persons", member="ann", ledger=led, executor=engine,
                    request_id="r-3", request_digest=other)
    assert info.value.code == "request.conflict" and info.value.hint
    with pytest.raises(DuplicateRequestError):  # the same question: a duplicate, as before
        gate.answer(sql, member="ann", ledger=led, executor=engine, request_id="r-3",
                    request_digest=digest)
    assert led.balance("ann").epsilon_spent == spent
    assert state.size() == size
    # another member's id of the same name is their own
    gate.answer("SELECT count(*) FROM persons", member="bob", ledger=led, executor=engine,
                request_id="r-3", request_digest=other)
    assert state.verify().ok


OLD_REQUESTS = """
CREATE TABLE requests (
    workspace TEXT NOT NULL, member TEXT NOT NULL, request_id TEXT NOT NULL,
    charge_id TEXT NOT NULL, response TEXT, PRIMARY KEY (workspace, member, request_id));
"""


def test_requests_stored_before_digests_replay_as_before(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An older state database has no request_digest column: opening it adds the column,
    and its requests (digest NULL) replay whatever a retry asks."""
    path = tmp_path / "state.sqlite"
    con = sqlite3.connect(path)
    con.executescript(OLD_REQUESTS)
    con.execute("INSERT INTO requests VALUES ('w', 'ann', 'old', 'c-old', '{\"rows\": []}')")
    con.commit()
    con.close()
    key = Ed25519PrivateKey.generate()
    state = State(path, key)
    try:
        columns = [r[1] for r in state.con.execute("PRAGMA table_info(requests)")]
        assert columns[-1] == "request_digest"
        led = SqliteLedger.open(state, "w", "p", BudgetPolicy(1.0, 1e-6, "never"))
        r = led.reserve("ann", Cost(0.1), sql="SELECT 1")  # the charge the old row points to
        state.con.execute("UPDATE requests SET charge_id = ? WHERE request_id = 'old'", (r.id,))
        led.commit(r)
        prior = led.prior("ann", "old")
        assert prior is not None and prior.digest is None and prior.response == {"rows": []}
        assert not prior.conflicts(request_digest("SELECT anything", 3.0))
        with pytest.raises(DuplicateRequestError):  # never charged twice, never a conflict
            led.reserve("ann", Cost(0.1), request_id="old",
                        request_digest=request_digest("SELECT anything", None))
        # new requests keep their digest in the migrated table
        led.reserve("ann", Cost(0.1), request_id="new", request_digest="d-new")
        assert led.prior("ann", "new").digest == "d-new"  # type: ignore[union-attr]
    finally:
        state.close()
    state = State(path, key)  # opening again migrates nothing twice
    state.close()


def test_a_question_answered_before_is_replayed_free_and_recorded(ledger, engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    led, gate, state = ledger
    sql = "SELECT district, count(*) FROM persons GROUP BY district"
    first = gate.answer(sql, member="ann", ledger=led, executor=engine, epsilon=0.5,
                        request_id="r-a", request_digest=request_digest(sql, 0.5))
    spent = led.balance("ann").epsilon_spent
    # a notebook re-run: a new request id, the same question
    again = gate.answer(sql, member="ann", ledger=led, executor=engine, epsilon=0.5,
                        request_id="r-b", request_digest=request_digest(sql, 0.5))
    assert again.replayed and again.rows == first.rows and again.ci95 == first.ci95
    assert led.balance("ann").epsilon_spent == spent
    # its request id is kept: a retry of r-b gets the replay, never a charge
    prior = led.prior("ann", "r-b")
    assert prior is not None and prior.state == "committed"
    assert prior.response is not None and prior.response["replayed"] is True
    with pytest.raises(DuplicateRequestError):
        gate.answer(sql, member="ann", ledger=led, executor=engine, epsilon=0.5,
                    request_id="r-b")
    # a reused id with another question is still a conflict on the replay path
    with pytest.raises(RequestConflictError):
        gate.answer(sql, member="ann", ledger=led, executor=engine, epsilon=0.5,
                    request_id="r-a", request_digest=request_digest(sql + " ", 0.5))
    # another process (a new ledger object on the same state) replays it too
    led2 = SqliteLedger.existing(state, "w")
    assert gate.answer(sql, member="ann", ledger=led2, executor=engine, epsilon=0.5).replayed
    records = [r for r in state.records() if r["kind"].startswith("query.")]
    replays = [r for r in records if r["kind"] == "query.replayed"]
    charged = [r for r in records if r["kind"] == "query.charged"]
    assert len(charged) == 1 and len(replays) == 2
    assert {r["charge_id"] for r in replays} == {charged[0]["charge_id"]}
    assert all(r["release_id"] == first.release_id and r["epsilon"] == 0 for r in replays)
    assert state.verify().ok


def test_only_answered_questions_under_the_same_policy_are_replayed(  # type: ignore[no-untyped-def]
        ledger, engine, tiny_vault) -> None:
    led, gate, state = ledger
    q = gate.check("SELECT count(*) FROM persons")
    led.reserve("ann", q.plan.cost, sql=q.sql, request_id="r-2")  # then the process dies
    assert state.recover(stale_after_s=0) == 1
    # interrupted: no answer to replay, so the next request is charged
    assert not gate.answer(q.sql, member="ann", ledger=led, executor=engine).replayed
    assert led.balance("ann").epsilon_spent == pytest.approx(2 * q.plan.cost.epsilon)
    # the same SQL under an edited policy is a new question
    pol = policy(tiny_vault.catalog)
    edited = type(pol)(**{**pol.__dict__, "content_hash": "0" * 64})
    assert not Gate(edited).answer(q.sql, member="ann", ledger=led, executor=engine).replayed
    assert Gate(edited).answer(q.sql, member="ann", ledger=led, executor=engine).replayed
