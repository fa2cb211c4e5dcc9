"""A real browser (Debian's chromium driven by Playwright) on a real hub: log in through
the hub's login page, land in JupyterLab, run a ``%%dpsql`` cell, see the noisy table.

The screenshot is kept at ``$SANDBOX_SCREENSHOT_DIR/jupyterlab-dpsql.png`` (default: the
pytest temporary directory) for a human to look at.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hubkit import Hub, running_hub

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SQL = ("SELECT district, count(*) AS people, avg(income) AS avg_income FROM persons "
       "GROUP BY district")


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    with running_hub() as h:
        yield h


def _notebook() -> dict:
    def code(src: str) -> dict:
        return {"cell_type": "code", "metadata": {}, "source": src, "outputs": [],
                "execution_count": None}

    return {"nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                        "language": "python"}},
            "cells": [code("%load_ext sandbox.client"),
                      code(f"%%dpsql --workspace credit-underwriting --epsilon 0.5\n{SQL}")]}


def test_login_open_lab_run_dpsql(hub: Hub, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    user = hub.groups["credit-underwriting"][0]
    shots = Path(os.environ.get("SANDBOX_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(90_000)
            # a wrong password is refused on the login page
            page.goto(f"{hub.url}/hub/login")
            page.fill("#username_input", user)
            page.fill("#password_input", "wrong password")
            page.click("#login_submit")
            expect(page.locator("body")).to_contain_text("Invalid username or password")
            # the real one lands in JupyterLab (the server is spawned on the way)
            page.fill("#username_input", user)
            page.fill("#password_input", hub.users[user])
            page.click("#login_submit")
            page.wait_for_url(re.compile(rf"/user/{user}/lab"), timeout=120_000)
            expect(page.locator("#jp-main-dock-panel")).to_be_visible()
            # the templates are in the file browser
            expect(page.locator(".jp-DirListing-content")).to_contain_text("getting-started")
            r = hub.api(user, "PUT", f"/user/{user}/api/contents/dpsql-check.ipynb",
                        json={"type": "notebook", "format": "json", "content": _notebook()})
            assert r.status_code in (200, 201), r.text
            page.goto(f"{hub.url}/user/{user}/lab/tree/dpsql-check.ipynb")
            expect(page.locator(".jp-Notebook .jp-Cell").nth(1)).to_be_visible()
            # wait for the kernel, then Run > Run All Cells (retried once: a click that
            # lands while JupyterLab is still settling can be lost)
            expect(page.locator("#jp-main-statusbar")).to_contain_text("Idle",
                                                                     timeout=90_000)
            output = page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".jp-OutputArea")
            for attempt in range(2):
                page.get_by_role("menuitem", name="Run", exact=True).click()
                page.get_by_text("Run All Cells", exact=True).click()
                try:
                    expect(output).to_contain_text("±", timeout=60_000)
                    break
                except AssertionError:
                    if attempt:
                        raise
                    page.keyboard.press("Escape")
            expect(output).to_contain_text("Siming")
            expect(output).to_contain_text("noise")
            page.wait_for_timeout(500)
            page.screenshot(path=str(shots / "jupyterlab-dpsql.png"), full_page=True)
            text = output.inner_text()
            # noisy counts with intervals, one row per district; no error in the output
            assert re.search(r"\d[\d,]*\s*±\s*\d", text), text
            assert "Traceback" not in text and "Error" not in text
        finally:
            browser.close()
