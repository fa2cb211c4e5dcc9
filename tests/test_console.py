"""The auditor console on a real hub: hub OAuth sign-in, the review scope, XSRF, escaping.

A developer submits exports through the service with their own hub token; the auditor and
the developer then use the console with browser-like sessions (``requests`` following the
hub's OAuth redirects). See tests/hubkit.py for the hub (real PAM users, proxy, service).
"""

from __future__ import annotations

import base64
import json
import re
import struct
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hubkit import Hub, running_hub

WS = "credit-underwriting"
API = "/services/sandbox/api/v1"
CONSOLE = "/services/sandbox/console/"
SQL = ("SELECT district, count(*) AS people, avg(income) AS avg_income FROM persons "
       "GROUP BY district")
EVIL = "<script>alert(1)</script>"
SVG = (b'<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20">'
       b'<script>alert(2)</script><rect width="40" height="20" fill="#0072B2"/></svg>')
NOTE = b"noisy counts <img src=x onerror=alert(3)>; see the release ids"
PAGES = ("", "history", "queries", "budgets", "audit")


def png(w: int = 6, h: int = 4) -> bytes:
    """A small valid PNG (red pixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * w for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    with running_hub() as h:
        yield h


@pytest.fixture(scope="module")
def dev(hub: Hub) -> str:
    return hub.groups[WS][0]


def api(hub: Hub, user: str, method: str, path: str, **kw: Any) -> requests.Response:
    return hub.api(user, method, API + path, **kw)


def release(hub: Hub, dev: str, sql: str = SQL) -> dict[str, Any]:
    r = api(hub, dev, "POST", f"/workspaces/{WS}/query",
            json={"sql": sql, "epsilon": 0.2, "request_id": uuid.uuid4().hex})
    assert r.status_code == 200, r.text
    return r.json()


def file_item(name: str, media_type: str, data: bytes) -> dict[str, Any]:
    return {"kind": "file", "name": name, "media_type": media_type,
            "data_base64": base64.b64encode(data).decode()}


def submit(hub: Hub, dev: str, title: str, files: bool = True) -> dict[str, Any]:
    rel = release(hub, dev)
    items: list[dict[str, Any]] = [{"kind": "frame", "name": "by_district",
                                    "columns": rel["columns"], "rows": rel["rows"],
                                    "release_ids": [rel["release_id"]]}]
    if files:
        items += [file_item("chart.png", "image/png", png()),
                  file_item("chart.svg", "image/svg+xml", SVG),
                  file_item("notes.txt", "text/plain", NOTE)]
    r = api(hub, dev, "POST", f"/workspaces/{WS}/exports",
            json={"title": title, "purpose": "board report <b>Q3</b>", "items": items,
                  "request_id": uuid.uuid4().hex})
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["state"] == "checked", doc
    return doc


def session(hub: Hub, user: str) -> requests.Session:
    """A browser-like session: hub login, then the console's OAuth sign-in."""
    s = hub.login(user, hub.users[user])
    assert s.login_status == 302, hub.log_tail()  # type: ignore[attr-defined]
    return s


def get(s: requests.Session, hub: Hub, path: str, **kw: Any) -> requests.Response:
    return s.get(hub.url + CONSOLE + path, timeout=60, **kw)


def xsrf_of(page: str) -> str:
    m = re.search(r'name="_xsrf" value="([^"]+)"', page)
    assert m, page
    return m.group(1)


def decide(s: requests.Session, hub: Hub, eid: str, decision: str, comment: str = "",
           xsrf: str | None = "page") -> requests.Response:
    data = {"decision": decision, "comment": comment}
    if xsrf == "page":
        xsrf = xsrf_of(get(s, hub, f"exports/{eid}").text)
    if xsrf is not None:
        data["_xsrf"] = xsrf
    return s.post(hub.url + CONSOLE + f"exports/{eid}/decide", data=data, timeout=60,
                  allow_redirects=False)


def state_of(hub: Hub, dev: str, eid: str) -> str:
    return str(api(hub, dev, "GET", f"/workspaces/{WS}/exports/{eid}").json()["state"])


