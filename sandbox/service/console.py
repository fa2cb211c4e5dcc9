"""The auditor console: web pages served by the gate service behind hub OAuth.

Pages under ``{prefix}console/`` for hub users whose token carries
``custom:sandbox:review`` (the hub puts it into the service's OAuth tokens of auditors only:
``oauth_client_allowed_scopes``); anyone else gets a 403 page and never data. The reviewer
recorded is the hub user name. Stored text (titles, SQL, comments, file names, cells) is
untrusted and always escaped; previews never run content: tables come from the stored CSV,
images are served for ``<img>`` only, and no page may run a script (Content-Security-Policy).
Forms carry JupyterHub's XSRF token, checked on every POST. Database work runs in the
service's pool, where each worker thread has its own state connection.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlencode

from jupyterhub.services.auth import (
    HubOAuth,
    HubOAuthCallbackHandler,
    HubOAuthenticated,
    UserNotAllowed,
)
from tornado import web
from tornado.ioloop import IOLoop

from .. import audit
from ..errors import InputError, SandboxError
from ..exports.store import FLAGGED, STATES, ExportRequest, ExportStore, StoredItem
from ..report import (
    CSS,
    PALETTE,
    esc,
    fmt_delta,
    fmt_eps,
    key_fingerprint,
    none,
    short_time,
    sql_by_charge,
    table,
)
from ..workspaces import Workspaces
from .errors import error_body

log = logging.getLogger("sandbox.service")

REVIEW_SCOPE = "custom:sandbox:review"
PAGE_CSP = ("default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
IMAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
IMAGES = {"image/png": "png", "image/svg+xml": "svg"}
QUERY_KINDS = ("query.", *sorted(k for k in audit.KINDS if k.startswith("query.")))
MAX_PREVIEW_ROWS, MAX_PREVIEW_CHARS, MAX_DETAIL_CHARS, MAX_LOG_ROWS = 200, 20_000, 6_000, 500
NAV = (("", "Queue"), ("history", "History"), ("queries", "Query log"),
       ("budgets", "Budgets"), ("audit", "Audit log"))
NOTICES = {"approve": "Your approval was recorded in the audit log.",
           "reject": "The request was rejected; the requester sees your comment.",
           "return": "The request was returned to its requester with your comment.",
           "revoke": "The export was revoked; it can no longer be downloaded."}
OK, WARN, BAD, MUTED = "ok", "warn", "bad", "muted"
TONE = {"ok": OK, "pass": OK, "released": OK, "approved": OK, "active": OK, "review": WARN,
        "checked": WARN, "submitted": WARN, "returned": WARN, "provisioning": WARN,
        "block": BAD, "blocked": BAD, "rejected": BAD, "revoked": BAD, "suspended": BAD,
        "expired": BAD, "FAILED": BAD}
CONSOLE_CSS = """
nav { display: flex; gap: 18px; align-items: center; padding: 10px 32px; background: #24292f; }
nav a { color: #fff; text-decoration: none; } nav a.on { font-weight: 700;
        text-decoration: underline; }
nav .who { margin-left: auto; color: #d0d7de; }
.badge.warn { background: #9a6700; } .badge.muted { background: #57606a; }
.notice { border-left: 4px solid var(--ok); background: #f0fff4; padding: 6px 12px; }
.error { border-left: 4px solid var(--bad); background: #fff5f5; padding: 6px 12px; }
form.decide textarea { width: 100%; min-height: 72px; margin: 4px 0 8px; font: inherit; }
form.filters { display: flex; gap: 10px; flex-wrap: wrap; align-items: end; margin: 8px 0; }
form.filters label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); }
button { padding: 5px 14px; margin-right: 8px; font: inherit; cursor: pointer; }
img.preview { max-width: 100%; border: 1px solid var(--line); background: #fff; }
h3 { font-size: 15px; margin: 20px 0 4px; }
details pre { max-height: 320px; overflow: auto; }
"""


class ConsoleError(SandboxError):
    """A console-level refusal (sign-in, scope, bad form input) with its HTTP status."""

    def __init__(self, code: str, message: str, hint: str | None, status: int) -> None:
        super().__init__(message, hint)
        self.code, self.status = code, status


def not_found(what: str) -> ConsoleError:
    return ConsoleError("http.not_found", f"there is no {what}",
                        "use the links of the console pages", 404)


# -- HTML pieces (pure) -------------------------------------------------------------------
def badge(text: str) -> str:
    return f'<span class="badge {TONE.get(text, MUTED)}">{esc(text)}</span>'


def flagged_badge() -> str:
    """The marker of a request the identifier scan matched (its requester never sees it)."""
    return f'<span class="badge {BAD}">{esc(FLAGGED)}</span>'


def code(text: Any) -> str:
    return f"<code>{esc(text)}</code>"


def meta(rows: Iterable[tuple[str, str]]) -> str:
    """A definition list; values must already be escaped HTML."""
    return '<dl class="meta">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>"
                                         for k, v in rows) + "</dl>"


def page(prefix: str, title: str, body: str, user: str = "", active: str | None = None) -> str:
    """A whole page: navigation (for signed-in auditors only), inline CSS, no script."""
    base = prefix + "console/"
    nav = ""
    if user:
        links = "".join(
            f'<a href="{esc(base + path)}"' + (' class="on"' if path == active else "")
            + f">{esc(label)}</a>" for path, label in NAV)
        nav = f'<nav>{links}<span class="who">signed in as {esc(user)}</span></nav>'
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)} · sandbox console</title>"
            f"<style>{CSS}{CONSOLE_CSS}</style></head><body>{nav}<main>{body}</main>"
            "</body></html>\n")


def select(name: str, options: Sequence[str], chosen: str, blank: str = "all") -> str:
    opts = [("", blank), *((o, o) for o in options)]
    return (f'<select name="{esc(name)}">' + "".join(
        f'<option value="{esc(v)}"' + (" selected" if v == chosen else "") + f">{esc(t)}</option>"
        for v, t in opts) + "</select>")


def field(label: str, control: str) -> str:
    return f"<label>{esc(label)}{control}</label>"


def text_input(name: str, value: str, placeholder: str = "") -> str:
    return (f'<input type="text" name="{esc(name)}" value="{esc(value)}" '
            f'placeholder="{esc(placeholder)}" maxlength="64">')


def filters_form(action: str, fields: Sequence[str]) -> str:
    return (f'<form class="filters" method="get" action="{esc(action)}">{"".join(fields)}'
            '<button type="submit">Filter</button></form>')


def export_rows(base: str, reqs: Sequence[ExportRequest], with_state: bool
                ) -> list[list[str]]:
    rows = []
    for r in reqs:
        link = f'<a href="{esc(base)}exports/{esc(r.id)}">{esc(r.title) or "(untitled)"}</a>'
        outcome = badge(r.report.outcome) if r.report else "-"
        if r.flagged:
            outcome += " " + flagged_badge()
        row = [esc(short_time(r.created)), link, esc(r.workspace), esc(r.requester),
               outcome, f"{len(r.approvals)}/{r.approvals_required}", str(len(r.items))]
        if with_state:
            row.insert(2, badge(r.state))
        rows.append(row)
    return rows


def export_table(base: str, reqs: Sequence[ExportRequest], with_state: bool = False) -> str:
    heads = ["Submitted (UTC)", "Title", "Workspace", "Requester", "Checks", "Approvals",
             "Items"]
    if with_state:
        heads.insert(2, "State")
    return table(heads, export_rows(base, reqs, with_state), numeric=(len(heads) - 1,),
                 time=True)


def grid(head: Sequence[str], rows: Iterable[Sequence[Any]], total: int | None = None) -> str:
    """A preview table of untrusted cells (escaped), at most ``MAX_PREVIEW_ROWS`` rows."""
    shown = [[esc(c) for c in row] for row in rows]
    note = ""
    if total is not None and total > len(shown):
        note = f'<p class="note">The first {len(shown):,} of {total:,} rows.</p>'
    return table([esc(h) for h in head], shown) + note


def csv_preview(data: bytes) -> str:
    reader = csv.reader(io.StringIO(data.decode("utf-8", errors="replace")))
    rows = list(_take(reader, MAX_PREVIEW_ROWS + 1))
    if not rows:
        return none("An empty table.")
    total = sum(1 for _ in reader) + len(rows) - 1
    return grid(rows[0], rows[1:], total)


def parquet_preview(data: bytes) -> str:
    import pyarrow.parquet as pq

    t = pq.read_table(io.BytesIO(data))
    rows = t.slice(0, MAX_PREVIEW_ROWS).to_pylist()
    return grid(t.column_names, ([r[c] for c in t.column_names] for r in rows), t.num_rows)


def text_preview(data: bytes, media_type: str) -> str:
    text = data.decode("utf-8", errors="replace")
    if media_type == "application/json":
        with contextlib.suppress(ValueError):
            text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    cut = len(text) > MAX_PREVIEW_CHARS
    note = (f'<p class="note">The first {MAX_PREVIEW_CHARS:,} of {len(text):,} characters.</p>'
            if cut else "")
    return f"<pre>{esc(text[:MAX_PREVIEW_CHARS])}</pre>{note}"


def _take(it: Iterable[Any], n: int) -> Iterable[Any]:
    for i, x in enumerate(it):
        if i >= n:
            return
        yield x


def preview(base: str, store: ExportStore, req: ExportRequest, item: StoredItem) -> str:
    """What the item holds, for a person to read; content is never run."""
    if not item.kept:
        why = {"withdrawn": "its requester withdrew the request",
               "rejected": "the request was rejected"}.get(req.state,
                                                           "the checks blocked the request")
        return none(f"The content was not kept ({why}).")
    src = f"{base}exports/{req.id}/items/{item.position}"
    img = f'<img class="preview" src="{esc(src)}" alt="{esc(item.name)}">'
    if item.media_type == "image/png":
        return img
    data = store.item_data(req.id, item.position)
    if item.media_type == "image/svg+xml":  # the markup too: hidden text does not show
        return (f"{img}<details><summary>SVG source</summary>"
                f"{text_preview(data, item.media_type)}</details>")
    try:
        if item.media_type == "text/csv":
            return csv_preview(data)
        if item.media_type == "application/vnd.apache.parquet":
            return parquet_preview(data)
        return text_preview(data, item.media_type)
    except Exception:  # damaged content is the checks' business: say it, do not fail
        log.info("no preview of export %s item %d", req.id, item.position)
        return none("This item cannot be previewed (see the checks).")


def details(value: Any) -> str:
    if not value:
        return ""
    text = json.dumps(value, indent=1, ensure_ascii=False, default=str)
    if len(text) > MAX_DETAIL_CHARS:
        text = text[:MAX_DETAIL_CHARS] + "\n…"
    return f"<details><summary>details</summary><pre>{esc(text)}</pre></details>"


def checks_html(req: ExportRequest) -> str:
    if req.report is None:
        return none("The checks have not run yet.")
    rep = req.report.to_dict("reviewer")
    rows = [[code(r["rule"]), badge(r["outcome"]), esc(r["message"]) + details(r.get("details"))]
            for r in rep["results"]]
    releases = "".join(f"<li>{code(r['release_id'])}: epsilon {fmt_eps(r['epsilon'])}, delta "
                       f"{fmt_delta(r['delta'])}</li>" for r in rep["releases"])
    return (f"<p>Outcome {badge(rep['outcome'])} (rules {esc(rep['rules_version'])})</p>"
            + table(["Rule", "Outcome", "Message"], rows)
            + (f"<p>Releases the items come from:</p><ul>{releases}</ul>" if releases else ""))


def items_html(base: str, store: ExportStore, req: ExportRequest) -> str:
    out = []
    for it in req.items:
        facts = [("Kind", esc(it.kind)), ("Media type", esc(it.media_type)),
                 ("Size", f"{it.size:,} bytes"), ("SHA-256", f'<code class="hash">{esc(it.sha256)}'
                                                             "</code>"),
                 ("Release ids", ", ".join(code(r) for r in it.meta.get("release_ids") or [])
                  or "-"),
                 ("Post-processing", esc(", ".join(it.meta.get("postprocessing") or [])) or "-")]
        out.append(f"<h3>{esc(it.name)}</h3>{meta(facts)}{preview(base, store, req, it)}")
    return "".join(out) or none("No items.")


def decision_forms(base: str, req: ExportRequest, reviewer: str, xsrf: str) -> str:
    action = esc(f"{base}exports/{req.id}/decide")
    if reviewer == req.requester and req.state in ("checked", "released"):
        return ('<p class="error">You requested this export: another auditor must decide on '
                "it (separation of duties).</p>")
    if req.state == "checked" and req.report is not None and req.report.blocked:
        return (f'<p class="error">The automatic checks blocked this request ({flagged_badge()}'
                " if the identifier scan matched): it can only be rejected. Its requester sees "
                "it waiting for review like any other; do not say why in the comment.</p>"
                f'<form class="decide" method="post" action="{action}">{xsrf}'
                '<label for="comment">Comment (shown to the requester)</label>'
                '<textarea id="comment" name="comment" maxlength="4000">Not approved after '
                "review.</textarea>"
                '<button type="submit" name="decision" value="reject">Reject</button></form>')
    if req.state == "checked":
        done = (f"<p>You approved this revision already; {req.approvals_required} different "
                "reviewers must approve it.</p>" if reviewer in req.approvals else "")
        return (f'{done}<form class="decide" method="post" action="{action}">{xsrf}'
                '<label for="comment">Comment (shown to the requester; needed to reject or '
                'return)</label><textarea id="comment" name="comment" maxlength="4000">'
                "</textarea>"
                '<button type="submit" name="decision" value="approve">Approve</button>'
                '<button type="submit" name="decision" value="return">Return for changes'
                "</button>"
                '<button type="submit" name="decision" value="reject">Reject</button></form>')
    if req.state == "released":
        return (f'<form class="decide" method="post" action="{action}">{xsrf}'
                '<label for="comment">Why it must no longer be used (shown to the requester)'
                '</label><textarea id="comment" name="comment" maxlength="4000"></textarea>'
                '<button type="submit" name="decision" value="revoke">Revoke</button></form>')
    return none(f"No decision is possible: the request is {req.state}.")


def export_page(base: str, store: ExportStore, req: ExportRequest, reviewer: str, xsrf: str,
                notice: str) -> str:
    facts = [
        ("Id", code(req.id)),
        ("State", badge(req.state) + (" " + flagged_badge() if req.flagged else "")),
        ("Workspace", esc(req.workspace)),
        ("Requester", esc(req.requester)), ("Purpose", esc(req.purpose)),
        ("Revision", str(req.revision)),
        ("Policy", f"{esc(req.policy_id)} v{esc(req.policy_version)} "
                   f'<code class="hash">{esc(req.policy_hash)}</code>'),
        ("Approvals", f"{len(req.approvals)}/{req.approvals_required}"
                      + (f" ({esc(', '.join(req.approvals))})" if req.approvals else "")),
        ("Small-group threshold", str(req.min_group_count)),
        ("Submitted", esc(short_time(req.created)) + " UTC"),
        ("Updated", esc(short_time(req.updated)) + " UTC"),
    ]
    if req.bundle_sha256:
        facts.append(("Bundle SHA-256", f'<code class="hash">{esc(req.bundle_sha256)}</code>'))
    events = [[esc(short_time(e.time)), esc(e.event), esc(e.actor), str(e.revision),
               esc(e.comment)] for e in req.events]
    return (f"<h1>{esc(req.title) or '(untitled)'}</h1>"
            + (f'<p class="notice">{esc(notice)}</p>' if notice else "")
            + meta(facts) + "<h2>Decision</h2>" + decision_forms(base, req, reviewer, xsrf)
            + "<h2>Automatic checks</h2>" + checks_html(req)
            + "<h2>Items</h2>" + items_html(base, store, req)
            + "<h2>History</h2>"
            + table(["Time (UTC)", "Event", "By", "Revision", "Comment"], events, time=True))


def query_row(r: dict[str, Any], sql: dict[str, str]) -> list[str]:
    kind = str(r.get("kind"))
    text = r.get("sql") or sql.get(str(r.get("charge_id")), "")
    if kind == "query.answered":
        info = f"release {code(r.get('release_id'))}, {esc(r.get('rows'))} row(s)"
    elif kind == "query.refused":
        info = (f"{code(r.get('rule'))}: {esc(r.get('message'))}"
                + (" (dummy data)" if r.get("dummy") else ""))
    elif kind == "query.dummy":
        info = (f"dummy data, not charged: release {code(r.get('release_id'))}"
                if r.get("release_id") else f"dummy data: {code(r.get('error_code'))}")
    elif kind == "query.failed":
        info = code(r.get("error_code"))
    elif kind == "query.replayed":
        info = f"release {code(r.get('release_id'))} sent again, not charged"
    elif kind == "query.charged":
        info = f"delta {fmt_delta(r.get('delta'))}" + details(
            {"rewritten_sql": r.get("rewritten_sql")} if r.get("rewritten_sql") else None)
    else:
        info = f"charge {code(str(r.get('charge_id'))[:12])}"
    return [esc(short_time(r.get("time"))), str(r.get("seq")), esc(kind), esc(r.get("workspace")),
            esc(r.get("member")), fmt_eps(r.get("epsilon")), code(text) if text else "-", info]


def budget_chart(rows: Sequence[tuple[str, float, float]]) -> str:
    """Horizontal bars: epsilon spent of each member's total (red from 90 %)."""
    row, label_w, bar_w, top = 26, 200, 420, 8
    width, height = label_w + bar_w + 190, top * 2 + row * len(rows)
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}"><title>Epsilon spent per member</title>']
    for i, (member, spent, total) in enumerate(rows):
        y = top + i * row
        frac = min(spent / total, 1.0) if total > 0 else 1.0
        colour = PALETTE[5] if frac >= 0.9 else PALETTE[0]
        shown = member if len(member) <= 26 else member[:25] + "…"
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end" class="mono">{esc(shown)}'
            f'</text><rect x="{label_w}" y="{y + 4}" width="{bar_w}" height="{row - 8}" '
            f'fill="#eaeef2"/><rect x="{label_w}" y="{y + 4}" width="{bar_w * frac:.1f}" '
            f'height="{row - 8}" fill="{colour}"><title>{esc(member)}: epsilon '
            f"{fmt_eps(spent)} of {fmt_eps(total)}</title></rect>"
            f'<text x="{label_w + bar_w + 8}" y="{y + 17}">{fmt_eps(spent)} of {fmt_eps(total)}'
            "</text>")
    return "".join(parts) + "</svg>"


def budgets_page(state: Any) -> str:
    spaces = Workspaces(state)
    out = ["<h1>Privacy budgets</h1><p class=\"sub\">Epsilon and delta spent in the current "
           "period, per workspace and member.</p>"]
    for rec in spaces.all():
        ledger = spaces.ledger(rec)
        balances = [(m, ledger.balance(m)) for m in rec.members]
        out.append(f"<h2>{esc(rec.name)} {badge(rec.effective_state())}</h2>" + meta([
            ("Scenario", f"{esc(rec.scenario)} v{esc(rec.scenario_version)}"),
            ("Expires", esc(rec.expires)),
            ("Default budget", f"epsilon {fmt_eps(rec.epsilon)}, delta {fmt_delta(rec.delta)}, "
                               f"{esc(rec.refresh)}")]))
        if not balances:
            out.append(none("No members."))
            continue
        out.append(budget_chart([(m, b.epsilon_spent, b.epsilon_total) for m, b in balances]))
        out.append(table(
            ["Member", "Epsilon spent", "Epsilon total", "Epsilon left", "Delta spent",
             "Delta total", "Refreshes on"],
            [[esc(m), fmt_eps(b.epsilon_spent), fmt_eps(b.epsilon_total),
              fmt_eps(b.epsilon_remaining), fmt_delta(b.delta_spent), fmt_delta(b.delta_total),
              esc(b.refreshes_on or "-")] for m, b in balances], numeric=(1, 2, 3, 4, 5)))
    if len(out) == 1:
        out.append(none("No workspaces yet."))
    return "".join(out)


def verify_page(report: audit.VerifyReport, public_hex: str,
                checkpoints: Sequence[audit.Checkpoint]) -> str:
    if report.ok:
        status = (f"{badge('ok')} every record, the hash chain, the stored head and every "
                  "signed checkpoint match")
    else:
        first = (f" First bad record: #{report.first_bad}." if report.first_bad is not None
                 else "")
        problems = "".join(f"<li>{esc(p)}</li>" for p in report.problems)
        status = (f"{badge('FAILED')} {len(report.problems)} problem(s)."
                  f'{esc(first)}<ul class="problems">{problems}</ul>')
    last = checkpoints[-1] if checkpoints else None
    facts = [("Verification", status), ("Records", f"{report.records:,}"),
             ("Checkpoints checked", str(report.checkpoints)),
             ("Latest checkpoint", f"{last.tree_size:,} records, signed "
                                   f"{esc(short_time(last.time))} UTC" if last else "-"),
             ("Root hash", f'<code class="hash">{esc(report.root_hash)}</code>'),
             ("Signing key", f"{code(key_fingerprint(public_hex))}<br>"
                             f'<code class="hash">{esc(public_hex)}</code>')]
    note = ("This check was recorded in the log (audit.read)." if report.ok else
            "Nothing was written to the log. Keep a copy of the state database as evidence.")
    return ("<h1>Audit log</h1><p class=\"sub\">Verified now, from the stored records; "
            "<code>sandbox audit verify --checkpoint FILE</code> also checks against a "
            f"checkpoint you kept.</p>{meta(facts)}<p class=\"note\">{esc(note)}</p>")


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
        body = (f"<h1>{status} {esc(err['code'])}</h1><p class=\"error\">{esc(err['message'])}"
                "</p>" + (f"<p><b>What to do:</b> {esc(err['hint'])}</p>" if err.get("hint")
                          else ""))
        h.set_status(status)
        h.finish(page(self.prefix, f"{status} {err['code']}", body,
                      getattr(self, "reviewer", "")))

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

    def show(self, title: str, body: str, active: str | None = None) -> None:
        self.finish(page(self.prefix, title, body, self.reviewer, active))

    def arg(self, name: str, limit: int = 64) -> str:
        value = self.get_query_argument(name, "").strip()
        if len(value) > limit:
            raise InputError(f"the filter {name!r} is longer than {limit} characters",
                             "shorten it")
        return value


class QueueHandler(ConsoleHandler):
    async def get(self) -> None:
        def work() -> str:
            reqs = self.service.export_store().list(states=["checked"])
            body = ("<h1>Review queue</h1><p class=\"sub\">Checked export requests waiting for "
                    "a decision, oldest first.</p>")
            return body + (export_table(self.base, reqs) if reqs else
                           none("Nothing is waiting for review."))

        self.show("Review queue", await self.run(work), "")


class HistoryHandler(ConsoleHandler):
    async def get(self) -> None:
        ws, st, who = self.arg("workspace"), self.arg("state"), self.arg("requester")
        if st and st not in STATES:
            raise InputError(f"unknown state {st!r}", f"use one of {', '.join(STATES)}")

        def work() -> str:
            names = Workspaces(self.service.state()).names()
            reqs = self.service.export_store().list(workspace=ws or None,
                                                    states=[st] if st else None)
            reqs = [r for r in reversed(reqs) if not who or r.requester == who]
            form = filters_form(self.base + "history", [
                field("Workspace", select("workspace", names, ws)),
                field("State", select("state", STATES, st)),
                field("Requester", text_input("requester", who))])
            return ("<h1>Export history</h1><p class=\"sub\">Every export request, newest "
                    f"first.</p>{form}" + (export_table(self.base, reqs, True) if reqs else
                                           none("No export requests match.")))

        self.show("Export history", await self.run(work), "history")


class ExportHandler(ConsoleHandler):
    async def get(self, export_id: str) -> None:
        xsrf = self.xsrf_form_html()  # here: it may set the XSRF cookie on this response
        notice = NOTICES.get(self.get_query_argument("done", ""), "")

        def work() -> tuple[str, str]:
            store = self.service.export_store()
            req = store.get(export_id)
            return req.title, export_page(self.base, store, req, self.reviewer, xsrf, notice)

        title, body = await self.run(work)
        self.show(f"Export: {title}", body)


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
    async def get(self) -> None:
        from ..cli_audit import parse_when

        ws, member = self.arg("workspace"), self.arg("member")
        kind = self.arg("kind") or "query."
        since_text, until_text = self.arg("since"), self.arg("until")
        if kind not in QUERY_KINDS:
            raise InputError(f"unknown query record kind {kind!r}",
                             f"use one of {', '.join(QUERY_KINDS)}")
        since = parse_when(since_text, "since") if since_text else None
        until = parse_when(until_text, "until", end=True) if until_text else None
        if since and until and since >= until:
            raise InputError("'since' is not before 'until'", "swap them, or widen the range")
        filters = {"workspace": ws or None, "member": member or None, "kind": kind,
                   "since": since, "until": until}

        def work() -> str:
            state = self.service.state()
            names = Workspaces(state).names()
            records = state.records(**filters)
            total, last = 0, collections.deque(maxlen=MAX_LOG_ROWS)
            try:
                for r in records:
                    total += 1
                    last.append(r)
            finally:
                records.close()  # end the read, then record it (as `sandbox audit log` does)
            state.record("audit.read", actor=self.reviewer, workspace=ws or None, what="log",
                         filters=filters)
            return self._page(names, list(reversed(last)), total,
                              (ws, member, kind, since_text, until_text))

        self.show("Query log", await self.run(work), "queries")

    def _page(self, names: list[str], recs: list[dict[str, Any]], total: int,
              shown: tuple[str, ...]) -> str:
        ws, member, kind, since, until = shown
        form = filters_form(self.base + "queries", [
            field("Workspace", select("workspace", names, ws)),
            field("Member", text_input("member", member)),
            field("Kind", select("kind", QUERY_KINDS[1:], "" if kind == "query." else kind,
                                 "every query record")),
            field("Since (UTC)", text_input("since", since, "YYYY-MM-DD")),
            field("Until (UTC)", text_input("until", until, "YYYY-MM-DD"))])
        sql = sql_by_charge(recs)
        note = (f'<p class="note">The newest {len(recs):,} of {total:,} matching records.</p>'
                if total > len(recs) else f'<p class="note">{total:,} record(s).</p>')
        rows = [query_row(r, sql) for r in recs]
        return ("<h1>Query log</h1><p class=\"sub\">Every question asked, as the audit log holds "
                "it, newest first. This read is itself recorded (audit.read).</p>" + form + note
                + (table(["Time (UTC)", "#", "Kind", "Workspace", "Member", "Epsilon", "SQL",
                          "Details"], rows, numeric=(1, 5), sql=(6,), time=True)
                   if rows else none("No records match.")))


class BudgetsHandler(ConsoleHandler):
    async def get(self) -> None:
        self.show("Budgets", await self.run(lambda: budgets_page(self.service.state())),
                  "budgets")


class AuditHandler(ConsoleHandler):
    async def get(self) -> None:
        def work() -> str:
            state = self.service.state()
            report = state.verify()
            if report.ok:  # like `sandbox audit verify`: a failed log is not written to
                state.record("audit.read", actor=self.reviewer, what="verify",
                             filters={"checkpoint": None, "records": report.records,
                                      "root_hash": report.root_hash})
            return verify_page(report, audit.public_hex(state.public_key), state.checkpoints())

        self.show("Audit log", await self.run(work), "audit")


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
        (base + "budgets", BudgetsHandler, args),
        (base + "audit", AuditHandler, args),
        (export, ExportHandler, args),
        (export + r"/items/([0-9]{1,4})", ItemHandler, args),
        (export + "/decide", DecideHandler, args),
        (base + "(.*)", MissingHandler, args),
    ]
