"""A release says what it is: the suppressed-group count comes with its 95% half-width,
kept through replays and documented in the OpenAPI document."""

from __future__ import annotations

import pytest

from gatekit import policy
from sandbox.gate import Gate
from sandbox.ledger import InMemoryLedger

PRIVATE = "SELECT length(district) AS l, count(*) AS n FROM persons GROUP BY l"
PUBLIC = "SELECT district, count(*) AS n FROM persons GROUP BY district"


@pytest.fixture(scope="module")
def gate(tiny_vault):  # type: ignore[no-untyped-def]
    return Gate(policy(tiny_vault.catalog))


def test_suppressed_groups_carry_their_interval(gate: Gate, engine) -> None:  # type: ignore[no-untyped-def]
    ledger = InMemoryLedger(10.0, 1e-5)
    q = gate.check(PRIVATE, 1.0)
    assert q.plan.group_count is not None
    release = gate.answer(PRIVATE, member="ana", ledger=ledger, executor=engine, epsilon=1.0)
    d = release.to_dict()
    assert d["suppressed_groups_ci95"] == q.plan.group_count.ci_halfwidth(0.95) > 0
    assert d["suppressed_groups"] >= 0
    again = gate.answer(PRIVATE, member="ana", ledger=ledger, executor=engine, epsilon=1.0)
    assert again.replayed and again.suppressed_groups_ci95 == d["suppressed_groups_ci95"]
    public = gate.answer(PUBLIC, member="ana", ledger=ledger, executor=engine).to_dict()
    assert public["suppressed_groups"] == 0 and public["suppressed_groups_ci95"] is None


def test_a_replay_of_an_answer_stored_without_the_interval_computes_it(gate: Gate) -> None:
    from sandbox.gate import Release

    q = gate.check(PRIVATE, 1.0)
    stored = {"release_id": "r", "policy": "p", "columns": ["l", "n"], "rows": [], "ci95": [],
              "mechanisms": {}, "epsilon": 1.0, "delta": 1e-7, "suppressed_groups": 2}
    assert Release.replay_of(stored, q).suppressed_groups_ci95 == \
        q.plan.group_count.ci_halfwidth(0.95)


def test_openapi_documents_what_a_release_carries() -> None:
    from sandbox.service.openapi import document

    release = document("/services/sandbox/", "0")["components"]["schemas"]["Release"]
    props = release["properties"]
    assert props["suppressed_groups_ci95"]["type"] == ["number", "null"]
    assert {"rows_per_unit", "groups_per_unit", "units_cut", "units_cut_ci95"} <= \
        set(props["bounding"]["properties"])