def audit_records(hub: Hub, kind: str) -> list[dict[str, Any]]:
    out = hub.sandbox("audit", "log", "--kind", kind, "--format", "jsonl", operator=False)
    return [json.loads(line) for line in out.stdout.splitlines()]


@pytest.fixture(scope="module")
def pending(hub: Hub, dev: str) -> dict[str, Any]:
    """A checked request with a frame and a PNG, titled with a script."""
    return submit(hub, dev, EVIL)


@pytest.fixture(scope="module")
def auditor(hub: Hub) -> requests.Session:
    return session(hub, hub.auditor)


def assert_page_headers(r: requests.Response) -> None:
    assert r.headers["Content-Type"].startswith("text/html")
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "img-src 'self'" in csp and "script" not in csp


@pytest.mark.slow
def test_signing_in_goes_through_the_hub(hub: Hub) -> None:
    r = requests.get(hub.url + CONSOLE, allow_redirects=False, timeout=30)
    assert r.status_code == 302
    assert r.headers["Location"].startswith("/hub/api/oauth2/authorize?")
    assert "client_id=service-sandbox" in r.headers["Location"]
    r = requests.get(hub.url + CONSOLE + "?token=abc", allow_redirects=False, timeout=30)
    assert r.status_code == 400 and "auth.token_in_url" in r.text


@pytest.mark.slow
def test_a_developer_cannot_open_the_console_or_decide(hub: Hub, dev: str,
                                                       pending: dict[str, Any]) -> None:
    eid = pending["id"]
    s = session(hub, dev)
    paths = [*PAGES, f"exports/{eid}", f"exports/{eid}/items/1", "nowhere"]
    for path in paths:
        r = get(s, hub, path)
        assert r.status_code == 403, (path, r.status_code, r.text[:300])
        assert "auth.scope" in r.text and "custom:sandbox:review" in r.text
        assert eid not in r.text and "alert(1)" not in r.text and "<nav>" not in r.text
        assert_page_headers(r)
    # the OAuth sign-in happened (the hub gave the console a token without the scope)
    assert s.cookies.get("_xsrf", path="/services/sandbox/")
    r = decide(s, hub, eid, "approve", xsrf=s.cookies.get("_xsrf", path="/services/sandbox/"))
    assert r.status_code == 403 and "auth.scope" in r.text
    # nor with the developer's API token in the header (no cookie, so no XSRF needed)
    r = hub.api(dev, "POST", CONSOLE + f"exports/{eid}/decide", data={"decision": "approve"})
    assert r.status_code == 403 and "auth.scope" in r.text
    r = hub.api(dev, "GET", CONSOLE)
    assert r.status_code == 403 and eid not in r.text
    # not signed in at all: refused, nothing decided
    r = requests.post(hub.url + CONSOLE + f"exports/{eid}/decide",
                      data={"decision": "approve"}, timeout=30, allow_redirects=False)
    assert r.status_code in (401, 403), r.text
    assert state_of(hub, dev, eid) == "checked"


