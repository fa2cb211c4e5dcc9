"""Request ids make retries safe: a request is charged once, whatever happens."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatekit import policy
from sandbox.gate import Gate
from sandbox.ledger import DuplicateRequestError, SqliteLedger
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
