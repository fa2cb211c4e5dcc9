"""The auditor console: web pages served by the gate service behind hub OAuth.

Pages under ``{prefix}console/`` for hub users whose token carries
``custom:sandbox:review`` (the hub puts it into the service's OAuth tokens of auditors only:
``oauth_client_allowed_scopes``); anyone else gets a 403 page and never data. The reviewer
recorded is the hub user name. Stored text (titles, SQL, comments, file names, cells) is
untrusted, so every page is an autoescaping template (``sandbox/templates/console/``);
previews never run content: tables come from the stored CSV, images are served for
``<img>`` only, and no page may run a script (Content-Security-Policy).
Forms carry JupyterHub's XSRF token, checked on every POST. Database work runs in the
service's pool, where each worker thread has its own state connection.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from jupyterhub.services.auth import (
    HubOAuth,
    HubOAuthCallbackHandler,
    HubOAuthenticated,
    UserNotAllowed,
)
from markupsafe import Markup
from tornado import web
from tornado.ioloop import IOLoop

from .. import audit, audit_pages
from ..errors import InputError, SandboxError
from ..exports.store import STATES, ExportRequest
from ..report import key_fingerprint
from ..scenarios import Scenarios
from ..templates import render
from ..workspaces import Workspaces
from .console_previews import export_context
from .console_views import QUERY_KINDS, budget_chart, log_context, queries_link
from .errors import error_body

log = logging.getLogger("sandbox.service")

REVIEW_SCOPE = "custom:sandbox:review"
PAGE_CSP = ("default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
IMAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
IMAGES = {"image/png": "png", "image/svg+xml": "svg"}
MAX_TEXT_FILTER = 200
NAV = (("", "Queue"), ("history", "History"), ("queries", "Query log"),
       ("budgets", "Budgets"), ("audit", "Audit log"))
NOTICES = {"approve": "Your approval was recorded in the audit log.",
           "reject": "The request was rejected; the requester sees your comment.",
           "return": "The request was returned to its requester with your comment.",
           "revoke": "The export was revoked; it can no longer be downloaded."}
class ConsoleError(SandboxError):
    """A console-level refusal (sign-in, scope, bad form input) with its HTTP status."""

    def __init__(self, code: str, message: str, hint: str | None, status: int) -> None:
        super().__init__(message, hint)
        self.code, self.status = code, status


def not_found(what: str) -> ConsoleError:
    return ConsoleError("http.not_found", f"there is no {what}",
                        "use the links of the console pages", 404)


# -- what the pages show (the HTML is in sandbox/templates/console/) -----------------------
def show_page(template: str, prefix: str, title: str, user: str = "",
              active: str | None = None, **context: Any) -> str:
    """A whole page: navigation (for signed-in auditors only), inline CSS, no script."""
    return render(template, title=title, base=prefix + "console/", user=user, active=active,
                  nav=NAV, **context)


def budget_spaces(state: Any, base: str = "") -> list[dict[str, Any]]:
    """Every workspace with its members' balances and their chart."""
    spaces, scenarios = Workspaces(state), Scenarios(state)
    out = []
    for rec in spaces.all():
        ledger = spaces.ledger(rec)
        grades, accepted = scenarios.grading(scenarios.get(rec.scenario, rec.scenario_version))
        balances = [(m, ledger.balance(m)) for m in rec.members]
        link = functools.partial(queries_link, base, rec.name)
        grade_rows = [(f"{g.capitalize()} columns", ", ".join(grades[g]))
                      for g in ("core", "important") if grades.get(g)]
        if grades:
            grade_rows.append(("Core accepted at review", ", ".join(accepted) or "-"))
        out.append({"rec": rec, "balances": balances, "grade_rows": grade_rows,
                    "links": [link(m) for m, _ in balances], "chart": budget_chart(
                        [(m, b.epsilon_spent, b.epsilon_total) for m, b in balances], link)})
    return out


# -- handlers -----------------------------------------------------------------------------
class Pages:
    """HTML answers with strict headers, and errors as pages (code, message, hint)."""

    prefix: str
    reviewer: str

    def set_default_headers(self) -> None:
        h: Any = self
        for k, v in (("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store"),
                     ("X-Content-Type-Options", "nosniff"), ("Content-Security-Policy", PAGE_CSP),
                     ("X-Frame-Options", "DENY"), ("Referrer-Policy", "same-origin")):
            h.set_header(k, v)
        h.clear_header("Server")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        h: Any = self
        status, err = describe(kwargs.get("exc_info", (None, None, None))[1], status_code)
        h.set_status(status)
        h.finish(show_page("console/error.html", self.prefix, f"{status} {err['code']}",
                           getattr(self, "reviewer", ""), status=status, error=err))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        h: Any = self
        if isinstance(value, SandboxError) or (isinstance(value, web.HTTPError)
                                               and value.status_code < 500):
            log.info("console %s %s -> %s", h.request.method, h.request.path,
                     getattr(value, "code", None) or getattr(value, "status_code", "?"))
        else:
            log.error("unexpected error serving %s %s", h.request.method, h.request.path,
                      exc_info=(typ, value, tb))


