"""JupyterHub configuration for a single machine (run the hub as root).

    jupyterhub -f deploy/jupyterhub_config.py

- configurable-http-proxy (npm) in front, on ``SANDBOX_HUB_IP:SANDBOX_HUB_PORT``;
- real password login (PAM: the named system users and their passwords);
- each developer's server runs as their own system user (LocalProcessSpawner), JupyterLab
  is the default UI, notebooks_template/ and the walk-throughs of the user's workspaces
  are copied into the home at server start (never over the user's files);
- idle servers are culled by jupyterhub-idle-culler (a hub-managed service with its role);
- the gate service ``python -m sandbox.service`` runs as its own system user
  (``SANDBOX_SERVICE_USER``), the only process that can read the key store and the vault;
- one hub group per workspace (made by `sandbox workspace create`); the custom scope
  ``custom:sandbox:query`` is granted to every user (the service checks workspace
  membership itself) and put into the single-user servers' tokens.
- egress (``SANDBOX_HUB_EGRESS=on``, set by deploy/demo.sh): a developer's server starts
  only after deploy/egress.sh has put their user under the nftables rules that let them
  reach nothing but the proxy and the gate; servers talk to the hub through the proxy and
  to their kernels over Unix sockets, so they need no other port.

Every setting comes from the environment (see docs/deployment.md for the table), so the
tests run a hub in a temporary directory on loopback with the same file.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import yaml

c = get_config()  # type: ignore[name-defined]  # noqa: F821  (provided by JupyterHub)

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def env_list(name: str, default: str = "") -> list[str]:
    return [x.strip() for x in env(name, default).split(",") if x.strip()]


def parse_groups(spec: str) -> dict[str, list[str]]:
    """``"credit-underwriting=alice,bob;population-livelihood=alice"`` -> mapping."""
    groups: dict[str, list[str]] = {}
    for part in spec.split(";"):
        if not part.strip():
            continue
        name, _, members = part.partition("=")
        groups[name.strip()] = [m.strip() for m in members.split(",") if m.strip()]
    return groups


STATE_DIR = Path(env("SANDBOX_HUB_STATE_DIR", "/var/lib/sandbox-hub"))
HUB_IP = env("SANDBOX_HUB_IP", "127.0.0.1")
HUB_PORT = int(env("SANDBOX_HUB_PORT", "8000"))
HUB_API_PORT = int(env("SANDBOX_HUB_API_PORT", "8081"))
PROXY_API_PORT = int(env("SANDBOX_HUB_PROXY_API_PORT", "8001"))
SERVICE_PORT = int(env("SANDBOX_SERVICE_PORT", "10101"))
SERVICE_USER = env("SANDBOX_SERVICE_USER", "sandbox")
SERVICE_CONFIG = Path(env("SANDBOX_SERVICE_CONFIG", "/var/lib/sandbox-demo/service.yaml"))
TEMPLATES = Path(env("SANDBOX_HUB_TEMPLATES", str(REPO / "notebooks_template")))
IDLE_TIMEOUT = int(env("SANDBOX_HUB_IDLE_TIMEOUT", "3600"))
CULL_EVERY = int(env("SANDBOX_HUB_CULL_EVERY", "300"))
ENABLE_SERVICE = env("SANDBOX_HUB_SERVICE", "auto")  # auto | on | off
EGRESS = env("SANDBOX_HUB_EGRESS", "off")  # on: developers reach only proxy and gate
if EGRESS not in ("on", "off"):
    raise SystemExit(f"SANDBOX_HUB_EGRESS={EGRESS} must be on or off (docs/deployment.md)")

STATE_DIR.mkdir(parents=True, exist_ok=True)
os.chmod(STATE_DIR, 0o700)  # hub database, cookie secret: root only

# --- who may log in --------------------------------------------------------------------
# Developers become hub users when an operator adds them to a workspace (`sandbox workspace
# create`/`add-member` create the users and one group per workspace through the REST API);
# auditors and operators are named here. Login is by PAM, so each needs a system account.
DEVELOPERS = env_list("SANDBOX_HUB_DEVELOPERS")
AUDITORS = env_list("SANDBOX_HUB_AUDITORS")
OPERATORS = env_list("SANDBOX_HUB_OPERATORS")
GROUPS = parse_groups(env("SANDBOX_HUB_GROUPS", ""))


def service_home() -> Path:
    """The service's home (where provisioned templates are), from its configuration."""
    try:
        home = (yaml.safe_load(SERVICE_CONFIG.read_text(encoding="utf-8")) or {}).get("home")
    except (OSError, yaml.YAMLError, AttributeError):
        home = None
    if isinstance(home, str) and home:
        return (SERVICE_CONFIG.parent / home).resolve()
    return Path(env("SANDBOX_HOME", str(SERVICE_CONFIG.parent / "home")))


