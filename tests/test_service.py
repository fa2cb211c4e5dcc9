"""The gate service against a real JupyterHub: tokens, scopes, groups, limits, request ids.

A real ``jupyterhub`` process (its own REST API, token store and scope checks) runs in a
temporary directory on loopback. configurable-http-proxy is not needed: the hub runs with
an in-memory proxy class that only records routes, and clients call the hub's own port
(the service is called directly, as the proxy would). Users, groups, roles and tokens are
made through the hub's REST API with an admin service token; the sandbox service runs as
a subprocess with the environment a hub-managed service gets.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from conftest import make_vault

from gatekit import CORE_COLUMNS
from sandbox.ledger import SqliteLedger
from sandbox.settings import Paths
from sandbox.state import State
from sandbox.workspaces import provision_local

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "policies" / "credit_underwriting.yaml"
PREFIX = "/services/sandbox/"
WS = "credit-demo"
SIMPLE = "SELECT purpose, count(*) AS n FROM loans GROUP BY purpose"
JOIN = ("SELECT p.district, count(*) AS n, avg(l.amount) AS a FROM persons p JOIN loans l "
        "ON p.person_id = l.person_id GROUP BY p.district")
FORBIDDEN_TEXT = ("Traceback", "duckdb", "Binder Error", "Catalog Error", "File ", ".parquet",
                  "/tmp/", "sqlite")

HUB_CONFIG = """
from jupyterhub.proxy import Proxy


class RecordingProxy(Proxy):
    \"\"\"Keeps routes in memory: the tests call the hub and the service directly.\"\"\"

    should_start = False
    routes = {{}}

    async def start(self):
        pass

    async def stop(self):
        pass

    async def add_route(self, routespec, target, data):
        self.routes[routespec] = {{"routespec": routespec, "target": target, "data": data}}

    async def delete_route(self, routespec):
        self.routes.pop(routespec, None)

    async def get_all_routes(self):
        return dict(self.routes)


