"""Privacy budget accounting: reserve before execution, commit after.

``Ledger`` is the interface the gate charges. ``InMemoryLedger`` keeps balances
in one process (tests, one-off CLI runs); ``StateLedger`` (``sandbox.ledger_state``,
also reachable here, and as ``SqliteLedger``) is the durable one: each charge and its
audit record are written in one transaction of the state database, atomically across
processes and replicas. A reservation is never refunded once execution has started; a
refused query costs nothing but is still recorded.

Spending is composed with ``dp.compose``: pure-DP parts add up, Gaussian parts
are accounted in zCDP together, so many small Gaussian queries cost less.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from .dp import Cost, compose, zcdp_accounting
from .errors import SandboxError

_SLACK = 1e-9


class BudgetExceededError(SandboxError):
    code = "budget.exhausted"


class LedgerError(SandboxError):
    """A ledger operation that is not possible: an unknown ledger, a provisioned
    workspace's ledger asked from the command line, a closed workspace's frozen ledger."""

    code = "ledger.error"


class DuplicateRequestError(SandboxError):
    """A request id was seen before: the first request was charged, never a second time."""

    code = "request.duplicate"


class RequestConflictError(SandboxError):
    """A request id was used before for a different question: never answered, never charged."""

    code = "request.conflict"


def request_digest(sql: str, epsilon: float | None) -> str:
    """Hex SHA-256 of what a request asks: its SQL and epsilon as sent (None when absent).

    A retry must carry the same digest to be answered from the first request. An integer
    epsilon counts as the same number in floating point (1 and 1.0 ask the same question);
    text that is not valid Unicode is hashed escaped, never an error.
    """
    eps: Any = epsilon
    if isinstance(eps, int) and not isinstance(eps, bool):
        with contextlib.suppress(OverflowError):  # too large for a float: hashed as is
            eps = float(eps)
    text = json.dumps({"sql": sql, "epsilon": eps}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class PriorRequest:
    charge_id: str
    state: str  # reserved (still running) | committed | failed | interrupted | cancelled
    response: dict[str, Any] | None  # the stored answer of a committed request
    digest: str | None = None  # request_digest of the first request (None: stored before)

    def conflicts(self, digest: str | None) -> bool:
        """Whether a retry with ``digest`` asks something else than the first request."""
        return _differ(self.digest, digest)


def _differ(stored: str | None, digest: str | None) -> bool:
    # a request stored before digests were kept (None) replays as it always did
    return stored is not None and digest is not None and stored != digest


@dataclass(frozen=True)
class Reservation:
    id: str
    member: str
    epsilon: float
    delta: float


@dataclass
class Balance:
    epsilon_total: float
    delta_total: float
    epsilon_spent: float = 0.0
    delta_spent: float = 0.0
    refreshes_on: str | None = None  # first day of the next period (monthly budgets)
    # "basic" (epsilons add) or "zcdp" (pure parts accounted in zCDP: dp.compose), and
    # what basic composition alone would say, so members can see what the choice saved
    accounting: str = "basic"
    epsilon_basic: float = 0.0
    epsilon_zcdp: float | None = None  # the zCDP accounting's figure (None: not possible)

    @property
    def epsilon_remaining(self) -> float:
        return max(self.epsilon_total - self.epsilon_spent, 0.0)

    @property
    def delta_remaining(self) -> float:
        return max(self.delta_total - self.delta_spent, 0.0)

    def to_dict(self) -> dict[str, object]:
        return {"epsilon_total": self.epsilon_total, "epsilon_spent": self.epsilon_spent,
                "epsilon_remaining": self.epsilon_remaining, "delta_total": self.delta_total,
                "delta_spent": self.delta_spent, "delta_remaining": self.delta_remaining,
                "refreshes_on": self.refreshes_on, "accounting": self.accounting,
                "epsilon_basic": self.epsilon_basic, "epsilon_zcdp": self.epsilon_zcdp}


def balance_of(epsilon: float, delta: float, charges: list[Cost],
               refreshes_on: str | None = None) -> Balance:
    """The balance of a member's charges: the smaller of basic and zCDP accounting."""
    basic = compose(charges)
    z = zcdp_accounting(basic, delta)
    spent = z if z.epsilon < basic.epsilon else basic
    return Balance(epsilon, delta, spent.epsilon, spent.delta, refreshes_on,
                   "zcdp" if spent is z else "basic", basic.epsilon,
                   None if z is basic else z.epsilon)


class Ledger(Protocol):
    def reserve(self, member: str, cost: Cost, *, sql: str = "", rewritten: str = "",
                request_id: str | None = None,
                request_digest: str | None = None) -> Reservation: ...
    def commit(self, reservation: Reservation, *, release_id: str = "",
               values_digest: str = "", rows: int = 0, suppressed: int = 0,
               response: dict[str, Any] | None = None, replay_key: str | None = None,
               request_id: str | None = None) -> None: ...
    def replay(self, member: str, replay_key: str, *, sql: str = "",
               request_id: str | None = None,
               request_digest: str | None = None) -> dict[str, Any] | None: ...
    def fail(self, reservation: Reservation, error_code: str) -> None: ...
    def cancel(self, reservation: Reservation) -> None: ...
    def refused(self, member: str, sql: str, rule: str, message: str) -> None: ...
    def balance(self, member: str) -> Balance: ...


