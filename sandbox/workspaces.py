"""Workspaces: an approved scenario version, members with a budget each, an expiry, a state.

The records in the state database are the truth the service checks on every request, so
removing a member, suspending or closing takes effect with the next request. The hub's
groups and users mirror the records (``sandbox.hubsync``); until the first mirroring
succeeds a workspace stays ``provisioning`` and answers nothing. Every change is written
with its audit record in one transaction.

States: provisioning -> active <-> suspended; active | suspended -> closed (final).
"Expired" is not stored: a workspace past its expiry refuses queries by itself.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import InputError, SandboxError
from .ledger_state import StateLedger
from .policy import DEFAULT_BUDGET_DELTA, DEFAULT_REFRESH, BudgetPolicy
from .scenarios import Scenarios
from .state import State
from .statedb import Connection

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
MEMBER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
STATES = ("provisioning", "active", "suspended", "closed")


class WorkspaceError(SandboxError):
    code = "workspace.error"


class WorkspaceNotFoundError(WorkspaceError):
    code = "workspace.not_found"


class WorkspaceForbiddenError(WorkspaceError):
    code = "workspace.forbidden"


class WorkspaceUnavailableError(WorkspaceError):
    """The workspace exists and the member belongs to it, but it answers nothing now."""

    def __init__(self, code: str, message: str, hint: str) -> None:
        super().__init__(message, hint)
        self.code = code


def parse_expiry(text: str, today: dt.date | None = None) -> str:
    """A date (YYYY-MM-DD, last day of use, UTC) in the future."""
    try:
        day = dt.date.fromisoformat(str(text).strip())
    except ValueError:
        raise InputError(f"--expires {text!r} is not a date", "write YYYY-MM-DD, e.g. "
                         "--expires 2027-03-31 (the last day of use, UTC)") from None
    today = today or dt.datetime.now(dt.UTC).date()
    if day < today:
        raise InputError(f"--expires {day.isoformat()} is in the past",
                         f"give today ({today.isoformat()}) or a later date")
    return day.isoformat()


def expiry_instant(expires: str) -> dt.datetime:
    """The end of the last day of use (UTC)."""
    day = dt.date.fromisoformat(expires)
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC)


def check_budget(epsilon: float | None, delta: float | None) -> None:
    for name, value, high in (("epsilon", epsilon, None), ("delta", delta, 1.0)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value \
                or value <= 0 or value == float("inf") or (high is not None and value >= high):
            raise InputError(f"--budget-{name} must be a positive finite number"
                             + (" below 1" if high else "") + f", not {value!r}",
                             "e.g. --budget-epsilon 5 --budget-delta 1e-6")


def check_member(name: str) -> str:
    """The one rule for a member name: a hub user name that is also a valid system user
    name (the hub spawns each member's server as that user), so at most 32 characters."""
    if not MEMBER_RE.match(name):
        raise InputError(f"invalid member name {name[:40]!r}",
                         "hub user names: lower-case letters, digits, '_', '.', '-', "
                         "starting with a letter or '_' (at most 32)")
    return name


def check_members(members: Iterable[str]) -> list[str]:
    out: list[str] = []
    for m in members:
        m = check_member(m.strip())
        if m not in out:
            out.append(m)
    return out


@dataclass
class WorkspaceRecord:
    name: str
    scenario: str
    scenario_version: int
    state: str
    expires: str
    created: str
    epsilon: float
    delta: float
    refresh: str
    hub_status: str | None
    hub_error: str | None
    members: list[str] = field(default_factory=list)

    def expired(self, now: dt.datetime | None = None) -> bool:
        return (now or dt.datetime.now(dt.UTC)) >= expiry_instant(self.expires)

    def effective_state(self, now: dt.datetime | None = None) -> str:
        if self.state in ("active", "suspended") and self.expired(now):
            return "expired"
        return self.state

    @property
    def open(self) -> bool:
        return self.effective_state() in ("provisioning", "active", "suspended")

    def budget_policy(self) -> BudgetPolicy:
        return BudgetPolicy(self.epsilon, self.delta, self.refresh)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "scenario": self.scenario,
                "scenario_version": self.scenario_version, "state": self.effective_state(),
                "expires": self.expires, "created": self.created,
                "budget_default": {"epsilon": self.epsilon, "delta": self.delta,
                                   "refresh": self.refresh},
                "hub": {"status": self.hub_status, "error": self.hub_error},
                "members": list(self.members)}