c.JupyterHub.proxy_class = RecordingProxy
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {proxy_port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.db_url = "sqlite:///{tmp}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{tmp}/cookie_secret"
c.JupyterHub.pid_file = "{tmp}/jupyterhub.pid"
c.JupyterHub.authenticator_class = "dummy"
c.JupyterHub.cleanup_servers = False
c.JupyterHub.custom_scopes = {{
    "custom:sandbox:query": {{"description": "Ask the data sandbox for noisy answers"}},
    "custom:sandbox:admin": {{"description": "Administer sandbox workspaces"}},
    "custom:sandbox:review": {{"description": "Review exports"}},
}}
c.JupyterHub.services = [
    {{"name": "admin-test", "api_token": "{admin_token}"}},
    {{"name": "sandbox", "url": "http://127.0.0.1:{service_port}", "api_token": "{service_token}"}},
]
c.JupyterHub.load_groups = {{
    "credit-analysts": {{"users": ["alice", "eve"]}},
    "other-team": {{"users": ["carol"]}},
    "operators": {{"users": ["oscar"]}},
    "auditors": {{"users": ["audrey", "ramon", "rita"]}},
}}
c.JupyterHub.load_roles = [
    {{"name": "admin-test", "services": ["admin-test"],
     "scopes": ["admin:users", "admin:groups", "admin:servers", "tokens", "read:roles"]}},
    {{"name": "sandbox-user", "scopes": ["custom:sandbox:query"],
     "users": ["alice", "carol", "rita"]}},
    {{"name": "sandbox-auditor", "scopes": ["custom:sandbox:review"],
     "users": ["audrey", "ramon", "rita"]}},
    {{"name": "sandbox-operator", "users": ["oscar"],
     "scopes": ["custom:sandbox:admin", "admin:users", "admin:groups", "admin:servers"]}},
]
c.Spawner.server_token_scopes = ["inherit", "custom:sandbox:query"]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not come up:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class Hub:
    api: str  # http://127.0.0.1:PORT/hub/api
    admin_token: str
    service_port: int
    service_token: str

    def call(self, method: str, path: str, **kwargs: object) -> requests.Response:
        r = requests.request(method, self.api + path, timeout=10,
                             headers={"Authorization": f"token {self.admin_token}"},
                             **kwargs)  # type: ignore[arg-type]
        assert r.status_code < 300, (method, path, r.status_code, r.text)
        return r

    def token(self, user: str, scopes: list[str] | None = None,
              expires_in: int | None = None) -> str:
        body: dict[str, object] = {"note": "sandbox test"}
        body["scopes"] = scopes if scopes is not None else ["custom:sandbox:query"]
        if expires_in is not None:
            body["expires_in"] = expires_in
        return str(self.call("POST", f"/users/{user}/tokens", json=body).json()["token"])


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    tmp = tmp_path_factory.mktemp("hub")
    hub_port, admin, service_port = free_port(), secrets.token_hex(16), free_port()
    service_token = secrets.token_hex(16)
    (tmp / "jupyterhub_config.py").write_text(HUB_CONFIG.format(
        proxy_port=free_port(), hub_port=hub_port, tmp=tmp, admin_token=admin,
        service_port=service_port, service_token=service_token))
    log = tmp / "hub.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f",
                                 str(tmp / "jupyterhub_config.py")], cwd=tmp, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{hub_port}/hub/api/", proc, log)
        yield Hub(f"http://127.0.0.1:{hub_port}/hub/api", admin, service_port, service_token)
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def vault_home(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Paths:
    """A home of its own with the tiny demo data ingested (the service writes its state)."""
    vault = make_vault(tmp_path_factory.mktemp("svc"), demo_dir)
    paths, catalog = vault.paths, vault.catalog
    state = State(paths.state_db, vault.kms.audit_signing_key())
    try:
        provision_local(state, catalog.resolve, POLICY, WS, ["alice", "eve"], epsilon=10,
                        expires="2099-12-31", actor="test",
                        accept_core=CORE_COLUMNS["credit_underwriting"])
    finally:
        catalog.close()
        state.close()
    return paths


def write_config(path: Path, paths: Paths, **limits: object) -> Path:
    lim = {"max_sql_chars": 2000, "max_body_bytes": 8192, "per_member_concurrency": 2,
           "query_timeout_s": 30, "memory_limit": "512MB", "recover_after_s": 0,
           # the refusal tests send many bad requests; tests/test_service_load.py tests the
           # rate limits with their defaults
           "refusals_per_minute": 10000, "queries_per_minute": 10000, **limits}
    path.write_text(
        f"home: {paths.home}\nkeystore: {paths.keystore}\nlimits: {json.dumps(lim)}\n")
    return path


@dataclass
class Svc:
    base: str  # http://127.0.0.1:PORT/services/sandbox/api/v1/
    proc: subprocess.Popen[bytes]
    log: Path
    config: Path
    env: dict[str, str] = field(default_factory=dict)

    def call(self, method: str, path: str, token: str | None = None,
             **kwargs: object) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}) or {})  # type: ignore[call-overload]
        if token is not None:
            headers["Authorization"] = f"token {token}"
        return requests.request(method, self.base + path, headers=headers, timeout=30,
                                **kwargs)  # type: ignore[arg-type]


def start_service(hub: Hub, config: Path, port: int) -> Svc:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SANDBOX_", "JUPYTERHUB_"))}
    env.update(JUPYTERHUB_API_URL=hub.api, JUPYTERHUB_API_TOKEN=hub.service_token,
               JUPYTERHUB_SERVICE_NAME="sandbox", JUPYTERHUB_SERVICE_PREFIX=PREFIX,
               JUPYTERHUB_SERVICE_URL=f"http://127.0.0.1:{port}",
               JUPYTERHUB_BASE_URL="/", SANDBOX_LOG_LEVEL="INFO")
    log = config.with_suffix(f".{port}.log")
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sandbox.service", "--config",
                                 str(config)], stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=ROOT, start_new_session=True)
    base = f"http://127.0.0.1:{port}{PREFIX}api/v1/"
    try:
        wait_http(base + "health", proc, log)
    except BaseException:
        stop(proc)
        raise
    return Svc(base, proc, log, config, env)


