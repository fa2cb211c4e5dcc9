"""Auditor commands (`sandbox budget ...`, `sandbox audit ...`) through the real console script.

One module-wide home is set up once (demo data, a few answered queries, a refusal); tests
that change it work on a copy of the home (the key store is shared and only read).
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import html
import json
import os
import pathlib
import re
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass

import pytest

from sandbox import audit
from sandbox.audit import KINDS, VerifyReport, parse_when
from sandbox.cli.audit import check_kind, kind_prefixes
from sandbox.report import render

SANDBOX = pathlib.Path(sys.executable).with_name("sandbox")
POLICY = str(pathlib.Path(__file__).resolve().parents[1] / "policies" / "credit_underwriting.yaml")
WS = "adhoc:credit-underwriting"  # the ad-hoc ledger of `sandbox query` without --workspace
ERROR_LINE = re.compile(r"^error \[[a-z_]+(\.[a-z_]+)+\]: \S.*$")
XSS = "<script>alert(1)</script>"
QUERIES = [
    ("alice", "SELECT district, COUNT(*) AS n FROM persons GROUP BY district"),
    ("bob", "SELECT education, AVG(income) AS avg_income FROM persons GROUP BY education"),
    ("alice", f"SELECT COUNT(*) AS n FROM persons WHERE district = '{XSS}'"),
]
REFUSED = ("alice", "SELECT name FROM persons")
# record numbers in the module's home: 3 dataset.added (demo), then the queries in order
BOB_ANSWER_SEQ = 7
REFUSED_SEQ = 10


@dataclass
class Result:
    rc: int
    out: str
    err: str


@dataclass
class Home:
    """A home and key store, and the environment that points the CLI at them."""

    home: pathlib.Path
    keystore: pathlib.Path

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
        return env | {"SANDBOX_HOME": str(self.home), "SANDBOX_KEYSTORE": str(self.keystore)}

    @property
    def db(self) -> pathlib.Path:
        return self.home / "state.sqlite"

    def __call__(self, *args: str, input: str | None = None, **env: str) -> Result:
        proc = subprocess.run([str(SANDBOX), *args], env=self.env | env, capture_output=True,
                              text=True, timeout=120, input=input)
        assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str) -> str:
        result = self(*args)
        assert result.rc == 0, (args, result.err)
        return result.out

    def log(self, *args: str) -> list[dict]:
        return [json.loads(line) for line in self.ok("audit", "log", "--format", "jsonl",
                                                     *args).splitlines()]

    def rows(self, sql: str, *params: object) -> list[tuple]:
        con = sqlite3.connect(self.db)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()


def _error(result: Result, code: str) -> str:
    """A clean failure: exit 2, one ``error [code]: ...`` line, problems, one hint last."""
    assert result.rc == 2, (result.rc, result.err)
    lines = result.err.splitlines()
    assert ERROR_LINE.match(lines[0]), lines
    assert lines[0].startswith(f"error [{code}]: "), lines[0]
    assert sum(line.startswith("error [") for line in lines) == 1
    hints = [line for line in lines if line.startswith("hint: ")]
    assert len(hints) == 1 and len(hints[0]) > len("hint: ") + 5, lines
    assert lines[-1] == hints[0]
    assert all(line.startswith("  ") for line in lines[1:-1]), lines  # problems, or SQL + caret
    return result.err


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """Demo data, three answered queries and one refusal, in a module-wide home."""
    assert SANDBOX.exists(), f"console script not installed at {SANDBOX}"
    root = tmp_path_factory.mktemp("audit-cli")
    h = Home(root / "home", root / "keystore")
    h.ok("demo", "--size", "tiny")
    for member, sql in QUERIES:
        h.ok("query", "--policy", POLICY, "--member", member, sql)
    _error(h("query", "--policy", POLICY, "--member", REFUSED[0], REFUSED[1]),
           "gate.unknown_column")
    shutil.copytree(h.home, root / "pristine")
    return h


@pytest.fixture
def sandbox(base: Home, tmp_path: pathlib.Path) -> Home:
    """A private copy of the module's home as set up (before any read), to write to."""
    copy = Home(tmp_path / "home", base.keystore)
    shutil.copytree(base.home.parent / "pristine", copy.home)
    return copy


def _kinds(records: list[dict]) -> list[str]:
    return [r["kind"] for r in records]


def test_query_output_says_what_the_row_bound_cut(sandbox: Home) -> None:
    out = sandbox.ok("query", "--policy", POLICY, "--member", "alice", "--epsilon", "1",
                     "SELECT status, count(*) FROM loans GROUP BY status")
    line = next(ln for ln in out.splitlines() if ln.startswith("bounding:"))
    assert re.fullmatch(r"bounding: each unit keeps at most 10 rows of loans; about [\d,]+ "
                        r"\(± \d+\) units had matching rows left out, so counts and sums "
                        r"can be low", line), line
    data = json.loads(sandbox.ok("query", "--policy", POLICY, "--member", "alice", "--format",
                                 "json", "SELECT count(*) FROM persons"))
    assert data["bounding"]["units_cut"] is None  # one row per person: nothing to cut
    assert "bounding:" not in sandbox.ok("query", "--policy", POLICY, "--member", "alice",
                                         "SELECT count(*) AS n FROM persons")


