"""The durable ledger: budgets, charges and requests in the state database.

``StateLedger`` keeps the ledger of one workspace in the state database
(``sandbox.state``, on SQLite or PostgreSQL): each charge and its audit record are
written in one transaction, and every writing transaction holds the database's one
writer lock, so check-and-charge is atomic across threads, processes and replicas.
The accounting itself (``compose``, ``fits``, ``refundable``) is ``sandbox.ledger``'s.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .audit import cap_text
from .dp import Cost, compose
from .errors import InputError, SandboxError, suggest
from .ledger import (
    Balance,
    DuplicateRequestError,
    LedgerError,
    PriorRequest,
    RequestConflictError,
    Reservation,
    _differ,
    balance_of,
    exceeded,
    fits,
    period_of,
    refundable,
)
from .policy import BudgetPolicy

if TYPE_CHECKING:  # the state is passed in: the ledger never opens one
    from .state import State
    from .statedb import Connection

# A charge's cost as stored; pure_epsilon and pure_rho are NULL in charges made before
# pure parts were accounted in zCDP (then Cost derives them: all pure if delta and rho are 0)
_COST_COLUMNS = "epsilon, delta, rho, zcdp_epsilon, zcdp_delta, pure_epsilon, pure_rho"


@dataclass(frozen=True)
class ReleasedAnswer:
    """A stored answer of a workspace: who asked, the JSON answer (holding its release id)
    and the SQL its charge recorded. What the export airlock matches exports against."""

    member: str
    response: dict[str, Any]
    sql: str | None


# The ledger owns requests and charges, and wrote the query.charged record that holds the
# SQL: other modules ask for released answers here instead of joining these tables.
_RELEASE_ID = re.compile(r"[0-9a-f]{32}")
_RELEASED = """
SELECT r.member, r.response, a.body FROM requests r
LEFT JOIN charges c ON c.id = r.charge_id
LEFT JOIN audit_records a ON a.seq = c.opened_seq
WHERE r.workspace = ? AND r.response IS NOT NULL
"""


def _released(member: str, response: str, body: str | None) -> ReleasedAnswer | None:
    try:
        d = json.loads(response)
        sql = json.loads(body).get("sql") if body else None
    except ValueError:
        return None
    if not isinstance(d, dict) or not d.get("release_id"):
        return None
    return ReleasedAnswer(member, d, sql)


def released_answer(con: Connection, workspace: str,
                    release_id: str) -> ReleasedAnswer | None:
    """The answer of ``workspace`` that carries ``release_id`` (None: no such release, or
    one of another workspace)."""
    if not _RELEASE_ID.fullmatch(release_id):  # ids are the gate's uuid4 hex
        return None
    # matched on the stored text, then read in Python: no JSON parsing in the database,
    # which (PostgreSQL's json and jsonb) refuses a whole answer that holds a \u0000
    for row in con.execute(_RELEASED + " AND r.response LIKE ?",
                           (workspace, f'%"release_id": "{release_id}"%')):
        answer = _released(*row)
        if answer is not None and answer.response.get("release_id") == release_id:
            return answer
    return None


def released_answers(con: Connection, workspace: str) -> list[ReleasedAnswer]:
    """Every stored answer of ``workspace`` that carries a release id."""
    return [a for row in con.execute(_RELEASED, (workspace,))
            if (a := _released(*row)) is not None]



_REPLAYABLE = ("SELECT r.charge_id, r.response FROM releases r JOIN charges c ON c.id = "
               "r.charge_id WHERE r.workspace = ? AND r.member = ? AND r.replay_key = ? AND "
               "c.state = 'committed'")


class StateLedger:
    """The durable ledger of one workspace, in the state database (``sandbox.state``).

    ``attribution`` (``attribution``: who asks, under which policy text) goes into every
    query record it writes, so the audit log says who did what under which policy.
    """

    def __init__(self, state: State, workspace: str, default: BudgetPolicy,
                 clock: Callable[[], dt.datetime] | None = None,
                 attribution: dict[str, Any] | None = None) -> None:
        self.state, self.workspace, self.default = state, workspace, default
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.attribution = dict(attribution or {})

    def _append(self, con: Connection, kind: str, member: str, **fields: Any) -> int:
        return int(self.state.append(con, kind, workspace=self.workspace, member=member,
                                     **self.attribution, **fields))

    @classmethod
    def open(cls, state: State, workspace: str, policy_id: str,
             default: BudgetPolicy, attribution: dict[str, Any] | None = None) -> StateLedger:
        """The ledger of ``workspace``, remembering its scenario and default member budget."""
        with state.transaction() as con:
            row = con.execute("SELECT policy_id, state FROM workspaces WHERE name = ?",
                              (workspace,)).fetchone()
            if row is not None and row[1] != "ad-hoc":
                raise LedgerError(
                    f"{workspace!r} is a provisioned workspace; its ledger is the service's",
                    "query it through the service, or pass another --workspace name")
            if row is not None and row[0] != policy_id:
                raise LedgerError(f"the ledger {workspace!r} belongs to the policy "
                                  f"{row[0]!r}, not {policy_id!r}",
                                  f"charge adhoc:{policy_id} (leave out --workspace) or "
                                  "another ad-hoc ledger")
            if row is None:  # the budget defaults are the first policy's: an edited
                # policy file never raises them (operators change budgets with budget set)
                con.execute("INSERT INTO workspaces (name, policy_id, epsilon, delta, "
                            "refresh) VALUES (?,?,?,?,?)", (workspace, policy_id,
                                                           default.epsilon, default.delta,
                                                           default.refresh))
        return cls.existing(state, workspace, attribution=attribution)

    @classmethod
    def existing(cls, state: State, workspace: str,
                 attribution: dict[str, Any] | None = None) -> StateLedger:
        row = state.con.execute("SELECT epsilon, delta, refresh FROM workspaces WHERE name = ?",
                                (workspace,)).fetchone()
        if row is None:
            known = [r[0] for r in state.con.execute("SELECT name FROM workspaces ORDER BY 1")]
            raise LedgerError(f"unknown workspace {workspace!r}",
                              suggest(workspace, known, "workspaces"))
        return cls(state, workspace, BudgetPolicy(float(row[0]), float(row[1]), str(row[2])),
                   attribution=attribution)

    # -- reading ---------------------------------------------------------------------------
    def _limits(self, con: Connection, member: str) -> tuple[float, float, str]:
        row = con.execute("SELECT epsilon_total, delta_total, refresh FROM budgets WHERE "
                          "workspace = ? AND member = ?", (self.workspace, member)).fetchone()
        if row is None:
            return self.default.epsilon, self.default.delta, self.default.refresh
        return float(row[0]), float(row[1]), str(row[2])

    def _spent(self, con: Connection, member: str, period: str) -> list[Cost]:
        rows = con.execute(
            f"SELECT {_COST_COLUMNS} FROM charges WHERE "
            "workspace = ? AND member = ? AND period = ? AND state != 'cancelled'",
            (self.workspace, member, period)).fetchall()
        return [Cost(*r) for r in rows]

    def _balance(self, con: Connection, member: str) -> tuple[Balance, str, list[Cost]]:
        eps, delta, refresh = self._limits(con, member)
        period, nxt = period_of(refresh, self.clock())
        charges = self._spent(con, member, period)
        return balance_of(eps, delta, charges, nxt), period, charges

    def balance(self, member: str) -> Balance:
        return self._balance(self.state.con, member)[0]

    # -- charging --------------------------------------------------------------------------
    def prior(self, member: str, request_id: str) -> PriorRequest | None:
        """What became of an earlier request with this id (for idempotent retries)."""
        row = self.state.con.execute(
            "SELECT r.charge_id, c.state, r.response, r.request_digest FROM requests r JOIN "
            "charges c ON c.id = r.charge_id WHERE r.workspace = ? AND r.member = ? AND "
            "r.request_id = ?", (self.workspace, member, request_id)).fetchone()
        if row is None:
            return None
        return PriorRequest(row[0], row[1], json.loads(row[2]) if row[2] else None, row[3])

    def reserve(self, member: str, cost: Cost, *, sql: str = "", rewritten: str = "",
                request_id: str | None = None,
                request_digest: str | None = None) -> Reservation:
        """Charge ``cost`` and record the query; refuse (recorded, free) what does not fit.

        ``request_digest`` (see ``request_digest``) is kept with ``request_id``: the id
        reused for a different question is a ``RequestConflictError``.
        """
        refusal: SandboxError | None = None
        asked = cap_text(sql)
        with self.state.transaction() as con:
            self._check_new_request(con, member, request_id, request_digest)
            b, period, charges = self._balance(con, member)
            if not fits(compose([*charges, cost], b.delta_total), b.epsilon_total,
                        b.delta_total):
                refusal = exceeded(cost, b)
                self._append(con, "query.refused", member, sql=asked.text,
                             sql_sha256=asked.sha256, sql_length=asked.length,
                             rule=refusal.code, message=cap_text(refusal.message).text)
            else:
                cid = uuid.uuid4().hex
                seq = self._append(con, "query.charged", member, charge_id=cid, sql=asked.text,
                                   sql_sha256=asked.sha256, sql_length=asked.length,
                                   rewritten_sql=cap_text(rewritten).text,
                                   epsilon=cost.epsilon, delta=cost.delta, rho=cost.rho)
                con.execute("INSERT INTO charges (id, workspace, member, period, epsilon, "
                            "delta, rho, zcdp_epsilon, zcdp_delta, pure_epsilon, pure_rho, "
                            "state, created, opened_seq) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                            (cid, self.workspace, member, period, cost.epsilon, cost.delta,
                             cost.rho, cost.zcdp_epsilon, cost.zcdp_delta, cost.pure_epsilon,
                             cost.pure_rho, "reserved", time.time(), seq))
                if request_id is not None:
                    con.execute("INSERT INTO requests (workspace, member, request_id, charge_id, "
                                "request_digest) VALUES (?,?,?,?,?)",
                                (self.workspace, member, request_id, cid, request_digest))
        if refusal is not None:
            raise refusal
        return Reservation(cid, member, cost.epsilon, cost.delta)

    def _check_new_request(self, con: Connection, member: str, request_id: str | None,
                           digest: str | None) -> None:
        seen = None if request_id is None else con.execute(
            "SELECT request_digest FROM requests WHERE workspace = ? AND member = ? AND "
            "request_id = ?", (self.workspace, member, request_id)).fetchone()
        if seen is not None:
            if _differ(seen[0], digest):
                raise RequestConflictError(
                    f"request {request_id} was already used for a different query",
                    "use a new request id for a new question")
            raise DuplicateRequestError(
                f"request {request_id} was already received and charged once",
                "fetch its answer by sending the same request again once it has finished, "
                "or use a new request id for a new question")

    def replay(self, member: str, replay_key: str, *, sql: str = "",
               request_id: str | None = None,
               request_digest: str | None = None) -> dict[str, Any] | None:
        """The stored answer of the member's earlier identical question (``replay_key``),
        recorded as ``query.replayed`` and charged nothing; None when there is none.

        Returning a release already paid for is post-processing: it reveals nothing new.
        The request id, if any, is kept so that its retries get the same answer.
        """
        args = (self.workspace, member, replay_key)
        if self.state.con.execute(_REPLAYABLE, args).fetchone() is None:
            return None  # the common case: no writer lock taken (a release is never undone)
        with self.state.transaction() as con:
            row = con.execute(_REPLAYABLE, args).fetchone()
            if row is None:
                return None
            self._check_new_request(con, member, request_id, request_digest)
            response = {**json.loads(row[1]), "replayed": True}
            asked = cap_text(sql)
            self._append(con, "query.replayed", member, charge_id=row[0],
                         release_id=response.get("release_id"), sql=asked.text,
                         sql_sha256=asked.sha256, sql_length=asked.length, epsilon=0.0,
                         delta=0.0)
            if request_id is not None:
                con.execute("INSERT INTO requests (workspace, member, request_id, charge_id, "
                            "request_digest, response) VALUES (?,?,?,?,?,?)",
                            (self.workspace, member, request_id, row[0], request_digest,
                             json.dumps(response, ensure_ascii=False)))
        return response

    def _close(self, reservation: Reservation, state: str, kind: str, **fields: object) -> None:
        response = fields.pop("_response", None)
        key = fields.pop("_replay_key", None)
        request_id = fields.pop("_request_id", None)
        with self.state.transaction() as con:
            row = con.execute("SELECT state, period FROM charges WHERE id = ?",
                              (reservation.id,)).fetchone()
            if row is None or row[0] != "reserved":
                return  # already closed (e.g. by recovery): never twice
            if state == "cancelled" and not self._refundable(con, reservation, row[1]):
                state, kind, fields = "failed", "query.failed", {
                    "error_code": "budget.not_refundable", "epsilon": reservation.epsilon,
                    "delta": reservation.delta}
            seq = self._append(con, kind, reservation.member, charge_id=reservation.id,
                               **fields)
            con.execute("UPDATE charges SET state = ?, closed_seq = ? WHERE id = ?",
                        (state, seq, reservation.id))
            if response is not None and state == "committed":
                text = json.dumps(response, ensure_ascii=False)
                if request_id is not None:
                    con.execute("UPDATE requests SET response = ? WHERE charge_id = ?",
                                (text, reservation.id))
                if key is not None:  # the latest answer to a question is the one replayed
                    con.execute("INSERT INTO releases VALUES (?,?,?,?,?) ON CONFLICT "
                                "(workspace, member, replay_key) DO UPDATE SET charge_id = "
                                "excluded.charge_id, response = excluded.response",
                                (self.workspace, reservation.member, key, reservation.id,
                                 text))

    def commit(self, reservation: Reservation, *, release_id: str = "",
               values_digest: str = "", rows: int = 0, suppressed: int = 0,
               response: dict[str, Any] | None = None, replay_key: str | None = None,
               request_id: str | None = None) -> None:
        """Close a reservation as answered; ``response`` is stored for retries of
        ``request_id`` and for free replays of the same question (``replay_key``)."""
        self._close(reservation, "committed", "query.answered", release_id=release_id,
                    values_digest=values_digest, rows=rows, epsilon=reservation.epsilon,
                    delta=reservation.delta, suppressed_groups=suppressed,
                    _response=response, _replay_key=replay_key, _request_id=request_id)

    def fail(self, reservation: Reservation, error_code: str) -> None:
        self._close(reservation, "failed", "query.failed", error_code=error_code,
                    epsilon=reservation.epsilon, delta=reservation.delta)

    def cancel(self, reservation: Reservation) -> None:
        """Refund a reservation whose execution never started (unless ``refundable`` says
        the refund would leave the member over budget: then it stands, as a failed query)."""
        self._close(reservation, "cancelled", "query.cancelled")

    def _refundable(self, con: Connection, reservation: Reservation, period: str) -> bool:
        eps, delta, _ = self._limits(con, reservation.member)
        rows = con.execute(
            f"SELECT id, {_COST_COLUMNS} FROM charges WHERE "
            "workspace = ? AND member = ? AND period = ? AND state != 'cancelled'",
            (self.workspace, reservation.member, period)).fetchall()
        charges = [Cost(*r[1:]) for r in rows]
        rest = [Cost(*r[1:]) for r in rows if r[0] != reservation.id]
        return refundable(rest, charges, eps, delta)

    def refused(self, member: str, sql: str, rule: str, message: str) -> None:
        """Record a refusal (free): the SQL capped (``audit.cap_text``), with its hash and
        length."""
        asked = cap_text(sql)
        self.state.record("query.refused", workspace=self.workspace, member=member,
                          **self.attribution, sql=asked.text, sql_sha256=asked.sha256,
                          sql_length=asked.length, rule=rule, message=cap_text(message).text)

    # -- operators -------------------------------------------------------------------------
    def set_budget(self, member: str, *, epsilon: float | None = None,
                   delta: float | None = None, add: bool = False, actor: str = "") -> Balance:
        """Set (or with ``add``, grant more of) a member's budget; audited."""
        for name, value in (("epsilon", epsilon), ("delta", delta)):
            if value is not None and (value != value or value < 0 or value == float("inf")
                                      or (name == "delta" and not add and value >= 1)):
                raise InputError(f"{name} must be a finite number >= 0"
                                 + (" and below 1" if name == "delta" else ""),
                                 "e.g. --epsilon 5 --delta 1e-5")
        with self.state.transaction() as con:
            row = con.execute("SELECT state FROM workspaces WHERE name = ?",
                              (self.workspace,)).fetchone()
            if row is not None and row[0] == "closed":
                raise LedgerError(f"workspace {self.workspace!r} is closed; its ledger is "
                                  "frozen", "provision a new workspace")
            eps0, delta0, refresh = self._limits(con, member)
            eps1 = (eps0 + (epsilon or 0)) if add else (epsilon if epsilon is not None else eps0)
            delta1 = (delta0 + (delta or 0)) if add else (delta if delta is not None else delta0)
            con.execute("INSERT INTO budgets VALUES (?,?,?,?,?) ON CONFLICT (workspace, "
                        "member) DO UPDATE SET epsilon_total = excluded.epsilon_total, "
                        "delta_total = excluded.delta_total, refresh = excluded.refresh",
                        (self.workspace, member, eps1, delta1, refresh))
            self.state.append(con, "budget.changed", workspace=self.workspace, member=member,
                              actor=actor or None, operation="grant" if add else "set",
                              epsilon_total=eps1, delta_total=delta1, refresh=refresh)
        return self.balance(member)

    def members(self) -> list[str]:
        rows = self.state.con.execute(
            "SELECT member FROM budgets WHERE workspace = ? UNION SELECT member FROM charges "
            "WHERE workspace = ? ORDER BY 1", (self.workspace, self.workspace)).fetchall()
        return [r[0] for r in rows]


SqliteLedger = StateLedger  # its name from when the state was SQLite only