def describe(exc: BaseException | None, status_code: int) -> tuple[int, dict[str, Any]]:
    """(status, {code, message, hint}) safe to show: no stack trace, no internals."""
    if isinstance(exc, ConsoleError):
        return exc.status, exc.to_dict()
    if isinstance(exc, web.HTTPError) and not isinstance(exc, SandboxError):
        status = exc.status_code
        if status == 403 and "xsrf" in (exc.log_message or "").lower():
            return 403, {"code": "auth.xsrf", "message": "the form's XSRF token is missing or "
                         "does not match your session", "hint": "reload the page and submit "
                         "the form again"}
        code_ = {404: "http.not_found", 405: "http.method_not_allowed"}.get(
            status, "http.error" if status < 500 else "internal")
        message = (exc.log_message % exc.args if exc.log_message and exc.args else
                   exc.log_message) if status < 500 else "the console hit an internal error"
        return status, {"code": code_, "message": message or exc.reason or "not served",
                        "hint": "go back to the console's queue"}
    if exc is None:
        return status_code, {"code": "http.error" if status_code < 500 else "internal",
                             "message": "the request could not be served", "hint": None}
    status, body = error_body(exc)
    return status, body["error"]


class ConsoleHandler(Pages, HubOAuthenticated, web.RequestHandler):
    """A console page: hub OAuth sign-in, then the token's scopes decide (review only)."""

    # HubAuthenticated.check_hub_user lets in only tokens carrying this scope
    hub_scopes = frozenset({REVIEW_SCOPE})

    def initialize(self, service: Any, oauth: HubOAuth | None, prefix: str) -> None:
        self.service, self.oauth, self.prefix, self.reviewer = service, oauth, prefix, ""
        self.base = prefix + "console/"
        if oauth is not None:
            self.hub_auth = oauth

    async def prepare(self) -> None:
        if self.oauth is None:
            raise ConsoleError("console.unavailable", "the console needs the hub's OAuth "
                               "settings, which this service was not started with",
                               "run the service as a JupyterHub managed service", 503)
        if "token" in self.request.query_arguments:
            raise ConsoleError("auth.token_in_url", "tokens are not accepted in the URL",
                               "open the console in a browser and sign in through the hub", 400)
        model = await self.hub_auth.get_user(self, sync=False)
        if self.request.method == "POST":
            self.check_xsrf_cookie()  # tornado's hook (JupyterHub's check): the form's _xsrf
        if not model:
            if self.request.method in ("GET", "HEAD"):
                self.redirect(self.get_login_url())
                return
            raise ConsoleError("auth.required", "you are not signed in",
                               "open the console and sign in through the hub", 401)
        if model.get("kind", "user") != "user":
            raise ConsoleError("auth.not_a_user", "only hub users can use the console",
                               "sign in as an auditor", 403)
        try:
            self.check_hub_user(model)
        except UserNotAllowed:
            raise ConsoleError(
                "auth.scope", f"{model['name']} may not use the auditor console: the hub "
                f"login lacks the scope {REVIEW_SCOPE}", "the console is for auditors; ask the "
                "operator for the sandbox-auditor role, then sign in again", 403) from None
        self.current_user = model
        self.reviewer = str(model["name"])

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Database work runs in the service's pool (state connections are per thread)."""
        return await IOLoop.current().run_in_executor(self.service.pool, fn, *args)

    def show(self, template: str, title: str, active: str | None = None,
             **context: Any) -> None:
        self.finish(show_page(template, self.prefix, title, self.reviewer, active, **context))

    def arg(self, name: str, limit: int = 64) -> str:
        value = self.get_query_argument(name, "").strip()
        if len(value) > limit:
            raise InputError(f"the filter {name!r} is longer than {limit} characters",
                             "shorten it")
        return value


class QueueHandler(ConsoleHandler):
    async def get(self) -> None:
        reqs = await self.run(lambda: self.service.export_store().list(states=["checked"]))
        self.show("console/queue.html", "Review queue", "", reqs=reqs)