@pytest.mark.slow
def test_the_auditor_sees_the_queue_and_the_request(hub: Hub, auditor: requests.Session,
                                                    pending: dict[str, Any]) -> None:
    eid = pending["id"]
    r = get(auditor, hub, "")
    assert r.status_code == 200, r.text
    assert_page_headers(r)
    assert "Review queue" in r.text and f"exports/{eid}" in r.text
    assert EVIL not in r.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text
    assert "0/1" in r.text and f"signed in as {hub.auditor}" in r.text
    r = get(auditor, hub, f"exports/{eid}")
    assert r.status_code == 200, r.text
    page = r.text
    assert EVIL not in page and "&lt;script&gt;" in page and "<b>Q3</b>" not in page
    for rule in ("identifiers", "provenance", "small_cells", "human_review", "types"):
        assert f"<code>{rule}</code>" in page
    # the frame as a table from the stored CSV, the image through the item endpoint
    assert "<th>district</th>" in page and "<th>people</th>" in page
    assert f'<img class="preview" src="/services/sandbox/console/exports/{eid}/items/1"' in page
    assert 'name="decision" value="approve"' in page and 'name="_xsrf"' in page
    # SVG only inside <img> (its markup shown as text); notes as escaped text
    assert f'src="/services/sandbox/console/exports/{eid}/items/2"' in page
    assert "alert(2)" in page and "<script>alert(2)" not in page and "<svg" not in page
    assert "&lt;img src=x onerror=alert(3)&gt;" in page and "<img src=x" not in page
    svg = get(auditor, hub, f"exports/{eid}/items/2")
    assert svg.status_code == 200 and svg.content == SVG
    assert svg.headers["Content-Type"] == "image/svg+xml"
    csp = svg.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "sandbox" in csp
    assert svg.headers["Content-Disposition"].startswith("attachment")
    img = get(auditor, hub, f"exports/{eid}/items/1")
    assert img.status_code == 200 and img.content == png()
    assert img.headers["Content-Type"] == "image/png"
    assert img.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in img.headers["Content-Security-Policy"]
    assert img.headers["Content-Disposition"].startswith("attachment")
    # only images are served that way; the frame is shown on the page
    for other in (0, 3, 9):  # the frame, the text, no such item
        r = get(auditor, hub, f"exports/{eid}/items/{other}")
        assert r.status_code == 404 and "http.not_found" in r.text
    r = get(auditor, hub, "exports/" + "0" * 32)
    assert r.status_code == 404 and "export.not_found" in r.text and "Traceback" not in r.text


@pytest.mark.slow
def test_decisions_need_the_xsrf_token_and_are_recorded(hub: Hub, dev: str,
                                                        auditor: requests.Session) -> None:
    returned, rejected, approved = (submit(hub, dev, f"decide {i}", files=False)["id"]
                                    for i in range(3))
    # without the form's token, or with a wrong one: refused, nothing happens
    for token in (None, "forged"):
        r = decide(auditor, hub, returned, "approve", xsrf=token)
        assert r.status_code == 403 and "auth.xsrf" in r.text, r.text
    assert state_of(hub, dev, returned) == "checked"
    # return (with a comment; without one the store refuses and the page says why)
    r = decide(auditor, hub, returned, "return")
    assert r.status_code == 400 and "export.invalid" in r.text and "comment" in r.text
    assert "What to do:" in r.text and "Traceback" not in r.text
    r = decide(auditor, hub, returned, "return", "add units <i>please</i>")
    assert r.status_code == 303 and r.headers["Location"].endswith(f"{returned}?done=return")
    assert state_of(hub, dev, returned) == "returned"
    page = get(auditor, hub, f"exports/{returned}?done=return").text
    assert "returned to its requester" in page and "add units &lt;i&gt;please&lt;/i&gt;" in page
    # reject, approve (one approval is enough in this policy: released at once)
    assert decide(auditor, hub, rejected, "reject", "wrong table").status_code == 303
    assert state_of(hub, dev, rejected) == "rejected"
    assert decide(auditor, hub, approved, "approve").status_code == 303
    assert state_of(hub, dev, approved) == "released"
    # deciding again is an export.state error page (code, message, hint)
    r = decide(auditor, hub, approved, "reject", "late")  # the page has the revoke form
    assert r.status_code == 409 and "export.state" in r.text and "reload" in r.text
    # the decisions are audit records naming the hub user
    decided = {(rec["export_id"], rec["kind"], rec["actor"])
               for rec in audit_records(hub, "export.")}
    assert {(returned, "export.returned", hub.auditor), (rejected, "export.rejected",
                                                         hub.auditor),
            (approved, "export.approved", hub.auditor)} <= decided
    # the developer gets the bundle; then the auditor revokes it
    r = api(hub, dev, "GET", f"/workspaces/{WS}/exports/{approved}/bundle")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/zip"
    page = get(auditor, hub, f"exports/{approved}").text
    assert 'value="revoke"' in page
    assert decide(auditor, hub, approved, "revoke", "wrong period").status_code == 303
    assert state_of(hub, dev, approved) == "revoked"
    # history shows every state, filterable
    r = get(auditor, hub, "history", params={"state": "rejected"})
    assert rejected in r.text and returned not in r.text
    r = get(auditor, hub, "history", params={"workspace": WS, "requester": dev})
    assert all(x in r.text for x in (returned, rejected, approved))
    r = get(auditor, hub, "history", params={"requester": "nobody"})
    assert "No export requests match" in r.text
    assert get(auditor, hub, "history", params={"state": "bogus"}).status_code == 400


