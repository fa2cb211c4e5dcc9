"""The console's query log after thousands of records, on a real hub, in a real browser.

Five thousand query records are appended to the service's own audit log (as the service's
user, through sandbox.state, so the chain and checkpoints stay valid), one in twelve a
refusal carrying 20 kB of SQL, as older versions stored it whole. Then the auditor reads
the log: over HTTP (filters narrow the query, pages follow record numbers, the whole text
is on the record's page) and in Debian's chromium driven by Playwright (page weight as
the browser received it, the table's layout as it laid it out, expanders, the jump from
a budget bar to that member's queries).

Screenshots are kept in ``$SANDBOX_SCREENSHOT_DIR`` (default ``tests/artifacts/
console-queries/``, which git ignores); the test prints where.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from hubkit import HUB_VENV, Hub, running_hub
from test_browser import ARGS, CHROMIUM
from test_console import API, CONSOLE, WS, get, release, session

pytestmark = pytest.mark.slow

RECORDS = 5_000
GHOST = "a_member_with_a_long_name_32chr"  # in the log, not in any workspace
BIG_LINES = 700  # ~20 kB of SQL
SHOTS = Path(os.environ.get("SANDBOX_SCREENSHOT_DIR") or
             Path(__file__).resolve().parent / "artifacts" / "console-queries")
MAX_PAGE_BYTES = 300_000
# Appended by the service's user with the hub's environment: record i of n at a time
# spread over the last ten days, for the members given.
APPEND = r"""
import datetime as dt, json, sys
from sandbox.keys import load_kms
from sandbox.settings import Paths
from sandbox.state import State

spec = json.loads(sys.argv[1])
paths = Paths.resolve()
state = State(paths.state_db, load_kms(paths.keystore).audit_signing_key())
now = dt.datetime.now(dt.UTC)
n, members, ws = spec["n"], spec["members"], spec["workspace"]
big = "SELECT name, id_number,\n" + ",\n".join(
    f"       income_{i} / 12 AS monthly_{i}" for i in range(spec["big_lines"])) + \
    "\n  FROM persons\n WHERE district = 'Siming'"
with state.transaction() as con:
    i = k = 0
    while i < n:
        k += 1
        at = (now - dt.timedelta(days=10) + dt.timedelta(days=10) * i / n).isoformat(
            timespec="microseconds")
        member = members[i % len(members)]
        if k % 12 == 5:
            state.append(con, "query.refused", workspace=ws, member=member,
                         sql=big + f" -- attempt {i}", rule="gate.row_level_output",
                         message="the query returns rows of persons: aggregate them "
                                 "(count, sum, avg) with GROUP BY", time=at)
            i += 1
            continue
        cid = f"filled{i:08d}"
        state.append(con, "query.charged", workspace=ws, member=member, charge_id=cid,
                     sql=f"SELECT district, education, count(*) AS people, avg(income) "
                         f"AS avg_income FROM persons WHERE age > {i % 70} "
                         "GROUP BY district, education ORDER BY district", epsilon=0.05,
                     delta=0.0, time=at)
        state.append(con, "query.answered", workspace=ws, member=member, charge_id=cid,
                     release_id=f"rel-filled-{i}", rows=12, epsilon=0.05,
                     values_digest="ab" * 32, time=at)
        i += 2