class HistoryHandler(ConsoleHandler):
    async def get(self) -> None:
        ws, st, who = self.arg("workspace"), self.arg("state"), self.arg("requester")
        if st and st not in STATES:
            raise InputError(f"unknown state {st!r}", f"use one of {', '.join(STATES)}")

        def work() -> tuple[list[str], list[ExportRequest]]:
            names = Workspaces(self.service.state()).names()
            reqs = self.service.export_store().list(workspace=ws or None,
                                                    states=[st] if st else None)
            return names, [r for r in reversed(reqs) if not who or r.requester == who]

        names, reqs = await self.run(work)
        self.show("console/history.html", "Export history", "history", names=names,
                  states=STATES, workspace=ws, state=st, requester=who, reqs=reqs)


class ExportHandler(ConsoleHandler):
    async def get(self, export_id: str) -> None:
        xsrf = self.xsrf_form_html()  # here: it may set the XSRF cookie on this response
        notice = NOTICES.get(self.get_query_argument("done", ""), "")

        def work() -> dict[str, Any]:
            store = self.service.export_store()
            return export_context(self.base, store, store.get(export_id))

        context = await self.run(work)
        self.show("console/export.html", f"Export: {context['req'].title}", None,
                  reviewer=self.reviewer, xsrf=Markup(xsrf), notice=notice, **context)


class ItemHandler(ConsoleHandler):
    """An image of a request, for its page's <img>: never a document that runs."""

    async def get(self, export_id: str, position: str) -> None:
        def work() -> tuple[str, bytes]:
            store = self.service.export_store()
            req = store.get(export_id)
            item = next((i for i in req.items if i.position == int(position)), None)
            if item is None or item.media_type not in IMAGES:
                raise not_found(f"image #{position} in export {export_id}")
            return item.media_type, store.item_data(export_id, item.position)

        media, data = await self.run(work)
        self.set_header("Content-Type", media)
        self.set_header("Content-Security-Policy", IMAGE_CSP)
        self.set_header("Content-Disposition", f'attachment; filename="export-{export_id}-'
                                               f'{position}.{IMAGES[media]}"')
        self.finish(data)


class DecideHandler(ConsoleHandler):
    async def post(self, export_id: str) -> None:
        decision = self.get_body_argument("decision", "")
        comment = self.get_body_argument("comment", "")
        if decision not in NOTICES:
            raise ConsoleError("input.invalid", f"unknown decision {decision[:20]!r}",
                               "use the buttons of the request's page", 400)

        def work() -> ExportRequest:
            store = self.service.export_store()
            if decision == "revoke":
                return store.revoke(export_id, self.reviewer, comment)
            return store.review(export_id, self.reviewer, decision, comment)

        req = await self.run(work)
        log.info("console: %s %s export %s (now %s)", self.reviewer, decision, req.id, req.state)
        self.redirect(f"{self.base}exports/{export_id}?{urlencode({'done': decision})}",
                      status=303)


class QueriesHandler(ConsoleHandler):
    """The query log, one page at a time: the filters narrow the query, pages follow seq."""

    async def get(self) -> None:
        form, f = self.filters()
        before, after = self.cursor("before"), self.cursor("after")

        def work() -> tuple[list[str], audit_pages.Page, dict[str, Any]]:
            state = self.service.state()
            names = Workspaces(state).names()
            pg = audit_pages.page(state.con, f, before=before, after=after)
            charges = audit_pages.charge_records(state.con, pg.records)
            state.record("audit.read", actor=self.reviewer, workspace=f.workspace, what="log",
                         filters={**f.to_record(), "before": before, "after": after})
            return names, pg, charges

        names, pg, charges = await self.run(work)
        self.show("console/queries.html", "Query log", "queries", names=names,
                  **log_context(self.base, form, pg, charges))

    def filters(self) -> tuple[dict[str, str], audit_pages.Filters]:
        """The form's values as typed, and as the query's conditions (or InputError)."""
        from ..audit import parse_when

        form = {k: self.arg(k) for k in ("workspace", "member", "kind", "since", "until")}
        form["text"] = self.arg("text", MAX_TEXT_FILTER)
        kind = form["kind"] or "query."
        if kind not in QUERY_KINDS:
            raise InputError(f"unknown query record kind {kind!r}",
                             f"use one of {', '.join(QUERY_KINDS)}")
        since = parse_when(form["since"], "since") if form["since"] else None
        until = parse_when(form["until"], "until", end=True) if form["until"] else None
        if since and until and since >= until:
            raise InputError("'since' is not before 'until'", "swap them, or widen the range")
        return form, audit_pages.Filters(
            workspace=form["workspace"] or None, member=form["member"] or None, kind=kind,
            since=since, until=until, text=form["text"] or None)

    def cursor(self, name: str) -> int | None:
        value = self.arg(name, 12)
        if not value:
            return None
        if not (value.isascii() and value.isdigit()):
            raise InputError(f"{name!r} must be a record number", "use the page's links")
        return int(value)