@pytest.mark.slow
def test_a_flagged_request_is_marked_and_can_only_be_rejected(  # type: ignore[no-untyped-def]
        hub: Hub, dev: str, auditor: requests.Session, demo_tables) -> None:
    idn = demo_tables["persons"].column("id_number").to_pylist()[5]  # the hub's demo data
    rel = release(hub, dev)
    rows = [list(r) for r in rel["rows"]]
    rows[0][0] = idn
    r = api(hub, dev, "POST", f"/workspaces/{WS}/exports",
            json={"title": "districts", "purpose": "p", "request_id": uuid.uuid4().hex,
                  "items": [{"kind": "frame", "name": "t", "columns": rel["columns"],
                             "rows": rows, "release_ids": [rel["release_id"]]}]})
    assert r.status_code == 201 and r.json()["state"] == "checked", r.text
    assert "identifier" not in r.text.lower()
    eid = r.json()["id"]
    queue = get(auditor, hub, "").text
    row = re.search(rf"<tr>(?:(?!</tr>).)*{eid}(?:(?!</tr>).)*</tr>", queue, re.S)
    assert row and "identifier hits" in row.group(0)
    page = get(auditor, hub, f"exports/{eid}").text
    assert "identifier hits" in page and idn not in page
    assert 'value="reject"' in page and 'value="approve"' not in page
    assert 'value="return"' not in page and "Not approved after review." in page
    r = decide(auditor, hub, eid, "approve")  # a forged form: still refused
    assert r.status_code == 409 and "export.blocked" in r.text
    assert decide(auditor, hub, eid, "reject", "Not approved after review.").status_code == 303
    assert state_of(hub, dev, eid) == "rejected"
    assert eid in [rec["export_id"] for rec in audit_records(hub, "export.flagged")]


@pytest.mark.slow
def test_query_log_filters_escapes_and_is_audited(hub: Hub, dev: str,
                                                  auditor: requests.Session) -> None:
    release(hub, dev)
    refused = "SELECT '<img src=x>' AS x, id_number FROM persons"
    r = api(hub, dev, "POST", f"/workspaces/{WS}/query",
            json={"sql": refused, "request_id": uuid.uuid4().hex})
    assert r.status_code == 400, r.text
    before = len(audit_records(hub, "audit.read"))
    r = get(auditor, hub, "queries", params={"member": dev})
    assert r.status_code == 200, r.text
    assert "query.answered" in r.text and "query.charged" in r.text
    assert "FROM persons" in r.text and "<img src=x>" not in r.text
    assert "&lt;img src=x&gt;" in r.text
    r = get(auditor, hub, "queries", params={"member": dev, "kind": "query.refused"})
    assert "query.refused" in r.text and "query.answered</td>" not in r.text
    r = get(auditor, hub, "queries", params={"member": "nobody-at-all"})
    assert "No records match" in r.text
    r = get(auditor, hub, "queries", params={"since": "2999-01-01"})
    assert "No records match" in r.text
    r = get(auditor, hub, "queries", params={"workspace": "population-livelihood",
                                             "member": dev})
    assert "No records match" in r.text
    r = get(auditor, hub, "queries", params={"since": "yesterday"})
    assert r.status_code == 400 and "input.invalid" in r.text
    r = get(auditor, hub, "queries", params={"kind": "budget.changed"})
    assert r.status_code == 400
    reads = audit_records(hub, "audit.read")
    mine = [x for x in reads[before:] if x["actor"] == hub.auditor and x["what"] == "log"]
    assert len(mine) == 5, reads[before:]  # every successful read, none of the refused
    assert mine[0]["filters"]["member"] == dev and mine[0]["filters"]["kind"] == "query."
    assert mine[3]["filters"]["since"].startswith("2999-01-01T00:00:00")


