"""The gate as an HTTP JSON service run by JupyterHub (the only network-facing process).

One locked engine holds every dataset version the configured workspaces need. Gate work
(parsing, charging, executing) runs in a thread pool; each worker thread has its own
state database connection. Every error is JSON ``{"error": {code, message, hint}}``;
engine text and stack traces stay in the server log.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import decimal
import json
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from jupyterhub.services.auth import HubAuth, check_scopes
from tornado import web
from tornado.ioloop import IOLoop

from .. import __version__
from .. import dummy as dummymod
from ..catalog import Catalog
from ..engine import Engine
from ..errors import EngineError, SandboxError
from ..exports import (
    ExportRequest,
    ExportStore,
    IdentifierIndex,
    item_from_dict,
    state_context,
)
from ..exports.errors import ExportNotFoundError
from ..gate import EPSILON_CEILING, EPSILON_FLOOR, Gate
from ..keys import Kms, load_kms
from ..ledger import DuplicateRequestError, SqliteLedger, request_digest
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
from . import console
from .config import ServiceConfig
from .limits import Rate, RateLimiter, retry_after
from .openapi import document

log = logging.getLogger("sandbox.service")

SCOPE = "custom:sandbox:query"
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Codes whose messages are written for developers and may be passed on as they are.
PUBLIC_PREFIXES = ("gate.", "budget.", "request.", "engine.", "input.", "auth.", "workspace.",
                   "limits.", "http.", "export.", "dummy.")
NOT_PUBLIC = {"export.index"}  # an operator's problem (a missing identifier index)
STATUS = {
    "budget.exhausted": 403, "request.duplicate": 409, "request.in_progress": 409,
    "request.conflict": 409,
    "request.failed": 409, "engine.timeout": 504, "engine.error": 500, "input.invalid": 400,
    "auth.required": 401, "auth.invalid": 401, "auth.token_in_url": 400, "auth.scope": 403,
    "auth.not_a_user": 403, "auth.unavailable": 502,
    "workspace.not_found": 404, "workspace.suspended": 403, "workspace.closed": 403,
    "workspace.expired": 403, "workspace.provisioning": 503, "limits.body_too_large": 413,
    "limits.concurrency": 429, "limits.rate": 429,
    "http.not_found": 404, "http.method_not_allowed": 405, "state.error": 503,
    "export.invalid": 400, "export.not_found": 404, "export.state": 409,
    "export.blocked": 409, "export.revoked": 410, "export.not_requester": 403,
    "export.self_approval": 403, "export.duplicate_approval": 409, "export.held": 403,
    "limits.export_quota": 403, "export.dummy": 400, "dummy.unavailable": 503,
}


class Problem(SandboxError):
    """An HTTP-level error with a stable code (authentication, limits, bad input)."""

    def __init__(self, code: str, message: str, hint: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message, hint)
        self.code = code
        self.headers = headers or {}


class QueryTimeout(EngineError):
    """The engine ran past the query time limit (still charged)."""

    code = "engine.timeout"


def status_of(exc: SandboxError) -> int:
    code = exc.code
    if code in STATUS:
        return STATUS[code]
    if code.startswith("gate."):
        return 400
    return 500


def error_body(exc: BaseException | None) -> tuple[int, dict[str, Any]]:
    """Status and JSON body for any exception; only developer-facing text gets through."""
    if isinstance(exc, SandboxError) and exc.code.startswith(PUBLIC_PREFIXES) and \
            exc.code not in NOT_PUBLIC:
        return status_of(exc), {"error": exc.to_dict()}
    if isinstance(exc, SandboxError) and exc.code == "state.error":
        return 503, {"error": {"code": "service.unavailable",
                               "message": "the service could not record the request",
                               "hint": "try again in a moment; if it persists tell the "
                                       "operator"}}
    return 500, {"error": {"code": "internal", "message": "the service hit an internal error",
                           "hint": "try again; the error was logged for the operator"}}


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


def dumps(body: Any) -> str:
    return json.dumps(body, ensure_ascii=False, default=str, allow_nan=False)


# -- the service (no HTTP here) ------------------------------------------------------------
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
        paths = Paths.resolve(config.home, config.keystore)
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
        return service

    def close(self) -> None:
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

    def ledger(self, ws: Workspace) -> SqliteLedger:
        return SqliteLedger(self.state(), ws.name, ws.record.budget_policy())

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
        ledger = self.ledger(ws)
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
        real = self.ledger(ws)
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

    def _replay(self, ledger: SqliteLedger, member: str, request_id: str, state: str,
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


# -- HTTP ---------------------------------------------------------------------------------
# Codes of requests that are malformed or ask for a workspace the member does not have:
# each leaves a request.invalid record. Together with the gate's and the budget's refusals
# they count against refusals_per_minute.
RECORDED = ("input.invalid", "request.conflict", "limits.body_too_large",
            "workspace.not_found", "export.dummy")
TARPIT_S, TARPIT_MAX = 1.0, 16  # pause before a limits.rate answer; held at once per member
MAX_NESTING = 32  # depth of JSON bodies (export items are the deepest, about 5)


def counts_as_refusal(code: str) -> bool:
    return code.startswith("gate.") or code in RECORDED or code == "budget.exhausted"


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes) -> Any:
    """The body as JSON, or input.invalid: strict numbers, valid Unicode, bounded nesting."""
    try:
        body = json.loads(raw or b"null", parse_constant=_no_constant)
    except RecursionError:
        raise Problem("input.invalid", "the body is nested too deeply",
                      f"send JSON nested at most {MAX_NESTING} levels") from None
    except (ValueError, UnicodeDecodeError):
        raise Problem("input.invalid", "the body is not valid JSON",
                      'send a JSON object such as {"sql": "SELECT ..."}') from None
    stack: list[tuple[Any, int]] = [(body, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_NESTING:
            raise Problem("input.invalid", "the body is nested too deeply",
                          f"send JSON nested at most {MAX_NESTING} levels")
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise Problem("input.invalid", "the body holds text that is not valid Unicode "
                              "(a lone surrogate such as \\ud800)",
                              "send text as UTF-8; escape only whole characters") from None
        elif isinstance(value, float) and not math.isfinite(value):
            raise Problem("input.invalid", "the body holds a number too large for a double",
                          "send numbers within ±1.7e308")
        elif isinstance(value, dict):
            stack += [(k, depth + 1) for k in value] + [(v, depth + 1) for v in value.values()]
        elif isinstance(value, list):
            stack += [(v, depth + 1) for v in value]
    return body


def escaped(raw: bytes, limit: int = 512) -> str:
    """The start of an untrusted body as printable ASCII (for the audit log)."""
    text = raw[:limit].decode("utf-8", "backslashreplace")
    return text.encode("unicode_escape").decode("ascii") + ("…" if len(raw) > limit else "")


def log_request(handler: web.RequestHandler) -> None:
    """The access log: the peer is the address that connected (the proxy); what a client
    put in forwarding headers is logged as its claim, escaped, never as the address."""
    status = handler.get_status()
    req = handler.request
    claimed = req.headers.get("X-Forwarded-For", "")
    fwd = f" forwarded-for={escaped(claimed.encode(), 96)!r}" if claimed else ""
    member = getattr(handler, "member", "") or "-"
    level = log.info if status < 400 else log.warning if status < 500 else log.error
    level("%d %s %s peer=%s member=%s%s %.1fms", status, req.method,
          escaped(req.path.encode(), 200), req.remote_ip, escaped(member.encode(), 64), fwd,
          1000.0 * req.request_time())


class BaseHandler(web.RequestHandler):
    service: Service
    hub_auth: HubAuth | None

    def initialize(self, service: Service, hub_auth: HubAuth | None = None,
                   endpoint: str = "") -> None:
        self.service, self.hub_auth, self.endpoint = service, hub_auth, endpoint
        self.member = ""

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.clear_header("Server")

    def check_xsrf_cookie(self) -> None:  # token auth in a header: no cookies are used
        return

    def send_json(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(dumps(body).encode("utf-8", "backslashreplace"))

    def allowed_methods(self) -> list[str]:
        return [m for m in ("GET", "POST")
                if getattr(type(self), m.lower()) is not getattr(web.RequestHandler, m.lower())]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError) and not isinstance(exc, SandboxError):
            code = {404: "http.not_found", 405: "http.method_not_allowed"}.get(
                exc.status_code, "http.error" if exc.status_code < 500 else "internal")
            status = exc.status_code
            body: dict[str, Any] = {"error": {
                "code": code, "message": exc.reason or "the request could not be served",
                "hint": "see the service's openapi.json for the endpoints"}}
            if status == 405:
                allowed = self.allowed_methods()
                self.set_header("Allow", ", ".join(allowed))
                body["error"]["hint"] = f"this endpoint takes {' or '.join(allowed)}"
        elif exc is None:
            status, body = status_code, {"error": {
                "code": "http.error" if status_code < 500 else "internal",
                "message": self._reason, "hint": None}}
        else:
            status, body = error_body(exc)
        if isinstance(exc, Problem):
            for k, v in exc.headers.items():
                self.set_header(k, v)
        self.set_status(status)
        self.finish(dumps(body).encode("utf-8", "backslashreplace"))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, SandboxError) and value.code.startswith(PUBLIC_PREFIXES):
            log.info("%s %s -> %s: %s", self.request.method, self.endpoint, value.code,
                     escaped(value.message.encode("utf-8", "backslashreplace"), 200))
        elif isinstance(value, web.HTTPError) and value.status_code < 500:
            log.info("%s %s -> %d", self.request.method, self.endpoint, value.status_code)
        else:
            log.error("unexpected error serving %s %s", self.request.method,
                      self.endpoint, exc_info=(typ, value, tb))

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await IOLoop.current().run_in_executor(self.service.pool, fn, *args)


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        raise Problem("http.not_found", "there is no such endpoint",
                      "see the service's openapi.json for the endpoints")


class HealthHandler(BaseHandler):
    def get(self) -> None:
        self.send_json({"status": "ok", "version": __version__})


class OpenAPIHandler(BaseHandler):
    def get(self) -> None:
        self.send_json(document(self.settings["sandbox_prefix"], __version__))


@web.stream_request_body
class AuthedHandler(BaseHandler):
    """Requires a hub token (Authorization header only) carrying ``custom:sandbox:query``.

    Order matters under hostile load: the token is checked, then the member's rate limits
    and in-flight slot, and only then is a body read (streamed, up to this route's limit).
    """

    body_limit = "max_body_bytes"
    rates: tuple[str, ...] = ()  # rate limits this route counts against (besides refusals)

    def initialize(self, service: Service, hub_auth: HubAuth | None = None,
                   endpoint: str = "") -> None:
        super().initialize(service, hub_auth, endpoint)
        self._chunks: list[bytes] = []
        self._slot = False
        self._working = False
        self._deferred: Problem | None = None  # refused in prepare; sent after the body

    async def prepare(self) -> None:
        # The body is not read before this returns. A request refused here gets its error
        # only once its body is in (read up to the server's cap, max_body_bytes, and
        # dropped): answering first and closing would reset the connection under the
        # client before it reads the JSON error. A body announced larger than the route
        # takes is answered at once and the connection closed unread.
        length = self.request.headers.get("Content-Length", "0").strip()
        announced = int(length) if length.isdigit() else None
        try:
            await self._authenticate()
            await self._check_rates()
            self._take_slot()
        except Problem as problem:
            if announced is None or announced > self.service.limits["max_body_bytes"]:
                raise
            self._deferred = problem
            return
        limit = self.service.limits[self.body_limit]
        if announced is None or announced > limit:
            problem = Problem("limits.body_too_large", f"the request body is larger than "
                              f"{limit} bytes", "send a shorter query"
                              if self.body_limit == "max_body_bytes" else
                              "export fewer or smaller items")
            await self.run(self.service.record_invalid, None, self.member, self.where(),
                           problem, b"")
            self._refused(problem.code)
            raise problem
        connection = self.request.connection
        if connection is not None:
            connection.set_max_body_size(limit)
            connection.set_body_timeout(self.service.limits["body_timeout_s"])

    async def _authenticate(self) -> None:
        if "token" in self.request.query_arguments:
            raise Problem("auth.token_in_url", "tokens are not accepted in the URL",
                          "send it in the header 'Authorization: token <token>'")
        header = self.request.headers.get("Authorization", "")
        m = re.fullmatch(r"(?:token|bearer)\s+(\S{1,512})", header.strip(), re.IGNORECASE)
        if not m:
            raise Problem("auth.required", "a JupyterHub token is required",
                          "send 'Authorization: token <token>'; in a notebook it is "
                          "$JUPYTERHUB_API_TOKEN", {"WWW-Authenticate": "token"})
        assert self.hub_auth is not None
        try:
            model = await self.hub_auth.user_for_token(m.group(1), sync=False)
        except web.HTTPError as exc:
            log.error("hub authentication failed: %s", exc)
            raise Problem("auth.unavailable", "the hub could not check the token",
                          "try again in a moment") from None
        if not model:
            raise Problem("auth.invalid", "the token is invalid, expired or revoked",
                          "restart your server or create a new token in the hub",
                          {"WWW-Authenticate": "token"})
        if model.get("kind", "user") != "user":
            raise Problem("auth.not_a_user", "only hub users can use the sandbox",
                          "use a token of a user")
        if not check_scopes(SCOPE, set(model.get("scopes") or [])):
            raise Problem("auth.scope", f"the token lacks the scope {SCOPE}",
                          "ask the operator for the sandbox role; tokens made before it was "
                          "granted must be recreated")
        self.member = str(model["name"])

    def where(self) -> str:
        """Method and path under the API root, for audit records."""
        path = self.request.path
        return f"{self.request.method} {path[path.find('/api/v1/') + 7:]}"

    async def _check_rates(self) -> None:
        """429 with Retry-After when a rate limit is spent; the refusal limit applies to
        every route, so a member who floods with bad requests is slowed everywhere."""
        limiter = self.service.rates
        for name in ("refusals_per_minute", *self.rates):
            rate = self.service.rate(name)
            wait = limiter.wait(self.member, rate)
            if wait > 0:
                count = limiter.refused(self.member, rate)
                if count is not None:
                    await self.run(self.service.record_limit, self.member, rate,
                                   self.where(), count)
                await self._hold(wait)
                what = "refused or malformed requests" if name == "refusals_per_minute" \
                    else name.split("_per_")[0]
                raise Problem("limits.rate", f"too many {what}: the limit is {rate.count} per "
                              f"{'minute' if rate.window_s == 60 else 'hour'}",
                              f"wait {retry_after(wait)} s before the next request",
                              {"Retry-After": retry_after(wait)})
        for name in self.rates:
            limiter.take(self.member, self.service.rate(name))

    async def _hold(self, wait: float) -> None:
        """Answer a rate-limited request after a pause (up to TARPIT_S): a client that
        floods back to back then costs the event loop a few requests a second, not
        thousands. Only a few of a member's requests are held; the rest are answered at
        once (holding costs a connection)."""
        held = self.service.held
        if held.get(self.member, 0) >= TARPIT_MAX:
            return
        held[self.member] = held.get(self.member, 0) + 1
        try:
            await asyncio.sleep(min(wait, TARPIT_S))
        finally:
            held[self.member] -= 1
            if not held[self.member]:
                del held[self.member]

    def _take_slot(self) -> None:
        active = self.service.active
        limit = self.service.limits["per_member_concurrency"]
        if active.get(self.member, 0) >= limit:
            raise Problem("limits.concurrency", f"you already have {limit} requests running",
                          "wait for them to finish, then try again", {"Retry-After": "1"})
        active[self.member] = active.get(self.member, 0) + 1
        self._slot = True

    def _release_slot(self) -> None:
        if self._slot:
            self._slot = False
            active = self.service.active
            active[self.member] -= 1
            if not active[self.member]:
                del active[self.member]

    def on_finish(self) -> None:
        self._release_slot()

    def on_connection_close(self) -> None:
        if not self._working:  # still reading the body: nothing else will free the slot
            self._release_slot()

    def data_received(self, chunk: bytes) -> None:
        if self._deferred is None:
            self._chunks.append(chunk)

    @property
    def raw_body(self) -> bytes:
        return b"".join(self._chunks)

    def _refused(self, code: str) -> None:
        if counts_as_refusal(code):
            self.service.rates.take(self.member, self.service.rate("refusals_per_minute"))

    async def serve(self, ws: str | None, fn: Callable[..., Any]) -> Any:
        """``fn(workspace)`` in a worker, the workspace checked there first; a malformed
        request leaves a request.invalid record before its error is sent."""
        if self._deferred is not None:
            raise self._deferred
        raw = self.raw_body

        def work() -> Any:
            workspace = None
            try:
                if ws is not None:
                    workspace = self.service.workspace_for(ws, self.member)
                return fn(workspace)
            except SandboxError as exc:
                if exc.code in RECORDED:
                    self.service.record_invalid(workspace, self.member, self.where(), exc, raw)
                raise

        self._working = True
        try:
            return await self.run(work)
        except SandboxError as exc:
            self._refused(exc.code)
            raise

    def json_body(self, fields: dict[str, tuple[type, ...]],
                  required: tuple[str, ...]) -> dict[str, Any]:
        body = parse_json(self.raw_body)
        if not isinstance(body, dict):
            raise Problem("input.invalid", "the body must be a JSON object",
                          'send a JSON object such as {"sql": "SELECT ..."}')
        for key in body:
            if key not in fields:
                raise Problem("input.invalid", f"unknown field {str(key)[:64]!r}",
                              f"allowed fields: {', '.join(fields)}")
        for key in required:
            if key not in body:
                raise Problem("input.invalid", f"the field {key!r} is required",
                              f"allowed fields: {', '.join(fields)}")
        for key, value in body.items():
            types = fields[key]
            ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
            if not ok:
                names = " or ".join("null" if t is type(None) else
                                    {str: "a string", int: "a number", float: "a number",
                                     list: "a list", bool: "true or false"}.get(
                                         t, t.__name__) for t in types)
                raise Problem("input.invalid", f"the field {key!r} must be {names}",
                              f"allowed fields: {', '.join(fields)}")
        eps = body.get("epsilon")
        if eps is not None and not EPSILON_FLOOR <= eps <= EPSILON_CEILING:
            raise Problem("input.invalid", f"the field 'epsilon' must be from "
                          f"{EPSILON_FLOOR:g} to {EPSILON_CEILING:g}",
                          "omit it to use the scenario's default")
        rid = body.get("request_id")
        if rid is not None and not REQUEST_ID_RE.fullmatch(rid):
            raise Problem("input.invalid", "the field 'request_id' must be 1-64 letters, "
                          "digits, '_' or '-'", "use a fresh uuid4 hex per request")
        return body


class WorkspacesHandler(AuthedHandler):
    async def get(self) -> None:
        self.send_json(await self.serve(None, lambda _: self.service.list_workspaces(
            self.member)))


class SchemaHandler(AuthedHandler):
    async def get(self, ws: str) -> None:
        self.send_json(await self.serve(ws, lambda w: w.schema()))


class BudgetHandler(AuthedHandler):
    async def get(self, ws: str) -> None:
        self.send_json(await self.serve(ws, lambda w: self.service.ledger(w).balance(
            self.member).to_dict()))


EXPLAIN_FIELDS: dict[str, tuple[type, ...]] = {"sql": (str,), "epsilon": (int, float, type(None))}
QUERY_FIELDS: dict[str, tuple[type, ...]] = {**EXPLAIN_FIELDS, "request_id": (str,),
                                             "dummy": (bool,)}


class ExplainHandler(AuthedHandler):
    rates = ("queries_per_minute",)

    async def post(self, ws: str) -> None:
        def work(workspace: Workspace) -> dict[str, Any]:
            body = self.json_body(EXPLAIN_FIELDS, ("sql",))
            return self.service.explain(workspace, body["sql"], body.get("epsilon"))

        self.send_json(await self.serve(ws, work))


class QueryHandler(AuthedHandler):
    rates = ("queries_per_minute",)

    async def post(self, ws: str) -> None:
        def work(workspace: Workspace) -> tuple[dict[str, Any], bool]:
            body = self.json_body(QUERY_FIELDS, ("sql", "request_id"))
            return self.service.query(workspace, self.member, body["sql"],
                                      body.get("epsilon"), body["request_id"],
                                      dummy=body.get("dummy", False))

        result, replayed = await self.serve(ws, work)
        if replayed:
            self.set_header("Sandbox-Replayed", "true")
        self.send_json(result)


EXPORT_FIELDS: dict[str, tuple[type, ...]] = {
    "title": (str,), "purpose": (str,), "items": (list,), "request_id": (str, type(None))}
WITHDRAW_FIELDS: dict[str, tuple[type, ...]] = {"comment": (str, type(None))}


class ExportsHandler(AuthedHandler):
    body_limit = "max_export_bytes"

    async def prepare(self) -> None:
        if self.request.method == "POST":  # listing is not an export
            self.rates = ("exports_per_hour",)
        else:
            self.body_limit = "max_body_bytes"
        await super().prepare()

    async def get(self, ws: str) -> None:
        self.send_json(await self.serve(ws, lambda w: self.service.list_exports(
            w, self.member)))

    async def post(self, ws: str) -> None:
        def work(workspace: Workspace) -> dict[str, Any]:
            body = self.json_body(EXPORT_FIELDS, ("title", "purpose", "items"))
            return self.service.submit_export(workspace, self.member, body)

        self.send_json(await self.serve(ws, work), 201)


class ExportResubmitHandler(AuthedHandler):
    body_limit = "max_export_bytes"
    rates = ("exports_per_hour",)

    async def post(self, ws: str, export_id: str) -> None:
        def work(workspace: Workspace) -> dict[str, Any]:
            body = self.json_body(EXPORT_FIELDS, ("items",))
            return self.service.submit_export(workspace, self.member, body, export_id)

        self.send_json(await self.serve(ws, work))


class ExportHandler(AuthedHandler):
    async def get(self, ws: str, export_id: str) -> None:
        self.send_json(await self.serve(ws, lambda w: self.service.own_export(
            w, self.member, export_id).to_dict("requester")))


class ExportWithdrawHandler(AuthedHandler):
    async def post(self, ws: str, export_id: str) -> None:
        def work(workspace: Workspace) -> dict[str, Any]:
            body = self.json_body(WITHDRAW_FIELDS, ())
            return self.service.withdraw_export(workspace, self.member, export_id,
                                                body.get("comment") or "")

        self.send_json(await self.serve(ws, work))


class ExportBundleHandler(AuthedHandler):
    async def get(self, ws: str, export_id: str) -> None:
        data = await self.serve(ws, lambda w: self.service.download_export(
            w, self.member, export_id))
        self.set_header("Content-Type", "application/zip")
        self.set_header("Content-Disposition",
                        f'attachment; filename="export-{export_id}.zip"')
        self.finish(data)


WS = r"([A-Za-z0-9][A-Za-z0-9_.-]{0,63})"
EXPORT_ID = r"([0-9a-f]{32})"
ROUTES: tuple[tuple[str, str, type[BaseHandler]], ...] = (
    # (regex under {prefix}api/v1/, OpenAPI path, handler)
    ("health", "/health", HealthHandler),
    (r"openapi\.json", "/openapi.json", OpenAPIHandler),
    ("workspaces", "/workspaces", WorkspacesHandler),
    (f"workspaces/{WS}/schema", "/workspaces/{workspace}/schema", SchemaHandler),
    (f"workspaces/{WS}/explain", "/workspaces/{workspace}/explain", ExplainHandler),
    (f"workspaces/{WS}/query", "/workspaces/{workspace}/query", QueryHandler),
    (f"workspaces/{WS}/budget", "/workspaces/{workspace}/budget", BudgetHandler),
    (f"workspaces/{WS}/exports", "/workspaces/{workspace}/exports", ExportsHandler),
    (f"workspaces/{WS}/exports/{EXPORT_ID}", "/workspaces/{workspace}/exports/{export_id}",
     ExportHandler),
    (f"workspaces/{WS}/exports/{EXPORT_ID}/withdraw",
     "/workspaces/{workspace}/exports/{export_id}/withdraw", ExportWithdrawHandler),
    (f"workspaces/{WS}/exports/{EXPORT_ID}/resubmit",
     "/workspaces/{workspace}/exports/{export_id}/resubmit", ExportResubmitHandler),
    (f"workspaces/{WS}/exports/{EXPORT_ID}/bundle",
     "/workspaces/{workspace}/exports/{export_id}/bundle", ExportBundleHandler),
)


def make_app(service: Service, prefix: str, hub_auth: HubAuth | None) -> web.Application:
    if not prefix.endswith("/"):
        prefix += "/"
    base = prefix + "api/v1/"
    kwargs = {"service": service, "hub_auth": hub_auth}
    handlers = [(re.escape(base) + pattern, handler, {**kwargs, "endpoint": path})
                for pattern, path, handler in ROUTES]
    handlers += console.routes(prefix, kwargs)
    # The hub checks that a service answers at its prefix: say where the API is.
    handlers.append((re.escape(prefix), HealthHandler, kwargs))
    # Signed cookies (the console's OAuth state, token and XSRF; the JSON API uses none).
    # Per process: a restart signs auditors out and the hub's OAuth signs them in again.
    return web.Application(handlers, default_handler_class=NotFoundHandler,
                           default_handler_args=kwargs, sandbox_prefix=prefix,
                           cookie_secret=secrets.token_bytes(32), xsrf_cookies=False,
                           serve_traceback=False, compress_response=False,
                           log_function=log_request)