_COLUMNS = ("name, policy_id, scenario_version, state, expires, created, epsilon, delta, "
            "refresh, hub_status, hub_error")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class Workspaces:
    """Provisioned workspaces in the state database (one ``State`` connection)."""

    def __init__(self, state: State) -> None:
        self.state = state

    # -- reading ---------------------------------------------------------------------------
    def _get(self, con: Connection, name: str) -> WorkspaceRecord | None:
        row = con.execute(f"SELECT {_COLUMNS} FROM workspaces WHERE name = ? AND state != "
                          "'ad-hoc'", (name,)).fetchone()
        if row is None:
            return None
        rec = WorkspaceRecord(row[0], row[1], int(row[2]), row[3], row[4], row[5],
                              float(row[6]), float(row[7]), row[8], row[9], row[10])
        rec.members = [r[0] for r in con.execute(
            "SELECT member FROM members WHERE workspace = ? ORDER BY member", (name,))]
        return rec

    def get(self, name: str) -> WorkspaceRecord:
        rec = self._get(self.state.con, name)
        if rec is None:
            raise WorkspaceNotFoundError(f"there is no workspace {name!r}",
                                         "list them with `sandbox workspace list`")
        return rec

    def names(self) -> list[str]:
        return [r[0] for r in self.state.con.execute(
            "SELECT name FROM workspaces WHERE state != 'ad-hoc' ORDER BY name")]

    def all(self) -> list[WorkspaceRecord]:
        return [self.get(n) for n in self.names()]

    def of_member(self, member: str) -> list[WorkspaceRecord]:
        names = [r[0] for r in self.state.con.execute(
            "SELECT m.workspace FROM members m JOIN workspaces w ON w.name = m.workspace "
            "WHERE m.member = ? ORDER BY m.workspace", (member,))]
        return [self.get(n) for n in names]

    def access(self, name: str, member: str,
               now: dt.datetime | None = None) -> WorkspaceRecord:
        """The workspace if ``member`` may query it now; else the refusal that says why."""
        rec = self._get(self.state.con, name)
        if rec is None:
            raise WorkspaceNotFoundError(f"there is no workspace {name!r}",
                                         "list yours with GET workspaces")
        if member not in rec.members:
            raise WorkspaceForbiddenError(f"you are not a member of workspace {name!r}",
                                          "ask the operator to add you to it")
        state = rec.effective_state(now)
        if state == "active":
            return rec
        reasons = {
            "provisioning": ("workspace.provisioning", "is still being set up",
                             "try again later; the operator finishes it with `sandbox "
                             "workspace sync`"),
            "suspended": ("workspace.suspended", "is suspended by the operator",
                          "ask the operator why and when it resumes"),
            "expired": ("workspace.expired", f"expired at the end of {rec.expires} (UTC)",
                        "ask the operator to extend it or to provision a new workspace"),
            "closed": ("workspace.closed", "is closed; it answers no more queries",
                       "its audit records remain; ask the operator for a new workspace"),
        }
        code, what, hint = reasons[state]
        raise WorkspaceUnavailableError(code, f"workspace {name!r} {what}", hint)

    def ledger(self, rec: WorkspaceRecord) -> StateLedger:
        return StateLedger(self.state, rec.name, rec.budget_policy())

    # -- changing --------------------------------------------------------------------------
    def _require(self, con: Connection, name: str, *states: str) -> WorkspaceRecord:
        rec = self._get(con, name)
        if rec is None:
            raise WorkspaceNotFoundError(f"there is no workspace {name!r}",
                                         "list them with `sandbox workspace list`")
        if states and rec.state not in states:
            raise WorkspaceError(f"workspace {name!r} is {rec.state}; this needs it to be "
                                 + " or ".join(states),
                                 "see `sandbox workspace show " + name + "`")
        return rec

    def create(self, name: str, *, scenario: str, version: int | None, members: list[str],
               epsilon: float, delta: float | None, expires: str, actor: str,
               today: dt.date | None = None) -> WorkspaceRecord:
        """Record a workspace in state ``provisioning`` (the hub is mirrored next)."""
        if not NAME_RE.match(name or ""):
            raise InputError(f"invalid workspace name {name!r}",
                             "use 1-64 lower-case letters, digits, '.', '_' or '-', starting "
                             "with a letter or digit (it becomes the hub group's name)")
        members = check_members(members)
        if not members:
            raise InputError("a workspace needs at least one member", "e.g. --members alice,bob")
        expires = parse_expiry(expires, today)
        sv = Scenarios(self.state).get(scenario, version)
        # the approved policy's budget section gives the delta default and the refresh
        doc = yaml.safe_load(sv.text) or {}
        pbudget = (doc.get("budget") or {}) if isinstance(doc, dict) else {}
        delta = float(delta if delta is not None else
                      pbudget.get("delta", DEFAULT_BUDGET_DELTA))
        check_budget(epsilon, delta)
        refresh = str(pbudget.get("refresh", DEFAULT_REFRESH))
        with self.state.transaction() as con:
            row = con.execute("SELECT state FROM workspaces WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] == "ad-hoc":
                raise WorkspaceError(f"the name {name!r} is taken by the ledger of operators' "
                                     f"command-line queries (`sandbox query --workspace "
                                     f"{name}`)", "choose another workspace name")
            if row is not None:
                raise WorkspaceError(f"a workspace named {name!r} already exists",
                                     "choose another name; names are never reused, so the "
                                     "audit log stays unambiguous")
            now = _now()
            con.execute(f"INSERT INTO workspaces ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (name, sv.id, sv.version, "provisioning", expires, now, float(epsilon),
                         delta, refresh, "pending", None))
            con.executemany("INSERT INTO members VALUES (?,?,?)",
                            [(name, m, now) for m in members])
            self.state.append(con, "workspace.created", workspace=name, actor=actor,
                              scenario=sv.id, scenario_version=sv.version,
                              content_hash=sv.content_hash, members=members,
                              epsilon=float(epsilon), delta=delta, refresh=refresh,
                              expires=expires)
        return self.get(name)

    def _change(self, name: str, event: str, actor: str, states: tuple[str, ...],
                new_state: str | None = None, **fields: Any) -> WorkspaceRecord:
        with self.state.transaction() as con:
            rec = self._require(con, name, *states)
            if new_state is not None:
                con.execute("UPDATE workspaces SET state = ? WHERE name = ?", (new_state, name))
            self.state.append(con, event, workspace=name, actor=actor,
                              previous_state=rec.state, **fields)
        return self.get(name)

    def add_member(self, name: str, member: str, actor: str) -> WorkspaceRecord:
        (member,) = check_members([member])
        with self.state.transaction() as con:
            rec = self._require(con, name, "provisioning", "active", "suspended")
            if member in rec.members:
                raise WorkspaceError(f"{member} is already a member of {name!r}",
                                     "see `sandbox workspace show " + name + "`")
            con.execute("INSERT INTO members VALUES (?,?,?)", (name, member, _now()))
            con.execute("UPDATE workspaces SET hub_status = 'pending' WHERE name = ?", (name,))
            self.state.append(con, "workspace.member_added", workspace=name, member=member,
                              actor=actor)
        return self.get(name)

    def remove_member(self, name: str, member: str, actor: str) -> WorkspaceRecord:
        with self.state.transaction() as con:
            rec = self._require(con, name)
            if member not in rec.members:
                raise WorkspaceError(f"{member!r} is not a member of {name!r}",
                                     f"members: {', '.join(rec.members) or 'none'}")
            con.execute("DELETE FROM members WHERE workspace = ? AND member = ?", (name, member))
            con.execute("UPDATE workspaces SET hub_status = 'pending' WHERE name = ?", (name,))
            self.state.append(con, "workspace.member_removed", workspace=name, member=member,
                              actor=actor)
        return self.get(name)

    def set_budget(self, name: str, member: str, *, epsilon: float | None,
                   delta: float | None, actor: str) -> WorkspaceRecord:
        if epsilon is None and delta is None:
            raise InputError("nothing to set", "give --epsilon and/or --delta")
        check_budget(epsilon, delta)
        rec = self.get(name)
        if rec.state == "closed":
            raise WorkspaceError(f"workspace {name!r} is closed; its ledger is frozen",
                                 "provision a new workspace")
        if member not in rec.members:
            raise WorkspaceError(f"{member!r} is not a member of {name!r}",
                                 f"members: {', '.join(rec.members) or 'none'}")
        self.ledger(rec).set_budget(member, epsilon=epsilon, delta=delta, actor=actor)
        return rec

    def suspend(self, name: str, actor: str, reason: str = "") -> WorkspaceRecord:
        return self._change(name, "workspace.suspended", actor, ("active",), "suspended",
                            reason=reason)

    def resume(self, name: str, actor: str) -> WorkspaceRecord:
        rec = self.get(name)
        if rec.state == "suspended" and rec.expired():
            raise WorkspaceError(f"workspace {name!r} expired on {rec.expires}",
                                 "extend it first with `sandbox workspace extend`")
        return self._change(name, "workspace.resumed", actor, ("suspended",), "active")

    def extend(self, name: str, expires: str, actor: str) -> WorkspaceRecord:
        expires = parse_expiry(expires)
        with self.state.transaction() as con:
            rec = self._require(con, name, "provisioning", "active", "suspended")
            con.execute("UPDATE workspaces SET expires = ? WHERE name = ?", (expires, name))
            self.state.append(con, "workspace.extended", workspace=name, actor=actor,
                              previous_expires=rec.expires, expires=expires)
        return self.get(name)

    def upgrade(self, name: str, version: int | None, actor: str) -> WorkspaceRecord:
        """Move a workspace to another approved version of its scenario (operator's call)."""
        with self.state.transaction() as con:
            rec = self._require(con, name, "provisioning", "active", "suspended")
            sv = Scenarios(self.state).get(rec.scenario, version)
            if sv.version == rec.scenario_version:
                raise WorkspaceError(f"workspace {name!r} already uses {sv.id} version "
                                     f"{sv.version}", "review the edited policy first")
            con.execute("UPDATE workspaces SET scenario_version = ? WHERE name = ?",
                        (sv.version, name))
            self.state.append(con, "workspace.scenario_changed", workspace=name, actor=actor,
                              scenario=sv.id, previous_version=rec.scenario_version,
                              scenario_version=sv.version, content_hash=sv.content_hash)
        return self.get(name)

    def close(self, name: str, actor: str) -> WorkspaceRecord:
        """Refuse every further query and freeze the ledger; nothing is deleted."""
        return self._change(name, "workspace.closed", actor,
                            ("provisioning", "active", "suspended"), "closed")

    # -- the hub mirror --------------------------------------------------------------------
    def hub_synced(self, name: str, actor: str, detail: dict[str, Any]) -> WorkspaceRecord:
        """The hub now mirrors the records: a provisioning workspace becomes active."""
        with self.state.transaction() as con:
            rec = self._require(con, name)
            state = "active" if rec.state == "provisioning" else rec.state
            con.execute("UPDATE workspaces SET hub_status = 'ok', hub_error = NULL, state = ? "
                        "WHERE name = ?", (state, name))
            self.state.append(con, "workspace.hub_synced", workspace=name, actor=actor,
                              state=state, **detail)
        return self.get(name)

    def hub_failed(self, name: str, actor: str, error: str) -> WorkspaceRecord:
        with self.state.transaction() as con:
            self._require(con, name)
            con.execute("UPDATE workspaces SET hub_status = 'failed', hub_error = ? "
                        "WHERE name = ?", (error, name))
            self.state.append(con, "workspace.hub_failed", workspace=name, actor=actor,
                              error=error)
        return self.get(name)

    def open_workspaces_of(self, member: str, besides: str) -> list[str]:
        return [r.name for r in self.of_member(member) if r.name != besides and r.open]


def provision_local(state: State, resolve: Any, policy_path: Any, name: str,
                    members: list[str], *, epsilon: float, expires: str, actor: str,
                    delta: float | None = None,
                    accept_core: Iterable[str] = ()) -> WorkspaceRecord:
    """Approve a policy (unless this text is the newest approved version) and make an active
    workspace without a hub: for benchmarks and tests that run the service on its own.
    ``accept_core`` names the core columns the review accepts (``Scenarios.review``)."""
    sv, _ = Scenarios(state).review(policy_path, resolve, reviewer="local",
                                    reference="local", actor=actor, accept_core=accept_core)
    store = Workspaces(state)
    store.create(name, scenario=sv.id, version=sv.version, members=members, epsilon=epsilon,
                 delta=delta, expires=expires, actor=actor)
    return store.hub_synced(name, actor, {"users_created": [], "group_members": members,
                                          "servers_stopped": []})