@pytest.mark.slow
def test_budgets_and_the_audit_log_status(hub: Hub, dev: str,
                                          auditor: requests.Session) -> None:
    release(hub, dev)
    r = get(auditor, hub, "budgets")
    assert r.status_code == 200, r.text
    assert WS in r.text and "population-livelihood" in r.text and dev in r.text
    assert "<svg" in r.text and "Epsilon spent" in r.text
    spent = hub.budget(WS, dev)["epsilon_spent"]
    assert f"{spent:.4g} of 10" in r.text
    # the grades each workspace's scenario exposes, as its review recorded them
    assert "<dt>Core columns</dt><dd>loans.amount, persons.credit_score, persons.income</dd>" \
        in r.text
    assert "<dt>Core accepted at review</dt><dd>loans.amount, persons.credit_score, " \
        "persons.income</dd>" in r.text
    r = get(auditor, hub, "audit")
    assert r.status_code == 200, r.text
    assert "badge ok" in r.text and "every record" in r.text and "SHA256:" in r.text
    reads = audit_records(hub, "audit.read")
    assert any(x["what"] == "verify" and x["actor"] == hub.auditor for x in reads)


# -- without a hub: the pure pieces and the console's refusal to run without OAuth ----------
def test_untrusted_text_is_escaped_in_every_piece() -> None:
    """Every template, filled with hostile text, prints it as text."""
    from types import SimpleNamespace

    from sandbox import audit_pages
    from sandbox.exports.model import Event, ExportRequest, StoredItem
    from sandbox.service import console, console_previews, console_views

    item = StoredItem(0, EVIL, "file", "text/csv", 3, EVIL, True,
                      {"release_ids": [EVIL], "postprocessing": [EVIL]})
    req = ExportRequest("e" * 32, EVIL, EVIL, None, EVIL, EVIL, "checked", 1, EVIL, 1, EVIL, 1,
                        10, None, EVIL, EVIL, None, EVIL, (item,),
                        (Event(1, EVIL, EVIL, 1, EVIL, EVIL),))
    checks = {"outcome": EVIL, "rules_version": EVIL, "releases": [
        {"release_id": EVIL, "epsilon": 1.0, "delta": 0.0}],
        "results": [{"rule": EVIL, "outcome": EVIL, "message": EVIL}]}
    previews = [console_previews.csv_preview(f"col,{EVIL}\n{EVIL},1\n".encode()),
                console_previews.text_preview(json.dumps({"k": EVIL}).encode(), "application/json"),
                {**console_previews.text_preview(EVIL.encode(), "image/svg+xml"), "kind": "image",
                 "src": EVIL, "alt": EVIL}]
    recs = [{"kind": k, "sql": EVIL * (1 + 100 * (i % 2)), "member": EVIL, "rule": EVIL,
             "message": EVIL * (1 + 100 * (i % 2)), "error_code": EVIL, "release_id": EVIL,
             "workspace": EVIL, "charge_id": EVIL, "actor": EVIL, "seq": i + 1, "time": EVIL,
             "rewritten_sql": EVIL}
            for i, k in enumerate(console.QUERY_KINDS[1:])]
    answered = {"kind": "query.answered", "charge_id": "c", "seq": 99, "member": EVIL}
    charges = {"c": {"kind": "query.charged", "sql": EVIL, "seq": 98}}
    form = dict.fromkeys(console_views.LOG_FORM, EVIL)
    space = {"rec": SimpleNamespace(name=EVIL, effective_state=lambda: EVIL, scenario=EVIL,
                                    scenario_version=EVIL, expires=EVIL, epsilon=1.0,
                                    delta=0.0, refresh=EVIL),
             "balances": [(EVIL, SimpleNamespace(
                 epsilon_spent=1.0, epsilon_total=2.0, epsilon_remaining=1.0, delta_spent=0.0,
                 delta_total=0.0, refreshes_on=EVIL))],
             "links": [EVIL], "grade_rows": [(EVIL, EVIL)],
             "chart": console.budget_chart([(EVIL, 1.0, 2.0)], lambda m: EVIL + m)}
    html = "".join([
        console.show_page("console/error.html", "/p/", EVIL, EVIL, status=400,
                          error={"code": EVIL, "message": EVIL, "hint": EVIL}),
        console.show_page("console/export.html", "/p/", EVIL, EVIL, req=req, checks=checks,
                          detail_texts=[console_previews.detail_text({"x": EVIL})], reviewer="r",
                          items=[(item, p) for p in previews], xsrf="", notice=EVIL),
        console.show_page("console/queries.html", "/p/", EVIL, EVIL, names=[EVIL],
                          **console_views.log_context(EVIL, form, audit_pages.Page(
                              [*recs, answered], 3, 5, 9, False), charges)),
        console.show_page("console/record.html", "/p/", EVIL, EVIL, rec=recs[1],
                          others=[answered], asked=EVIL, asked_in=EVIL, truncated=True,
                          rewritten=EVIL, stored=EVIL, log=EVIL),
        console.show_page("console/history.html", "/p/", EVIL, EVIL, names=[EVIL],
                          states=[EVIL], workspace=EVIL, state=EVIL, requester=EVIL,
                          reqs=[req]),
        console.show_page("console/budgets.html", "/p/", EVIL, EVIL, spaces=[space]),
    ])
    assert "<script>" not in html and html.count("&lt;script&gt;") >= 40


