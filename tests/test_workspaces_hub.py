"""The operator's CLI against a real JupyterHub and the real gate service.

The hub (its REST API, users, groups, token scopes) is the one test_service.py starts;
`sandbox scenario ...` and `sandbox workspace ...` run as real commands with the operator's
hub token, and the service answers (or refuses) from the records they write.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import make_vault
from test_service import (  # noqa: F401  (fixtures)
    POLICY,
    SIMPLE,
    Hub,
    Svc,
    assert_clean,
    free_port,
    hub,
    rid,
    start_service,
    stop,
    write_config,
)

from gatekit import accept_core
from sandbox.settings import Paths

SANDBOX = Path(sys.executable).parent / "sandbox"  # the command installed beside pytest
OPERATOR_SCOPES = ["custom:sandbox:admin", "admin:users", "admin:groups", "admin:servers"]
EXPIRES = "2099-12-31"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Paths:
    base = tmp_path_factory.mktemp("ops")
    vault = make_vault(base, demo_dir)
    vault.catalog.close()
    paths = vault.paths
    shutil.copy(POLICY, base / "credit.yaml")
    return paths


@pytest.fixture(scope="module")
def oscar(hub: Hub) -> str:  # noqa: F811
    return hub.token("oscar", scopes=OPERATOR_SCOPES)


class Cli:
    def __init__(self, hub: Hub, paths: Paths, token: str | None) -> None:  # noqa: F811
        self.hub, self.paths, self.token = hub, paths, token

    def __call__(self, *args: str, token: str | None = None, ok: bool = True
                 ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SANDBOX_", "JUPYTERHUB_"))}
        env.update(SANDBOX_HOME=str(self.paths.home), SANDBOX_KEYSTORE=str(self.paths.keystore),
                   JUPYTERHUB_API_URL=self.hub.api)
        tok = token if token is not None else self.token
        if tok:
            env["JUPYTERHUB_API_TOKEN"] = tok
        out = subprocess.run([str(SANDBOX), *args], env=env, capture_output=True, text=True,
                             timeout=120)
        if ok:
            assert out.returncode == 0, (args, out.stdout, out.stderr)
        return out

    def show(self, name: str) -> dict:
        return json.loads(self("workspace", "show", name, "--format", "json").stdout)

    def records(self, prefix: str) -> list[dict]:
        out = self("audit", "log", "--kind", prefix, "--format", "jsonl").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def cli(hub: Hub, home: Paths, oscar: str) -> Cli:  # noqa: F811
    c = Cli(hub, home, oscar)
    c("scenario", "review", str(home.home.parent / "credit.yaml"), "--reviewer", "data board",
      "--reference", "DRB-7", *accept_core("credit_underwriting"))
    return c


@pytest.fixture(scope="module")
def service(hub: Hub, home: Paths, cli: Cli, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
            ) -> Iterator[Svc]:
    config = write_config(tmp_path_factory.mktemp("ops-svc") / "service.yaml", home)
    svc = start_service(hub, config, free_port())
    yield svc
    stop(svc.proc)


def group(hub: Hub, name: str) -> set[str] | None:  # noqa: F811
    r = requests.get(f"{hub.api}/groups/{name}", timeout=10,
                     headers={"Authorization": f"token {hub.admin_token}"})
    return None if r.status_code == 404 else set(r.json()["users"])


def ask(svc: Svc, token: str, ws: str) -> requests.Response:
    return svc.call("POST", f"workspaces/{ws}/query", token,
                    json={"sql": SIMPLE, "request_id": rid()})


def test_operator_commands_need_the_operator_token(cli: Cli, hub: Hub) -> None:  # noqa: F811
    size = len(cli.records("workspace."))
    out = cli("workspace", "create", "w0", "--scenario", "credit-underwriting", "--members",
              "alice", "--budget-epsilon", "1", "--expires", EXPIRES, token="", ok=False)
    assert out.returncode == 2 and "auth.operator_required" in out.stderr
    assert "JUPYTERHUB_API_TOKEN" in out.stderr  # the hint says how
    alice = hub.token("alice")  # a developer's token: no custom:sandbox:admin
    out = cli("workspace", "suspend", "w0", token=alice, ok=False)
    assert out.returncode == 2 and "custom:sandbox:admin" in out.stderr
    out = cli("scenario", "review", str(POLICY), "--reviewer", "x", "--reference", "y",
              token=alice, ok=False)
    assert out.returncode == 2
    assert len(cli.records("workspace.")) == size
    assert "w0" not in cli("workspace", "list").stdout


def test_create_makes_group_users_and_lets_members_query(cli: Cli, hub: Hub,  # noqa: F811
                                                       service: Svc) -> None:
    out = cli("workspace", "create", "team-a", "--scenario", "credit-underwriting",
              "--members", "alice,newbie1", "--budget-epsilon", "4", "--expires", EXPIRES)
    assert "created workspace team-a: active" in out.stdout
    assert group(hub, "team-a") == {"alice", "newbie1"}
    r = requests.get(f"{hub.api}/users/newbie1", timeout=10,
                     headers={"Authorization": f"token {hub.admin_token}"})
    assert r.status_code == 200  # the missing hub user was created
    doc = cli.show("team-a")
    assert doc["state"] == "active" and doc["hub"]["status"] == "ok"
    assert doc["budgets"]["alice"]["epsilon_total"] == 4
    alice = hub.token("alice")
    r = ask(service, alice, "team-a")
    assert r.status_code == 200, r.text
    assert cli.show("team-a")["budgets"]["alice"]["epsilon_spent"] > 0
    names = [w["name"] for w in service.call("GET", "workspaces", alice).json()]
    assert "team-a" in names
    created = [r for r in cli.records("workspace.") if r["workspace"] == "team-a"]
    assert [r["kind"] for r in created] == ["workspace.created", "workspace.hub_synced"]
    assert {r["actor"] for r in created} == {"oscar"}
    assert created[1]["users_created"] == ["newbie1"]


def test_lifecycle_refuses_at_once(cli: Cli, hub: Hub, service: Svc) -> None:  # noqa: F811
    cli("workspace", "create", "team-b", "--scenario", "credit-underwriting", "--members",
        "alice,carol", "--budget-epsilon", "4", "--expires", EXPIRES)
    alice, carol = hub.token("alice"), hub.token("carol")
    assert ask(service, carol, "team-b").status_code == 200
    cli("workspace", "remove-member", "team-b", "carol")
    r = ask(service, carol, "team-b")  # the very next query
    assert r.status_code == 404 and r.json()["error"]["code"] == "workspace.not_found"
    assert_clean(r)
    assert group(hub, "team-b") == {"alice"}
    cli("workspace", "suspend", "team-b", "--reason", "audit")
    r = ask(service, alice, "team-b")
    assert r.status_code == 403 and r.json()["error"]["code"] == "workspace.suspended"
    assert service.call("GET", "workspaces/team-b/schema", alice).status_code == 403
    cli("workspace", "resume", "team-b")
    assert ask(service, alice, "team-b").status_code == 200
    cli("workspace", "add-member", "team-b", "carol")
    assert ask(service, carol, "team-b").status_code == 200
    # expiry: the last day passes (the test moves the record's date, as time would)
    con = sqlite3.connect(cli.paths.state_db)
    con.execute("UPDATE workspaces SET expires = '2024-01-31' WHERE name = 'team-b'")
    con.commit()
    con.close()
    r = ask(service, alice, "team-b")
    assert r.status_code == 403 and r.json()["error"]["code"] == "workspace.expired"
    assert cli.show("team-b")["state"] == "expired"
    cli("workspace", "extend", "team-b", "--expires", EXPIRES)
    assert ask(service, alice, "team-b").status_code == 200
    cli("workspace", "close", "team-b")
    r = ask(service, alice, "team-b")
    assert r.status_code == 403 and r.json()["error"]["code"] == "workspace.closed"
    assert group(hub, "team-b") == set()
    out = cli("workspace", "set-budget", "team-b", "alice", "--epsilon", "9", ok=False)
    assert out.returncode == 2 and "frozen" in out.stderr
    kinds = [r["kind"] for r in cli.records("workspace.") if r["workspace"] == "team-b"]
    assert kinds == ["workspace.created", "workspace.hub_synced",
                     "workspace.member_removed", "workspace.hub_synced",
                     "workspace.suspended", "workspace.hub_synced",
                     "workspace.resumed", "workspace.hub_synced",
                     "workspace.member_added", "workspace.hub_synced",
                     "workspace.extended", "workspace.hub_synced",
                     "workspace.closed", "workspace.hub_synced"]
    assert cli("audit", "verify").returncode == 0


def test_hub_failure_midway_is_recorded_and_sync_repairs_it(cli: Cli, hub: Hub,  # noqa: F811
                                                           service: Svc) -> None:
    weak = hub.token("oscar", scopes=["custom:sandbox:admin"])  # may not make groups
    out = cli("workspace", "create", "team-c", "--scenario", "credit-underwriting",
              "--members", "alice", "--budget-epsilon", "2", "--expires", EXPIRES,
              token=weak, ok=False)
    assert out.returncode == 2 and "sandbox workspace sync team-c" in out.stderr
    doc = cli.show("team-c")
    assert doc["state"] == "provisioning" and doc["hub"]["status"] == "failed"
    assert "refused" in doc["hub"]["error"]
    text = cli("workspace", "show", "team-c").stdout
    assert "failed" in text and "workspace sync team-c" in text
    r = ask(service, hub.token("alice"), "team-c")
    assert r.status_code == 503 and r.json()["error"]["code"] == "workspace.provisioning"
    cli("workspace", "sync", "team-c")
    assert cli.show("team-c")["state"] == "active" and group(hub, "team-c") == {"alice"}
    assert ask(service, hub.token("alice"), "team-c").status_code == 200
    # an unreachable hub: nothing is recorded at all (the operator check comes first)
    env_less = Cli(Hub("http://127.0.0.1:9/hub/api", hub.admin_token, 0, ""), cli.paths,
                   cli.token)
    size = len(cli.records("workspace."))
    out = env_less("workspace", "suspend", "team-c", ok=False)
    assert out.returncode == 2 and "did not answer" in out.stderr
    assert len(cli.records("workspace.")) == size


@pytest.mark.parametrize("args, message", [
    (["--scenario", "nope"], "no approved scenario 'nope'"),
    (["--expires", "2020-01-01"], "in the past"),
    (["--expires", "next week"], "not a date"),
    (["--members", "Alice Smith"], "invalid member name"),
    (["--budget-epsilon", "0"], "positive"),
    (["--budget-epsilon", "-3"], "positive"),
])
def test_bad_input_is_named_and_leaves_nothing(cli: Cli, args: list[str], message: str) -> None:
    base = {"--scenario": "credit-underwriting", "--members": "alice",
            "--budget-epsilon": "1", "--expires": EXPIRES}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    flat = [x for kv in base.items() for x in kv]
    out = cli("workspace", "create", "bad-one", *flat, ok=False)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert cli("workspace", "show", "bad-one", ok=False).returncode == 2


def test_duplicate_and_unknown_names(cli: Cli) -> None:
    cli("workspace", "create", "team-d", "--scenario", "credit-underwriting", "--members",
        "alice", "--budget-epsilon", "1", "--expires", EXPIRES)
    out = cli("workspace", "create", "team-d", "--scenario", "credit-underwriting",
              "--members", "bob", "--budget-epsilon", "1", "--expires", EXPIRES, ok=False)
    assert out.returncode == 2 and "already exists" in out.stderr
    assert cli.show("team-d")["members"] == ["alice"]
    for args in (["remove-member", "team-d", "zed"], ["set-budget", "team-d", "zed",
                                                      "--epsilon", "1"],
                 ["suspend", "no-such-ws"]):
        out = cli("workspace", *args, ok=False)
        assert out.returncode == 2 and ("not a member" in out.stderr
                                        or "no workspace" in out.stderr), out.stderr


def test_edited_policy_is_reported_and_not_served(cli: Cli, hub: Hub, service: Svc,  # noqa: F811
                                                  home: Paths) -> None:
    policy = home.home.parent / "credit.yaml"
    cli("workspace", "create", "team-e", "--scenario", "credit-underwriting", "--members",
        "alice", "--budget-epsilon", "3", "--expires", EXPIRES)
    alice = hub.token("alice")
    before = service.call("GET", "workspaces/team-e/schema", alice).json()
    assert before["privacy"]["epsilon_max"] == 2.0
    policy.write_text(policy.read_text().replace("epsilon_max: 2.0", "epsilon_max: 3.0"))
    listed = json.loads(cli("scenario", "list", "--format", "json").stdout)
    assert listed[0]["file"] == "policy changed since review; re-review required"
    assert "re-review required" in cli("workspace", "show", "team-e").stdout
    after = service.call("GET", "workspaces/team-e/schema", alice).json()
    assert after["privacy"]["epsilon_max"] == 2.0  # still the approved version
    r = service.call("POST", "workspaces/team-e/explain", alice,
                     json={"sql": SIMPLE, "epsilon": 2.5})
    assert r.status_code == 400  # over the approved epsilon_max
    out = cli("scenario", "review", str(policy), "--reviewer", "board", "--reference", "DRB-8",
              *accept_core("credit_underwriting"), ok=False)
    assert out.returncode == 2 and "above 2, the ceiling for core data" in out.stderr
    (home.home / "grading.yaml").write_text("grades:\n  core: {epsilon_max: 3}\n")
    out = cli("scenario", "review", str(policy), "--reviewer", "board", "--reference", "DRB-8",
              *accept_core("credit_underwriting"))
    assert "version 2" in out.stdout
    assert service.call("GET", "workspaces/team-e/schema", alice).json()[
        "privacy"]["epsilon_max"] == 2.0  # moves only when the operator says so
    cli("workspace", "upgrade", "team-e")
    assert service.call("GET", "workspaces/team-e/schema", alice).json()[
        "privacy"]["epsilon_max"] == 3.0
    shown = json.loads(cli("scenario", "show", "credit-underwriting", "--format",
                           "json").stdout)
    assert [v["version"] for v in shown] == [1, 2] and "team-e" in shown[1]["workspaces"]
    approvals = cli.records("scenario.approved")
    assert [r["version"] for r in approvals] == [1, 2]
    assert approvals[1]["reference"] == "DRB-8" and approvals[1]["actor"] == "oscar"
