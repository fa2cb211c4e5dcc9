"""The privacy ledger: reserve, close, refuse, operator changes and monthly refresh.

A hypothesis state machine drives ``SqliteLedger`` (a real ``State`` on a file, with an
injected clock) through every operation, against a model that composes the charges with
``dp.compose`` itself. After every step the database must agree with the model, every
charge must have exactly its audit records, and the log must verify. The same machine
(reserve/commit/fail/cancel) also runs against ``InMemoryLedger``.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    precondition,
    rule,
)

from sandbox import audit
from sandbox.audit import SQL_CAP, TRUNCATED, cap_text
from sandbox.dp import Cost, compose, plan_gaussian, plan_laplace
from sandbox.errors import SandboxError
from sandbox.ledger import (
    BudgetExceededError,
    InMemoryLedger,
    Reservation,
    SqliteLedger,
    period_of,
)
from sandbox.policy import BudgetPolicy
from sandbox.state import State

KEY = Ed25519PrivateKey.generate()
SLACK = 1e-9
MEMBERS = ("alice", "bob")
DEFAULT = BudgetPolicy(epsilon=0.4, delta=1e-2, refresh="monthly")
START = dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.UTC)


@functools.cache
def gaussian(epsilon: float, delta: float) -> Cost:
    return plan_gaussian(epsilon, delta, 1.0, integer=True).cost


def costs() -> dict[str, Cost]:
    return {
        "laplace 0.03": Cost(0.03),
        "laplace 0.1": Cost(0.1),
        "laplace 0.3": Cost(0.3),
        "threshold": Cost(0.2, 1e-6),  # approximate DP, not Gaussian
        "gauss small delta": gaussian(0.1, 1e-7),
        "gauss big delta": gaussian(0.05, 1e-3),
        "free": Cost(0.0),
    }


@functools.lru_cache(maxsize=100_000)
def _composed(items: tuple[Cost, ...], delta: float) -> Cost:
    return compose(items, delta)


def composed(items: list[Cost], delta: float) -> Cost:
    """A member's spending: the smaller of basic and zCDP accounting at their delta."""
    return _composed(tuple(sorted(items, key=repr)), delta)


def fits(c: Cost, eps: float, delta: float) -> bool:
    return c.epsilon <= eps + SLACK and c.delta <= delta + SLACK * 1e-6


CLOSING = {"committed": "query.answered", "failed": "query.failed",
           "cancelled": "query.cancelled", "interrupted": "query.interrupted"}


@dataclass
class Charge:
    member: str
    cost: Cost
    period: str
    state: str = "reserved"


def next_month(t: dt.datetime) -> dt.datetime:
    return (t.replace(day=1) + dt.timedelta(days=32)).replace(day=min(t.day, 28))