# -- answers that say what they are -------------------------------------------------------

YEARS = "SELECT year(issued_on) AS y, count(*) AS n FROM loans GROUP BY y"
PRIVATE = "SELECT length(district) AS l, count(*) AS n FROM persons GROUP BY l"  # a threshold


def _query(h: Home, *args: str, input: str | None = None) -> Result:
    return h("query", "--policy", POLICY, "--member", "alice", *args, input=input)


def test_keys_print_plain_and_suppressed_groups_carry_their_interval(sandbox: Home) -> None:
    out = sandbox.ok("query", "--policy", POLICY, "--member", "alice", YEARS)
    rows = [ln for ln in out.splitlines() if re.match(r"^\d", ln)]
    assert rows and all(re.match(r"^20\d\d  ", ln) for ln in rows), out  # 2024, not 2,024
    assert re.search(r"\d,\d{3} ± ", out) or all(int(r.split()[1].replace(",", "")) < 1000
                                                 for r in rows)  # counts keep separators
    out = sandbox.ok("query", "--policy", POLICY, "--member", "alice", PRIVATE)
    assert re.search(r"groups suppressed [\d,]+ ± [\d,]+; release ", out), out
    data = json.loads(sandbox.ok("query", "--policy", POLICY, "--member", "alice", "--format",
                                 "json", PRIVATE + " ORDER BY l"))
    assert isinstance(data["suppressed_groups_ci95"], int | float)
    assert data["suppressed_groups_ci95"] > 0
    public = json.loads(sandbox.ok("query", "--policy", POLICY, "--member", "alice",
                                   "--format", "json",
                                   "SELECT district, count(*) FROM persons GROUP BY district"))
    assert public["suppressed_groups"] == 0 and public["suppressed_groups_ci95"] is None
    out = sandbox.ok("query", "--policy", POLICY, "--member", "alice",
                     "SELECT district, count(*) FROM persons GROUP BY district")
    assert "groups suppressed 0; release" in out  # exact: public keys suppress nothing


def test_cjk_columns_line_up(sandbox: Home) -> None:
    from sandbox.display import width

    out = sandbox.ok("query", "--policy", POLICY, "--member", "alice",
                     "SELECT name_zh, count(*) AS n FROM persons p JOIN districts d "
                     "ON p.district = d.district GROUP BY name_zh")
    lines = out.splitlines()
    table = lines[:lines.index(next(ln for ln in lines if ln.startswith("noisy values")))]
    assert any("区" in ln for ln in table), out
    starts = {width(ln[:re.search(r"\S+\s*$" if i == 0 else r"\s\s+\S", ln).end()
                       - (1 if i else len(ln.split()[-1]))]) for i, ln in enumerate(table)}
    assert len(starts) == 1, table  # the n column starts at the same display column


def test_csv_keeps_the_release_id_and_epsilon(sandbox: Home) -> None:
    import csv
    import io

    result = _query(sandbox, "--format", "csv", "--epsilon", "0.7",
                    "SELECT district, count(*) AS n, avg(income) AS epsilon FROM persons "
                    "GROUP BY district")
    assert result.rc == 0, result.err
    rows = list(csv.DictReader(io.StringIO(result.out)))
    assert rows and list(rows[0])[:6] == ["district", "n", "epsilon", "district_ci95", "n_ci95",
                                          "epsilon_ci95"]
    # the release's own columns; a name a result column took gets the prefix sandbox_
    assert list(rows[0])[6:] == ["release_id", "sandbox_epsilon", "delta", "suppressed_groups",
                                 "suppressed_groups_ci95"]
    ids = {r["release_id"] for r in rows}
    assert len(ids) == 1 and re.fullmatch(r"[0-9a-f]{32}", ids.pop())
    assert {r["sandbox_epsilon"] for r in rows} == {"0.7"}
    assert rows[0]["district_ci95"] == "" and float(rows[0]["n_ci95"]) > 0
    assert f"release {rows[0]['release_id']}: epsilon 0.7" in result.err  # also on stderr


