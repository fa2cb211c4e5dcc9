"""A real single-machine hub for the end-to-end tests (tests/test_hub_e2e.py, test_browser.py).

``running_hub()`` builds everything deploy/jupyterhub_config.py expects, in a temporary
directory on loopback, as root: the hub environment (deploy/install-hub.sh), real system
users with passwords (unique names, removed afterwards), a service user owning the gate's
state (mode 0700), tiny encrypted demo data, a service configuration,
then the hub with configurable-http-proxy, the idle culler and the gate service; finally an
operator reviews the example scenarios and provisions a workspace for each with the CLI.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from gatekit import accept_core

ROOT = Path(__file__).resolve().parent.parent
HUB_VENV = Path(os.environ.get("SANDBOX_HUB_VENV", "/opt/sandbox-hub/venv"))
WORKSPACES = {"credit-underwriting": "credit_underwriting",
              "population-livelihood": "population_livelihood"}
_installed = False


def ensure_hub_env() -> None:
    """Install/refresh the hub venv with this checkout's code (once per test session)."""
    global _installed
    if not _installed:
        subprocess.run(["bash", str(ROOT / "deploy" / "install-hub.sh")], check=True,
                       cwd=ROOT, stdout=subprocess.DEVNULL)
        _installed = True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create_user(prefix: str, password: str | None = None, system: bool = False) -> str:
    name = f"{prefix}{secrets.token_hex(3)}"
    if system:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", name], check=True)
    else:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
        os.chmod(pwd.getpwnam(name).pw_dir, 0o700)
    if password:
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True)
    return name