@pytest.fixture(scope="module")
def service(hub: Hub, vault_home: Paths, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Svc]:
    config = write_config(tmp_path_factory.mktemp("svc-config") / "service.yaml", vault_home)
    svc = start_service(hub, config, hub.service_port)
    try:
        yield svc
    finally:
        stop(svc.proc)


@pytest.fixture(scope="module")
def alice(hub: Hub) -> str:
    return hub.token("alice")


def rid() -> str:
    return uuid.uuid4().hex


def assert_clean(r: requests.Response) -> None:
    """An error body is JSON {error: {code, message, hint}} and shows no internals."""
    body = r.json()
    assert set(body) == {"error"}, body
    assert {"code", "message", "hint"} <= set(body["error"]), body
    for text in FORBIDDEN_TEXT:
        assert text not in r.text, (text, r.text)


def charges(paths: Paths, member: str) -> list[tuple[str, str]]:
    import sqlite3

    con = sqlite3.connect(paths.state_db)
    try:
        return con.execute("SELECT id, state FROM charges WHERE member = ? ORDER BY created",
                           (member,)).fetchall()
    finally:
        con.close()


# -- unauthenticated endpoints ----------------------------------------------------------------
def test_health_and_openapi_need_no_token(service: Svc) -> None:
    r = service.call("GET", "health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["version"]
    doc = service.call("GET", "openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert doc["servers"][0]["url"] == PREFIX + "api/v1"


def test_openapi_documents_every_route_and_error_code() -> None:
    from sandbox.service.errors import STATUS
    from sandbox.service.handlers import ROUTES
    from sandbox.service.openapi import ERROR_CODES, document

    doc = document(PREFIX, "0")
    assert {path for _, path, _ in ROUTES} == set(doc["paths"])
    for _, path, handler in ROUTES:
        methods = {m for m in ("get", "post") if m.upper() in vars(handler) or
                   m in vars(handler)}
        assert methods == set(doc["paths"][path]), path
    for code, status in STATUS.items():
        if code not in ("engine.error", "state.error"):
            assert ERROR_CODES[code][0] == status, code
    assert set(STATUS) - {"state.error"} <= set(ERROR_CODES)


# -- authentication and authorisation ----------------------------------------------------------
def test_member_with_scope_sees_workspace_schema_and_budget(service: Svc, alice: str,
                                                           vault_home: Paths) -> None:
    ws = service.call("GET", "workspaces", alice).json()
    assert [w["name"] for w in ws] == [WS]
    schema = service.call("GET", f"workspaces/{WS}/schema", alice).json()
    assert set(schema["tables"]) == {"persons", "loans", "districts"}
    cols = {c["name"]: c for c in schema["tables"]["persons"]["columns"]}
    assert cols["income"]["bounds"] == [0, 2000000] and cols["income"]["role"] == "measure"
    assert cols["person_id"]["role"] == "unit"
    text = json.dumps(schema)
    assert str(vault_home.home) not in text and ".parquet" not in text
    b = service.call("GET", f"workspaces/{WS}/budget", alice).json()
    assert b["epsilon_total"] == 10


def test_missing_forged_and_url_tokens_are_refused(service: Svc) -> None:
    r = service.call("GET", "workspaces")
    assert r.status_code == 401 and r.json()["error"]["code"] == "auth.required"
    r = service.call("GET", "workspaces", secrets.token_hex(16))
    assert r.status_code == 401 and r.json()["error"]["code"] == "auth.invalid"
    assert_clean(r)
    r = service.call("GET", f"workspaces?token={secrets.token_hex(16)}")
    assert r.status_code == 400 and r.json()["error"]["code"] == "auth.token_in_url"


def test_token_without_the_scope_is_forbidden(service: Svc, hub: Hub) -> None:
    eve = hub.token("eve", scopes=["users:activity!user"])  # in the group, no sandbox role
    r = service.call("POST", f"workspaces/{WS}/query", eve,
                     json={"sql": SIMPLE, "request_id": rid()})
    assert r.status_code == 403 and r.json()["error"]["code"] == "auth.scope"
    # alice has the role, but a token made without the scope does not carry it
    narrow = hub.token("alice", scopes=["users:activity!user"])
    assert service.call("GET", "workspaces", narrow).json()["error"]["code"] == "auth.scope"


def test_user_outside_the_group_cannot_tell_the_workspace_exists(service: Svc, hub: Hub) -> None:
    carol = hub.token("carol")
    assert service.call("GET", "workspaces", carol).json() == []
    for method, path in (("GET", "schema"), ("GET", "budget"), ("POST", "explain"),
                         ("POST", "query")):
        r = service.call(method, f"workspaces/{WS}/{path}", carol,
                         json={"sql": SIMPLE, "request_id": rid()})
        other = service.call(method, f"workspaces/nope/{path}", carol,
                             json={"sql": SIMPLE, "request_id": rid()})
        # a workspace of others is answered exactly like one that does not exist
        assert r.status_code == other.status_code == 404
        assert r.json()["error"]["code"] == "workspace.not_found"
        assert r.json()["error"]["message"].replace(WS, "nope") == \
            other.json()["error"]["message"]


def test_service_token_is_not_a_member(service: Svc, hub: Hub) -> None:
    r = service.call("GET", "workspaces", hub.admin_token)
    assert r.status_code == 403
    assert r.json()["error"]["code"] in ("auth.not_a_user", "auth.scope")


@pytest.mark.slow
def test_expired_token_is_refused(service: Svc, hub: Hub) -> None:
    short = hub.token("alice", expires_in=1)
    time.sleep(2.2)
    r = service.call("GET", "workspaces", short)
    assert r.status_code == 401 and r.json()["error"]["code"] == "auth.invalid"


# -- answers, charges and request ids -----------------------------------------------------------
def test_query_charges_once_and_replays_by_request_id(service: Svc, alice: str,
                                                      vault_home: Paths) -> None:
    before = service.call("GET", f"workspaces/{WS}/budget", alice).json()["epsilon_spent"]
    ex = service.call("POST", f"workspaces/{WS}/explain", alice, json={"sql": SIMPLE})
    assert ex.status_code == 200 and ex.json()["cost"]["epsilon"] == 0.5
    request_id = rid()
    r1 = service.call("POST", f"workspaces/{WS}/query", alice,
                      json={"sql": SIMPLE, "epsilon": 0.25, "request_id": request_id})
    assert r1.status_code == 200, r1.text
    body = r1.json()
    assert body["noisy"] is True and body["columns"] == ["purpose", "n"]
    assert body["epsilon"] == 0.25 and len(body["ci95"]) == len(body["rows"])
    assert body["budget"]["epsilon_spent"] == pytest.approx(before + 0.25)
    assert "Sandbox-Replayed" not in r1.headers
    r2 = service.call("POST", f"workspaces/{WS}/query", alice,
                      json={"sql": SIMPLE, "epsilon": 0.25, "request_id": request_id})
    assert r2.status_code == 200 and r2.headers["Sandbox-Replayed"] == "true"
    assert r2.json()["rows"] == body["rows"] and r2.json()["release_id"] == body["release_id"]
    after = service.call("GET", f"workspaces/{WS}/budget", alice).json()["epsilon_spent"]
    assert after == pytest.approx(before + 0.25)


def test_a_request_id_reused_for_another_question_is_a_conflict(service: Svc,
                                                                alice: str) -> None:
    request_id = rid()
    first = {"sql": SIMPLE, "epsilon": 0.25, "request_id": request_id}
    r1 = service.call("POST", f"workspaces/{WS}/query", alice, json=first)
    assert r1.status_code == 200, r1.text
    spent = service.call("GET", f"workspaces/{WS}/budget", alice).json()["epsilon_spent"]
    for other in ({"sql": "SELECT count(*) AS n FROM loans", "epsilon": 0.25},
                  {"sql": SIMPLE, "epsilon": 0.5}, {"sql": SIMPLE}):
        r = service.call("POST", f"workspaces/{WS}/query", alice,
                         json={**other, "request_id": request_id})
        assert r.status_code == 409, r.text
        assert_clean(r)
        error = r.json()["error"]
        assert error["code"] == "request.conflict"
        assert error["message"] == f"request {request_id} was already used for a different query"
        assert "new request id" in error["hint"]
        assert "Sandbox-Replayed" not in r.headers
    r2 = service.call("POST", f"workspaces/{WS}/query", alice, json=first)  # a true retry
    assert r2.status_code == 200 and r2.headers["Sandbox-Replayed"] == "true"
    assert r2.json()["release_id"] == r1.json()["release_id"]
    after = service.call("GET", f"workspaces/{WS}/budget", alice).json()["epsilon_spent"]
    assert after == pytest.approx(spent)


def test_the_same_question_with_a_new_request_id_is_replayed_free(service: Svc, alice: str,
                                                                  vault_home: Paths) -> None:
    import sqlite3

    sql = "SELECT purpose, avg(amount) AS mean FROM loans GROUP BY purpose"
    r1 = service.call("POST", f"workspaces/{WS}/query", alice,
                      json={"sql": sql, "epsilon": 0.125, "request_id": rid()})
    assert r1.status_code == 200 and r1.json()["replayed"] is False, r1.text
    spent = r1.json()["budget"]["epsilon_spent"]
    r2 = service.call("POST", f"workspaces/{WS}/query", alice,
                      json={"sql": sql, "epsilon": 0.125, "request_id": rid()})
    assert r2.status_code == 200 and r2.headers["Sandbox-Replayed"] == "true"
    body = r2.json()
    assert body["replayed"] is True and body["rows"] == r1.json()["rows"]
    assert body["release_id"] == r1.json()["release_id"]
    assert body["budget"]["epsilon_spent"] == pytest.approx(spent)
    con = sqlite3.connect(vault_home.state_db)
    try:
        rows = con.execute("SELECT body FROM audit_records WHERE kind = 'query.replayed' "
                           "ORDER BY seq DESC LIMIT 1").fetchall()
    finally:
        con.close()
    rec = json.loads(rows[0][0])
    assert rec["member"] == "alice" and rec["sql"] == sql and rec["epsilon"] == 0
    assert rec["release_id"] == body["release_id"]
    # attributed: the member's hub user, and the reviewed policy text it was answered under
    assert rec["actor"] == "alice"
    assert set(rec["policy"]) == {"id", "version", "sha256"}
    assert rec["policy"]["id"] == "credit-underwriting" and rec["policy"]["version"] >= 1
    assert len(rec["policy"]["sha256"]) == 64
    # the same SQL at another epsilon is another question: fresh noise, charged
    r3 = service.call("POST", f"workspaces/{WS}/query", alice,
                      json={"sql": sql, "epsilon": 0.25, "request_id": rid()})
    assert r3.json()["replayed"] is False
    assert r3.json()["budget"]["epsilon_spent"] == pytest.approx(spent + 0.25)


def test_refused_sql_is_stored_capped_with_its_hash_and_length(service: Svc, alice: str,
                                                                vault_home: Paths) -> None:
    import hashlib
    import sqlite3

    long_sql = "SELECT count(*) FROM loans WHERE " + " OR ".join(["amount > 2"] * 200)
    assert 2000 < len(long_sql) < 8000
    r = service.call("POST", f"workspaces/{WS}/query", alice,
                     json={"sql": long_sql, "request_id": rid()})
    assert r.status_code == 400 and r.json()["error"]["code"] == "gate.too_large"
    con = sqlite3.connect(vault_home.state_db)
    try:
        (body,) = con.execute("SELECT body FROM audit_records WHERE kind = 'query.refused' "
                              "ORDER BY seq DESC LIMIT 1").fetchone()
    finally:
        con.close()
    rec = json.loads(body)
    assert rec["rule"] == "gate.too_large" and rec["member"] == "alice"
    assert rec["actor"] == "alice" and rec["policy"]["id"] == "credit-underwriting"
    assert rec["sql"] == long_sql[:2000] + "… [truncated]"
    assert rec["sql_sha256"] == hashlib.sha256(long_sql.encode()).hexdigest()
    assert rec["sql_length"] == len(long_sql)


def test_refusal_is_free_and_names_the_rule(service: Svc, alice: str) -> None:
    before = service.call("GET", f"workspaces/{WS}/budget", alice).json()["epsilon_spent"]
    r = service.call("POST", f"workspaces/{WS}/query", alice,
                     json={"sql": "SELECT person_id FROM persons", "request_id": rid()})
    assert r.status_code == 400 and r.json()["error"]["code"].startswith("gate.")
    assert_clean(r)
    r = service.call("POST", f"workspaces/{WS}/query", alice,
                     json={"sql": "SELECT count(*) FROM read_csv('/etc/passwd')",
                           "request_id": rid()})
    assert r.status_code == 400 and r.json()["error"]["code"].startswith("gate.")
    after = service.call("GET", f"workspaces/{WS}/budget", alice).json()["epsilon_spent"]
    assert after == before


# -- bad input and limits ------------------------------------------------------------------------
@pytest.mark.parametrize(("data", "field"), [
    (b"{not json", None),
    (b"[1, 2]", None),
    (json.dumps({"sql": 5, "request_id": "a"}).encode(), "sql"),
    (json.dumps({"sql": SIMPLE, "request_id": "a", "epsilon": "x"}).encode(), "epsilon"),
    (json.dumps({"sql": SIMPLE, "request_id": "a", "epsilon": True}).encode(), "epsilon"),
    (json.dumps({"sql": SIMPLE}).encode(), "request_id"),
    (json.dumps({"sql": SIMPLE, "request_id": "bad id!"}).encode(), "request_id"),
    (json.dumps({"sql": SIMPLE, "request_id": "a", "member": "bob"}).encode(), "member"),
])
def test_malformed_bodies(service: Svc, alice: str, data: bytes, field: str | None) -> None:
    r = service.call("POST", f"workspaces/{WS}/query", alice, data=data,
                     headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "input.invalid"
    if field:
        assert repr(field) in err["message"]
    assert_clean(r)


def test_oversized_body_and_sql(service: Svc, alice: str) -> None:
    big = "SELECT count(*) FROM loans WHERE " + " OR ".join(["amount > 1"] * 2000)
    r = service.call("POST", f"workspaces/{WS}/query", alice,
                     json={"sql": big, "request_id": rid()})
    assert r.status_code == 413 and r.json()["error"]["code"] == "limits.body_too_large"
    long_sql = "SELECT count(*) FROM loans WHERE " + " OR ".join(["amount > 1"] * 200)
    assert 2000 < len(long_sql) < 8000
    r = service.call("POST", f"workspaces/{WS}/query", alice,
                     json={"sql": long_sql, "request_id": rid()})
    assert r.status_code == 400 and r.json()["error"]["code"] == "gate.too_large"
    r = service.call("POST", f"workspaces/{WS}/explain", alice, json={"sql": long_sql})
    assert r.status_code == 400 and r.json()["error"]["code"] == "gate.too_large"


def test_unknown_endpoint_and_method_are_json(service: Svc, alice: str) -> None:
    r = service.call("GET", "nope", alice)
    assert r.status_code == 404 and r.json()["error"]["code"] == "http.not_found"
    r = service.call("DELETE", f"workspaces/{WS}/query", alice)
    assert r.status_code == 405 and r.json()["error"]["code"] == "http.method_not_allowed"
    assert_clean(r)


def test_per_member_concurrency(service: Svc, alice: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def explain(_: int) -> int:
        return service.call("POST", f"workspaces/{WS}/explain", alice,
                            json={"sql": JOIN}).status_code

    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(explain, range(24)))
    assert set(codes) <= {200, 429} and 200 in codes and 429 in codes, codes


# -- time limit and restart ----------------------------------------------------------------------
@pytest.mark.slow
def test_slow_query_times_out_and_is_charged_once(hub: Hub, vault_home: Paths,
                                                  tmp_path: Path) -> None:
    config = write_config(tmp_path / "fast.yaml", vault_home, query_timeout_s=0.001)
    svc = start_service(hub, config, free_port())
    try:
        token = hub.token("alice")
        before = len(charges(vault_home, "alice"))
        r = svc.call("POST", f"workspaces/{WS}/query", token,
                     json={"sql": JOIN, "request_id": rid()})
        assert r.status_code == 504, r.text
        assert r.json()["error"]["code"] == "engine.timeout"
        assert_clean(r)
        after = charges(vault_home, "alice")
        assert len(after) == before + 1 and after[-1][1] == "failed"
    finally:
        stop(svc.proc)
    assert "Traceback" not in svc.log.read_text()


@pytest.mark.slow
def test_restart_mid_query_then_retry_is_not_charged_twice(hub: Hub, vault_home: Paths,
                                                           tmp_path: Path) -> None:
    """A query reserved by a service that then died (kill -9) is closed at the next start;
    the client's retry with the same request id is told it was charged once."""
    from sandbox.dp import Cost
    from sandbox.keys import load_kms
    from sandbox.state import State

    config = write_config(tmp_path / "restart.yaml", vault_home)
    port = free_port()
    svc = start_service(hub, config, port)
    token = hub.token("alice")
    request_id = rid()
    try:
        spent0 = svc.call("GET", f"workspaces/{WS}/budget", token).json()["epsilon_spent"]
        # what the dying service had written: the reservation with this request id
        state = State(vault_home.state_db, load_kms(vault_home.keystore).audit_signing_key())
        try:
            ledger = SqliteLedger.existing(state, WS)
            ledger.reserve("alice", Cost(0.5, 0.0, 0.0), sql=SIMPLE, request_id=request_id)
        finally:
            state.close()
        r = svc.call("POST", f"workspaces/{WS}/query", token,
                     json={"sql": SIMPLE, "request_id": request_id})
        assert r.status_code == 409 and r.json()["error"]["code"] == "request.in_progress"
        svc.proc.send_signal(signal.SIGKILL)
        svc.proc.wait(10)
    finally:
        stop(svc.proc)
    svc = start_service(hub, config, port)  # recovers the stale reservation
    try:
        r = svc.call("POST", f"workspaces/{WS}/query", token,
                     json={"sql": SIMPLE, "request_id": request_id})
        assert r.status_code == 409 and r.json()["error"]["code"] == "request.failed"
        assert "charged once" in r.json()["error"]["message"]
        spent1 = svc.call("GET", f"workspaces/{WS}/budget", token).json()["epsilon_spent"]
        assert spent1 == pytest.approx(spent0 + 0.5)
        ok = svc.call("POST", f"workspaces/{WS}/query", token,
                      json={"sql": SIMPLE, "request_id": rid()})
        assert ok.status_code == 200
    finally:
        stop(svc.proc)


# -- configuration -------------------------------------------------------------------------------
def test_config_errors_name_file_and_line(tmp_path: Path) -> None:
    from sandbox.errors import ConfigError
    from sandbox.service.config import load_config

    cases = {
        "workspaces: []\n": ":1: workspaces are no longer configured here",
        "limits:\n  query_timeout_s: -1\n": ":2: limits.query_timeout_s must be a positive number",
        "limits:\n  memory_limit: lots\n": ":2: limits.memory_limit must be a size",
        "limits: {}\nbogus: 1\n": ":2: unknown key 'bogus'",
        "home: [1]\n": ":1: 'home' must be a directory path",
    }
    for text, expected in cases.items():
        path = tmp_path / "c.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert f"{path}{expected}" in info.value.message, info.value.message


def test_service_refuses_to_start_on_a_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("workspaces: {}\n")
    r = subprocess.run([sys.executable, "-m", "sandbox.service", "--config", str(path)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "config.invalid" in r.stderr and f"{path}:1" in r.stderr
