"""The notebook client against the real service and a real JupyterHub (see test_service)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from test_service import (  # noqa: F401  (fixtures)
    JOIN,
    SIMPLE,
    WS,
    Hub,
    Svc,
    alice,
    charges,
    hub,
    service,
    vault_home,
)

from sandbox import client as client_mod
from sandbox.client import (
    AuthError,
    QueryRefused,
    Sandbox,
    ServiceUnavailable,
    WorkspaceError,
    render,
    service_url,
    to_frame,
)


@pytest.fixture
def env(service: Svc, alice: str, monkeypatch: pytest.MonkeyPatch) -> Svc:  # noqa: F811
    monkeypatch.setenv("SANDBOX_SERVICE_URL", service.base.removesuffix("api/v1/"))
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", alice)
    return service


def test_service_url_from_environment() -> None:
    assert service_url({"SANDBOX_SERVICE_URL": "http://h:1/services/sandbox"}) == \
        "http://h:1/services/sandbox/"
    assert service_url({"JUPYTERHUB_API_URL": "http://127.0.0.1:8000/hub/api"}) == \
        "http://127.0.0.1:8000/services/sandbox/"
    with pytest.raises(ServiceUnavailable) as info:
        service_url({})
    assert "SANDBOX_SERVICE_URL" in str(info.value)


def test_schema_explain_sql_budget(env: Svc) -> None:
    sb = Sandbox()
    assert sb.workspace == WS
    tables = sb.tables()
    assert set(tables["table"]) == {"persons", "loans", "districts"}
    cols = sb.describe("loans")
    assert list(cols.columns) == ["name", "type", "role", "bounds", "keys", "description"]
    assert "amount" in set(cols["name"])
    ex = sb.explain(SIMPLE, epsilon=0.3)
    assert ex["cost"]["epsilon"] == 0.3 and "ε = 0.3" in ex._repr_html_()
    before = sb.budget()["epsilon_spent"]
    df = sb.sql(JOIN, epsilon=0.4)
    assert list(df.columns) == ["district", "n", "a"] and len(df) > 0
    assert len(df.attrs["ci95"]["n"]) == len(df) and df.attrs["ci95"]["district"][0] is None
    rel = df.attrs["release"]
    assert rel["epsilon"] == 0.4 and rel["release_id"] and "n" in rel["mechanisms"]
    assert sb.budget()["epsilon_spent"] == pytest.approx(before + 0.4)
    page = render(df)
    assert "±" in page and "noise" in page and "sandbox-budget" in page
    assert rel["bounding"]["rows_per_unit"] == {"loans": 10}  # what the row bound cut
    assert "suppressed_groups_ci95" in rel  # None: public keys suppress nothing
    assert "had matching rows left out" in page
    budget = sb.budget()
    assert "sandbox-budget" in budget._repr_html_()
    # which accounting was charged, with both figures (dp.compose with the budget's delta)
    assert budget["accounting"] in ("basic", "zcdp")
    assert budget["epsilon_spent"] <= budget["epsilon_basic"] + 1e-12
    assert f"epsilons ({budget['epsilon_basic']:.4g}) and zero-concentrated DP" in \
        budget._repr_html_()


def test_errors_map_to_exception_families(env: Svc, hub: Hub,  # noqa: F811
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    sb = Sandbox(WS)
    with pytest.raises(QueryRefused) as info:
        sb.sql("SELECT person_id FROM persons")
    err = info.value
    assert err.code.startswith("gate.") and err.hint and err.status == 400
    assert err.code in str(err) and "hint:" in str(err)
    # where: line and column, the refused line and a caret under person_id
    assert (err.line, err.column) == (1, 8) and "(line 1, column 8)" in str(err)
    assert "\n  SELECT person_id FROM persons\n         ^\n" in str(err)
    assert "line 1, column 8" in err._repr_html_() and "<pre" in err._repr_html_()
    with pytest.raises(client_mod.InvalidRequest):
        sb.describe("nope")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "forged" + "0" * 26)
    with pytest.raises(AuthError) as auth:
        Sandbox()
    assert auth.value.code == "auth.invalid"
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", hub.token("carol"))
    with pytest.raises(WorkspaceError, match="no workspace"):
        Sandbox()
    with pytest.raises(WorkspaceError, match="not a member"):
        Sandbox(WS)


class _FlakyProxy(BaseHTTPRequestHandler):
    """Forwards to the service, but loses the answer of the first query (502)."""

    target = ""
    lost = 0
    seen: list[str] = []  # noqa: RUF012

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        r = requests.request(self.command, self.target + self.path, data=body,
                             headers=headers, timeout=30)
        if self.command == "POST":
            type(self).seen.append(body.decode() if body else "")
        if self.command == "POST" and type(self).lost == 0:
            type(self).lost += 1
            self.send_response(502)
            self.end_headers()
            return
        self.send_response(r.status_code)
        for k, v in r.headers.items():
            if k.lower() in ("content-type", "sandbox-replayed"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(r.content)))
        self.end_headers()
        self.wfile.write(r.content)

    do_GET = do_POST = _forward

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky(service: Svc) -> Iterator[str]:  # noqa: F811
    _FlakyProxy.target = service.base.split("/services/")[0]
    _FlakyProxy.lost, _FlakyProxy.seen = 0, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyProxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/services/sandbox/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_lost_answer_is_retried_with_the_same_request_id(flaky: str, alice: str,  # noqa: F811
                                                         vault_home) -> None:  # noqa: F811
    sb = Sandbox(WS, url=flaky, token=alice, backoff_s=0.01)
    before = len(charges(vault_home, "alice"))
    df = sb.sql(SIMPLE, epsilon=0.2)
    assert len(df) == 5 and df.attrs["release"]["replayed"] is True
    assert len(_FlakyProxy.seen) == 2 and _FlakyProxy.seen[0] == _FlakyProxy.seen[1]
    assert len(charges(vault_home, "alice")) == before + 1


def test_unreachable_service_is_a_clear_error(alice: str) -> None:  # noqa: F811
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ServiceUnavailable) as info:
        Sandbox(url=f"http://127.0.0.1:{port}/services/sandbox/", token=alice, retries=1,
                backoff_s=0.01)
    assert info.value.code == "service.unreachable"


def test_dpsql_cell_magic(env: Svc) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        shell.run_line_magic("load_ext", "sandbox.client")
        client_mod._clients.clear()
        df = shell.run_cell_magic("dpsql", f"--epsilon 0.3 --workspace {WS}", SIMPLE)
        assert df.attrs["release"]["epsilon"] == 0.3 and list(df.columns) == ["purpose", "n"]
        fmt = shell.display_formatter.formatters["text/html"]
        assert "±" in fmt(df) and "noise" in fmt(df)
        with pytest.raises(QueryRefused):
            shell.run_cell_magic("dpsql", "", "SELECT * FROM persons")
    finally:
        client_mod._clients.clear()
        InteractiveShell.clear_instance()


RELEASE = {
    "release_id": "f" * 32, "policy": "credit-underwriting", "columns": ["year", "名称", "n"],
    "rows": [[2024, "思明区", 12345], [2025, "湖里区", 7]],
    "ci95": [[None, None, 40.0], [None, None, 40.0]],
    "mechanisms": {"n": "discrete_laplace (scale 21)"}, "epsilon": 0.5, "delta": 1e-7,
    "suppressed_groups": 3, "suppressed_groups_ci95": 12.0, "noisy": True, "replayed": False,
    "dummy": False, "bounding": {"rows_per_unit": {"loans": 10}, "groups_per_unit": None,
                                 "units_cut": 80, "units_cut_ci95": 126.0},
}


def test_frame_metadata_and_display_say_what_the_release_is() -> None:
    df = to_frame(RELEASE)
    rel = df.attrs["release"]
    assert rel["suppressed_groups"] == 3 and rel["suppressed_groups_ci95"] == 12.0
    assert rel["bounding"]["units_cut"] == 80 and rel["epsilon"] == 0.5
    page = render(df)
    assert "<td>2024</td>" in page and "2,024" not in page  # keys as written
    assert "12,345" in page  # noisy counts keep their separators
    assert "About 3 group(s) were suppressed (± 12" in page
    assert "about 80 units (± 126)" in page
    public = to_frame({**RELEASE, "suppressed_groups": 0, "suppressed_groups_ci95": None})
    assert "were suppressed" not in render(public)


def test_a_refusal_shows_the_refused_line_with_a_caret() -> None:
    sql = "SELECT count(*)\nFROM persons\nWHERE '市区' = district AND namex = 1"
    err = QueryRefused("gate.unknown_column", "column 'namex' is not available", "use age",
                       400, 3, 30)
    assert str(err).splitlines()[0].endswith("(line 3, column 30)")
    err.sql = sql
    lines = str(err).splitlines()
    assert lines[1] == "  WHERE '市区' = district AND namex = 1"
    assert lines[2].index("^") == 2 + 29 + 2  # the two CJK characters are two columns each
    assert lines[-1] == "hint: use age"


# -- what a notebook kernel loads --------------------------------------------------------
HEAVY = ("sandbox.keys", "sandbox.vault", "sandbox.identifier_index", "sandbox.state",
         "sandbox.ledger", "sandbox.exports.store", "sandbox.exports.checks",
         "sandbox.exports.bundle", "duckdb", "pyarrow", "numpy", "cryptography", "jinja2")
KERNEL = """
import json, sys
import sandbox.client as c
after_import = sorted(sys.modules)