def remove_user(name: str) -> None:
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    for _ in range(20):  # processes the hub started for this user (by pid)
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()
                and _uid_of(int(p)) == uid]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    subprocess.run(["userdel", "--remove", name], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _uid_of(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


@dataclass
class Hub:
    base: Path
    url: str
    service_dir: Path
    service_user: str
    users: dict[str, str]  # name -> password
    groups: dict[str, list[str]]
    proc: subprocess.Popen[bytes]
    log: Path
    operator: str = ""
    auditor: str = ""
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.service_dir / "home"

    @property
    def keystore(self) -> Path:
        return self.service_dir / "keystore"

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    # -- hub web and API ----------------------------------------------------------------
    def login(self, user: str, password: str) -> requests.Session:
        s = requests.Session()
        page = s.get(f"{self.url}/hub/login")
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
        r = s.post(f"{self.url}/hub/login", allow_redirects=False,
                   data={"username": user, "password": password,
                         "_xsrf": xsrf.group(1) if xsrf else ""})
        s.login_status = r.status_code  # type: ignore[attr-defined]
        return s

    def token(self, user: str) -> str:
        """An API token of ``user``, made through a password login (no admin involved)."""
        if user not in self.tokens:
            s = self.login(user, self.users[user])
            assert s.login_status == 302, self.log_tail()  # type: ignore[attr-defined]
            r = s.post(f"{self.url}/hub/api/users/{user}/tokens",
                       json={"note": "e2e test", "expires_in": 3600},
                       headers={"X-XSRFToken": s.cookies.get("_xsrf", path="/hub/") or ""})
            assert r.status_code == 201, r.text
            self.tokens[user] = r.json()["token"]
        return self.tokens[user]

    def api(self, user: str, method: str, path: str, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"token {self.token(user)}", **kw.pop("headers", {})}
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=60, **kw)

    def start_server(self, user: str, timeout: float = 90) -> None:
        r = self.api(user, "POST", f"/hub/api/users/{user}/server")
        assert r.status_code in (201, 202, 400), r.text  # 400: already running
        deadline = time.time() + timeout
        while time.time() < deadline:
            model = self.api(user, "GET", f"/hub/api/users/{user}").json()
            if model.get("servers", {}).get("", {}).get("ready"):
                return
            time.sleep(0.5)
        raise AssertionError(f"server of {user} did not start\n{self.log_tail()}")

    def stop_server(self, user: str, timeout: float = 60) -> None:
        self.api(user, "DELETE", f"/hub/api/users/{user}/server")
        deadline = time.time() + timeout
        while time.time() < deadline:
            model = self.api(user, "GET", f"/hub/api/users/{user}").json()
            if "" not in model.get("servers", {}):
                return
            time.sleep(0.5)
        raise AssertionError(f"server of {user} did not stop")

    def kernel(self, user: str) -> Kernel:
        return Kernel(self, user)

    def sandbox(self, *args: str, check: bool = True,
                operator: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the `sandbox` CLI as the operator does: on the host, as the service's user,
        with the operator's hub token (from a password login)."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SANDBOX_", "JUPYTERHUB_"))}
        env.update(SANDBOX_HOME=str(self.home), SANDBOX_KEYSTORE=str(self.keystore),
                   JUPYTERHUB_API_URL=f"{self.url}/hub/api")
        if operator:
            env["JUPYTERHUB_API_TOKEN"] = self.token(self.operator)
        out = subprocess.run([str(HUB_VENV / "bin" / "sandbox"), *args], env=env,
                             user=self.service_user, cwd="/",  # no root-owned files in state
                             capture_output=True, text=True)
        if check:
            assert out.returncode == 0, (args, out.stdout, out.stderr)
        return out

    def budget(self, workspace: str, member: str) -> dict[str, Any]:
        """The member's balance as the operator's CLI reports it (as root, on the state)."""
        out = self.sandbox("budget", "show", "--workspace", workspace, "--member", member,
                           "--format", "json", operator=False).stdout
        rows = json.loads(out)
        rows = rows if isinstance(rows, list) else [rows]
        assert len(rows) <= 1, rows
        return rows[0] if rows else {}


class Kernel:
    """A kernel on a user's server, driven through the hub's proxy (REST + websocket)."""

    def __init__(self, hub: Hub, user: str) -> None:
        import websocket

        self.hub, self.user = hub, user
        r = hub.api(user, "POST", f"/user/{user}/api/kernels", json={"name": "python3"})
        assert r.status_code == 201, r.text
        self.id = r.json()["id"]
        self.session = uuid.uuid4().hex
        ws_url = (hub.url.replace("http://", "ws://")
                  + f"/user/{user}/api/kernels/{self.id}/channels")
        self.ws = websocket.create_connection(
            ws_url, header=[f"Authorization: token {hub.token(user)}"], timeout=180)

    def execute(self, code: str, timeout: float = 180) -> dict[str, Any]:
        """Run code; returns {"stdout", "results" (text/plain and text/html), "error"}."""
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": self.user, "session": self.session,
                       "msg_type": "execute_request", "version": "5.3",
                       "date": dt.datetime.now(dt.UTC).isoformat()},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
        }))
        out: dict[str, Any] = {"stdout": "", "stderr": "", "results": [], "error": None}
        deadline = time.time() + timeout
        while time.time() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out[content["name"]] += content["text"]
            elif kind in ("execute_result", "display_data"):
                out["results"].append(content["data"])
            elif kind == "error":
                out["error"] = f"{content['ename']}: {content['evalue']}\n" + "\n".join(
                    content.get("traceback", []))
            elif kind == "status" and content["execution_state"] == "idle":
                return out
        raise AssertionError(f"timeout running {code!r}")

    def check(self, code: str) -> dict[str, Any]:
        out = self.execute(code)
        assert out["error"] is None, out["error"]
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        with contextlib.suppress(Exception):
            self.hub.api(self.user, "DELETE", f"/user/{self.user}/api/kernels/{self.id}")


def _write_service_state(service_dir: Path, service_user: str) -> Path:
    """Tiny encrypted demo data, policies and service.yaml, owned by the service user, 0700."""
    service_dir.mkdir(mode=0o700)
    env = {**os.environ, "SANDBOX_HOME": str(service_dir / "home"),
           "SANDBOX_KEYSTORE": str(service_dir / "keystore")}
    subprocess.run([str(HUB_VENV / "bin" / "sandbox"), "demo", "--size", "tiny"], env=env,
                   check=True, capture_output=True)
    (service_dir / "policies").mkdir()
    for policy in WORKSPACES.values():
        shutil.copy(ROOT / "policies" / f"{policy}.yaml", service_dir / "policies")
    config = service_dir / "service.yaml"
    config.write_text("home: home\nkeystore: keystore\n"
                      "limits: {memory_limit: 1GB, query_timeout_s: 60}\n")
    pw = pwd.getpwnam(service_user)
    for dirpath, _dirs, files in os.walk(service_dir):
        os.chown(dirpath, pw.pw_uid, pw.pw_gid)
        for f in files:
            os.chown(os.path.join(dirpath, f), pw.pw_uid, pw.pw_gid)
    os.chmod(service_dir, 0o700)
    return config