state.close()
print(json.dumps({"size": i}))
"""


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    with running_hub() as h:
        yield h


@pytest.fixture(scope="module")
def dev(hub: Hub) -> str:
    return hub.groups[WS][0]


@pytest.fixture(scope="module")
def filled(hub: Hub, dev: str) -> dict[str, Any]:
    """A real answer and a real refusal, then RECORDS more records in the service's log."""
    release(hub, dev)
    r = hub.api(dev, "POST", f"{API}/workspaces/{WS}/query",
                json={"sql": "SELECT name FROM persons", "request_id": uuid.uuid4().hex})
    assert r.status_code == 400, r.text
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SANDBOX_", "JUPYTERHUB_"))}
    env.update(SANDBOX_HOME=str(hub.home), SANDBOX_KEYSTORE=str(hub.keystore))
    spec = {"n": RECORDS, "members": [dev, dev, GHOST], "workspace": WS,
            "big_lines": BIG_LINES}
    out = subprocess.run([str(HUB_VENV / "bin" / "python"), "-c", APPEND, json.dumps(spec)],
                         env=env, user=hub.service_user, cwd="/", capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert hub.sandbox("audit", "verify", operator=False).stdout.endswith("ok\n")
    return spec


@pytest.fixture(scope="module")
def auditor(hub: Hub) -> requests.Session:
    return session(hub, hub.auditor)


def log(hub: Hub, *args: str) -> list[dict[str, Any]]:
    out = hub.sandbox("audit", "log", "--format", "jsonl", *args, operator=False).stdout
    return [json.loads(line) for line in out.splitlines()]


def seqs_of(page: str) -> list[int]:
    return [int(s) for s in re.findall(r'<td class="when"><a href="[^"]*/queries/(\d+)"', page)]


def older_link(page: str) -> str | None:
    m = re.search(r'<a href="([^"]+)" rel="next">', page)
    return m.group(1).replace("&amp;", "&") if m else None


def test_pages_are_small_and_filters_narrow_the_query(
        hub: Hub, dev: str, filled: dict[str, Any], auditor: requests.Session) -> None:
    r = get(auditor, hub, "queries")
    assert r.status_code == 200, r.text[:500]
    assert len(r.content) < MAX_PAGE_BYTES, len(r.content)
    assert len(seqs_of(r.text)) == 100
    queries = log(hub, "--kind", "query.")
    assert f"{len(queries):,} matching record(s)" in r.text
    assert seqs_of(r.text) == [q["seq"] for q in reversed(queries)][:100]
    # every page of a member's refusals, by following "Older": each record once, in order
    expected = [q["seq"] for q in reversed(queries)
                if q["member"] == dev and q["kind"] == "query.refused"]
    assert len(expected) > 100  # more than one page
    seen: list[int] = []
    path = f"queries?member={dev}&kind=query.refused"
    while path:
        page = auditor.get(hub.url + (path if path.startswith("/") else CONSOLE + path),
                           timeout=60)
        assert page.status_code == 200 and len(page.content) < MAX_PAGE_BYTES
        seen += seqs_of(page.text)
        path = older_link(page.text)
        assert path is None or parse_qs(urlsplit(path).query)["member"] == [dev]
    assert seen == expected
    # a time range and a text narrow it further; the text is matched literally
    since, until = queries[1000]["time"][:19], queries[1400]["time"][:19]
    r = get(auditor, hub, "queries", params={"since": since, "until": until,
                                             "member": GHOST})
    want = [q["seq"] for q in reversed(queries) if since <= q["time"][:19] < until
            and q["member"] == GHOST]
    assert seqs_of(r.text)[:100] == want[:100] and f"{len(want):,} matching" in r.text
    r = get(auditor, hub, "queries", params={"text": "rel-filled-4242"})
    assert seqs_of(r.text) == [q["seq"] for q in queries
                               if q.get("release_id") == "rel-filled-4242"]
    attempt = re.search(r"-- attempt (\d+)$", queries[-1000:][[
        q["kind"] for q in queries[-1000:]].index("query.refused")]["sql"])
    assert attempt
    number = attempt.group(1)
    r = get(auditor, hub, "queries", params={"text": f"attempt {number}"})
    assert len(seqs_of(r.text)) == 1
    r = get(auditor, hub, "queries", params={"text": f"attempt {number[0]}_{number[2:]}"})
    assert "No records match" in r.text  # "_" is no wildcard
    for bad in ({"before": "x1"}, {"after": "-3"}, {"text": "x" * 201}):
        r = get(auditor, hub, "queries", params=bad)
        assert r.status_code == 400 and "input.invalid" in r.text, bad


def test_the_record_page_has_the_whole_sql(hub: Hub, dev: str, filled: dict[str, Any],
                                           auditor: requests.Session) -> None:
    refused = log(hub, "--kind", "query.refused", "--member", dev)[-1]
    assert len(refused["sql"]) > 20_000
    r = get(auditor, hub, "queries", params={"kind": "query.refused"})
    assert f"queries/{refused['seq']}" in r.text
    assert refused["sql"] not in r.text  # folded on the list ...
    assert f"The whole text ({len(refused['sql']):,} characters)" in r.text
    r = get(auditor, hub, f"queries/{refused['seq']}")
    assert r.status_code == 200
    whole = re.search(r'<pre class="sql whole">(.*?)</pre>', r.text, re.S)
    assert whole and whole.group(1).replace("&#39;", "'") == refused["sql"]  # ... whole here
    # an answer's page shows the SQL of its charge and links both ways
    answered = log(hub, "--kind", "query.answered", "--member", dev)[-1]
    page = get(auditor, hub, f"queries/{answered['seq']}").text
    assert "From the charge record" in page and "SELECT district" in page
    assert get(auditor, hub, "queries/999999999").status_code == 404
    created = log(hub, "--kind", "workspace.")[0]
    assert get(auditor, hub, f"queries/{created['seq']}").status_code == 404  # not a query
    reads = [(x["what"], x["filters"]) for x in log(hub, "--kind", "audit.read")
             if x["actor"] == hub.auditor]
    assert ("record", {"seq": refused["seq"]}) in reads
    # a developer cannot open a record
    r = get(session(hub, dev), hub, f"queries/{refused['seq']}")
    assert r.status_code == 403 and refused["sql"][:40] not in r.text


LAYOUT = """() => {
  const width = (font, text) => {
    const probe = document.createElement('span');
    probe.textContent = text; probe.style.font = font;
    probe.style.position = 'absolute'; probe.style.whiteSpace = 'pre';
    document.body.appendChild(probe);
    const w = probe.getBoundingClientRect().width; probe.remove(); return w;
  };
  const table = document.querySelector('table.log');
  const cell = table.querySelector('tbody td');
  const pre = table.querySelector('td.sql > pre.sql');
  const nav = performance.getEntriesByType('navigation')[0];
  return {
    table: table.getBoundingClientRect().width,
    heads: [...table.querySelectorAll('thead th')].map(
      h => [h.textContent, h.getBoundingClientRect().width]),
    ch: width(getComputedStyle(cell).font, '0'.repeat(100)) / 100,
    mono: width(getComputedStyle(pre).font, '0'.repeat(100)) / 100,
    pre: pre.clientWidth,
    overflowing: [...table.querySelectorAll('td')].filter(
      td => td.scrollWidth > td.clientWidth + 1).length,
    bytes: nav.decodedBodySize, transferred: nav.transferSize,
  };
}"""


def test_the_query_log_in_the_browser(hub: Hub, dev: str, filled: dict[str, Any]) -> None:
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {SHOTS}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(hub.url + CONSOLE + "queries")
            page.wait_for_url(re.compile(r"/hub/login"))
            page.fill("#username_input", hub.auditor)
            page.fill("#password_input", hub.users[hub.auditor])
            page.click("#login_submit")
            page.wait_for_url(re.compile(re.escape(CONSOLE) + "queries$"))
            expect(page.locator("h1")).to_have_text("Query log")
            m = page.evaluate(LAYOUT)
            print("first page of the query log:", json.dumps(m))
            # the weight the browser received, not only what the server meant to send
            assert 0 < m["bytes"] < MAX_PAGE_BYTES, m
            # a wide SQL column in monospace, no column squeezed, nothing spilling over
            heads = dict(m["heads"])
            assert heads["SQL"] >= 0.4 * m["table"], m
            assert m["pre"] >= 60 * m["mono"], m  # lines of 60+ characters of SQL
            assert all(w >= 9 * m["ch"] for w in heads.values()), m
            assert m["overflowing"] == 0, m
            page.screenshot(path=str(SHOTS / "queries-first-page.png"), full_page=False)
            # a long refusal: folded; opened in place, then whole on its own page
            page.goto(hub.url + CONSOLE + "queries?kind=query.refused")
            folded = page.locator("details.sql").first
            expect(folded.locator("pre.sql")).to_be_hidden()
            folded.locator("summary").click()
            expect(folded.locator("pre.sql")).to_be_visible()
            assert folded.locator("pre.sql").evaluate("p => p.clientWidth") >= 60 * m["mono"]
            page.screenshot(path=str(SHOTS / "queries-refusal-open.png"), full_page=False)
            folded.get_by_role("link", name=re.compile("The whole text")).click()
            page.wait_for_url(re.compile(r"/queries/\d+$"))
            whole = page.locator("pre.sql.whole")
            assert len(whole.inner_text()) > 20_000
            page.screenshot(path=str(SHOTS / "query-record.png"), full_page=False)
            # Older, then the filters of the form
            page.goto(hub.url + CONSOLE + "queries")
            first = page.locator("td.when a").first.inner_text()
            page.get_by_role("link", name="Older ›").first.click()
            page.wait_for_url(re.compile(r"before=\d+"))
            assert page.locator("td.when a").first.inner_text() != first
            page.fill("input[name=member]", GHOST)
            page.select_option("select[name=kind]", "query.answered")
            page.get_by_role("button", name="Filter").click()
            page.wait_for_url(re.compile(r"member=" + GHOST))
            assert set(page.locator("td.who a").all_inner_texts()) == {GHOST}
            assert set(page.locator("td:nth-child(3)").all_inner_texts()) == {"answered"}
            page.screenshot(path=str(SHOTS / "queries-filtered.png"), full_page=False)
            # from a member's budget bar to that member's queries
            page.goto(hub.url + CONSOLE + "budgets")
            bar = page.locator(f'svg a.member-queries[href*="member={dev}"]').first
            expect(bar).to_be_visible()
            page.screenshot(path=str(SHOTS / "budgets.png"), full_page=True)
            bar.locator("rect").first.click()
            page.wait_for_url(re.compile(r"/queries\?workspace=" + WS + "&member=" + dev))
            expect(page.locator("input[name=member]")).to_have_value(dev)
            members = set(page.locator("td.who a").all_inner_texts())
            assert members == {dev}, members
            page.screenshot(path=str(SHOTS / "queries-of-member.png"), full_page=False)
        finally:
            browser.close()
    assert {"queries-first-page.png", "queries-refusal-open.png", "query-record.png",
            "queries-filtered.png", "budgets.png", "queries-of-member.png"} <= {
        f.name for f in SHOTS.glob("*.png") if f.stat().st_size > 10_000}