def replay_key(sql: str, epsilon: float, policy_id: str, policy_hash: str,
               tables: list[str]) -> str:
    """Hex SHA-256 of what makes two questions the same release: the exact SQL text, the
    epsilon it is answered at, the policy (id and content) and the dataset versions read.
    A later request with the same key gets the stored answer, free (post-processing)."""
    text = json.dumps({"sql": sql, "epsilon": float(epsilon), "policy": policy_id,
                       "policy_sha256": policy_hash, "tables": sorted(tables)},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def attribution(actor: str, policy_id: str, sha256: str,
                reviewed: int | None) -> dict[str, Any]:
    """Who asks and under which policy text, for every query record: the actor (the hub
    user of a service request, the OS user of a CLI command) and the policy's id, SHA-256
    and reviewed scenario version (None: a policy nobody reviewed, answered ad hoc)."""
    return {"actor": actor, "policy": {"id": policy_id, "version": reviewed, "sha256": sha256}}


def exceeded(cost: Cost, b: Balance) -> BudgetExceededError:
    refresh = f"; it refreshes on {b.refreshes_on}" if b.refreshes_on else ""
    return BudgetExceededError(
        f"this query costs epsilon {cost.epsilon:.4g} (delta {cost.delta:.2g}) but only epsilon "
        f"{b.epsilon_remaining:.4g} (delta {b.delta_remaining:.2g}) remains of your budget"
        f"{refresh}",
        "ask with a smaller epsilon, or ask the operator for more budget",
    )


def fits(spent: Cost, total_eps: float, total_delta: float) -> bool:
    return spent.epsilon <= total_eps + _SLACK and spent.delta <= total_delta + _SLACK * 1e-6


def refundable(rest: list[Cost], charges: list[Cost], total_eps: float,
               total_delta: float) -> bool:
    """Whether dropping a charge (leaving ``rest``) keeps the others within the budget.

    ``compose`` is not monotone in delta: a Gaussian charge with a large delta can lower
    the composed epsilon of all charges, so later charges may have been admitted only
    because of it. Refunding it then would leave the member over budget; it stands instead.
    """
    before = compose(charges, total_delta)
    return fits(compose(rest, total_delta), max(total_eps, before.epsilon),
                max(total_delta, before.delta))



class InMemoryLedger:
    """Per-member budgets in memory; check-and-charge under one lock."""

    def __init__(self, epsilon: float, delta: float) -> None:
        self._limits = (epsilon, delta)
        self._charges: dict[str, list[Cost]] = {}
        self._open: dict[str, tuple[Reservation, Cost]] = {}
        self._releases: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def balance(self, member: str) -> Balance:
        with self._lock:
            return balance_of(*self._limits, self._charges.get(member, []))

    def reserve(self, member: str, cost: Cost, *, sql: str = "", rewritten: str = "",
                request_id: str | None = None,
                request_digest: str | None = None) -> Reservation:
        with self._lock:
            charges = self._charges.setdefault(member, [])
            if not fits(compose([*charges, cost], self._limits[1]), *self._limits):
                raise exceeded(cost, balance_of(*self._limits, charges))
            charges.append(cost)
            r = Reservation(uuid.uuid4().hex, member, cost.epsilon, cost.delta)
            self._open[r.id] = (r, cost)
            return r

    def commit(self, reservation: Reservation, *, response: dict[str, Any] | None = None,
               replay_key: str | None = None, **_: object) -> None:
        with self._lock:
            if self._open.pop(reservation.id, None) is not None and replay_key and response:
                self._releases[(reservation.member, replay_key)] = response

    def replay(self, member: str, replay_key: str, **_: object) -> dict[str, Any] | None:
        with self._lock:
            return self._releases.get((member, replay_key))

    def fail(self, reservation: Reservation, error_code: str) -> None:
        with self._lock:
            self._open.pop(reservation.id, None)

    def cancel(self, reservation: Reservation) -> None:
        """Return a reservation whose execution never started (see ``refundable``)."""
        with self._lock:
            entry = self._open.pop(reservation.id, None)
            if entry is not None:
                charges = self._charges[reservation.member]
                rest = list(charges)
                rest.remove(entry[1])
                if refundable(rest, charges, *self._limits):
                    self._charges[reservation.member] = rest

    def refused(self, member: str, sql: str, rule: str, message: str) -> None:
        pass


def period_of(refresh: str, when: dt.datetime) -> tuple[str, str | None]:
    """(period label, first day of the next period) for a refresh rule."""
    if refresh != "monthly":
        return "all", None
    nxt = (when.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
    return when.strftime("%Y-%m"), nxt.date().isoformat()




# The durable ledger and the released answers live in ``sandbox.ledger_state`` (it imports
# this module, so they are looked up on first use instead of imported here).
_IN_STATE = ("StateLedger", "SqliteLedger", "ReleasedAnswer", "released_answer",
             "released_answers")


def __getattr__(name: str) -> Any:
    if name in _IN_STATE:
        from . import ledger_state

        return getattr(ledger_state, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