class Frame:  # a DataFrame as FrameItem.from_pandas reads it (pandas loads pyarrow)
    columns = ["district", "n"]
    attrs = {"release": {"release_id": "r1"}}
    def itertuples(self, index=False, name=None):
        return iter([("Siming", 408)])

class Offline(c.Sandbox):
    sent = []
    def _call(self, method, path, body=None, raw=False):
        self.sent.append(body)
        if path == "workspaces":
            return [{"name": "w"}], {}
        return {"id": "e1", "state": "checked", "checks": {"outcome": "pass"}}, {}

sb = Offline(url="http://127.0.0.1:9/", token="t")
sb.export({"t": Frame(), "notes.txt": b"hello"}, title="T", purpose="P")
print(json.dumps({"import": after_import, "export": sorted(sys.modules),
                  "items": [i["kind"] for i in sb.sent[-1]["items"]]}))
"""


def test_the_notebook_client_loads_no_key_store_vault_or_airlock() -> None:
    """``import sandbox.client`` and ``sb.export`` stay light in a developer's kernel: the
    wire format (``sandbox.exports.wire``) is all they need."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", KERNEL], capture_output=True, text=True,
                         check=True, timeout=60)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["items"] == ["frame", "file"]
    for when in ("import", "export"):
        loaded = {m for m in got[when] for h in HEAVY if m == h or m.startswith(h + ".")}
        assert not loaded, f"after {when}: {sorted(loaded)}"
    assert "sandbox.exports.wire" in got["export"]
