"""Egress on the single-machine hub (deploy/egress.sh), enforced for real with nftables.

A network namespace joined by a veth pair stands in for "the outside": a TCP listener in it
answers anyone who reaches it. With the rules applied, developers' system users (members of
the egress group, as a supplementary or primary group, or added one by one) cannot reach it,
nor any port on this machine but the proxy's and the gate's; the gate service's user and
root still can; after `remove` the developer can again. The last test does the same from a
developer's kernel on a real hub (tests/hubkit.py) with SANDBOX_HUB_EGRESS=on, where the
hub itself adds the developer before starting their server.

Every name (table, group, users, namespace, links) is unique to the run and everything is
removed afterwards, even when a test fails, so a running demo is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hubkit import ROOT, Hub, create_user, free_port, remove_user, running_hub

EGRESS_SH = ROOT / "deploy" / "egress.sh"
RUN = secrets.token_hex(3)
TABLE = f"sbxeg_{RUN}"
GROUP = f"sbxeg{RUN}"

# Probes each target from whichever user runs it; prints {"host:port": "open" | errno name}.
PROBE = r"""
import errno, json, socket, sys
out = {}
for proto, host, port in json.loads(sys.argv[1]):
    key = f"{proto}:{host}:{port}"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        if proto == "tcp":
            socket.create_connection((host, port), timeout=3).close()
        else:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.sendto(b"x", (host, port))
        out[key] = "open"
    except OSError as exc:
        out[key] = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