SANDBOX_HOME = service_home()

c.JupyterHub.authenticator_class = "pam"
c.PAMAuthenticator.open_sessions = False  # no systemd-logind session for a web login
c.PAMAuthenticator.check_account = True
c.Authenticator.allowed_users = set(DEVELOPERS + AUDITORS + OPERATORS)
c.Authenticator.admin_users = set(OPERATORS)
c.Authenticator.allow_existing_users = True  # users the operator's workspace commands made
if GROUPS:
    c.JupyterHub.load_groups = {name: {"users": members} for name, members in GROUPS.items()}

# --- network: hub, proxy, state ----------------------------------------------------------
c.JupyterHub.bind_url = f"http://{HUB_IP}:{HUB_PORT}"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = HUB_API_PORT
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{PROXY_API_PORT}"
c.ConfigurableHTTPProxy.should_start = True
c.ConfigurableHTTPProxy.command = [shutil.which("configurable-http-proxy")
                                   or "configurable-http-proxy"]
c.ConfigurableHTTPProxy.pid_file = str(STATE_DIR / "jupyterhub-proxy.pid")
c.JupyterHub.db_url = f"sqlite:///{STATE_DIR / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(STATE_DIR / "jupyterhub_cookie_secret")
c.JupyterHub.cleanup_servers = True
c.JupyterHub.cleanup_proxy = True

# --- single-user servers ----------------------------------------------------------------
c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = [str(BIN / "jupyterhub-singleuser")]
c.Spawner.default_url = "/lab"
c.Spawner.notebook_dir = "~"
c.Spawner.ip = "127.0.0.1"
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 60
# Servers reach the hub API through the proxy's /hub/ route and their kernels over Unix
# sockets (not loopback TCP ports), so the egress rules need to allow only the proxy and
# the gate (deploy/egress.sh).
c.Spawner.hub_connect_url = f"http://{HUB_IP}:{HUB_PORT}"
c.Spawner.args = ["--KernelManager.transport=ipc"]
SERVICE_URL = f"http://{HUB_IP}:{HUB_PORT}/services/sandbox/"
c.Spawner.environment = {
    # the notebook client (sandbox.client) calls the gate through the hub's proxy
    "SANDBOX_SERVICE_URL": env("SANDBOX_CLIENT_SERVICE_URL", SERVICE_URL),
    "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin",
}
# The kernel's $JUPYTERHUB_API_TOKEN: the default server scopes plus the service.
c.Spawner.server_token_scopes = [
    "users:activity!user",
    "access:servers!server",
    "custom:sandbox:query",
    "access:services!service=sandbox",
]


def _copy_new(src: Path, dest: Path, pw: pwd.struct_passwd) -> bool:
    """Copy one file as root without following a link planted by the user, never
    overwriting a file that exists (the user's copy, maybe edited, wins)."""
    if os.path.lexists(dest):
        return False
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as out:
        out.write(src.read_bytes())
        os.fchown(out.fileno(), pw.pw_uid, pw.pw_gid)
    return True


def copy_templates(spawner) -> None:  # type: ignore[no-untyped-def]
    """Copy notebooks_template/* and, for each of the user's workspaces, the walk-through
    the operator provisioned ($SANDBOX_HOME/templates/<workspace>/) into the user's home."""
    try:
        pw = pwd.getpwnam(spawner.user.name)
    except KeyError:
        spawner.log.error("no system user %s", spawner.user.name)
        raise
    home = Path(pw.pw_dir)
    if not home.exists():
        home.mkdir(mode=0o700, parents=True)
        os.chown(home, pw.pw_uid, pw.pw_gid)
    sources = [TEMPLATES] + [SANDBOX_HOME / "templates" / g.name
                             for g in spawner.user.groups]
    for folder in sources:
        if not folder.is_dir():
            continue
        for src in sorted(folder.iterdir()):
            if src.is_file() and not src.name.startswith(".") and \
                    _copy_new(src, home / src.name, pw):
                spawner.log.info("copied template %s to %s", src.name, home)