def test_query_reads_one_query_from_a_file_or_stdin(sandbox: Home, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "q.sql"
    path.write_text("\ufeff-- districts\nSELECT district, count(*) AS n\nFROM persons\n"
                    "GROUP BY district;\n", encoding="utf-8")
    out = _query(sandbox, "-f", str(path))
    assert out.rc == 0 and out.out.startswith("district"), out.err
    out = _query(sandbox, "--file", "-", "--format", "json",
                 input="SELECT count(*) AS n FROM persons")
    assert out.rc == 0 and json.loads(out.out)["columns"] == ["n"]
    assert "give the SQL either as an argument or with --file" in _error(
        _query(sandbox, "-f", str(path), "SELECT count(*) FROM persons"), "input.invalid")
    assert "--batch reads its queries from standard input" in _error(
        _query(sandbox, "--batch", "-f", str(path)), "input.invalid")
    assert "no SQL to answer" in _error(_query(sandbox), "input.invalid")
    assert "not found" in _error(_query(sandbox, "-f", str(tmp_path / "nope.sql")),
                                 "input.invalid")
    (tmp_path / "empty.sql").write_text("  \n")
    assert "is empty" in _error(_query(sandbox, "-f", str(tmp_path / "empty.sql")),
                                "input.invalid")
    # a refused query from a file shows where, in the file's own lines
    path.write_text("SELECT count(*)\nFROM persons\nWHERE name = 'x'\n")
    err = _error(_query(sandbox, "-f", str(path)), "gate.unknown_column")
    assert "(line 3, column 7)" in err and "  WHERE name = 'x'\n        ^\n" in err


def test_batch_lines_carry_their_line_number_or_id(sandbox: Home) -> None:
    lines = [
        "SELECT count(*) AS n FROM persons",                                      # 1: SQL
        "",                                                                        # 2: skipped
        "-- a comment",                                                            # 3: skipped
        json.dumps({"id": "by-district", "sql": "SELECT district, count(*) "
                    "FROM persons GROUP BY district", "epsilon": 0.3}),            # 4
        json.dumps({"id": 7, "sql": "SELECT name FROM persons"}),                  # 5: refused
        "{not json",                                                               # 6
        json.dumps({"sql": "SELECT count(*) FROM persons", "epsilom": 1}),         # 7: typo
        json.dumps({"id": True, "sql": "SELECT count(*) FROM persons"}),           # 8
    ]
    result = _query(sandbox, "--batch", "--epsilon", "0.2", input="\n".join(lines) + "\n")
    assert result.rc == 0, result.err
    out = [json.loads(ln) for ln in result.out.splitlines()]
    assert [o["input_line"] for o in out] == [1, 4, 5, 6, 7, 8]
    assert out[0]["columns"] == ["n"] and out[0]["epsilon"] == pytest.approx(0.2)  # --epsilon
    assert out[1]["id"] == "by-district" and out[1]["epsilon"] == pytest.approx(0.3)
    assert out[2]["id"] == 7 and out[2]["error"]["code"] == "gate.unknown_column"
    assert (out[2]["error"]["line"], out[2]["error"]["column"]) == (1, 8)  # in the SQL
    assert out[3]["error"]["code"] == "input.invalid" and "line 6" in out[3]["error"]["message"]
    assert "'epsilom'" in out[4]["error"]["message"]
    assert "'id'" in out[5]["error"]["message"] and "id" not in out[5]
    assert "id" not in out[0] and all("error" in o or o["release_id"] for o in out)
    assert "--format csv does not apply" in _error(
        _query(sandbox, "--batch", "--format", "csv", input=""), "input.invalid")


def test_refusals_show_rule_position_and_a_caret(sandbox: Home) -> None:
    sql = "SELECT count(*) FROM persons WHERE '市区' = district AND namex = 1"
    err = _error(_query(sandbox, sql), "gate.unknown_column")
    lines = err.splitlines()
    assert lines[0].endswith("(line 1, column 56)")
    assert lines[1] == f"  {sql}"
    assert lines[2].index("^") == 2 + 55 + 2  # two CJK characters take two columns each
    data = json.loads(_query(sandbox, "--format", "json", sql).out)
    assert (data["error"]["line"], data["error"]["column"]) == (1, 56)
    err = _error(sandbox("explain", "--policy", POLICY,
                         "SELECT gender || district AS g, count(*) FROM persons GROUP BY g"),
                 "gate.construct_not_allowed")
    assert "string concatenation ||" in err and "DPIPE" not in err
    assert "(line 1, column 8)" in err and "\n         ^\n" in err
    assert "GROUP BY gender, district" in err  # the hint's rewrite


# -- budgets ------------------------------------------------------------------------------


def test_budget_show_grant_set(sandbox: Home) -> None:
    table = sandbox.ok("budget", "show").splitlines()
    assert table[0].split() == ["WORKSPACE", "KIND", "MEMBER", "EPS_TOTAL", "EPS_SPENT",
                                "EPS_REMAINING", "DELTA_TOTAL", "DELTA_SPENT", "DELTA_REMAINING",
                                "REFRESHES_ON", "ACCOUNTING"]
    assert re.match(rf"^{WS}\s+ad-hoc\s+alice\s+10\s+1\s+9\s+1e-05\s+0\s+1e-05\s+\d{{4}}-\d\d-01"
                    r"\s+basic$", table[1]), table
    assert re.match(rf"^{WS}\s+ad-hoc\s+bob\s+10\s+0\.5\s+9\.5\s", table[2]), table

    out = sandbox.ok("budget", "grant", "--workspace", WS, "--member", "alice", "--epsilon", "5",
                     "--delta", "1e-6")
    assert "epsilon total 15 (spent 1, remaining 14)" in out and "audit log" in out
    (alice,) = json.loads(sandbox.ok("budget", "show", "--workspace", WS, "--member", "alice",
                                     "--format", "json"))
    assert (alice["workspace"], alice["member"]) == (WS, "alice")
    assert alice["epsilon_total"] == 15 and alice["epsilon_remaining"] == 14
    assert alice["delta_total"] == pytest.approx(1.1e-5)
    assert alice["refreshes_on"] == _next_month()

    # a name the ledger has never seen is a typo unless --new-member says it is meant
    err = _error(sandbox("budget", "set", "--workspace", WS, "--member", "alicia",
                         "--epsilon", "2"), "workspace.unknown_member")
    assert "did you mean 'alice'?" in err and "--new-member" in err
    sandbox.ok("budget", "set", "--workspace", WS, "--member", "carol", "--epsilon", "2",
               "--new-member")
    sandbox.ok("budget", "set", "--workspace", WS, "--member", "bob", "--delta", "2e-5")
    shown = {r["member"]: r for r in json.loads(sandbox.ok("budget", "show", "--format", "json"))}
    assert sorted(shown) == ["alice", "bob", "carol"]
    assert (shown["carol"]["epsilon_total"], shown["carol"]["epsilon_spent"]) == (2, 0)
    assert (shown["bob"]["epsilon_total"], shown["bob"]["delta_total"]) == (10, 2e-5)
    assert json.loads(sandbox.ok("budget", "show", "--member", "nobody", "--format",
                                 "json")) == []

    changes = sandbox.log("--kind", "budget.changed")
    assert [(r["member"], r["operation"], r["epsilon_total"]) for r in changes] == [
        ("alice", "grant", 15), ("carol", "set", 2), ("bob", "set", 10)]
    assert {(r["workspace"], r["actor"], r["refresh"]) for r in changes} == {
        (WS, getpass.getuser(), "monthly")}


def _next_month() -> str:
    today = dt.datetime.now(dt.UTC).date()
    return (today.replace(day=1) + dt.timedelta(days=32)).replace(day=1).isoformat()


def test_budget_changes_refuse_bad_amounts(sandbox: Home) -> None:
    before = sandbox.rows("SELECT count(*) FROM audit_records")
    alice = ["--workspace", WS, "--member", "alice"]
    for args, code, fragment in (
        (["set", *alice], "input.invalid", "nothing to set"),
        (["set", *alice, "--delta", "1"], "input.invalid", "delta must be"),
        (["grant", *alice, "--epsilon", "-1"], "input.invalid", "epsilon must be"),
        (["grant", *alice, "--epsilon", "nan"], "input.invalid", "epsilon must be"),
        (["grant", *alice, "--epsilon", "1", "--delta", "0.99999"], "input.invalid",
         "delta total would reach 1"),
    ):
        assert fragment in _error(sandbox("budget", *args), code)
    assert sandbox.rows("SELECT count(*) FROM audit_records") == before


# -- clean errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["budget", "show", "--workspace", "nope"], "workspace.not_found",
         "known workspaces and ledgers: " + WS),
        (["budget", "grant", "--workspace", "adhoc:credit-underwritting", "--member", "a",
          "--epsilon", "1"], "workspace.not_found", f"did you mean {WS!r}?"),
        (["audit", "log", "--workspace", "nope"], "ledger.error", "known workspaces: " + WS),
        (["audit", "report", "--workspace", "nope", "--period", "2026-11", "--out", "{tmp}/r.html"],
         "ledger.error", "unknown workspace"),
        (["budget", "grant", "--workspace", WS, "--member", "a b", "--epsilon", "1"],
         "input.invalid", "invalid member name 'a b'"),
        (["budget", "set", "--workspace", WS, "--member", "", "--epsilon", "1"],
         "input.invalid", "invalid member name"),
        (["budget", "show", "--member", "x" * 65], "input.invalid", "at most 32"),
        (["audit", "log", "--member", "tab\there"], "input.invalid", "invalid member name"),
        (["query", "--policy", POLICY, "--member", "a\x1b[31m", "SELECT COUNT(*) FROM persons"],
         "input.invalid", "invalid member name"),
        (["audit", "log", "--since", "2026-13-01"], "input.invalid",
         "--since '2026-13-01' is not a date or time"),
        (["audit", "log", "--until", "yesterday"], "input.invalid", "YYYY-MM-DD"),
        (["audit", "log", "--since", "2026-11-23T25:00"], "input.invalid", "ISO 8601"),
        (["audit", "log", "--since", "20261123"], "input.invalid", "--since"),
        (["audit", "log", "--since", "2026-11-02", "--until", "2026-11-01"], "input.invalid",
         "--since is not before --until"),
        (["audit", "log", "--kind", "foo"], "input.invalid", "unknown audit record kind 'foo'"),
        (["audit", "log", "--kind", "query"], "input.invalid", "query."),
        (["audit", "log", "--kind", "query.answer"], "input.invalid", "query.answered"),
        (["audit", "report", "--workspace", WS, "--period", "2026-1", "--out", "{tmp}/r.html"],
         "input.invalid", "YYYY-MM"),
        (["audit", "report", "--workspace", WS, "--period", "2026-13", "--out", "{tmp}/r.html"],
         "input.invalid", "is not a month"),
        (["audit", "report", "--workspace", WS, "--period", "2026-11", "--out",
          "{tmp}/missing/r.html"], "input.invalid", "cannot write"),
        (["audit", "verify", "--checkpoint", "{tmp}/absent.json"], "input.invalid", "not found"),
        (["audit", "verify", "--checkpoint", "{tmp}/garbage.json"], "input.invalid",
         "not valid JSON"),
        (["audit", "verify", "--checkpoint", "{tmp}/other.json"], "input.invalid",
         "is not a sandbox audit checkpoint"),
        (["audit", "checkpoint", "--out", "{tmp}/missing/cp.json"], "input.invalid",
         "cannot write"),
        (["audit", "proof", "999"], "input.invalid", "there is no audit record #999"),
        (["audit", "check-proof", "{tmp}/other.json"], "input.invalid",
         "is not a sandbox audit proof"),
        (["audit", "check-proof", "{tmp}/garbage.json"], "input.invalid", "not valid JSON"),
        (["audit", "check-proof", "{tmp}/other.json", "--public-key", "xyz"], "input.invalid",
         "--public-key is not an Ed25519 public key"),
    ],
)
def test_errors_are_one_line_with_a_hint(base: Home, tmp_path: pathlib.Path, args: list[str],
                                         code: str, fragment: str) -> None:
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / "other.json").write_text('{"log": "something else", "record": 1}')
    before = base.rows("SELECT count(*) FROM audit_records")
    err = _error(base(*(a.format(tmp=tmp_path) for a in args)), code)
    assert fragment in err
    assert base.rows("SELECT count(*) FROM audit_records") == before, "errors write nothing"