print(json.dumps(out))
"""


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def egress(*args: str, ports: str = "", check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SANDBOX_EGRESS_TABLE": TABLE, "SANDBOX_EGRESS_GROUP": GROUP}
    if ports:
        env["SANDBOX_EGRESS_PORTS"] = ports
    out = subprocess.run(["bash", str(EGRESS_SH), *args], env=env, capture_output=True,
                         text=True, timeout=60)
    if check:
        assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out


def probe(user: str | None, targets: list[tuple[str, str, int]]) -> dict[str, str]:
    """Connect to each target as ``user`` (None: root, this process's user)."""
    cmd = ["/usr/bin/python3", "-c", PROBE, json.dumps(targets)]
    if user:
        cmd = ["runuser", "-u", user, "--", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def blocked(result: str) -> bool:
    """What the rules' reject (ICMP administratively prohibited) looks like to the sender:
    no route to the host (TCP over IPv4), permission denied (IPv6), not permitted (UDP)."""
    return result in {"EHOSTUNREACH", "EACCES", "EPERM"}


@pytest.fixture(scope="module", autouse=True)
def _root_and_tools() -> Iterator[None]:
    assert os.geteuid() == 0, "the egress tests change the firewall: run them as root"
    for tool in ("nft", "ip", "runuser"):
        assert shutil.which(tool), f"{tool} is missing: deploy/test.sh installs it"
    yield
    # whatever a failed test left: the table and the group (users are removed by fixtures)
    sh("nft", "delete", "table", "inet", TABLE, check=False)
    sh("groupdel", GROUP, check=False)


@dataclass
class Outside:
    host: str
    port: int


@pytest.fixture(scope="module")
def outside() -> Iterator[Outside]:
    """A host in its own network namespace, reached over a veth pair (198.18.0.0/15 is the
    range set aside for network tests), with a TCP listener that says hello."""
    ns, here, there = f"sbxeg{RUN}", f"sbxeg{RUN}a", f"sbxeg{RUN}b"
    octet = int(RUN[:2], 16) % 250
    net = f"198.18.{octet}"
    port = 4000 + int(RUN[2:6], 16) % 20000
    listener = None
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", here, "type", "veth", "peer", "name", there)
        sh("ip", "link", "set", there, "netns", ns)
        sh("ip", "addr", "add", f"{net}.1/30", "dev", here)
        sh("ip", "link", "set", here, "up")
        sh("ip", "-n", ns, "addr", "add", f"{net}.2/30", "dev", there)
        sh("ip", "-n", ns, "link", "set", there, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        server = ("import socket, sys\n"
                  "s = socket.create_server(('0.0.0.0', int(sys.argv[1])))\n"
                  "while True:\n"
                  "    c, _ = s.accept(); c.sendall(b'outside\\n'); c.close()\n")
        listener = subprocess.Popen(["ip", "netns", "exec", ns, "/usr/bin/python3", "-c",
                                     server, str(port)])
        deadline = time.time() + 15
        while True:
            try:
                with socket.create_connection((f"{net}.2", port), timeout=1) as s:
                    assert s.recv(16) == b"outside\n"
                break
            except OSError:
                assert listener.poll() is None, "the outside listener died"
                assert time.time() < deadline, "the outside host did not come up"
                time.sleep(0.1)
        yield Outside(f"{net}.2", port)
    finally:
        if listener is not None:
            listener.kill()
            listener.wait()
        sh("ip", "netns", "del", ns, check=False)   # takes its end of the veth pair along
        sh("ip", "link", "del", here, check=False)


@dataclass
class Local:
    proxy: int
    gate: int
    other: int
    v6: bool

    @property
    def ports(self) -> str:
        return f"{self.proxy},{self.gate}"


@pytest.fixture(scope="module")
def local() -> Iterator[Local]:
    """Listeners on loopback standing in for the proxy, the gate and any other port (the hub
    API, the proxy API, another user's server); owned by root, accepting quietly."""
    socks = []
    try:
        for _ in range(3):
            s = socket.create_server(("127.0.0.1", 0), backlog=256)
            socks.append(s)
        v6 = True
        try:
            s6 = socket.create_server(("::1", socks[2].getsockname()[1]),
                                      family=socket.AF_INET6, backlog=256)
            socks.append(s6)
        except OSError:
            v6 = False
        yield Local(*(s.getsockname()[1] for s in socks[:3]), v6=v6)
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def users() -> Iterator[dict[str, str]]:
    """A developer in the group (supplementary, as deploy/demo.sh makes them), one whose
    primary group it is, one added later by name, and the gate service's user."""
    made: list[str] = []
    try:
        if sh("getent", "group", GROUP, check=False).returncode != 0:
            sh("groupadd", "--system", GROUP)
        dev = create_user("sbxd")
        made.append(dev)
        sh("usermod", "-aG", GROUP, dev)
        primary = create_user("sbxp")
        made.append(primary)
        sh("usermod", "-g", GROUP, primary)
        later = create_user("sbxl")
        made.append(later)
        service = create_user("sbxs", system=True)
        made.append(service)
        yield {"dev": dev, "primary": primary, "later": later, "service": service}
    finally:
        for name in made:
            remove_user(name)
            sh("groupdel", name, check=False)  # a private group userdel left behind


@pytest.fixture
def rules(local: Local) -> Iterator[None]:
    egress("apply", ports=local.ports)
    try:
        yield
    finally:
        egress("remove")


def targets(outside: Outside, local: Local) -> list[tuple[str, str, int]]:
    out = [("tcp", outside.host, outside.port), ("udp", outside.host, 53),
           ("tcp", "127.0.0.1", local.proxy), ("tcp", "127.0.0.1", local.gate),
           ("tcp", "127.0.0.1", local.other)]
    if local.v6:
        out.append(("tcp", "::1", local.other))
    return out


def test_a_developer_reaches_only_the_proxy_and_the_gate(
        rules: None, outside: Outside, local: Local, users: dict[str, str]) -> None:
    got = probe(users["dev"], targets(outside, local))
    assert blocked(got[f"tcp:{outside.host}:{outside.port}"]), got
    assert blocked(got[f"udp:{outside.host}:53"]), got        # no DNS, no UDP at all
    assert blocked(got[f"tcp:127.0.0.1:{local.other}"]), got  # e.g. the hub API
    if local.v6:
        assert blocked(got[f"tcp:::1:{local.other}"]), got
    assert got[f"tcp:127.0.0.1:{local.proxy}"] == "open", got
    assert got[f"tcp:127.0.0.1:{local.gate}"] == "open", got


def test_primary_group_members_and_developers_added_later_are_held_too(
        rules: None, outside: Outside, local: Local, users: dict[str, str]) -> None:
    egress("add-developer", users["later"])
    for who in ("primary", "later"):
        got = probe(users[who], targets(outside, local))
        assert blocked(got[f"tcp:{outside.host}:{outside.port}"]), (who, got)
        assert blocked(got[f"tcp:127.0.0.1:{local.other}"]), (who, got)
        assert got[f"tcp:127.0.0.1:{local.proxy}"] == "open", (who, got)
    # added to the group, so a later `apply` (a restart) keeps them
    egress("apply", ports=local.ports)
    got = probe(users["later"], targets(outside, local))
    assert blocked(got[f"tcp:{outside.host}:{outside.port}"]), got
    assert str(int(sh("id", "-u", users["later"]).stdout)) in egress("status").stdout


def test_the_gate_service_user_and_root_still_reach_the_outside(
        rules: None, outside: Outside, local: Local, users: dict[str, str]) -> None:
    for who in (users["service"], None):
        got = probe(who, targets(outside, local))
        assert got[f"tcp:{outside.host}:{outside.port}"] == "open", (who, got)
        assert got[f"tcp:127.0.0.1:{local.other}"] == "open", (who, got)


def test_remove_gives_the_developer_the_outside_back(
        outside: Outside, local: Local, users: dict[str, str]) -> None:
    target = [("tcp", outside.host, outside.port)]
    egress("apply", ports=local.ports)
    try:
        assert "applied" in egress("status").stdout
        assert blocked(probe(users["dev"], target)[f"tcp:{outside.host}:{outside.port}"])
    finally:
        egress("remove")
    assert probe(users["dev"], target)[f"tcp:{outside.host}:{outside.port}"] == "open"
    status = egress("status", check=False)
    assert status.returncode == 3 and "not applied" in status.stdout
    assert "nothing to remove" in egress("remove").stdout
    assert sh("nft", "list", "table", "inet", TABLE, check=False).returncode != 0


def test_adding_a_developer_fails_closed_without_the_rules(users: dict[str, str]) -> None:
    out = egress("add-developer", users["later"], check=False)
    assert out.returncode != 0
    assert "not applied" in out.stderr and "egress.sh apply" in out.stderr


@pytest.mark.parametrize("setting, value, message", [
    ("SANDBOX_EGRESS_PORTS", "8000;true", "invalid port"),
    ("SANDBOX_EGRESS_PORTS", "70000", "invalid port"),
    ("SANDBOX_EGRESS_TABLE", "x y", "not a table name"),
    ("SANDBOX_EGRESS_GROUP", "Devs!", "not a group name"),
])
def test_bad_settings_are_refused(setting: str, value: str, message: str) -> None:
    env = {**os.environ, "SANDBOX_EGRESS_TABLE": TABLE, "SANDBOX_EGRESS_GROUP": GROUP,
           setting: value}
    out = subprocess.run(["bash", str(EGRESS_SH), "apply"], env=env, capture_output=True,
                         text=True)
    assert out.returncode == 1 and message in out.stderr and "hint:" in out.stderr
    assert sh("nft", "list", "table", "inet", TABLE, check=False).returncode != 0


# -- a developer's kernel on a real hub ----------------------------------------------------
KERNEL_PROBE = "import json as _j, sys as _s\n_s.argv = ['probe', %r]\n" + PROBE


@pytest.fixture(scope="module")
def egress_hub(_root_and_tools: None) -> Iterator[tuple[Hub, int, int]]:
    gate, api = free_port(), free_port()
    extra = {"SANDBOX_HUB_EGRESS": "on", "SANDBOX_EGRESS_TABLE": TABLE,
             "SANDBOX_EGRESS_GROUP": GROUP, "SANDBOX_SERVICE_PORT": str(gate),
             "SANDBOX_HUB_API_PORT": str(api)}
    with running_hub(extra) as hub:
        try:
            yield hub, gate, api
        finally:
            with contextlib.suppress(Exception):
                egress("remove")


@pytest.mark.slow
def test_a_developer_kernel_on_the_hub_reaches_only_the_proxy_and_the_gate(
        egress_hub: tuple[Hub, int, int], outside: Outside) -> None:
    hub, gate, api = egress_hub
    proxy = int(hub.url.rsplit(":", 1)[1])
    egress("apply", ports=f"{proxy},{gate}")
    dev, other_dev = hub.groups["credit-underwriting"][0], hub.groups["population-livelihood"][0]
    # the hub puts the developer under the rules before it starts the server
    hub.start_server(dev)
    uid = str(int(sh("id", "-u", dev).stdout))
    assert uid in egress("status").stdout and GROUP in sh("id", "-nG", dev).stdout
    kernel = hub.kernel(dev)  # the server works: kernels over Unix sockets, hub via the proxy
    try:
        wanted = [("tcp", outside.host, outside.port), ("udp", outside.host, 53),
                  ("tcp", "127.0.0.1", api), ("tcp", "127.0.0.1", proxy),
                  ("tcp", "127.0.0.1", gate)]
        out = kernel.check(KERNEL_PROBE % json.dumps(wanted))
        got = json.loads(out["stdout"].strip().splitlines()[-1])
        assert blocked(got[f"tcp:{outside.host}:{outside.port}"]), got
        assert blocked(got[f"udp:{outside.host}:53"]), got
        assert blocked(got[f"tcp:127.0.0.1:{api}"]), got  # the hub API only via the proxy
        assert got[f"tcp:127.0.0.1:{proxy}"] == "open", got
        assert got[f"tcp:127.0.0.1:{gate}"] == "open", got
        # the notebook client still reaches the gate through the proxy
        out = kernel.check("from sandbox.client import Sandbox\n"
                           "print(Sandbox(workspace='credit-underwriting').tables().to_string())")
        assert "persons" in out["stdout"], out
    finally:
        kernel.close()
    # the gate service's user (and root) are not held
    for who in (hub.service_user, None):
        got = probe(who, [("tcp", outside.host, outside.port)])
        assert got[f"tcp:{outside.host}:{outside.port}"] == "open", (who, got)
    # without the rules the hub refuses to start a developer's server (fail closed)
    egress("remove")
    r = hub.api(other_dev, "POST", f"/hub/api/users/{other_dev}/server")
    assert r.status_code >= 400 or not _eventually_ready(hub, other_dev), r.text
    assert "egress rules" in hub.log_tail(200)


def _eventually_ready(hub: Hub, user: str, wait: float = 15) -> bool:
    deadline = time.time() + wait
    while time.time() < deadline:
        server = hub.api(user, "GET", f"/hub/api/users/{user}").json().get("servers", {})
        if server.get("", {}).get("ready"):
            return True
        if "" not in server:
            return False
        time.sleep(0.5)
    return False

