"""The service without HTTP: approved policies, one locked engine, the state database and
the gate operations. ``Service.start`` is the one place where the parts are put together.

One locked engine holds every dataset version the open workspaces need. Gate work
(parsing, charging, executing) runs in a thread pool; each worker thread has its own
state database connection. Nothing here imports tornado, so it can be tested directly.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from .. import dummy as dummymod
from ..catalog import Catalog
from ..engine import Engine
from ..errors import EngineError, SandboxError
from ..exports import (
    ExportRequest,
    ExportStore,
    item_from_dict,
    state_context,
)
from ..exports.errors import ExportNotFoundError
from ..gate import Gate
from ..identifier_index import IdentifierIndex
from ..keys import Kms, load_kms
from ..ledger import DuplicateRequestError, attribution, request_digest
from ..ledger_state import StateLedger
from ..policy import Policy
from ..scenarios import Scenarios, load_approved
from ..settings import Paths
from ..sql.refusal import Refusal
from ..state import State
from ..workspaces import (
    WorkspaceForbiddenError,
    WorkspaceNotFoundError,
    WorkspaceRecord,
    Workspaces,
)
from .config import ServiceConfig
from .errors import Problem, QueryTimeout, escaped
from .limits import Rate, RateLimiter

log = logging.getLogger("sandbox.service")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class Workspace:
    """A provisioned workspace as served: its record and its approved policy's gate."""

    name: str
    record: WorkspaceRecord
    policy: Policy
    gate: Gate

    def schema(self) -> dict[str, Any]:
        """Tables, columns, roles, bounds and descriptions: no data and no file paths."""
        p = self.policy
        tables = {}
        for alias, t in p.tables.items():
            tables[alias] = {
                "description": t.description, "public": t.public,
                "privacy_unit": t.privacy_unit, "max_rows_per_unit": t.max_rows_per_unit,
                "columns": [{"name": c.name, "type": c.type, "role": c.role,
                             "bounds": _jsonable(c.bounds), "keys": _jsonable(c.keys),
                             "description": c.description} for c in t.columns.values()]}
        return {
            "workspace": self.name, "policy": p.id,
            "scenario_version": self.record.scenario_version, "expires": self.record.expires,
            "title": p.title, "purpose": p.purpose,
            "tables": tables,
            "joins": [{"left": ".".join(j.left), "right": ".".join(j.right), "kind": j.kind}
                      for j in p.joins],
            "privacy": {"epsilon_default": p.privacy.epsilon_default,
                        "epsilon_max": p.privacy.epsilon_max, "delta": p.privacy.delta,
                        "max_groups_per_unit": p.privacy.max_groups_per_unit,
                        "mechanism": p.privacy.mechanism},
            "budget_default": {"epsilon": self.record.epsilon, "delta": self.record.delta,
                               "refresh": self.record.refresh},
        }


class TimedExecutor:
    """The engine, with the query time limit made strict: a query that finished but took
    longer than the limit counts as timed out too (it was charged; nothing is released)."""

    def __init__(self, engine: Engine, timeout_s: float) -> None:
        self.engine, self.timeout_s = engine, timeout_s

    def execute(self, sql: str, params: list[object] | None = None,
                timeout_s: float | None = None) -> pa.Table:
        start = time.monotonic()
        try:
            result = self.engine.execute(sql, params, timeout_s)
        except EngineError:
            if time.monotonic() - start >= self.timeout_s:
                raise self._timeout() from None
            raise
        if time.monotonic() - start > self.timeout_s:
            raise self._timeout()
        return result

    def _timeout(self) -> QueryTimeout:
        return QueryTimeout(f"the query ran past its time limit of {self.timeout_s:g} s and was "
                            "stopped; it was charged", "ask a narrower question (fewer tables "
                            "or groups) or try again later")

    def bind(self, sql: str) -> pa.Schema:
        return self.engine.bind(sql)

    def postprocess(self, sql: str, table: pa.Table) -> pa.Table:
        return self.engine.postprocess(sql, table)

    def is_unique(self, table: str, column: str) -> bool:
        return self.engine.is_unique(table, column)

    def column_range(self, table: str, column: str) -> tuple[float, float] | None:
        return self.engine.column_range(table, column)


