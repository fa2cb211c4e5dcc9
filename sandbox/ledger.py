"""Privacy budget accounting: reserve before execution, commit after.

``Ledger`` is the interface the gate charges; ``InMemoryLedger`` keeps balances
in one process (tests, the CLI). A durable, multi-process ledger implements the
same interface. A reservation is never refunded once execution has started.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import Protocol

from .dp import Cost
from .errors import SandboxError

_EPS_SLACK = 1e-9


class BudgetExceededError(SandboxError):
    code = "budget.exhausted"


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

    @property
    def epsilon_remaining(self) -> float:
        return max(self.epsilon_total - self.epsilon_spent, 0.0)

    @property
    def delta_remaining(self) -> float:
        return max(self.delta_total - self.delta_spent, 0.0)


class Ledger(Protocol):
    def reserve(self, member: str, cost: Cost) -> Reservation: ...
    def commit(self, reservation: Reservation) -> None: ...
    def cancel(self, reservation: Reservation) -> None: ...
    def balance(self, member: str) -> Balance: ...


class InMemoryLedger:
    """Per-member budgets in memory; check-and-charge under one lock."""

    def __init__(self, epsilon: float, delta: float) -> None:
        self._limits = (epsilon, delta)
        self._balances: dict[str, Balance] = {}
        self._open: dict[str, Reservation] = {}
        self._lock = threading.Lock()

    def balance(self, member: str) -> Balance:
        with self._lock:
            return self._get(member)

    def _get(self, member: str) -> Balance:
        if member not in self._balances:
            self._balances[member] = Balance(*self._limits)
        return self._balances[member]

    def reserve(self, member: str, cost: Cost) -> Reservation:
        with self._lock:
            b = self._get(member)
            if b.epsilon_spent + cost.epsilon > b.epsilon_total + _EPS_SLACK or \
                    b.delta_spent + cost.delta > b.delta_total + _EPS_SLACK * 1e-6:
                raise BudgetExceededError(
                    f"this query costs epsilon {cost.epsilon:.4g} (delta {cost.delta:.2g}) but "
                    f"only epsilon {b.epsilon_remaining:.4g} (delta {b.delta_remaining:.2g}) "
                    "remains of your budget",
                    "ask with a smaller epsilon, or ask the operator for more budget",
                )
            b.epsilon_spent += cost.epsilon
            b.delta_spent += cost.delta
            r = Reservation(uuid.uuid4().hex, member, cost.epsilon, cost.delta)
            self._open[r.id] = r
            return r

    def commit(self, reservation: Reservation) -> None:
        with self._lock:
            self._open.pop(reservation.id, None)

    def cancel(self, reservation: Reservation) -> None:
        """Return a reservation whose execution never started."""
        with self._lock:
            if self._open.pop(reservation.id, None) is None:
                return
            b = self._get(reservation.member)
            b.epsilon_spent -= reservation.epsilon
            b.delta_spent -= reservation.delta
