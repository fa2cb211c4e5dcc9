"""End to end on a real hub: configurable-http-proxy, PAM logins of real system users,
servers running as those users, the gate service as its own user, real kernels.

See tests/hubkit.py for what is set up (everything in a temporary directory on loopback;
users are created with unique names and removed afterwards).
"""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from hubkit import ROOT, Hub, Kernel, running_hub

pytestmark = pytest.mark.slow

API = "/services/sandbox/api/v1"


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    with running_hub() as h:
        yield h


@pytest.fixture(scope="module")
def dev(hub: Hub) -> str:
    """A developer in the credit-underwriting workspace only, with a running server."""
    name = hub.groups["credit-underwriting"][0]
    hub.start_server(name)
    return name


@pytest.fixture(scope="module")
def kernel(hub: Hub, dev: str) -> Iterator[Kernel]:
    k = hub.kernel(dev)
    yield k
    k.close()


def test_login_needs_the_real_password(hub: Hub) -> None:
    user = next(iter(hub.users))
    assert hub.login(user, "not-the-password").login_status == 403  # type: ignore[attr-defined]
    assert hub.login("nobody-here", "x").login_status == 403  # type: ignore[attr-defined]
    ok = hub.login(user, hub.users[user])
    assert ok.login_status == 302  # type: ignore[attr-defined]