def test_every_kind_and_family_is_accepted(base: Home) -> None:
    assert {"audit.", "budget.", "dataset.", "key.", "query.", "scenario.",
            "workspace."} <= set(kind_prefixes())
    assert all(any(k.startswith(p) for k in KINDS) for p in kind_prefixes())
    assert all(check_kind(k) == k for k in [*KINDS, *kind_prefixes()])
    for kind in ("query.answered", "query."):
        records = base.log("--kind", kind)
        assert records
        assert all(r["kind"] == kind or (kind.endswith(".") and r["kind"].startswith(kind))
                   for r in records), kind


# -- reading the log ----------------------------------------------------------------------------


def test_log_filters_and_formats(base: Home) -> None:
    records = base.log("--workspace", WS)
    assert _kinds(records)[:7] == ["query.charged", "query.answered"] * 3 + ["query.refused"]
    assert records[6]["sql"] == REFUSED[1] and records[6]["rule"] == "gate.unknown_column"
    assert {r["member"] for r in base.log("--member", "bob")} == {"bob"}
    assert _kinds(base.log("--member", "bob", "--kind", "query.")) == [
        "query.charged", "query.answered"]
    assert _kinds(base.log("--kind", "dataset.added")) == ["dataset.added"] * 3

    # jsonl prints every record exactly as stored and hashed: its leaf hash is the stored one.
    lines = base.ok("audit", "log", "--format", "jsonl", "--kind", "query.").splitlines()
    leaves = dict(base.rows("SELECT seq, leaf FROM audit_records"))
    for line in lines:
        seq = json.loads(line)["seq"]
        assert hashlib.sha256(b"\x00" + line.encode()).hexdigest() == leaves[seq]

    today = dt.datetime.now(dt.UTC).date()
    assert len(base.log("--since", today.isoformat(), "--kind", "query.")) == 7
    assert base.log("--until", "2000-01-01") == []
    assert len(base.log("--until", today.isoformat(), "--kind", "query.")) == 7  # whole day
    assert base.log("--since", (today + dt.timedelta(days=1)).isoformat()) == []
    first = records[0]["time"]
    assert base.log("--kind", "query.", "--until", first)[0:1] == []  # a time is exclusive
    assert base.log("--kind", "query.", "--since", first)[0]["seq"] == records[0]["seq"]

    table = base.ok("audit", "log", "--workspace", WS, "--kind", "query.").splitlines()
    assert table[0].split() == ["SEQ", "TIME", "KIND", "WORKSPACE", "MEMBER", "SUMMARY"]
    assert re.search(r"query\.refused\s+adhoc:credit-underwriting\s+alice\s+by \S+ · "
                     r"gate\.unknown_column · SELECT name FROM persons$", "\n".join(table), re.M)
    assert re.search(r"query\.answered .* release [0-9a-f]{32} · eps 0\.5 · 6 row\(s\)$",
                     "\n".join(table), re.M)
    assert table[-1] == "(7 record(s))"
    assert base.ok("audit", "log", "--until", "2000-01-01").strip() == "(none)"

    rows = base.ok("audit", "log", "--format", "csv", "--kind", "query.refused").splitlines()
    header = rows[0].split(",")
    assert header[:8] == ["v", "seq", "time", "kind", "workspace", "member", "actor", "prev"]
    assert {"sql", "rule", "epsilon", "release_id", "what", "filters"} <= set(header)
    assert len(rows) == 2 and ",query.refused," in rows[1]


