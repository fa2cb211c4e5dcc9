"""The HTTP side of the service: tornado handlers, routes, authentication, limits and
body reading. Every operation is delegated to ``core.Service``; every error is answered
as JSON ``{"error": {code, message, hint}}`` by ``errors.error_body``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any

from jupyterhub.services.auth import HubAuth, check_scopes
from tornado import web
from tornado.ioloop import IOLoop

from .. import __version__
from ..errors import SandboxError
from . import console
from .bodies import read_body
from .config import cookie_secret
from .core import Service, Workspace
from .errors import (
    PUBLIC_PREFIXES,
    RECORDED,
    Problem,
    counts_as_refusal,
    dumps,
    error_body,
    escaped,
)
from .limits import retry_after
from .openapi import document

log = logging.getLogger("sandbox.service")

SCOPE = "custom:sandbox:query"
TARPIT_S, TARPIT_MAX = 1.0, 16  # pause before a limits.rate answer; held at once per member


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

    def json_body(self, schema: str) -> dict[str, Any]:
        """The body, checked against the OpenAPI component ``schema`` (input.invalid)."""
        return read_body(self.raw_body, schema)


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


class ExplainHandler(AuthedHandler):
    rates = ("queries_per_minute",)

    async def post(self, ws: str) -> None:
        def work(workspace: Workspace) -> dict[str, Any]:
            body = self.json_body("ExplainRequest")
            return self.service.explain(workspace, body["sql"], body.get("epsilon"))

        self.send_json(await self.serve(ws, work))


class QueryHandler(AuthedHandler):
    rates = ("queries_per_minute",)

    async def post(self, ws: str) -> None:
        def work(workspace: Workspace) -> tuple[dict[str, Any], bool]:
            body = self.json_body("QueryRequest")
            return self.service.query(workspace, self.member, body["sql"],
                                      body.get("epsilon"), body["request_id"],
                                      dummy=body.get("dummy", False))

        result, replayed = await self.serve(ws, work)
        if replayed:
            self.set_header("Sandbox-Replayed", "true")
        self.send_json(result)


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
            body = self.json_body("ExportSubmit")
            return self.service.submit_export(workspace, self.member, body)

        self.send_json(await self.serve(ws, work), 201)


class ExportResubmitHandler(AuthedHandler):
    body_limit = "max_export_bytes"
    rates = ("exports_per_hour",)

    async def post(self, ws: str, export_id: str) -> None:
        def work(workspace: Workspace) -> dict[str, Any]:
            body = self.json_body("ExportResubmit")
            return self.service.submit_export(workspace, self.member, body, export_id)

        self.send_json(await self.serve(ws, work))


class ExportHandler(AuthedHandler):
    async def get(self, ws: str, export_id: str) -> None:
        self.send_json(await self.serve(ws, lambda w: self.service.own_export(
            w, self.member, export_id).to_dict("requester")))


class ExportWithdrawHandler(AuthedHandler):
    async def post(self, ws: str, export_id: str) -> None:
        def work(workspace: Workspace) -> dict[str, Any]:
            body = self.json_body("ExportWithdraw")
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
    # From SANDBOX_COOKIE_SECRET, so every replica accepts them; else random per process.
    return web.Application(handlers, default_handler_class=NotFoundHandler,
                           default_handler_args=kwargs, sandbox_prefix=prefix,
                           cookie_secret=cookie_secret(), xsrf_cookies=False,
                           serve_traceback=False, compress_response=False,
                           log_function=log_request)