# -- the state machine -------------------------------------------------------------------------
class LedgerMachine(RuleBasedStateMachine):
    """Reserve, commit, fail and cancel: what every ``Ledger`` does."""

    reservations = Bundle("reservations")
    closed = Bundle("closed")

    def __init__(self) -> None:
        super().__init__()
        self.costs = costs()
        self.charges: dict[str, Charge] = {}
        self.limits = {m: (DEFAULT.epsilon, DEFAULT.delta) for m in MEMBERS}
        self.overdrawn: dict[tuple[str, str], Cost] = {}  # operator cut a budget below spend
        self.period = "all"
        self.refusals = dict.fromkeys(MEMBERS, 0)
        self.ledger = self.make_ledger()

    def make_ledger(self):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    # model ----------------------------------------------------------------------------------
    def spent(self, member: str) -> Cost:
        return composed([c.cost for c in self.charges.values()
                         if c.member == member and c.period == self.period
                         and c.state != "cancelled"], self.limits[member][1])

    def close(self, r: Reservation, state: str) -> None:
        if self.charges[r.id].state == "reserved":
            self.charges[r.id].state = state

    # rules ----------------------------------------------------------------------------------
    @rule(target=reservations, member=st.sampled_from(MEMBERS),
          which=st.sampled_from(sorted(costs())))
    def reserve(self, member: str, which: str):  # type: ignore[no-untyped-def]
        cost = self.costs[which]
        current = [c.cost for c in self.charges.values() if c.member == member
                   and c.period == self.period and c.state != "cancelled"]
        admit = fits(composed([*current, cost], self.limits[member][1]), *self.limits[member])
        try:
            r = self.ledger.reserve(member, cost, sql=f"SELECT {which!r}", rewritten="SELECT 1")
        except BudgetExceededError as exc:
            assert not admit, f"{which} refused although it fits: {exc}"
            self.refusals[member] += 1
            self.after_refusal(member, exc)
            return multiple()
        assert admit, f"{which} admitted although it does not fit"
        assert r.member == member and r.id not in self.charges
        assert (r.epsilon, r.delta) == (cost.epsilon, cost.delta)
        self.charges[r.id] = Charge(member, cost, self.period)
        return r

    @rule(target=reservations, member=st.sampled_from(MEMBERS),
          which=st.sampled_from(sorted(costs())))
    def fill(self, member: str, which: str):  # type: ignore[no-untyped-def]
        """Reserve the same query until the budget refuses it (reaches the edge quickly)."""
        if which == "free":
            return multiple()
        got = []
        for _ in range(25):  # zCDP admits many small Gaussians: stop somewhere
            r = self.reserve(member, which)
            if not isinstance(r, Reservation):
                break
            got.append(r)
        return multiple(*got)

    def after_refusal(self, member: str, exc: BudgetExceededError) -> None:
        assert exc.code == "budget.exhausted"
        assert "remains of your budget" in exc.message

    @rule(target=closed, r=consumes(reservations))
    def commit(self, r: Reservation) -> Reservation:
        self.ledger.commit(r, release_id="rel", values_digest="00", rows=1)
        self.close(r, "committed")
        return r

    @rule(target=closed, r=consumes(reservations))
    def fail(self, r: Reservation) -> Reservation:
        self.ledger.fail(r, "engine.timeout")
        self.close(r, "failed")
        return r

    @rule(target=closed, r=consumes(reservations))
    def cancel(self, r: Reservation) -> Reservation:
        self.ledger.cancel(r)
        c = self.charges[r.id]
        if c.state == "reserved":
            c.state = "cancelled" if self.refundable(r.id) else "failed"
        return r

    def refundable(self, cid: str) -> bool:
        """Refunded, unless the others were admitted only thanks to it (``compose`` is not
        monotone in delta): then it stands, closed as failed."""
        c = self.charges[cid]
        others = [o.cost for k, o in self.charges.items() if k != cid and o.member == c.member
                  and o.period == c.period and o.state != "cancelled"]
        eps, delta = self.limits[c.member]
        before = composed([*others, c.cost], delta)
        return fits(composed(others, delta), max(eps, before.epsilon), max(delta, before.delta))

    @rule(r=closed, how=st.sampled_from(["commit", "fail", "cancel"]))
    def close_again(self, r: Reservation, how: str) -> None:
        """Closing twice (e.g. after recovery closed it) changes nothing."""
        if how == "commit":
            self.ledger.commit(r)
        elif how == "fail":
            self.ledger.fail(r, "internal")
        else:
            self.ledger.cancel(r)

    # invariants -----------------------------------------------------------------------------
    @invariant()
    def balances_match_the_model(self) -> None:
        for m in MEMBERS:
            b = self.ledger.balance(m)
            want = self.spent(m)
            assert b.epsilon_spent == pytest.approx(want.epsilon, abs=1e-12), m
            assert b.delta_spent == pytest.approx(want.delta, abs=1e-18), m
            assert (b.epsilon_total, b.delta_total) == self.limits[m]

    @invariant()
    def never_overspent(self) -> None:
        for m in MEMBERS:
            b = self.ledger.balance(m)
            cut = self.overdrawn.get((m, self.period))
            eps_cap = max(b.epsilon_total, cut.epsilon if cut else 0.0)
            delta_cap = max(b.delta_total, cut.delta if cut else 0.0)
            assert b.epsilon_spent <= eps_cap + SLACK, (m, b)
            assert b.delta_spent <= delta_cap + SLACK * 1e-6, (m, b)
            assert b.epsilon_remaining >= 0 and b.delta_remaining >= 0