def enforce_egress(spawner) -> None:  # type: ignore[no-untyped-def]
    """Put a developer under the egress rules before their server starts; refuse the
    server when that fails (fail closed). Auditors and operators are staff, not limited."""
    name = spawner.user.name
    if EGRESS != "on" or name in AUDITORS or name in OPERATORS:
        return
    out = subprocess.run(["bash", str(REPO / "deploy" / "egress.sh"), "add-developer", name],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        spawner.log.error("egress rules for %s: %s", name, (out.stderr or out.stdout).strip())
        raise RuntimeError(f"the server of {name} is not started: its egress rules could "
                           "not be applied (see the hub's log)")
    spawner.log.info("%s", out.stdout.strip())


def pre_spawn(spawner) -> None:  # type: ignore[no-untyped-def]
    enforce_egress(spawner)
    copy_templates(spawner)


c.Spawner.pre_spawn_hook = pre_spawn

# --- scopes and roles -------------------------------------------------------------------
c.JupyterHub.custom_scopes = {
    "custom:sandbox:query": {
        "description": "Ask differentially private questions in one's sandbox workspaces",
    },
    "custom:sandbox:review": {
        "description": "Review export requests and read the sandbox audit log",
    },
    "custom:sandbox:admin": {
        "description": "Administer sandbox workspaces, policies and budgets",
    },
}
c.JupyterHub.load_roles = [
    {
        # Every hub user may call the service; what they may query is decided by the
        # service from workspace records (membership, state, expiry), not by hub roles.
        "name": "user",
        "scopes": ["self", "custom:sandbox:query", "access:services!service=sandbox"],
    },
    {
        "name": "sandbox-auditor",
        "description": "Review exports and read the audit log",
        "scopes": ["self", "custom:sandbox:review", "access:services!service=sandbox"],
        "users": AUDITORS,
    },
    {
        "name": "sandbox-operator",
        "description": "Administer the sandbox",
        # the hub changes `sandbox workspace ...` makes with the operator's own token
        "scopes": ["self", "custom:sandbox:admin", "custom:sandbox:review",
                   "access:services!service=sandbox", "admin:users", "admin:groups",
                   "admin:servers"],
        "users": OPERATORS,
    },
    {
        "name": "idle-culler",
        "description": "Stop idle single-user servers",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["idle-culler"],
    },
]

# --- hub-managed services ---------------------------------------------------------------
c.JupyterHub.services = [
    {
        "name": "idle-culler",
        "command": [sys.executable, "-m", "jupyterhub_idle_culler",
                    f"--timeout={IDLE_TIMEOUT}", f"--cull-every={CULL_EVERY}"],
    },
]

service_available = importlib.util.find_spec("sandbox.service") is not None
if ENABLE_SERVICE == "on" or (ENABLE_SERVICE == "auto" and service_available):
    service_env = {
        k: os.environ[k]
        for k in ("SANDBOX_HOME", "SANDBOX_KEYSTORE", "SANDBOX_MASTER_KEY_FILE", "LANG")
        if os.environ.get(k)
    }
    service_env["PATH"] = f"{BIN}:/usr/local/bin:/usr/bin:/bin"
    service: dict[str, object] = {
        "name": "sandbox",
        "url": f"http://127.0.0.1:{SERVICE_PORT}",
        "command": [sys.executable, "-m", "sandbox.service", "--config", str(SERVICE_CONFIG)],
        "environment": service_env,
        "cwd": str(SERVICE_CONFIG.parent),
        "display": False,
        # The auditor console (docs/console.md) signs users in with the hub's OAuth. Its
        # tokens may carry the review scope, which the hub grants only to users who hold it
        # (auditors); a developer's console token lacks it and is refused by the service.
        "oauth_client_allowed_scopes": ["custom:sandbox:review"],
        "oauth_no_confirm": True,  # part of the platform: no "authorize this service?" page
    }
    if SERVICE_USER:
        service["user"] = SERVICE_USER
    c.JupyterHub.services.append(service)

    # The service's state must be readable only by its user.
    if SERVICE_USER and os.geteuid() == 0:
        for key in ("SANDBOX_HOME", "SANDBOX_KEYSTORE"):
            p = Path(service_env.get(key, "/nonexistent"))
            if p.exists():
                st = p.stat()
                if stat.S_IMODE(st.st_mode) & 0o077 or \
                        st.st_uid != pwd.getpwnam(SERVICE_USER).pw_uid:
                    raise SystemExit(f"{key}={p} must be owned by {SERVICE_USER} with mode "
                                     "0700 (run deploy/demo.sh or see docs/deployment.md)")