class Service:
    """Approved policies, one locked engine, the state database, and the gate operations.

    Workspace records are read on every request (a removed member, a suspension or an
    expiry applies to the next request); policies and gates are cached per approved
    scenario version, which never changes once stored.
    """

    def __init__(self, config: ServiceConfig, engine: Engine, paths: Paths, kms: Kms,
                 signer: Any) -> None:
        self.config, self.engine, self.paths, self.kms = config, engine, paths, kms
        self._signer = signer
        self.limits = config.limits
        self._local = threading.local()
        self._states: list[State] = []
        self._states_lock = threading.Lock()
        self._gates: dict[tuple[str, int], tuple[Policy, Gate]] = {}
        self._gates_lock = threading.RLock()
        self._dummies: dict[tuple[str, int], Engine] = {}  # scenario version -> dummy data
        self._dummies_lock = threading.Lock()
        self._identifiers: IdentifierIndex | None = None
        self.pool = ThreadPoolExecutor(max_workers=self.limits["workers"],
                                       thread_name_prefix="gate")
        self.active: dict[str, int] = {}  # member -> requests in flight (event loop only)
        self.rates = RateLimiter()  # event loop only
        self.held: dict[str, int] = {}  # member -> rate-limited requests held (event loop)
        self._stopping = threading.Event()
        self._sweeper: threading.Thread | None = None

    @property
    def identifiers(self) -> IdentifierIndex:
        """The identifier index of every dataset version (rebuilt when data was added)."""
        with self._gates_lock:
            if self._identifiers is None:
                catalog = Catalog(self.paths.catalog_db, self.paths.vault_dir)
                try:
                    self._identifiers = IdentifierIndex.load(catalog, self.kms)
                finally:
                    catalog.close()
            return self._identifiers

    @classmethod
    def start(cls, config: ServiceConfig) -> Service:
        """Lock an engine holding the data of every open workspace; recover reservations."""
        paths = Paths.resolve(config.home, config.keystore, config.state)
        paths.ensure_home()
        kms = load_kms(paths.keystore)
        signer = kms.audit_signing_key()
        state = State(paths.state_db, signer)
        try:
            closed = state.recover(stale_after_s=config.limits["recover_after_s"])
            if closed:
                log.warning("closed %d interrupted reservation(s) (charged, not refunded)",
                            closed)
            scenarios = Scenarios(state)
            needed: list[tuple[str, int]] = []
            for rec in Workspaces(state).all():
                if rec.open:
                    sv = scenarios.get(rec.scenario, rec.scenario_version)
                    needed += [d for d in sv.datasets.items() if d not in needed]
                    if sv.file_status() != "file matches the review":
                        log.warning("scenario %s v%d: %s", sv.id, sv.version, sv.file_status())
        finally:
            state.close()
        catalog = Catalog(paths.catalog_db, paths.vault_dir)
        try:
            engine = Engine.from_catalog(catalog, kms, needed,
                                         memory_limit=config.limits["memory_limit"],
                                         threads=config.limits["engine_threads"])
        finally:
            catalog.close()
        service = cls(config, engine, paths, kms, signer)
        _ = service.identifiers  # builds any missing index now, not at the first export
        service.start_recovery()
        return service

    def start_recovery(self) -> None:
        """Keep closing reservations left by a process that died (another replica sharing
        the state, or an earlier run), as ``query.interrupted``: charged, never refunded.

        A reservation counts as left once older than ``recover_after_s``; that must exceed
        ``query_timeout_s`` (with room to spare), or a running query could be taken for a
        dead one: then recovery runs only at start, as before."""
        after = float(self.limits["recover_after_s"])
        if after <= float(self.limits["query_timeout_s"]) or self._sweeper is not None:
            return
        every = max(1.0, min(30.0, after / 3))

        def sweep() -> None:
            while not self._stopping.wait(every):
                try:
                    closed = self.state().recover(stale_after_s=after)
                except Exception:  # logged; tried again at the next round
                    log.exception("closing interrupted reservations failed")
                    continue
                if closed:
                    log.warning("closed %d reservation(s) left by a process that stopped "
                                "(charged, not refunded)", closed)

        self._sweeper = threading.Thread(target=sweep, name="recover", daemon=True)
        self._sweeper.start()

    def close(self) -> None:
        self._stopping.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=10)
        self.pool.shutdown(wait=True, cancel_futures=True)
        with self._states_lock:
            for s in self._states:
                with contextlib.suppress(Exception):
                    s.close()
            self._states.clear()

    def rate(self, name: str) -> Rate:
        return Rate(name, self.limits[name], 3600.0 if name.endswith("_per_hour") else 60.0)

    def record_invalid(self, ws: Workspace | None, member: str, endpoint: str,
                       exc: SandboxError, raw: bytes) -> None:
        """A request.invalid audit record: a malformed request leaves a trace too."""
        self.state().record("request.invalid", workspace=ws.name if ws else None,
                            member=member, endpoint=endpoint, code=exc.code,
                            message=exc.message.encode("utf-8", "backslashreplace").decode(),
                            input=escaped(raw))

    def record_limit(self, member: str, rate: Rate, endpoint: str, count: int) -> None:
        self.state().record("limits.exceeded", member=member, limit=rate.name,
                            endpoint=endpoint, count=count, window_s=rate.window_s)

    # -- per-thread state --------------------------------------------------------------
    def state(self) -> State:
        s = getattr(self._local, "state", None)
        if s is None:
            s = State(self.paths.state_db, self._signer)
            self._local.state = s
            with self._states_lock:
                self._states.append(s)
        return s

    def ledger(self, ws: Workspace, member: str | None = None) -> StateLedger:
        """The workspace's ledger; with ``member``, its query records name that hub user as
        the actor, and the reviewed policy they are answered under."""
        who = None if member is None else attribution(
            member, ws.policy.id, ws.policy.content_hash, ws.record.scenario_version)
        return StateLedger(self.state(), ws.name, ws.record.budget_policy(), attribution=who)

    # -- operations (run in worker threads) ----------------------------------------------
    def _gate(self, rec: WorkspaceRecord) -> tuple[Policy, Gate]:
        key = (rec.scenario, rec.scenario_version)
        with self._gates_lock:
            if key not in self._gates:
                sv = Scenarios(self.state()).get(*key)
                catalog = Catalog(self.paths.catalog_db, self.paths.vault_dir)
                try:
                    policy = load_approved(sv, catalog.resolve, self.paths.home / "scenarios")
                    loaded = self.engine.load_more(catalog, self.kms, sv.datasets.items())
                finally:
                    catalog.close()
                if loaded:
                    log.info("loaded %s for scenario %s v%d", ", ".join(loaded), *key)
                self._identifiers = None  # data may have been added: reload the index
                self._gates[key] = (policy, Gate(policy))
            return self._gates[key]

    def workspace_for(self, name: str, member: str) -> Workspace:
        """The workspace if ``member`` may use it now (records are read every time).

        A workspace the member does not belong to is answered exactly like one that does
        not exist: which workspaces exist is not the business of non-members."""
        try:
            rec = Workspaces(self.state()).access(name, member)
        except (WorkspaceNotFoundError, WorkspaceForbiddenError):
            raise WorkspaceNotFoundError(f"you have no workspace {name!r}",
                                         "list yours with GET workspaces") from None
        policy, gate = self._gate(rec)
        return Workspace(name, rec, policy, gate)

    def list_workspaces(self, member: str) -> list[dict[str, Any]]:
        out = []
        for rec in Workspaces(self.state()).of_member(member):
            item: dict[str, Any] = {"name": rec.name, "state": rec.effective_state(),
                                    "scenario": rec.scenario,
                                    "scenario_version": rec.scenario_version,
                                    "expires": rec.expires}
            if item["state"] == "active":
                ws = self.workspace_for(rec.name, member)
                item.update(policy=ws.policy.id, title=ws.policy.title,
                            purpose=ws.policy.purpose,
                            budget=self.ledger(ws).balance(member).to_dict())
            out.append(item)
        return out

    def dummy_engine(self, ws: Workspace) -> Engine:
        """The engine over the dummy data of the workspace's scenario version, made on first
        use from the approved policy alone (no catalog data, no keys) and kept."""
        key = (ws.record.scenario, ws.record.scenario_version)
        with self._dummies_lock:
            engine = self._dummies.get(key)
            if engine is None:
                tables = dummymod.dummy_tables(ws.policy)
                engine = Engine.from_arrow([(t.engine_table, t.table, t.privacy_unit)
                                            for t in tables])
                self._dummies[key] = engine
                log.info("made dummy data for scenario %s v%d", *key)
            return engine

    def _check_size(self, sql: str) -> None:
        limit = self.limits["max_sql_chars"]
        if len(sql) > limit:
            raise Refusal("gate.too_large", f"the query is longer than {limit} characters",
                          "split it into smaller queries")

    def explain(self, ws: Workspace, sql: str, epsilon: float | None) -> dict[str, Any]:
        self._check_size(sql)
        return ws.gate.explain(sql, epsilon)

    def query(self, ws: Workspace, member: str, sql: str, epsilon: float | None,
              request_id: str, dummy: bool = False) -> tuple[dict[str, Any], bool]:
        """(response, replayed): answer once per request id, charging the member.

        A retry (same id, same SQL and epsilon) gets the first answer; the id reused for a
        different question is a conflict (the ledger raises it too if the two race). A new
        request for a question already answered gets that answer free (``Gate.answer``).
        With ``dummy`` the question is answered from dummy data instead (``query_dummy``).
        """
        if dummy:
            return self.query_dummy(ws, member, sql, epsilon), False
        ledger = self.ledger(ws, member)
        digest = request_digest(sql, epsilon)
        prior = ledger.prior(member, request_id)
        if prior is not None:
            if prior.conflicts(digest):
                raise Problem("request.conflict",
                              f"request {request_id} was already used for a different query",
                              "use a new request id for a new question")
            return self._replay(ledger, member, request_id, prior.state, prior.response), True
        try:
            self._check_size(sql)
        except Refusal as refusal:
            ledger.refused(member, sql, refusal.code, refusal.message)  # stored capped
            raise
        timeout = self.limits["query_timeout_s"]
        try:
            release = ws.gate.answer(sql, member=member, ledger=ledger,
                                     executor=TimedExecutor(self.engine, timeout),
                                     epsilon=epsilon, timeout_s=timeout, request_id=request_id,
                                     request_digest=digest)
        except DuplicateRequestError:  # the same id raced in from another request
            raise Problem("request.in_progress", f"request {request_id} is already running",
                          "wait for it, then send the same request again to fetch its "
                          "answer") from None
        body = release.to_dict()
        body["budget"] = ledger.balance(member).to_dict()
        return body, release.replayed

    def query_dummy(self, ws: Workspace, member: str, sql: str,
                    epsilon: float | None) -> dict[str, Any]:
        """The gate's answer over the scenario's dummy data: the same checks, refusals,
        noise and shape, nothing charged or kept (a retry is answered afresh, also free).
        The answer is a ``query.dummy`` audit record, a refusal a ``query.refused`` record
        marked dummy; ``budget`` is the member's real balance, unchanged."""
        real = self.ledger(ws, member)
        ledger = dummymod.DummyLedger(ws.name, self.state(), real)
        try:
            self._check_size(sql)
        except Refusal as refusal:
            ledger.refused(member, sql, refusal.code, refusal.message)
            raise
        timeout = self.limits["query_timeout_s"]
        release = dummymod.answer(ws.gate, sql, member=member, ledger=ledger,
                                  executor=TimedExecutor(self.dummy_engine(ws), timeout),
                                  epsilon=epsilon, timeout_s=timeout)
        body = release.to_dict()
        body["budget"] = real.balance(member).to_dict()
        return body

    # -- exports ---------------------------------------------------------------------------
    def export_store(self) -> ExportStore:
        store = getattr(self._local, "exports", None)
        if store is None:
            store = self._local.exports = ExportStore(
                self.state(), hit_limit=self.limits["export_hit_limit"],
                hit_window_s=self.limits["export_hit_window_s"],
                quota_bytes=self.limits["export_quota_bytes"])
        return store

    def _export_context(self, ws: Workspace) -> Any:
        return state_context(self.state(), ws.name, self.identifiers, gate=ws.gate,
                             min_group_count=ws.policy.export.min_group_count)

    def submit_export(self, ws: Workspace, member: str, body: dict[str, Any],
                      resubmit: str | None = None) -> dict[str, Any]:
        """A new request, or (``resubmit``) a new revision of one returned for changes."""
        items = body["items"]
        if not isinstance(items, list):
            raise Problem("input.invalid", "the field 'items' must be a list",
                          "send [{kind: frame|file, ...}, ...]")
        parsed = [item_from_dict(d) for d in items]
        ctx = self._export_context(ws)
        if resubmit is not None:
            self.own_export(ws, member, resubmit)
            return self.export_store().resubmit(
                resubmit, member, parsed, title=body.get("title"), purpose=body.get("purpose"),
                context=ctx).to_dict("requester")
        req = self.export_store().submit(
            workspace=ws.name, requester=member, title=body.get("title") or "",
            purpose=body.get("purpose") or "", items=parsed, policy=ws.policy,
            policy_version=ws.record.scenario_version, request_id=body.get("request_id"),
            context=ctx)
        return req.to_dict("requester")

    def own_export(self, ws: Workspace, member: str, export_id: str) -> ExportRequest:
        """A request of this member in this workspace (others' are 'not found')."""
        try:
            req = self.export_store().get(export_id)
        except SandboxError:
            req = None
        if req is None or req.workspace != ws.name or req.requester != member:
            raise ExportNotFoundError(f"you have no export {export_id!r} in {ws.name!r}",
                                      "list yours with GET exports")
        return req

    def list_exports(self, ws: Workspace, member: str) -> list[dict[str, Any]]:
        return [r.to_dict("requester") for r in
                self.export_store().list(workspace=ws.name, requester=member)]

    def withdraw_export(self, ws: Workspace, member: str, export_id: str,
                        comment: str) -> dict[str, Any]:
        self.own_export(ws, member, export_id)
        return self.export_store().withdraw(export_id, member, comment).to_dict("requester")

    def download_export(self, ws: Workspace, member: str, export_id: str) -> bytes:
        self.own_export(ws, member, export_id)
        return self.export_store().download(export_id, member)

    def _replay(self, ledger: StateLedger, member: str, request_id: str, state: str,
                response: dict[str, Any] | None) -> dict[str, Any]:
        if state == "committed" and response is not None:
            return {**response, "replayed": True, "budget": ledger.balance(member).to_dict()}
        if state == "reserved":
            raise Problem("request.in_progress", f"request {request_id} is still running",
                          "wait a moment and send the same request again to fetch its answer")
        if state == "cancelled":
            raise Problem("request.failed", f"request {request_id} was not executed and not "
                          "charged", "send the query again with a new request id")
        raise Problem("request.failed", f"request {request_id} failed or was interrupted; it "
                      "was charged once and has no answer to return",
                      "send the query again with a new request id (it will be charged again)")