class InMemoryLedgerMachine(LedgerMachine):
    def make_ledger(self) -> InMemoryLedger:
        return InMemoryLedger(DEFAULT.epsilon, DEFAULT.delta)


class SqliteLedgerMachine(LedgerMachine):
    """Everything, on the durable ledger: also refusals, operators, recovery and months."""

    def make_ledger(self) -> SqliteLedger:
        self.dir = tempfile.mkdtemp(prefix="ledger-machine-")
        self.now = START
        self.period = period_of("monthly", START)[0]
        self.state = State(Path(self.dir) / "state.db", KEY, checkpoint_every=16)
        ledger = SqliteLedger.open(self.state, "ws", "credit_underwriting", DEFAULT)
        ledger.clock = lambda: self.now
        return ledger

    def teardown(self) -> None:
        self.state.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def after_refusal(self, member: str, exc: BudgetExceededError) -> None:
        super().after_refusal(member, exc)
        nxt = period_of("monthly", self.now)[1]
        assert f"it refreshes on {nxt}" in exc.message
        last = json.loads(self.state.con.execute(
            "SELECT body FROM audit_records ORDER BY seq DESC LIMIT 1").fetchone()[0])
        assert last["kind"] == "query.refused" and last["member"] == member
        assert last["rule"] == "budget.exhausted" and last["message"] == exc.message

    @rule(member=st.sampled_from(MEMBERS))
    def refuse(self, member: str) -> None:
        self.ledger.refused(member, "SELECT * FROM persons", "gate.row_level_output",
                            "no raw rows")
        self.refusals[member] += 1

    def _operator(self, member: str, eps: float, delta: float) -> None:
        self.limits[member] = (eps, delta)
        spent = self.spent(member)
        if not fits(spent, eps, delta):
            self.overdrawn[(member, self.period)] = spent

    @rule(member=st.sampled_from(MEMBERS),
          eps=st.sampled_from([None, 0.0, 0.3, 1.0, 2.5]),
          delta=st.sampled_from([None, 0.0, 1e-6, 1e-2, 0.5]))
    def set_budget(self, member: str, eps: float | None, delta: float | None) -> None:
        b = self.ledger.set_budget(member, epsilon=eps, delta=delta, actor="operator")
        old = self.limits[member]
        self._operator(member, old[0] if eps is None else eps, old[1] if delta is None else delta)
        assert (b.epsilon_total, b.delta_total) == self.limits[member]

    @rule(member=st.sampled_from(MEMBERS), eps=st.sampled_from([0.0, 0.1, 0.5]),
          delta=st.sampled_from([None, 1e-3]))
    def grant(self, member: str, eps: float, delta: float | None) -> None:
        self.ledger.set_budget(member, epsilon=eps, delta=delta, add=True, actor="operator")
        old = self.limits[member]
        self._operator(member, old[0] + eps, old[1] + (delta or 0.0))

    @rule(member=st.sampled_from(MEMBERS),
          bad=st.sampled_from([(-1.0, None), (float("nan"), None), (float("inf"), None),
                               (None, 1.0), (None, -1e-9), (None, float("nan"))]))
    def set_budget_invalid(self, member: str, bad: tuple[float | None, float | None]) -> None:
        size = self.state.size()
        with pytest.raises(SandboxError, match="must be a finite number"):
            self.ledger.set_budget(member, epsilon=bad[0], delta=bad[1])
        assert self.state.size() == size  # nothing recorded

    @rule()
    def advance_month(self) -> None:
        self.now = next_month(self.now)
        self.period = period_of("monthly", self.now)[0]

    @precondition(lambda self: any(c.state == "reserved" for c in self.charges.values()))
    @rule()
    def recover(self) -> None:
        stale = [cid for cid, c in self.charges.items() if c.state == "reserved"]
        assert self.state.recover(stale_after_s=0) == len(stale)
        for cid in stale:
            self.charges[cid].state = "interrupted"

    # invariants over the database ----------------------------------------------------------
    def _records(self) -> list[dict]:  # type: ignore[type-arg]
        return [json.loads(t) for (t,) in self.state.con.execute(
            "SELECT body FROM audit_records ORDER BY seq")]

    @invariant()
    def charges_and_records_agree(self) -> None:
        con = self.state.con
        rows = {cid: (state, opened, closed, member, period) for cid, state, opened, closed,
                member, period in con.execute(
                    "SELECT id, state, opened_seq, closed_seq, member, period FROM charges")}
        assert set(rows) == set(self.charges)
        by_charge: dict[str, list[dict]] = {}  # type: ignore[type-arg]
        refused = dict.fromkeys(MEMBERS, 0)
        for rec in self._records():
            kind = rec["kind"]
            if kind == "query.refused":
                refused[rec["member"]] += 1
            elif kind.startswith("query."):
                assert rec["charge_id"] in rows, f"{kind} record #{rec['seq']} has no charge"
                by_charge.setdefault(rec["charge_id"], []).append(rec)
        assert refused == self.refusals
        for cid, (state, opened, closed, member, period) in rows.items():
            model = self.charges[cid]
            assert (state, member, period) == (model.state, model.member, model.period)
            recs = by_charge.get(cid, [])
            charged = [r for r in recs if r["kind"] == "query.charged"]
            closing = [r for r in recs if r["kind"] != "query.charged"]
            assert len(charged) == 1 and charged[0]["seq"] == opened
            assert charged[0]["member"] == member and charged[0]["workspace"] == "ws"
            assert charged[0]["epsilon"] == model.cost.epsilon
            if state == "reserved":
                assert closing == [] and closed is None
            else:
                assert len(closing) == 1, (cid, closing)
                assert closing[0]["kind"] == CLOSING[state] and closing[0]["seq"] == closed
                assert closing[0]["seq"] > opened

    @invariant()
    def spent_is_the_composition_of_stored_charges(self) -> None:
        for m in MEMBERS:
            rows = self.state.con.execute(
                "SELECT epsilon, delta, rho, zcdp_epsilon, zcdp_delta, pure_epsilon, pure_rho "
                "FROM charges WHERE member = ? AND period = ? AND state != 'cancelled'",
                (m, self.period))
            want = composed([Cost(*r) for r in rows], self.limits[m][1])
            b = self.ledger.balance(m)
            assert (b.epsilon_spent, b.delta_spent) == (want.epsilon, want.delta)
            assert b.refreshes_on == period_of("monthly", self.now)[1]

    @invariant()
    def log_verifies(self) -> None:
        report = self.state.verify()
        assert report.ok, report.problems