def test_server_runs_as_the_user_with_lab_and_templates(hub: Hub, dev: str,
                                                         kernel: Kernel) -> None:
    out = kernel.check("import os, pwd; print(pwd.getpwuid(os.getuid()).pw_name, os.getcwd())")
    assert out["stdout"].split() == [dev, pwd.getpwnam(dev).pw_dir]
    r = hub.api(dev, "GET", f"/user/{dev}/api/contents")
    names = {c["name"] for c in r.json()["content"]}
    # the common tour, and the walk-through of the one workspace this developer is in
    assert {"getting-started.ipynb", "credit-underwriting.ipynb"} <= names
    assert "population-livelihood.ipynb" not in names
    walk = hub.api(dev, "GET", f"/user/{dev}/api/contents/credit-underwriting.ipynb").json()
    code = "".join("".join(c["source"]) for c in walk["content"]["cells"])
    assert 'Sandbox(workspace="credit-underwriting"' in code
    home = Path(pwd.getpwnam(dev).pw_dir)
    assert (home / "getting-started.ipynb").stat().st_uid == pwd.getpwnam(dev).pw_uid
    # JupyterLab is the default UI
    r = hub.api(dev, "GET", f"/user/{dev}/", allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"].split("?")[0].endswith("/lab")
    # the kernel's token carries the service scope and nothing of the service's state
    out = kernel.check("import os; print(sorted(k for k in os.environ if k.startswith('SANDBOX')))")
    assert out["stdout"].strip() == "['SANDBOX_SERVICE_URL']"


def test_the_service_and_the_culler_run_as_managed_services(hub: Hub) -> None:
    def procs(needle: str) -> list[int]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                if needle in cmd and ppid == hub.proc.pid:  # started by this hub
                    found.append(os.stat(f"/proc/{pid}").st_uid)
            except OSError:
                continue
        return found

    assert procs("-m sandbox.service") == [pwd.getpwnam(hub.service_user).pw_uid]
    assert procs("jupyterhub_idle_culler") == [0]
    st = hub.service_dir.stat()
    assert st.st_mode & 0o777 == 0o700 and st.st_uid == pwd.getpwnam(hub.service_user).pw_uid


def test_getting_started_notebook_runs_and_charges_the_budget(hub: Hub, dev: str,
                                                               kernel: Kernel) -> None:
    before = hub.budget("credit-underwriting", dev)
    nb = json.loads((ROOT / "notebooks_template" / "getting-started.ipynb").read_text())
    outputs = []
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            outputs.append(kernel.check("".join(cell["source"])))
    # the first query: a noisy table with one row per district and intervals
    out = kernel.check("print(len(df), sorted(df.columns))")
    assert out["stdout"].startswith("6 ")
    html = "".join(str(r.get("text/html", "")) for o in outputs for r in o["results"])
    assert "±" in html and "noise" in html.lower()
    # the refusal example was refused, with a hint, and cost nothing
    refused = [o["stdout"] for o in outputs if "QueryRefused" in o["stdout"]]
    assert refused, [o["stdout"] for o in outputs]
    after = hub.budget("credit-underwriting", dev)
    spent = after["epsilon_spent"] - before.get("epsilon_spent", 0.0)
    # explain spends nothing: 0.5 (first query) + 0.3 (rephrased) + 0.5 (%%dpsql)
    assert spent == pytest.approx(1.3)


STATE_READS = """
import os, json
results = {}
for p in json.loads(%r):
    try:
        if os.path.isdir(p):
            os.listdir(p)
        else:
            open(p, 'rb').read(1)
        results[p] = 'READ'
    except PermissionError:
        results[p] = 'PermissionError'
    except Exception as exc:
        results[p] = type(exc).__name__
print(json.dumps(results))
"""


def test_kernel_cannot_read_keys_vault_catalog_or_ledger(hub: Hub, kernel: Kernel) -> None:
    targets = [str(hub.service_dir), str(hub.home), str(hub.keystore)]
    for dirpath, _dirs, files in os.walk(hub.service_dir):
        targets += [os.path.join(dirpath, f) for f in files]
    assert any(t.endswith(".parquet") for t in targets)
    assert any("keystore" in t for t in targets)
    assert any(t.endswith((".db", ".sqlite")) for t in targets)
    out = kernel.check(STATE_READS % json.dumps(targets))
    results = json.loads(out["stdout"])
    assert set(results.values()) == {"PermissionError"}, results
    # nor can it read the hub's database or another developer's home
    other = next(u for u in hub.users if u != kernel.user)
    out = kernel.check(STATE_READS % json.dumps([
        str(hub.base / "hub"), pwd.getpwnam(other).pw_dir]))
    assert set(json.loads(out["stdout"]).values()) == {"PermissionError"}


CALL = """
import json, os, urllib.request, urllib.error
def _j(raw):
    try:
        return json.loads(raw or b'{}')
    except ValueError:
        return {'code': 'not-json'}
def call(method, path, body=None, token=os.environ['JUPYTERHUB_API_TOKEN']):
    url = os.environ['SANDBOX_SERVICE_URL'] + 'api/v1/' + path
    req = urllib.request.Request(url, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={'Authorization': 'token ' + token, 'Content-Type': 'application/json'})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, _j(r.read())
    except urllib.error.HTTPError as e:
        return e.code, _j(e.read())
"""


def test_service_refuses_other_workspaces_identities_and_forged_tokens(
        hub: Hub, dev: str, kernel: Kernel) -> None:
    kernel.check(CALL)
    other = hub.groups["population-livelihood"][0]
    sql = "SELECT district, count(*) AS n FROM persons GROUP BY district"

    def run(expr: str) -> tuple[int, dict]:
        status, body = json.loads(kernel.check(f"print(json.dumps({expr}))")["stdout"])
        return status, body

    status, body = run("call('GET', 'workspaces')")
    assert status == 200 and [w["name"] for w in body] == ["credit-underwriting"]
    for path in ("workspaces/population-livelihood/schema",
                 "workspaces/population-livelihood/budget"):
        status, body = run(f"call('GET', {path!r})")
        assert status in (403, 404) and body["error"]["code"].startswith("workspace."), body
    status, body = run("call('POST', 'workspaces/population-livelihood/query', "
                       f"{{'sql': {sql!r}, 'request_id': 'x1'}})")
    assert status in (403, 404), body
    # claiming another member's identity in the body is not accepted
    before = hub.budget("credit-underwriting", other)
    status, body = run("call('POST', 'workspaces/credit-underwriting/query', "
                       f"{{'sql': {sql!r}, 'request_id': 'x2', 'member': {other!r}}})")
    assert status == 400 and body["error"]["code"] == "input.invalid", body
    assert hub.budget("credit-underwriting", other) == before
    # forged tokens and tokens of nobody are refused
    for token in ("forged-token-1234", "a" * 32):
        status, body = run(f"call('GET', 'workspaces', token={token!r})")
        assert status in (401, 403) and body["error"]["code"].startswith("auth."), body
    # the kernel cannot reach another user's server with its token
    status, _ = run(f"call('GET', '../../../../user/{other}/api/contents')")
    assert status in (302, 403, 404)


def test_users_token_reaches_only_their_own_server(hub: Hub, dev: str) -> None:
    other = next(u for u in hub.users if u != dev)
    r = requests.get(f"{hub.url}/user/{other}/api/contents",
                     headers={"Authorization": f"token {hub.token(dev)}"},
                     allow_redirects=False, timeout=30)
    assert r.status_code in (302, 403, 404, 424, 503)
    assert r.status_code != 200


def test_templates_are_copied_once_and_never_overwrite_edits(hub: Hub) -> None:
    user = hub.groups["population-livelihood"][0]
    hub.start_server(user)
    home = Path(pwd.getpwnam(user).pw_dir)
    edited = json.loads((home / "getting-started.ipynb").read_text())
    edited["cells"][0]["source"] = ["# my own notes\n"]
    r = hub.api(user, "PUT", f"/user/{user}/api/contents/getting-started.ipynb",
                json={"type": "notebook", "format": "json", "content": edited})
    assert r.status_code == 200, r.text
    r = hub.api(user, "DELETE", f"/user/{user}/api/contents/population-livelihood.ipynb")
    assert r.status_code == 204
    hub.stop_server(user)
    hub.start_server(user)
    kept = json.loads((home / "getting-started.ipynb").read_text())
    assert kept["cells"][0]["source"] == ["# my own notes\n"]
    assert (home / "population-livelihood.ipynb").exists()  # a deleted template comes back
    hub.stop_server(user)


def test_operator_provisions_a_workspace_for_a_new_developer_and_closes_it(hub: Hub) -> None:
    """A new system user cannot log in until an operator puts them in a workspace; then
    they log in, find the walk-through, query; suspension refuses, closing refuses and
    stops their server; every operator action is in the audit log with the operator."""
    import datetime as dt
    import secrets

    from hubkit import create_user, remove_user

    password = secrets.token_urlsafe(12)
    newcomer = create_user("sbxn", password)
    try:
        hub.users[newcomer] = password
        assert hub.login(newcomer, password).login_status == 403  # not a hub user yet
        expires = (dt.date.today() + dt.timedelta(days=7)).isoformat()
        hub.sandbox("workspace", "create", "pilot", "--scenario", "credit-underwriting",
                    "--members", newcomer, "--budget-epsilon", "3", "--expires", expires)
        hub.start_server(newcomer)
        home = Path(pwd.getpwnam(newcomer).pw_dir)
        assert (home / "pilot.ipynb").is_file() and (home / "getting-started.ipynb").is_file()
        k = hub.kernel(newcomer)
        ask = ("from sandbox.client import Sandbox\n"
               "try:\n"
               "    df = Sandbox().sql('SELECT purpose, count(*) AS n FROM loans GROUP BY "
               "purpose', epsilon=0.5)\n"
               "    print('rows', len(df))\n"
               "except Exception as exc:\n"
               "    print('refused', getattr(exc, 'code', type(exc).__name__))\n")
        try:
            assert k.check(ask)["stdout"].startswith("rows "), "member cannot query"
            hub.sandbox("workspace", "suspend", "pilot", "--reason", "e2e")
            assert k.check(ask)["stdout"].strip() == "refused workspace.suspended"
            hub.sandbox("workspace", "resume", "pilot")
            assert k.check(ask)["stdout"].startswith("rows ")
            hub.sandbox("workspace", "close", "pilot")
        finally:
            k.close()
        model = hub.api(newcomer, "GET", f"/hub/api/users/{newcomer}").json()
        assert "" not in model.get("servers", {}), "closing did not stop the server"
        r = hub.api(newcomer, "POST", "/services/sandbox/api/v1/workspaces/pilot/query",
                    json={"sql": "SELECT count(*) FROM loans", "request_id": "after-close"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "workspace.closed"
        assert hub.budget("pilot", newcomer)["epsilon_spent"] > 0
        log = hub.sandbox("audit", "log", "--workspace", "pilot", "--format", "jsonl",
                          operator=False).stdout
        kinds = [json.loads(line)["kind"] for line in log.splitlines()]
        assert kinds[:2] == ["workspace.created", "workspace.hub_synced"]
        for kind in ("workspace.suspended", "workspace.resumed", "workspace.closed",
                     "query.answered"):
            assert kind in kinds, kind
        actors = {json.loads(line)["actor"] for line in log.splitlines()
                  if json.loads(line)["kind"].startswith("workspace.")}
        assert actors == {hub.operator}
        assert hub.sandbox("audit", "verify", operator=False).returncode == 0
    finally:
        remove_user(newcomer)