def provision(hub: Hub) -> None:
    """The operator reviews both example scenarios and makes one workspace for each."""
    for ws, policy in WORKSPACES.items():
        hub.sandbox("scenario", "review", str(hub.service_dir / "policies" / f"{policy}.yaml"),
                    "--reviewer", "e2e review board", "--reference", f"E2E-{policy}",
                    *accept_core(policy))
        hub.sandbox("workspace", "create", ws, "--scenario", ws, "--members",
                    ",".join(hub.groups[ws]), "--budget-epsilon", "10",
                    "--expires", (dt.date.today() + dt.timedelta(days=30)).isoformat())


@contextlib.contextmanager
def running_hub(extra_env: dict[str, str] | None = None) -> Iterator[Hub]:
    """``extra_env`` adds to or overrides the hub's settings (e.g. SANDBOX_HUB_EGRESS)."""
    assert os.geteuid() == 0, "the hub tests create system users: run them as root"
    ensure_hub_env()
    base = Path(tempfile.mkdtemp(prefix="sbx-hub-", dir="/tmp"))
    os.chmod(base, 0o711)
    created: list[str] = []
    proc = None
    try:
        users = {}
        for prefix in ("sbxa", "sbxb", "sbxo", "sbxr"):
            password = secrets.token_urlsafe(12)
            name = create_user(prefix, password)
            created.append(name)
            users[name] = password
        service_user = create_user("sbxs", system=True)
        created.append(service_user)
        dev_a, dev_b, operator, auditor = list(users)
        groups = {"credit-underwriting": [dev_a], "population-livelihood": [dev_b]}
        service_dir = base / "service"
        config = _write_service_state(service_dir, service_user)
        hub_dir = base / "hub"
        hub_dir.mkdir(mode=0o700)
        port = free_port()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SANDBOX_", "JUPYTERHUB_", "JPY_"))}
        env.update({
            "SANDBOX_HUB_STATE_DIR": str(hub_dir),
            "SANDBOX_HUB_PORT": str(port),
            "SANDBOX_HUB_API_PORT": str(free_port()),
            "SANDBOX_HUB_PROXY_API_PORT": str(free_port()),
            "SANDBOX_SERVICE_PORT": str(free_port()),
            "SANDBOX_SERVICE_USER": service_user,
            "SANDBOX_SERVICE_CONFIG": str(config),
            "SANDBOX_HUB_OPERATORS": operator,
            "SANDBOX_HUB_AUDITORS": auditor,
            "SANDBOX_HUB_SERVICE": "on",
        })
        env.update(extra_env or {})
        log = base / "hub.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                [str(HUB_VENV / "bin" / "jupyterhub"), "-f",
                 str(ROOT / "deploy" / "jupyterhub_config.py")],
                cwd=hub_dir, env=env, stdout=fh, stderr=subprocess.STDOUT,
                start_new_session=True)
        hub = Hub(base, f"http://127.0.0.1:{port}", service_dir, service_user, users, groups,
                  proc, log, operator, auditor)
        deadline = time.time() + 90
        while True:
            assert proc.poll() is None, f"hub exited\n{hub.log_tail()}"
            assert time.time() < deadline, f"hub did not come up\n{hub.log_tail()}"
            with contextlib.suppress(requests.RequestException):
                health = requests.get(f"{hub.url}/services/sandbox/api/v1/health", timeout=5)
                if requests.get(f"{hub.url}/hub/api/", timeout=5).ok and health.ok:
                    break
            time.sleep(0.5)
        provision(hub)
        yield hub
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for name in created:
            remove_user(name)
        shutil.rmtree(base, ignore_errors=True)