MACHINE_SETTINGS = settings(max_examples=30, stateful_step_count=25, deadline=None,
                            suppress_health_check=[HealthCheck.too_slow])
TestInMemoryLedger = pytest.mark.slow(InMemoryLedgerMachine.TestCase)
TestInMemoryLedger.settings = MACHINE_SETTINGS
TestSqliteLedger = pytest.mark.slow(SqliteLedgerMachine.TestCase)
TestSqliteLedger.settings = MACHINE_SETTINGS


# -- unit tests ---------------------------------------------------------------------------------
@pytest.fixture
def state(state_location: Path | str):  # type: ignore[no-untyped-def]
    """On both back ends: a SQLite file, a PostgreSQL database (tests/pgkit.py)."""
    s = State(state_location, KEY)
    yield s
    s.close()


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def test_gaussian_charges_compose_in_zcdp(state: State) -> None:
    """Many small Gaussian queries: zCDP admits far more than adding epsilons would."""
    ledger = SqliteLedger.open(state, "ws", "p", BudgetPolicy(1.0, 1e-5, "never"))
    cost = gaussian(0.1, 1e-7)
    basic = int((1.0 + SLACK) // cost.epsilon)  # what basic composition would admit
    assert basic == 10
    admitted = 0
    with pytest.raises(BudgetExceededError):
        for _ in range(500):
            ledger.commit(ledger.reserve("alice", cost))
            admitted += 1
    assert admitted > 5 * basic  # limited by delta (1e-5 / 1e-7 = 100) here, not epsilon
    b = ledger.balance("alice")
    assert b.epsilon_spent <= 1.0 + SLACK and b.delta_spent <= 1e-5 * (1 + 1e-9)
    assert b.epsilon_spent == pytest.approx(compose([cost] * admitted).epsilon)
    assert b.epsilon_spent < admitted * cost.epsilon / 2
    # Pure (Laplace) costs still add up: exactly ten of 0.1.
    lap = plan_laplace(0.1, 1.0, integer=True).cost
    n = 0
    with pytest.raises(BudgetExceededError):
        while True:
            ledger.reserve("bob", lap)
            n += 1
    assert n == 10


def test_monthly_refresh(state: State) -> None:
    clock = Clock(dt.datetime(2026, 1, 31, 23, 59, tzinfo=dt.UTC))
    ledger = SqliteLedger.open(state, "ws", "p", BudgetPolicy(0.5, 1e-6, "monthly"))
    ledger.clock = clock
    for _ in range(5):
        ledger.commit(ledger.reserve("alice", Cost(0.1)))
    b = ledger.balance("alice")
    assert b.epsilon_spent == pytest.approx(0.5) and b.refreshes_on == "2026-02-01"
    with pytest.raises(BudgetExceededError, match="it refreshes on 2026-02-01"):
        ledger.reserve("alice", Cost(0.1))
    clock.now = dt.datetime(2026, 2, 1, 0, 0, tzinfo=dt.UTC)
    b = ledger.balance("alice")
    assert b.epsilon_spent == 0 and b.epsilon_remaining == 0.5
    assert b.refreshes_on == "2026-03-01"
    ledger.commit(ledger.reserve("alice", Cost(0.4)))
    with pytest.raises(BudgetExceededError, match="refreshes on 2026-03-01"):
        ledger.reserve("alice", Cost(0.2))
    clock.now = dt.datetime(2026, 12, 31, tzinfo=dt.UTC)
    assert ledger.balance("alice").refreshes_on == "2027-01-01"
    # Charges are kept per period: January's spending is still on record.
    periods = dict(state.con.execute("SELECT period, count(*) FROM charges GROUP BY period"))
    assert periods == {"2026-01": 5, "2026-02": 1}
    assert state.verify().ok


def test_budgets_that_never_refresh_say_so(state: State) -> None:
    ledger = SqliteLedger.open(state, "ws", "p", BudgetPolicy(0.1, 0.0, "never"))
    ledger.reserve("alice", Cost(0.1))
    with pytest.raises(BudgetExceededError) as info:
        ledger.reserve("alice", Cost(0.1))
    assert "refreshes" not in info.value.message
    assert ledger.balance("alice").refreshes_on is None


@pytest.mark.parametrize("kwargs", [
    {"epsilon": -1.0}, {"epsilon": float("nan")}, {"epsilon": float("inf")},
    {"delta": 1.0}, {"delta": 2.0}, {"delta": -0.1}, {"delta": float("nan")},
    {"epsilon": -0.5, "add": True}, {"delta": float("inf"), "add": True},
])
def test_set_budget_validation(state: State, kwargs: dict) -> None:  # type: ignore[type-arg]
    ledger = SqliteLedger.open(state, "ws", "p", BudgetPolicy(1.0, 1e-6, "monthly"))
    size = state.size()
    with pytest.raises(SandboxError) as info:
        ledger.set_budget("alice", **kwargs)
    assert "must be a finite number >= 0" in info.value.message
    assert info.value.hint
    assert state.size() == size
    assert state.con.execute("SELECT count(*) FROM budgets").fetchone()[0] == 0
    assert ledger.balance("alice").epsilon_total == 1.0


def test_set_budget_and_grant_are_audited(state: State) -> None:
    ledger = SqliteLedger.open(state, "ws", "p", BudgetPolicy(1.0, 1e-6, "monthly"))
    b = ledger.set_budget("alice", epsilon=3.0, actor="op")
    assert (b.epsilon_total, b.delta_total) == (3.0, 1e-6)
    b = ledger.set_budget("alice", epsilon=0.5, delta=1e-5, add=True, actor="op")
    assert b.epsilon_total == 3.5 and b.delta_total == pytest.approx(1.1e-5)
    recs = list(state.records(kind="budget.changed"))
    assert [(r["operation"], r["epsilon_total"], r["actor"]) for r in recs] == [
        ("set", 3.0, "op"), ("grant", 3.5, "op")]
    assert ledger.members() == ["alice"]
    assert ledger.balance("bob").epsilon_total == 1.0  # others keep the default


def test_refusal_costs_nothing_but_is_recorded(state: State) -> None:
    ledger = SqliteLedger.open(state, "ws", "p", BudgetPolicy(1.0, 1e-6, "monthly"))
    ledger.refused("alice", "SELECT * FROM persons", "gate.row_level_output", "no raw rows")
    assert ledger.balance("alice").epsilon_spent == 0
    (rec,) = state.records(kind="query.refused")
    assert (rec["member"], rec["rule"], rec["sql"]) == ("alice", "gate.row_level_output",
                                                        "SELECT * FROM persons")


def test_recover_closes_only_stale_reservations(state: State) -> None:
    ledger = SqliteLedger.open(state, "ws", "p", BudgetPolicy(1.0, 1e-6, "monthly"))
    old = ledger.reserve("alice", Cost(0.1))
    done = ledger.reserve("alice", Cost(0.1))
    ledger.commit(done)
    state.con.execute("UPDATE charges SET created = created - 7200 WHERE id IN (?, ?)",
                      (old.id, done.id))  # both two hours old
    young = ledger.reserve("alice", Cost(0.1))
    assert state.recover(stale_after_s=3600) == 1  # the old open one, not the committed one
    states = dict(state.con.execute("SELECT id, state FROM charges"))
    assert states == {old.id: "interrupted", done.id: "committed", young.id: "reserved"}
    (rec,) = state.records(kind="query.interrupted")
    assert rec["charge_id"] == old.id and rec["epsilon"] == 0.1
    assert state.recover(stale_after_s=3600) == 0  # nothing left that is stale
    ledger.commit(old)  # the process was only slow: too late, closed once only
    assert len(list(state.records(kind="query.answered"))) == 1
    b = ledger.balance("alice")
    assert b.epsilon_spent == pytest.approx(0.3)  # an interrupted query still costs
    assert state.recover(stale_after_s=0) == 1
    assert state.verify().ok


def test_cancel_refunds_and_fail_does_not(state: State) -> None:
    ledger = SqliteLedger.open(state, "ws", "p", BudgetPolicy(0.2, 1e-6, "monthly"))
    r = ledger.reserve("alice", Cost(0.2))
    ledger.cancel(r)
    assert ledger.balance("alice").epsilon_spent == 0
    r = ledger.reserve("alice", Cost(0.2))
    ledger.fail(r, "engine.timeout")
    assert ledger.balance("alice").epsilon_spent == pytest.approx(0.2)
    with pytest.raises(BudgetExceededError):
        ledger.reserve("alice", Cost(0.01))


@pytest.mark.parametrize("make", ["memory", "sqlite"])
def test_cancel_never_leaves_the_others_over_budget(state: State, make: str) -> None:
    """Basic-plus-Gaussian accounting is not monotone in delta: a Gaussian charge with a
    large delta lowers the composed epsilon of the others. A refund must never leave them
    over budget (``refundable``); the zCDP accounting at the budget's delta (``compose`` with
    ``delta_budget``) is monotone, so here the others fit without it and it is refunded."""
    small, big = gaussian(0.1, 1e-7), gaussian(0.05, 1e-3)
    assert compose([small, big]).epsilon < compose([small]).epsilon
    ledger = (InMemoryLedger(0.1, 1e-2) if make == "memory" else
              SqliteLedger.open(state, "ws", "p", BudgetPolicy(0.1, 1e-2, "never")))
    ledger.commit(ledger.reserve("alice", small))
    r = ledger.reserve("alice", big)
    ledger.commit(ledger.reserve("alice", Cost(0.025)))
    assert compose([small, Cost(0.025)], 1e-2).epsilon < compose([small, Cost(0.025)]).epsilon
    ledger.cancel(r)
    b = ledger.balance("alice")
    assert b.epsilon_spent <= b.epsilon_total + SLACK, b
    assert b.epsilon_spent == pytest.approx(compose([small, Cost(0.025)], 1e-2).epsilon)
    assert b.accounting == "zcdp" and b.epsilon_basic > b.epsilon_spent
    if make == "sqlite":
        (rec,) = state.records(kind="query.cancelled")
        assert rec["charge_id"] == r.id
        assert state.verify().ok
    # An ordinary cancel is still refunded.
    r2 = ledger.reserve("bob", Cost(0.05))
    ledger.cancel(r2)
    assert ledger.balance("bob").epsilon_spent == 0


def test_unknown_workspace(state: State) -> None:
    with pytest.raises(SandboxError, match="unknown workspace 'nope'"):
        SqliteLedger.existing(state, "nope")
    SqliteLedger.open(state, "ws", "p", BudgetPolicy(2.0, 1e-6, "monthly"))
    assert SqliteLedger.existing(state, "ws").default == BudgetPolicy(2.0, 1e-6, "monthly")


# -- what a record keeps of the SQL ------------------------------------------------------------
def full_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def test_stored_sql_is_capped_with_the_hash_and_length_of_all_of_it(state: State) -> None:
    ledger = SqliteLedger.open(state, "ws", "p", BudgetPolicy(1.0, 1e-6, "never"))
    long_sql = "SELECT count(*) FROM persons WHERE " + " OR ".join(
        f"district = 'd{i}'" for i in range(2000))
    assert len(long_sql) > 20_000
    ledger.refused("alice", long_sql, "gate.too_large", "too long")
    r = ledger.reserve("alice", Cost(0.1), sql=long_sql, rewritten=long_sql + " -- rewritten")
    ledger.commit(r)
    ledger.refused("alice", "SELECT 1", "gate.row_level_output", "no raw rows")
    refused, short = state.records(kind="query.refused")
    (charged,) = state.records(kind="query.charged")
    for rec in (refused, charged):
        assert rec["sql"] == long_sql[:SQL_CAP] + TRUNCATED
        assert rec["sql"].endswith("… [truncated]")
        assert rec["sql_sha256"] == hashlib.sha256(long_sql.encode()).hexdigest()
        assert rec["sql_length"] == len(long_sql)
    assert charged["rewritten_sql"] == long_sql[:SQL_CAP] + TRUNCATED
    assert (short["sql"], short["sql_length"]) == ("SELECT 1", 8)  # short SQL verbatim
    assert short["sql_sha256"] == hashlib.sha256(b"SELECT 1").hexdigest()
    body_sizes = [len(b) for (b,) in state.con.execute("SELECT body FROM audit_records")]
    assert max(body_sizes) < 2 * SQL_CAP + 1000  # sql and rewritten_sql, capped
    assert state.verify().ok


def test_cap_is_exact_at_the_boundary() -> None:
    at = "x" * SQL_CAP
    assert cap_text(at).text == at
    assert cap_text(at + "y").text == at + TRUNCATED
    assert cap_text("").text == "" and cap_text("").length == 0
    assert cap_text("").sha256 == hashlib.sha256(b"").hexdigest()
    # length counts characters, the hash is of the UTF-8 bytes
    c = cap_text("é€😀")
    assert (c.text, c.length, c.sha256) == ("é€😀", 3, hashlib.sha256("é€😀".encode()).hexdigest())


def test_lone_surrogates_never_make_the_ledger_fail(state: State) -> None:
    """Text that is not valid Unicode cannot be encoded as UTF-8: the record keeps it
    escaped, the hash is of its surrogatepass bytes, and nothing raises."""
    ledger = SqliteLedger.open(state, "ws", "p", BudgetPolicy(1.0, 1e-6, "never"))
    sql = "SELECT count(*) AS \"\ud800\" FROM persons"
    ledger.refused("alice", sql, "gate.unknown_column", "column '\udfff' is not available")
    ledger.commit(ledger.reserve("alice", Cost(0.1), sql=sql, rewritten="SELECT '\ud800'",
                                 request_id="r-1", request_digest="d"))
    (refused,) = state.records(kind="query.refused")
    (charged,) = state.records(kind="query.charged")
    for rec in (refused, charged):
        assert rec["sql"] == 'SELECT count(*) AS "\\ud800" FROM persons'
        assert rec["sql_sha256"] == full_sha256(sql)
        assert rec["sql_length"] == len(sql)
    assert refused["message"] == "column '\\udfff' is not available"
    assert charged["rewritten_sql"] == "SELECT '\\ud800'"
    assert state.verify().ok
    # escaping can lengthen a text: it is still cut at the cap
    c = cap_text("\ud800" * SQL_CAP)
    assert c.text == ("\\ud800" * SQL_CAP)[:SQL_CAP] + TRUNCATED
    assert c.length == SQL_CAP


TEXT = st.text(alphabet=st.one_of(st.characters(), st.characters(categories=["Cs"])))


@settings(max_examples=300, deadline=None)
@given(text=TEXT | st.builds(lambda t, n: t * n, TEXT, st.integers(0, 3000)),
       cap=st.sampled_from([0, 1, 5, 64, SQL_CAP]))
def test_cap_text_property(text: str, cap: int) -> None:
    c = cap_text(text, cap)
    assert len(c.text) <= cap + len(TRUNCATED)
    assert c.sha256 == full_sha256(text)
    assert c.length == len(text)
    audit.canonical({"sql": c.text})  # what is stored can always be encoded
    if len(text) > cap:
        assert c.text.endswith(TRUNCATED)
    elif not any("\ud800" <= ch <= "\udfff" for ch in text):
        assert c.text == text  # valid text within the cap is kept verbatim
    if not any("\ud800" <= ch <= "\udfff" for ch in text[:cap]):
        assert c.text.startswith(text[:cap])


def test_records_written_before_the_sql_hash_still_read_and_verify(
        state: State, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records of the older schema have no sql_sha256 or sql_length: they verify, and the
    readers (audit log summary, report, console) show them as before."""
    from sandbox import audit_pages, report
    from sandbox.cli.audit import summary
    from sandbox.service import console

    monkeypatch.setitem(audit.KINDS, "query.refused", ("sql", "rule", "message"))
    monkeypatch.setitem(audit.KINDS, "query.charged",
                        ("charge_id", "sql", "rewritten_sql", "epsilon", "delta", "rho"))
    state.record("query.refused", workspace="ws", member="alice", sql="SELECT * FROM persons",
                 rule="gate.row_level_output", message="no raw rows")
    state.record("query.charged", workspace="ws", member="alice", charge_id="c-old",
                 sql="SELECT count(*) FROM persons", rewritten_sql="SELECT 1", epsilon=0.1,
                 delta=0.0, rho=0.0)
    monkeypatch.undo()
    ledger = SqliteLedger.open(state, "ws", "p", BudgetPolicy(1.0, 1e-6, "never"))
    new = ledger.reserve("alice", Cost(0.1), sql="SELECT count(*) FROM loans " + "x" * SQL_CAP)
    ledger.commit(new, release_id="r2")
    assert state.verify().ok
    records = list(state.records())
    old_refused, old_charged = records[:2]
    assert "sql_sha256" not in old_refused and "sql_length" not in old_charged
    assert "SELECT * FROM persons" in summary(old_refused)
    assert "SELECT count(*) FROM persons" in summary(old_charged)
    by_charge = report.sql_by_charge(records)
    assert by_charge["c-old"] == "SELECT count(*) FROM persons"
    assert by_charge[new.id].endswith(TRUNCATED)
    recs = [r for r in records if r["kind"].startswith("query.")]
    pg = audit_pages.Page(recs, None, None, len(recs), False)
    page = console.show_page("console/queries.html", "/p/", "Query log", "r", names=[],
                             **console.log_context("/p/console/", {}, pg,
                                                   audit_pages.charge_records(state.con, recs)))
    rows = page.split("<tbody>")[1].split("<tr>")[1:]
    assert "SELECT * FROM persons" in rows[0] and "SELECT count(*) FROM persons" in rows[1]
    folded = f"({len(by_charge[new.id]):,} characters)"  # the list folds the long SQL
    assert folded in rows[2] and folded in rows[3]  # the new charge and its answer