class QueryRecordHandler(ConsoleHandler):
    """One query record whole: all of its SQL, its fields, the other records of its charge."""

    async def get(self, seq_text: str) -> None:
        seq = int(seq_text)

        def work() -> tuple[dict[str, Any], list[dict[str, Any]]]:
            state = self.service.state()
            rec = audit_pages.one(state.con, seq)
            if rec is None:
                raise not_found(f"query record #{seq}")
            others = audit_pages.related(state.con, rec)
            state.record("audit.read", actor=self.reviewer, workspace=rec.get("workspace"),
                         what="record", filters={"seq": seq})
            return rec, others

        rec, others = await self.run(work)
        charge = next((r for r in others if r.get("kind") == "query.charged"), None)
        asked = rec.get("sql") or (charge or {}).get("sql") or ""
        self.show("console/record.html", f"Query record #{seq}", None, rec=rec, others=others,
                  asked=asked, asked_in=None if rec.get("sql") or charge is None
                  else charge.get("seq"), truncated=str(asked).endswith(audit.TRUNCATED),
                  rewritten=rec.get("rewritten_sql") or (charge or {}).get("rewritten_sql"),
                  stored=json.dumps(rec, indent=1, ensure_ascii=False, sort_keys=True),
                  log=self.base + "queries")


class BudgetsHandler(ConsoleHandler):
    async def get(self) -> None:
        spaces = await self.run(lambda: budget_spaces(self.service.state(), self.base))
        self.show("console/budgets.html", "Budgets", "budgets", spaces=spaces)


class AuditHandler(ConsoleHandler):
    async def get(self) -> None:
        def work() -> dict[str, Any]:
            state = self.service.state()
            report = state.verify()
            if report.ok:  # like `sandbox audit verify`: a failed log is not written to
                state.record("audit.read", actor=self.reviewer, what="verify",
                             filters={"checkpoint": None, "records": report.records,
                                      "root_hash": report.root_hash})
            public_hex = audit.public_hex(state.public_key)
            checkpoints = state.checkpoints()
            return {"report": report, "public_hex": public_hex,
                    "fingerprint": key_fingerprint(public_hex),
                    "last": checkpoints[-1] if checkpoints else None}

        self.show("console/audit.html", "Audit log", "audit", **await self.run(work))


class MissingHandler(ConsoleHandler):
    async def get(self, *_: str) -> None:
        raise not_found("such console page")

    post = get


class CallbackHandler(Pages, HubOAuthCallbackHandler):
    """Finishes the hub's OAuth sign-in: stores the token in a signed cookie."""

    def initialize(self, oauth: HubOAuth | None, prefix: str) -> None:
        self.oauth, self.prefix, self.reviewer = oauth, prefix, ""
        if oauth is not None:
            self.hub_auth = oauth

    def prepare(self) -> None:
        if self.oauth is None:
            raise not_found("OAuth sign-in here")


def _oauth(prefix: str, service: Any) -> HubOAuth | None:
    """The hub's OAuth client of this service, from the environment the hub sets."""
    if not (os.environ.get("JUPYTERHUB_CLIENT_ID") and os.environ.get("JUPYTERHUB_API_TOKEN")):
        log.warning("no JUPYTERHUB_CLIENT_ID: the auditor console is off (it needs hub OAuth)")
        return None
    return HubOAuth(base_url=prefix, allow_token_in_url=False,
                    cache_max_age=service.config.limits["auth_cache_s"])


def routes(prefix: str, kwargs: dict[str, Any]) -> list[tuple[str, Any, dict[str, Any]]]:
    """Tornado handlers under ``{prefix}console/`` (and the OAuth callback)."""
    oauth = _oauth(prefix, kwargs["service"])
    args = {"service": kwargs["service"], "oauth": oauth, "prefix": prefix}
    base = re.escape(prefix + "console/")
    export = base + r"exports/([0-9a-f]{32})"
    return [
        (re.escape(prefix + "oauth_callback"), CallbackHandler,
         {"oauth": oauth, "prefix": prefix}),
        (re.escape(prefix + "console"), web.RedirectHandler, {"url": prefix + "console/"}),
        (base, QueueHandler, args),
        (base + "history", HistoryHandler, args),
        (base + "queries", QueriesHandler, args),
        (base + r"queries/([0-9]{1,12})", QueryRecordHandler, args),
        (base + "budgets", BudgetsHandler, args),
        (base + "audit", AuditHandler, args),
        (export, ExportHandler, args),
        (export + r"/items/([0-9]{1,4})", ItemHandler, args),
        (export + "/decide", DecideHandler, args),
        (base + "(.*)", MissingHandler, args),
    ]