def test_reads_are_audited_after_reading(sandbox: Home) -> None:
    out = sandbox.log("--member", "bob", "--since", "2026-01-01")
    assert out and all(r["kind"] != "audit.read" for r in out)
    (read,) = sandbox.log("--kind", "audit.read")  # a read never sees its own record
    assert (read["what"], read["actor"], read["workspace"]) == ("log", getpass.getuser(), None)
    assert read["filters"] == {"workspace": None, "member": "bob", "kind": None,
                               "since": "2026-01-01T00:00:00.000000+00:00", "until": None}
    assert sandbox.log("--workspace", WS, "--kind", "audit.read") == []
    assert sandbox.log("--kind", "audit.read")[-1]["workspace"] == WS


def test_a_reader_that_stops_early_is_still_recorded(sandbox: Home) -> None:
    from sandbox.keys import FileKeyStore
    from sandbox.state import State

    state = State(sandbox.db, FileKeyStore(sandbox.keystore).audit_signing_key())
    for i in range(200):  # more than a pipe holds, so that the reader goes away mid-stream
        state.record("audit.read", actor="test", what="log", filters={"pad": "x" * 1000, "i": i})
    state.close()
    size = sandbox.rows("SELECT count(*) FROM audit_records")[0][0]
    proc = subprocess.run(["bash", "-o", "pipefail", "-c",
                           f"'{SANDBOX}' audit log --format jsonl | head -1"],
                          env=sandbox.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert json.loads(proc.stdout)["seq"] == 1
    (last,) = sandbox.rows("SELECT body FROM audit_records WHERE seq = ?", size + 1)
    assert json.loads(last[0])["what"] == "log"


# -- verification, checkpoints and proofs ---------------------------------------------------------


def _field(out: str, name: str) -> str:
    (value,) = re.findall(rf"^{name}:\s+(\S+)", out, re.M)
    return value


def test_verify_checkpoint_and_verify_against_it(sandbox: Home, tmp_path: pathlib.Path) -> None:
    size = sandbox.rows("SELECT count(*) FROM audit_records")[0][0]
    out = sandbox.ok("audit", "verify")
    assert out.splitlines()[-1] == "ok"
    assert _field(out, "records") == str(size)
    assert re.fullmatch(r"[0-9a-f]{64}", _field(out, "root hash"))
    assert re.search(r"^key fingerprint:\s+SHA256:([0-9a-f]{4}:){7}[0-9a-f]{4}$", out, re.M)
    (read,) = sandbox.log("--kind", "audit.read")
    assert read["what"] == "verify" and read["filters"]["records"] == size
    assert read["filters"]["root_hash"] == _field(out, "root hash")

    cp_file = tmp_path / "cp.json"
    out = sandbox.ok("audit", "checkpoint", "--out", str(cp_file))
    cp = json.loads(cp_file.read_text())
    assert f"checkpoint of {cp['tree_size']} records written to {cp_file}" in out
    assert _field(out, "root hash") == cp["root_hash"]
    assert _field(out, "signing key") == cp["public_key"]
    assert audit.Checkpoint.from_dict(cp).verify_signature()

    sandbox.ok("audit", "log")  # the log grows after the checkpoint: still consistent
    out = sandbox.ok("audit", "verify", "--checkpoint", str(cp_file))
    assert f"+ your checkpoint at size {cp['tree_size']}" in out and out.endswith("ok\n")

    forged = dict(cp, root_hash="0" * 64)
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    result = sandbox("audit", "verify", "--checkpoint", str(tmp_path / "forged.json"))
    assert "signature does not verify" in _error(result, "audit.failed")
    assert "FAILED" in result.out


def test_a_copy_verifies_away_from_the_key_store(sandbox: Home, tmp_path: pathlib.Path) -> None:
    import shutil
    import sqlite3

    key = _field(sandbox.ok("audit", "verify"), "signing key")
    sandbox.ok("audit", "checkpoint", "--out", str(tmp_path / "cp.json"))  # a signed head
    src = sqlite3.connect(sandbox.db)
    copy = tmp_path / "copy.sqlite"
    src.execute(f"VACUUM INTO '{copy}'")  # what an auditor takes away: one consistent file
    src.close()
    env = {k: v for k, v in sandbox.env.items() if not k.startswith("SANDBOX_")}
    env.update(SANDBOX_HOME=str(tmp_path / "no-home"), SANDBOX_KEYSTORE=str(tmp_path / "no-keys"))
    run = [str(SANDBOX), "audit", "verify", "--database", str(copy), "--public-key", key]
    ok = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.endswith("ok\n"), ok.stderr
    assert not (tmp_path / "no-keys").exists()
    before = copy.read_bytes()
    other = "ab" * 32
    bad = subprocess.run([*run[:-1], other], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "audit.failed" in bad.stderr
    assert copy.read_bytes() == before  # read-only: the copy is never written
    shutil.rmtree(tmp_path / "no-home", ignore_errors=True)


def test_proof_and_check_proof(sandbox: Home, tmp_path: pathlib.Path) -> None:
    proof_file = tmp_path / "proof.json"
    out = sandbox.ok("audit", "proof", str(REFUSED_SEQ), "--out", str(proof_file))
    assert f"proof of record #{REFUSED_SEQ}" in out
    doc = json.loads(proof_file.read_text())
    assert doc["record"]["kind"] == "query.refused" and doc["leaf_index"] == REFUSED_SEQ - 1
    assert json.loads(sandbox.ok("audit", "proof", "2"))["record"]["kind"] == "dataset.added"
    assert [r["filters"] for r in sandbox.log("--kind", "audit.read")] == [
        {"seq": REFUSED_SEQ}, {"seq": 2}]

    # anyone can check it: no home, no key store
    nowhere = Home(tmp_path / "no-home", tmp_path / "no-keys")
    out = nowhere.ok("audit", "check-proof", str(proof_file))
    assert out.splitlines()[-1] == "valid"
    key = doc["checkpoint"]["public_key"]
    assert re.search(rf"^signing key:\s+{key}$", out, re.M)
    assert "compare this fingerprint with the one you trust" in out
    assert not nowhere.home.exists() and not nowhere.keystore.exists()
    out = nowhere.ok("audit", "check-proof", str(proof_file), "--public-key", key)
    assert "the proof's key is the key you pinned" in out and out.endswith("valid\n")

    result = nowhere("audit", "check-proof", str(proof_file), "--public-key", "ab" * 32)
    assert "signature does not verify with the key you pinned" in _error(
        result, "audit.proof_invalid")
    assert result.out.splitlines()[-1] == "INVALID"

    for path, fragment in (("audit_path", "audit path does not lead"),
                           ("leaf_hash", "does not match its leaf hash"),
                           ("record", "does not match its leaf hash"),
                           ("signature", "signature does not verify")):
        bad = _altered(doc, path)
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        result = nowhere("audit", "check-proof", str(tmp_path / "bad.json"))
        assert fragment in _error(result, "audit.proof_invalid"), path
        assert result.out.splitlines()[-1] == "INVALID"


def _altered(doc: dict, what: str) -> dict:
    """The proof with one byte changed in one place."""
    bad = json.loads(json.dumps(doc))

    def flip(hex_text: str) -> str:
        return ("1" if hex_text[10] == "0" else "0").join((hex_text[:10], hex_text[11:]))

    if what == "audit_path":
        bad["audit_path"][0] = flip(bad["audit_path"][0])
    elif what == "leaf_hash":
        bad["leaf_hash"] = flip(bad["leaf_hash"])
    elif what == "record":
        bad["record"]["member"] = "alicf"
    else:
        sig = bad["checkpoint"]["signature"]
        bad["checkpoint"]["signature"] = ("B" if sig[5] == "A" else "A").join((sig[:5], sig[6:]))
    return bad


def test_tampered_record_fails_verification(sandbox: Home, tmp_path: pathlib.Path) -> None:
    con = sqlite3.connect(sandbox.db)
    with con:
        con.execute("UPDATE audit_records SET body = replace(body, '\"bob\"', '\"eve\"') "
                    "WHERE seq = ?", (BOB_ANSWER_SEQ,))
    con.close()
    size = sandbox.rows("SELECT count(*) FROM audit_records")

    result = sandbox("audit", "verify")
    assert f"first bad record: #{BOB_ANSWER_SEQ}" in _error(result, "audit.failed")
    assert f"record #{BOB_ANSWER_SEQ} does not match its stored hash (altered)" in result.out
    assert "FAILED" in result.out
    # nothing is written to a log that failed, and nothing more is signed
    _error(sandbox("audit", "checkpoint", "--out", str(tmp_path / "cp.json")), "audit.failed")
    _error(sandbox("audit", "proof", "2"), "audit.failed")
    assert not (tmp_path / "cp.json").exists()
    report = tmp_path / "r.html"
    _error(sandbox("audit", "report", "--workspace", WS, "--period", _this_month(), "--out",
                   str(report)), "audit.failed")
    page = report.read_text()
    assert "FAILED" in page and f"First bad record: #{BOB_ANSWER_SEQ}." in page
    assert f"record #{BOB_ANSWER_SEQ} does not match" in page
    assert sandbox.rows("SELECT count(*) FROM audit_records") == size


# -- the monthly report ----------------------------------------------------------------------


def _this_month() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m")


def test_report_is_a_self_contained_escaped_page(sandbox: Home, tmp_path: pathlib.Path) -> None:
    sandbox.ok("budget", "set", "--workspace", WS, "--member", "eve", "--epsilon", "3",
               "--new-member")
    out_file = tmp_path / "report.html"
    out = sandbox.ok("audit", "report", "--workspace", WS, "--period", _this_month(), "--out",
                     str(out_file))
    assert f"written to {out_file}" in out and "verification ok" in out
    page = out_file.read_text()
    for section in ("Queries by decision", "Refusals by rule", "Epsilon spent per member",
                    "Answered releases", "Exports", "No exports in this period.",
                    "Budget changes", "Checking this report later"):
        assert f">{section}<" in page, section
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 2
    assert '<span class="badge ok">ok</span>' in page
    assert ">3</b><span>answered<" in page and ">1</b><span>refused<" in page
    assert ">0</b><span>failed<" in page and ">0</b><span>interrupted<" in page
    assert "gate.unknown_column" in page
    releases = [r["release_id"] for r in sandbox.log("--kind", "query.answered")]
    assert all(r in page for r in releases)

    lowered = page.lower()
    assert "http://" not in lowered and "https://" not in lowered
    assert "<script" not in lowered and "<link" not in lowered and "@import" not in lowered
    # member names cannot hold markup (workspaces.check_member); the SQL can, escaped:
    assert "district = &#39;&lt;script&gt;alert(1)&lt;/script&gt;&#39;" in page

    (read,) = [r for r in sandbox.log("--kind", "audit.read") if r["what"] == "report"]
    assert (read["workspace"], read["actor"]) == (WS, getpass.getuser())
    assert read["filters"] == {"workspace": WS, "period": _this_month()}

    # the embedded signed checkpoint lets the auditor check the log later
    (embedded,) = re.findall(r"<pre><code>(.*?)</code></pre>", page, re.S)
    (tmp_path / "cp.json").write_text(html.unescape(embedded))
    assert sandbox.ok("audit", "verify", "--checkpoint", str(tmp_path / "cp.json")).endswith(
        "ok\n")

    empty = tmp_path / "empty.html"
    sandbox.ok("audit", "report", "--workspace", WS, "--period", "2001-02", "--out", str(empty))
    page = empty.read_text()
    assert "No answers were released in this period." in page and "<svg" not in page
    assert "(2001-02-01 to 2001-02-28, UTC)" in page


def test_report_renders_charts_and_escapes_every_text() -> None:
    t0 = dt.datetime(2026, 10, 3, tzinfo=dt.UTC)
    evil = "<img src=x onerror=alert(1)>"
    records = [
        {"seq": 1, "time": t0.isoformat(), "kind": "query.charged", "member": evil,
         "charge_id": "c1", "sql": f"SELECT '{evil}'", "epsilon": 0.5, "delta": 0.0},
        {"seq": 2, "time": t0.isoformat(), "kind": "query.answered", "member": evil,
         "charge_id": "c1", "release_id": "r1", "epsilon": 0.5, "rows": 1,
         "values_digest": "ab" * 32},
        {"seq": 3, "time": (t0 + dt.timedelta(days=9)).isoformat(), "kind": "query.charged",
         "member": "bob", "charge_id": "c2", "sql": "x", "epsilon": 1.0, "delta": 1e-7},
        {"seq": 4, "time": (t0 + dt.timedelta(days=9)).isoformat(), "kind": "query.cancelled",
         "member": "bob", "charge_id": "c2"},
        {"seq": 5, "time": (t0 + dt.timedelta(days=10)).isoformat(), "kind": "query.refused",
         "member": "bob", "sql": "y", "rule": evil, "message": evil},
        {"seq": 6, "time": t0.isoformat(), "kind": "key.rotated", "actor": evil,
         "new_key": "mk-2", "retired": ["mk-1"], "rewrapped": 3},
    ]
    bad = VerifyReport(records=9, checkpoints=1, root_hash="00" * 32, problems=[evil],
                       first_bad=4)
    page = render(records, bad, evil, "2026-10", public_key="11" * 32)
    assert "<img" not in page and page.count(html.escape(evil)) >= 6
    assert "FAILED" in page and "First bad record: #4." in page
    assert "No checkpoint was signed" in page
    assert ">1</b><span>cancelled<" in page and ">0.5</b><span>epsilon charged<" in page
    assert page.count("<svg") == 2 and "<polyline" in page and "<circle" in page


def test_parse_when_normalises_to_utc() -> None:
    assert parse_when("2026-11-23", "--since") == "2026-11-23T00:00:00.000000+00:00"
    assert parse_when("2026-11-23", "--until", end=True) == "2026-11-24T00:00:00.000000+00:00"
    assert parse_when("2026-11-23T08:00:00Z", "--since") == "2026-11-23T08:00:00.000000+00:00"
    assert parse_when("2026-11-23T08:00", "--since") == "2026-11-23T08:00:00.000000+00:00"
    assert parse_when("2026-11-23T10:00:00+02:00", "--until",
                      end=True) == "2026-11-23T08:00:00.000000+00:00"


# -- operator actions are audited -----------------------------------------------------------


def test_operator_actions_are_audited(cli_env: dict[str, str], tmp_path: pathlib.Path,
                                      demo_dir: pathlib.Path) -> None:
    h = Home(pathlib.Path(cli_env["SANDBOX_HOME"]), pathlib.Path(cli_env["SANDBOX_KEYSTORE"]))
    (first,) = re.findall(r"active master key (mk-\d{8}-[0-9a-f]{8})", h.ok("keys", "init"))
    h.ok("dataset", "add", "districts", str(demo_dir / "districts.parquet"), "--spec",
         str(demo_dir / "districts.yaml"))
    new = re.findall(r"now (mk-\S+);", h.ok("keys", "rotate"))[0]
    h.ok("keys", "destroy", first)
    h.ok("dataset", "remove", "districts", "--yes")
    added, rotated, destroyed, removed = h.log()
    user = getpass.getuser()
    assert {r["actor"] for r in (added, rotated, destroyed, removed)} == {user}
    assert (added["kind"], added["dataset"], added["version"], added["rows"]) == (
        "dataset.added", "districts", 1, 6)
    assert re.fullmatch(r"[0-9a-f]{64}", added["sha256"])
    assert (rotated["kind"], rotated["new_key"], rotated["retired"], rotated["rewrapped"]) == (
        "key.rotated", new, [first], 5)
    assert (destroyed["kind"], destroyed["key_id"]) == ("key.destroyed", first)
    assert (removed["kind"], removed["dataset"], removed["versions"]) == (
        "dataset.removed", "districts", [1])
    assert h.ok("audit", "verify").endswith("ok\n")


# -- the schema document ---------------------------------------------------------------------


def test_audit_events_doc_describes_every_kind_and_field() -> None:
    doc = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "audit-events.md").read_text()
    common = doc.split("## Common fields", 1)[1].split("\n## ", 1)[0]
    for name in audit.COMMON:
        assert f"| `{name}` |" in common, f"common field {name} is not described"
    sections = re.split(r"^#### ", doc, flags=re.M)[1:]
    by_kind = {s.split("`")[1]: s for s in sections}
    assert set(by_kind) == set(KINDS), "every kind has a section, and only kinds"
    for kind, fields in KINDS.items():
        section = re.split(r"\n#{2,3} ", by_kind[kind])[0]
        documented = re.findall(r"^\| `([a-z0-9_]+)` \|", section, re.M)
        assert documented == list(fields), f"{kind}: fields {documented} != {list(fields)}"
