"""The export airlock in a real browser (Debian's chromium driven by Playwright) on a real hub:
a developer asks for an export from a kernel, the auditor signs in through the hub's login
page, opens the console, opens the pending request and approves it; the developer downloads
the signed bundle from the kernel and `sandbox export verify` accepts it.

The screenshot of the approved request is kept at
``$SANDBOX_SCREENSHOT_DIR/console-approved.png`` (default: the pytest temporary directory).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hubkit import HUB_VENV, Hub, Kernel, running_hub
from test_browser import ARGS, CHROMIUM

pytestmark = pytest.mark.slow

WS = "credit-underwriting"
CONSOLE = "/services/sandbox/console/"
TITLE = "Income by district <for the board>"
SUBMIT = """
import json, struct, zlib
from sandbox.client import Sandbox

def png(w=120, h=40):  # a small bar-like image, made without plotting libraries
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    raw = b"".join(b"\\x00" + b"".join(b"\\x00\\x72\\xb2" if x < 3 * y else b"\\xff" * 3
                                        for x in range(w)) for y in range(h))
    return (b"\\x89PNG\\r\\n\\x1a\\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))

sb = Sandbox(workspace=%(ws)r)
df = sb.sql("SELECT district, count(*) AS people, avg(income) AS avg_income FROM persons "
            "GROUP BY district", epsilon=0.5)
status = sb.export({"by_district": df, "chart.png": png()}, title=%(title)r,
                   purpose="quarterly board report")
print(json.dumps({"id": status["id"], "state": status["state"]}))
"""


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    with running_hub() as h:
        yield h


@pytest.fixture(scope="module")
def kernel(hub: Hub) -> Iterator[Kernel]:
    dev = hub.groups[WS][0]
    hub.start_server(dev)
    k = hub.kernel(dev)
    yield k
    k.close()


def verify(hub: Hub, bundle: str) -> subprocess.CompletedProcess[str]:
    """`sandbox export verify` as root on the developer's file, trusting this log's key."""
    out = hub.sandbox("audit", "verify", operator=False).stdout
    key = re.search(r"signing key:\s+([0-9a-f]{64})", out)
    assert key, out
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SANDBOX_", "JUPYTERHUB_"))}
    return subprocess.run([str(HUB_VENV / "bin" / "sandbox"), "export", "verify", bundle,
                           "--public-key", key.group(1)], env=env, cwd="/",
                          capture_output=True, text=True, timeout=120)


def test_auditor_approves_in_the_browser_and_the_bundle_verifies(
        hub: Hub, kernel: Kernel, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    out = kernel.check(SUBMIT % {"ws": WS, "title": TITLE})
    status = json.loads(out["stdout"].strip().splitlines()[-1])
    eid = status["id"]
    assert status["state"] == "checked", status
    shots = Path(os.environ.get("SANDBOX_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.set_default_timeout(60_000)
            # the console sends the browser to the hub's login page (OAuth), then back
            page.goto(hub.url + CONSOLE)
            page.wait_for_url(re.compile(r"/hub/login"))
            page.fill("#username_input", hub.auditor)
            page.fill("#password_input", hub.users[hub.auditor])
            page.click("#login_submit")
            page.wait_for_url(re.compile(re.escape(CONSOLE) + "$"))
            expect(page.locator("h1")).to_have_text("Review queue")
            expect(page.locator("nav")).to_contain_text(f"signed in as {hub.auditor}")
            # the pending request, its title shown as text (escaped), opened from the queue
            page.get_by_role("link", name=TITLE).click()
            page.wait_for_url(re.compile(f"exports/{eid}$"))
            expect(page.locator("h1")).to_have_text(TITLE)
            expect(page.locator("main")).to_contain_text("Automatic checks")
            expect(page.locator("main table").filter(has_text="district").first).to_be_visible()
            # the PNG is shown (served for <img> under the page's Content-Security-Policy)
            image = page.locator("img.preview")
            expect(image).to_be_visible()
            assert image.evaluate("i => i.complete && i.naturalWidth") == 120
            page.get_by_role("button", name="Approve", exact=True).click()
            page.wait_for_url(re.compile(rf"exports/{eid}\?done=approve$"))
            expect(page.locator(".notice")).to_contain_text("approval was recorded")
            expect(page.locator("dl.meta").first).to_contain_text("released")
            expect(page.locator("main")).to_contain_text("approved")
            page.screenshot(path=str(shots / "console-approved.png"), full_page=True)
            # the queue is empty again; the other pages render (kept for a human to look at)
            page.get_by_role("link", name="Queue").click()
            expect(page.locator("main")).to_contain_text("Nothing is waiting for review")
            for link, text, shot in (("Budgets", "Privacy budgets", "budgets"),
                                     ("Query log", "answered", "queries"),
                                     ("Audit log", "every record", "audit")):
                page.get_by_role("link", name=link, exact=True).click()
                expect(page.locator("main")).to_contain_text(text)
                page.screenshot(path=str(shots / f"console-{shot}.png"), full_page=True)
        finally:
            browser.close()
    # the developer downloads the signed bundle from the kernel; anyone can verify it
    out = kernel.check(f"print(sb.download({eid!r}))")
    path = out["stdout"].strip().splitlines()[-1]
    bundle = Path(path if os.path.isabs(path) else Path("~" + kernel.user).expanduser() / path)
    assert bundle.is_file(), bundle
    ok = verify(hub, str(bundle))
    assert ok.returncode == 0, (ok.stdout, ok.stderr)
    assert ok.stdout.startswith(f"OK: export {eid}"), ok.stdout
    records = hub.sandbox("audit", "log", "--kind", "export.", "--format", "jsonl",
                          operator=False).stdout
    kinds = [(r["kind"], r["actor"]) for r in map(json.loads, records.splitlines())
             if r["export_id"] == eid]
    assert kinds == [("export.submitted", kernel.user), ("export.checked", "sandbox:checks"),
                     ("export.approved", hub.auditor), ("export.released", hub.auditor),
                     ("export.downloaded", kernel.user)], kinds
