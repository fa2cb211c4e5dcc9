"""The monthly audit report says what an auditor needs without the command line: the
refused SQL itself (not only counts per rule), each member's charges beside their budget
and what is left, budget ceilings on the spending chart, and names never cut (in the
report's charts, and in `sandbox audit log`'s table).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
import re
import subprocess
import sys
from types import SimpleNamespace

from markupsafe import escape

from sandbox.audit import VerifyReport
from sandbox.cli.audit import _log_table_line
from sandbox.report import render

SANDBOX = pathlib.Path(sys.executable).with_name("sandbox")
POLICY = str(pathlib.Path(__file__).resolve().parents[1] / "policies" /
             "credit_underwriting.yaml")
T0 = dt.datetime(2026, 10, 3, tzinfo=dt.UTC)
LONG = "a_member_with_a_long_name_32chr"  # 31 characters: the longest names are 32
BIG = "SELECT name, id_number\n  FROM persons\n WHERE note = '<b>x</b>' -- " + "x" * 20_000


def balance(total: float, spent: float) -> SimpleNamespace:
    return SimpleNamespace(epsilon_total=total, epsilon_spent=spent,
                           epsilon_remaining=max(total - spent, 0.0), delta_total=1e-6)


def records() -> list[dict]:
    def at(days: float) -> str:
        return (T0 + dt.timedelta(days=days)).isoformat()

    return [
        {"seq": 1, "time": at(0), "kind": "query.charged", "member": LONG, "charge_id": "c1",
         "sql": "SELECT count(*) FROM persons", "epsilon": 1.5, "delta": 0.0},
        {"seq": 2, "time": at(0), "kind": "query.answered", "member": LONG, "charge_id": "c1",
         "release_id": "r1", "epsilon": 1.5, "rows": 1, "values_digest": "ab" * 32},
        {"seq": 3, "time": at(2), "kind": "query.charged", "member": "bo", "charge_id": "c2",
         "sql": "SELECT avg(income) FROM persons", "epsilon": 0.5, "delta": 1e-7},
        {"seq": 4, "time": at(2), "kind": "query.answered", "member": "bo", "charge_id": "c2",
         "release_id": "r2", "epsilon": 0.5, "rows": 1, "values_digest": "cd" * 32},
        {"seq": 5, "time": at(3), "kind": "query.refused", "member": "bo", "sql": BIG,
         "rule": "gate.row_level_output", "message": "a query must aggregate"},
        {"seq": 6, "time": at(4), "kind": "query.refused", "member": LONG,
         "sql": "SELECT * FROM loans", "rule": "gate.row_level_output",
         "message": "a query must aggregate"},
    ]


def test_refused_sql_is_listed_whole_and_escaped() -> None:
    page = render(records(), VerifyReport(records=6), "ws", "2026-10")
    section = page.split('id="refused"')[1].split("<h2")[0]
    rows = section.split("<tbody>")[1].split("<tr>")[1:]
    assert len(rows) == 2  # newest first
    assert "SELECT * FROM loans" in rows[0] and LONG in rows[0]
    assert "gate.row_level_output" in rows[1] and "a query must aggregate" in rows[1]
    # the long one folded behind a one-line summary, all of it inside (a file to keep)
    assert "<details" in rows[1] and f"({len(BIG):,} characters)" in rows[1]
    assert str(escape(BIG)) in rows[1]
    assert "<b>x</b>" not in page


def test_budgets_totals_and_ceilings() -> None:
    budgets = {LONG: balance(2.0, 1.5), "bo": balance(10.0, 0.5), "cy": balance(10.0, 0.0)}
    page = render(records(), VerifyReport(records=6), "ws", "2026-10", budgets=budgets,
                  generated_at=T0 + dt.timedelta(days=10))
    section = page.split('id="epsilon"')[1].split("<h2")[0]
    head = re.findall(r"<th[^>]*>([^<]*)</th>", section)
    assert head == ["Member", "Charges", "Epsilon charged", "Delta charged", "Epsilon budget",
                    "Epsilon left now", "Delta budget"]
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in section.split("<tr>")[2:]]
    assert rows == [[LONG, "1", "1.5", "0", "2", "0.5", "1e-06"],
                    ["bo", "1", "0.5", "1e-07", "10", "9.5", "1e-06"],
                    ["cy", "0", "0", "0", "10", "10", "1e-06"],  # a budget, no charge
                    ["<b>Total</b>", "2", "2", "1e-07", "", "", ""]]
    # one dashed line per ceiling of a member on the chart; the axis reaches the highest
    chart = section.split("<svg")[1].split("</svg>")[0]
    ceilings = re.findall(r'<line [^>]*y1="([\d.]+)"[^>]*class="ceiling"><title>budget: '
                          r'epsilon ([\d.]+) \(([^)]*)\)</title>', chart)
    assert [(total, who) for _, total, who in ceilings] == [("2", LONG), ("10", "bo")]
    grid = re.findall(r'<text x="58" y="[\d.]+" text-anchor="end">([\d.]+)</text>', chart)
    assert float(grid[-1]) >= 10
    (y2, _, _), (y10, _, _) = ceilings
    assert float(y10) < float(y2)  # 10 is drawn above 2
    assert f">budget 2: {LONG}<" in chart and ">budget 10: bo<" in chart


def test_names_are_never_cut() -> None:
    budgets = {LONG: balance(2.0, 1.5), "bo": balance(10.0, 0.5)}
    recs = [*records(), {"seq": 7, "time": T0.isoformat(), "kind": "query.refused",
                         "member": "bo", "sql": "x", "rule": "gate.a_rather_long_rule_name_"
                         "that_goes_on_and_on", "message": "m"}]
    page = render(recs, VerifyReport(records=7), "ws", "2026-10", budgets=budgets)
    assert "…</text>" not in page
    assert f'class="mono">{LONG}<title>' in page  # the legend of the spending chart
    assert ">gate.a_rather_long_rule_name_that_goes_on_and_on</text>" in page
    line = _log_table_line({"seq": 7, "time": T0.isoformat(), "kind": "workspace.created",
                            "workspace": "a-workspace-with-a-long-name", "member": LONG})
    assert f"  a-workspace-with-a-long-name  {LONG}  " in line + "  "


def test_the_command_writes_budgets_and_refused_sql(tmp_path: pathlib.Path) -> None:
    """`sandbox audit report` on a real home: the ledger's budgets come with the records."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
    env |= {"SANDBOX_HOME": str(tmp_path / "home"),
            "SANDBOX_KEYSTORE": str(tmp_path / "keystore")}

    def sandbox(*args: str, rc: int = 0) -> str:
        p = subprocess.run([str(SANDBOX), *args], env=env, capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == rc, (args, p.stdout, p.stderr)
        return p.stdout

    sandbox("demo", "--size", "tiny")
    sandbox("query", "--policy", POLICY, "--member", "alice",
            "SELECT district, COUNT(*) AS n FROM persons GROUP BY district")
    refused = "SELECT name, '<i>' AS tag FROM persons"
    sandbox("query", "--policy", POLICY, "--member", "alice", refused, rc=2)
    (answered,) = [json.loads(line) for line in sandbox(
        "audit", "log", "--kind", "query.answered", "--format", "jsonl").splitlines()]
    ws = answered["workspace"]
    sandbox("budget", "set", "--workspace", ws, "--member", "alice", "--epsilon", "3")
    month = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    out = tmp_path / "report.html"
    sandbox("audit", "report", "--workspace", ws, "--period", month, "--out", str(out))
    page = out.read_text()
    refusals = page.split('id="refused"')[1].split("<h2")[0]
    assert str(escape(refused)) in refusals and "gate.unknown_column" in refusals
    spending = page.split('id="epsilon"')[1].split("<h2")[0]
    row = re.search(r"<tr><td>alice</td>(.*?)</tr>", spending)
    assert row, spending
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))
    charged, left = float(cells[1]), float(cells[4])
    assert cells[3] == "3" and abs(charged + left - 3) < 1e-3, cells
    assert 'class="ceiling"' in spending and ">budget 3: alice<" in spending