def test_a_failed_log_shows_its_problems() -> None:
    from sandbox.audit import VerifyReport
    from sandbox.service import console

    report = VerifyReport(records=5, root_hash="ab" * 32)
    report.bad(3, "record #3 does not match its stored hash <altered>")
    html = console.show_page("console/audit.html", "/p/", "Audit log", "r", report=report,
                             public_hex="cd" * 32, fingerprint="f", last=None)
    assert "FAILED" in html and "First bad record: #3" in html
    assert "&lt;altered&gt;" in html and "Nothing was written" in html


def test_errors_never_show_internals() -> None:
    from tornado import web

    from sandbox.exports.errors import SelfApprovalError
    from sandbox.service import console

    status, err = console.describe(RuntimeError("/srv/secret/path"), 500)
    assert status == 500 and err["code"] == "internal" and "secret" not in err["message"]
    status, err = console.describe(web.HTTPError(403, "'_xsrf' argument missing from POST"), 403)
    assert (status, err["code"]) == (403, "auth.xsrf")
    status, err = console.describe(SelfApprovalError("you asked", "ask another auditor"), 500)
    assert (status, err["code"], err["hint"]) == (403, "export.self_approval",
                                                  "ask another auditor")


def test_without_hub_oauth_the_console_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from tornado import web
    from tornado.httpclient import AsyncHTTPClient, HTTPResponse
    from tornado.httpserver import HTTPServer
    from tornado.testing import bind_unused_port

    from sandbox.service import console

    monkeypatch.delenv("JUPYTERHUB_CLIENT_ID", raising=False)
    app = web.Application(console.routes("/services/sandbox/", {"service": object()}))

    async def fetch(*paths: str) -> list[HTTPResponse]:
        sock, port = bind_unused_port()
        server = HTTPServer(app)
        server.add_sockets([sock])
        try:
            return [await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}{p}",
                                                  raise_error=False) for p in paths]
        finally:
            server.stop()

    page, callback = asyncio.run(fetch("/services/sandbox/console/",
                                       "/services/sandbox/oauth_callback?code=x&state=y"))
    assert page.code == 503 and b"console.unavailable" in page.body
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert callback.code == 404 and b"Traceback" not in callback.body
