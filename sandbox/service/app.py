"""The gate as an HTTP JSON service run by JupyterHub (the only network-facing process).

One locked engine holds every dataset version the configured workspaces need. Gate work
(parsing, charging, executing) runs in a thread pool; each worker thread has its own
state database connection. Every error is JSON ``{"error": {code, message, hint}}``;
engine text and stack traces stay in the server log.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from jupyterhub.services.auth import HubAuth, check_scopes
from tornado import web
from tornado.ioloop import IOLoop

from .. import __version__
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
from ..gate import Gate
from ..keys import Kms, load_kms
from ..ledger import DuplicateRequestError, SqliteLedger
from ..policy import Policy
from ..scenarios import Scenarios, load_approved
from ..settings import Paths
from ..sql.refusal import Refusal
from ..state import State
from ..workspaces import WorkspaceRecord, Workspaces
from . import console
from .config import ServiceConfig
from .openapi import document

log = logging.getLogger("sandbox.service")

SCOPE = "custom:sandbox:query"
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Codes whose messages are written for developers and may be passed on as they are.
PUBLIC_PREFIXES = ("gate.", "budget.", "request.", "engine.", "input.", "auth.", "workspace.",
                   "limits.", "http.", "export.")
NOT_PUBLIC = {"export.index"}  # an operator's problem (a missing identifier index)
STATUS = {
    "budget.exhausted": 403, "request.duplicate": 409, "request.in_progress": 409,
    "request.conflict": 409,
    "request.failed": 409, "engine.timeout": 504, "engine.error": 500, "input.invalid": 400,
    "auth.required": 401, "auth.invalid": 401, "auth.token_in_url": 400, "auth.scope": 403,
    "auth.not_a_user": 403, "auth.unavailable": 502, "workspace.forbidden": 403,
    "workspace.not_found": 404, "workspace.suspended": 403, "workspace.closed": 403,
    "workspace.expired": 403, "workspace.provisioning": 503, "limits.body_too_large": 413,
    "limits.concurrency": 429,
    "http.not_found": 404, "http.method_not_allowed": 405, "state.error": 503,
    "export.invalid": 400, "export.not_found": 404, "export.state": 409,
    "export.blocked": 409, "export.revoked": 410, "export.not_requester": 403,
    "export.self_approval": 403, "export.duplicate_approval": 409, "export.held": 403,
    "limits.export_quota": 403,
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
        self._identifiers: IdentifierIndex | None = None
        self.pool = ThreadPoolExecutor(max_workers=self.limits["workers"],
                                       thread_name_prefix="gate")
        self.active: dict[str, int] = {}  # member -> running explain/query (event loop only)

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
        """The workspace if ``member`` may use it now (records are read every time)."""
        rec = Workspaces(self.state()).access(name, member)
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

    def schema(self, name: str, member: str) -> dict[str, Any]:
        return self.workspace_for(name, member).schema()

    def budget(self, name: str, member: str) -> dict[str, Any]:
        return self.ledger(self.workspace_for(name, member)).balance(member).to_dict()

    def _check_size(self, sql: str) -> None:
        limit = self.limits["max_sql_chars"]
        if len(sql) > limit:
            raise Refusal("gate.too_large", f"the query is longer than {limit} characters",
                          "split it into smaller queries")

    def explain(self, ws: Workspace, sql: str, epsilon: float | None) -> dict[str, Any]:
        self._check_size(sql)
        return ws.gate.explain(sql, epsilon)

    def query(self, ws: Workspace, member: str, sql: str, epsilon: float | None,
              request_id: str) -> tuple[dict[str, Any], bool]:
        """(response, replayed): answer once per request id, charging the member.

        A retry (same id, same SQL and epsilon) gets the first answer; the id reused for a
        different question is a conflict (the ledger raises it too if the two race).
        """
        from ..ledger import request_digest

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
        return body, False

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
            return {**response, "budget": ledger.balance(member).to_dict()}
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
class BaseHandler(web.RequestHandler):
    service: Service
    hub_auth: HubAuth | None

    def initialize(self, service: Service, hub_auth: HubAuth | None = None) -> None:
        self.service, self.hub_auth = service, hub_auth
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
        self.finish(dumps(body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError) and not isinstance(exc, SandboxError):
            code = {404: "http.not_found", 405: "http.method_not_allowed"}.get(
                exc.status_code, "http.error" if exc.status_code < 500 else "internal")
            status = exc.status_code
            body: dict[str, Any] = {"error": {
                "code": code, "message": exc.reason or "the request could not be served",
                "hint": "see the service's openapi.json for the endpoints"}}
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
        self.finish(dumps(body))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, SandboxError) and value.code.startswith(PUBLIC_PREFIXES):
            log.info("%s %s -> %s: %s", self.request.method, self.request.path, value.code,
                     value.message)
        elif isinstance(value, web.HTTPError) and value.status_code < 500:
            log.info("%s %s -> %d", self.request.method, self.request.path, value.status_code)
        else:
            log.error("unexpected error serving %s %s", self.request.method,
                      self.request.path, exc_info=(typ, value, tb))

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


class AuthedHandler(BaseHandler):
    """Requires a hub token (Authorization header only) carrying ``custom:sandbox:query``."""

    async def prepare(self) -> None:
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


    def json_body(self, fields: dict[str, tuple[type, ...]], required: tuple[str, ...],
                  limit_name: str = "max_body_bytes") -> dict[str, Any]:
        limit = self.service.limits[limit_name]
        if len(self.request.body) > limit:
            raise Problem("limits.body_too_large", f"the request body is larger than {limit} "
                          "bytes", "send a shorter query" if limit_name == "max_body_bytes"
                          else "export fewer or smaller items")
        try:
            body = json.loads(self.request.body or b"null")
        except (ValueError, UnicodeDecodeError):
            raise Problem("input.invalid", "the body is not valid JSON",
                          'send a JSON object such as {"sql": "SELECT ..."}') from None
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
                                    {str: "a string", int: "a number", float: "a number"}
                                    .get(t, t.__name__) for t in types)
                raise Problem("input.invalid", f"the field {key!r} must be {names}",
                              f"allowed fields: {', '.join(fields)}")
        return body

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        active = self.service.active
        limit = self.service.limits["per_member_concurrency"]
        if active.get(self.member, 0) >= limit:
            raise Problem("limits.concurrency", f"you already have {limit} requests running",
                          "wait for them to finish, then try again", {"Retry-After": "1"})
        active[self.member] = active.get(self.member, 0) + 1
        try:
            yield
        finally:
            active[self.member] -= 1
            if not active[self.member]:
                del active[self.member]


class WorkspacesHandler(AuthedHandler):
    async def get(self) -> None:
        self.send_json(await self.run(self.service.list_workspaces, self.member))


class SchemaHandler(AuthedHandler):
    async def get(self, ws: str) -> None:
        self.send_json(await self.run(self.service.schema, ws, self.member))


class BudgetHandler(AuthedHandler):
    async def get(self, ws: str) -> None:
        self.send_json(await self.run(self.service.budget, ws, self.member))


EXPLAIN_FIELDS: dict[str, tuple[type, ...]] = {"sql": (str,), "epsilon": (int, float, type(None))}
QUERY_FIELDS: dict[str, tuple[type, ...]] = {**EXPLAIN_FIELDS, "request_id": (str,)}


class ExplainHandler(AuthedHandler):
    async def post(self, ws: str) -> None:
        def work() -> dict[str, Any]:  # one trip to a worker: access, body, then the gate
            workspace = self.service.workspace_for(ws, self.member)
            body = self.json_body(EXPLAIN_FIELDS, ("sql",))
            return self.service.explain(workspace, body["sql"], body.get("epsilon"))

        with self.slot():
            self.send_json(await self.run(work))


class QueryHandler(AuthedHandler):
    async def post(self, ws: str) -> None:
        def work() -> tuple[dict[str, Any], bool]:
            workspace = self.service.workspace_for(ws, self.member)
            body = self.json_body(QUERY_FIELDS, ("sql", "request_id"))
            if not REQUEST_ID_RE.match(body["request_id"]):
                raise Problem("input.invalid", "the field 'request_id' must be 1-64 letters, "
                              "digits, '_' or '-'", "use a fresh uuid4 hex per question")
            return self.service.query(workspace, self.member, body["sql"],
                                      body.get("epsilon"), body["request_id"])

        with self.slot():
            result, replayed = await self.run(work)
        if replayed:
            self.set_header("Sandbox-Replayed", "true")
        self.send_json(result)


EXPORT_FIELDS: dict[str, tuple[type, ...]] = {
    "title": (str,), "purpose": (str,), "items": (list,), "request_id": (str, type(None))}
WITHDRAW_FIELDS: dict[str, tuple[type, ...]] = {"comment": (str, type(None))}


class ExportsHandler(AuthedHandler):
    async def get(self, ws: str) -> None:
        def work() -> list[dict[str, Any]]:
            return self.service.list_exports(self.service.workspace_for(ws, self.member),
                                             self.member)

        self.send_json(await self.run(work))

    async def post(self, ws: str) -> None:
        def work() -> dict[str, Any]:
            workspace = self.service.workspace_for(ws, self.member)
            body = self.json_body(EXPORT_FIELDS, ("title", "purpose", "items"),
                                  "max_export_bytes")
            rid = body.get("request_id")
            if rid is not None and not REQUEST_ID_RE.match(rid):
                raise Problem("input.invalid", "the field 'request_id' must be 1-64 letters, "
                              "digits, '_' or '-'", "use a fresh uuid4 hex per export")
            return self.service.submit_export(workspace, self.member, body)

        with self.slot():
            self.send_json(await self.run(work), 201)


class ExportResubmitHandler(AuthedHandler):
    async def post(self, ws: str, export_id: str) -> None:
        def work() -> dict[str, Any]:
            workspace = self.service.workspace_for(ws, self.member)
            body = self.json_body(EXPORT_FIELDS, ("items",), "max_export_bytes")
            return self.service.submit_export(workspace, self.member, body, export_id)

        with self.slot():
            self.send_json(await self.run(work))


class ExportHandler(AuthedHandler):
    async def get(self, ws: str, export_id: str) -> None:
        def work() -> dict[str, Any]:
            workspace = self.service.workspace_for(ws, self.member)
            return self.service.own_export(workspace, self.member, export_id).to_dict(
                "requester")

        self.send_json(await self.run(work))


class ExportWithdrawHandler(AuthedHandler):
    async def post(self, ws: str, export_id: str) -> None:
        def work() -> dict[str, Any]:
            workspace = self.service.workspace_for(ws, self.member)
            body = self.json_body(WITHDRAW_FIELDS, ())
            return self.service.withdraw_export(workspace, self.member, export_id,
                                                body.get("comment") or "")

        self.send_json(await self.run(work))


class ExportBundleHandler(AuthedHandler):
    async def get(self, ws: str, export_id: str) -> None:
        def work() -> bytes:
            workspace = self.service.workspace_for(ws, self.member)
            return self.service.download_export(workspace, self.member, export_id)

        data = await self.run(work)
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
    handlers = [(re.escape(base) + pattern, handler, kwargs) for pattern, _, handler in ROUTES]
    handlers += console.routes(prefix, kwargs)
    # The hub checks that a service answers at its prefix: say where the API is.
    handlers.append((re.escape(prefix), HealthHandler, kwargs))
    # Signed cookies (the console's OAuth state, token and XSRF; the JSON API uses none).
    # Per process: a restart signs auditors out and the hub's OAuth signs them in again.
    return web.Application(handlers, default_handler_class=NotFoundHandler,
                           default_handler_args=kwargs, sandbox_prefix=prefix,
                           cookie_secret=secrets.token_bytes(32), xsrf_cookies=False,
                           serve_traceback=False, compress_response=False)
