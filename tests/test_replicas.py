"""Three replicas of the gate service share one PostgreSQL state, behind no balancer but
the clients themselves (each request goes to any replica), against a real hub.

* 8 clients race one member's budget across the replicas: it is never overspent;
* one request id retried on every replica is charged once and answered the same;
* an export submitted on one replica is seen, and withdrawn, on another;
* one replica is killed with SIGKILL while it holds reservations: the others go on
  answering, close its reservations as ``query.interrupted``, and the log verifies.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import requests
from conftest import make_vault
from pgkit import PgServer
from test_service import (  # noqa: F401  (fixtures)
    POLICY,
    PREFIX,
    ROOT,
    Hub,
    Svc,
    free_port,
    hub,
    rid,
    stop,
    wait_http,
)

from gatekit import CORE_COLUMNS
from sandbox.ledger import SqliteLedger
from sandbox.settings import Paths
from sandbox.state import State
from sandbox.statedb.postgres import WRITER_LOCK
from sandbox.workspaces import provision_local

pytestmark = pytest.mark.slow
WS = "credit-replicas"
SANDBOX = Path(sys.executable).parent / "sandbox"
BUDGET, EPS = 1.0, 0.125
COOKIE_SECRET = secrets.token_urlsafe(48)
_sql_numbers = itertools.count(1)


def fresh_sql() -> str:
    """A question asked for the first time (a repeated one would be replayed, free)."""
    return f"SELECT purpose, count(*) AS n FROM loans WHERE amount > {next(_sql_numbers)} " \
           "GROUP BY purpose"


@dataclass
class Cluster:
    url: str
    paths: Paths
    replicas: list[Svc]
    tokens: dict[str, str]

    def state(self) -> State:
        from sandbox.keys import load_kms

        return State(self.url, load_kms(self.paths.keystore).audit_signing_key())

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
        env.update(SANDBOX_HOME=str(self.paths.home), SANDBOX_KEYSTORE=str(self.paths.keystore),
                   SANDBOX_STATE=self.url)
        return subprocess.run([str(SANDBOX), *args], env=env, capture_output=True, text=True,
                              timeout=120, check=False)

    def query(self, replica: int, member: str, sql: str, request_id: str | None = None
              ) -> requests.Response:
        return self.replicas[replica].call(
            "POST", f"workspaces/{WS}/query", self.tokens[member],
            json={"sql": sql, "epsilon": EPS, "request_id": request_id or rid()})


def start_replica(hub: Hub, config: Path, port: int) -> Svc:  # noqa: F811
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SANDBOX_", "JUPYTERHUB_"))}
    env.update(JUPYTERHUB_API_URL=hub.api, JUPYTERHUB_API_TOKEN=hub.service_token,
               JUPYTERHUB_SERVICE_NAME="sandbox", JUPYTERHUB_SERVICE_PREFIX=PREFIX,
               JUPYTERHUB_SERVICE_URL=f"http://127.0.0.1:{port}", JUPYTERHUB_BASE_URL="/",
               SANDBOX_LOG_LEVEL="INFO", SANDBOX_COOKIE_SECRET=COOKIE_SECRET)
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
def cluster(hub: Hub, pg_server: PgServer, demo_dir: Path,  # noqa: F811
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("replicas")
    vault = make_vault(base, demo_dir)
    url = pg_server.create_database("replicas")
    state = State(url, vault.kms.audit_signing_key())
    try:
        provision_local(state, vault.catalog.resolve, POLICY, WS, ["alice", "carol", "rita"],
                        epsilon=50, expires="2099-12-31", actor="test",
                        accept_core=CORE_COLUMNS["credit_underwriting"])
        ledger = SqliteLedger.existing(state, WS)
        ledger.set_budget("alice", epsilon=BUDGET, actor="test")
        ledger.set_budget("rita", epsilon=1e6, actor="test")  # the load test's member
    finally:
        vault.catalog.close()
        state.close()
    limits = {"query_timeout_s": 3, "recover_after_s": 6, "per_member_concurrency": 32,
              "queries_per_minute": 100000, "refusals_per_minute": 100000,
              "memory_limit": "512MB", "workers": 4}
    config = base / "service.yaml"
    config.write_text(f"home: {vault.paths.home}\nkeystore: {vault.paths.keystore}\n"
                      f"state: {url}\nlimits: {json.dumps(limits)}\n")
    replicas: list[Svc] = []
    try:
        for _ in range(3):
            replicas.append(start_replica(hub, config, free_port()))
        tokens = {m: hub.token(m) for m in ("alice", "carol", "rita")}
        yield Cluster(url, vault.paths, replicas, tokens)
    finally:
        for svc in replicas:
            stop(svc.proc)


def test_racing_clients_never_overspend_a_budget(cluster: Cluster) -> None:
    outcomes: list[tuple[int, str]] = []
    lock, go = threading.Lock(), threading.Event()

    def client(n: int) -> None:
        go.wait()
        for i in range(5):
            r = cluster.query((n + i) % 3, "alice", fresh_sql())
            code = "ok" if r.status_code == 200 else r.json()["error"]["code"]
            with lock:
                outcomes.append((r.status_code, code))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(timeout=300)
    assert len(outcomes) == 40
    assert {code for _, code in outcomes} <= {"ok", "budget.exhausted"}, outcomes
    answered = sum(code == "ok" for _, code in outcomes)
    state = cluster.state()
    try:
        b = SqliteLedger.existing(state, WS).balance("alice")
        assert b.epsilon_spent <= b.epsilon_total + 1e-9, b
        (charged,) = state.con.execute("SELECT count(*) FROM charges WHERE workspace = ? AND "
                                       "member = 'alice' AND state != 'cancelled'",
                                       (WS,)).fetchone()
        assert charged == answered >= 1
        assert sum(code == "budget.exhausted" for _, code in outcomes) == 40 - answered > 0
        assert state.verify().ok
    finally:
        state.close()
    # what the race left is all there is: one more question does not fit either
    r = cluster.query(0, "alice", fresh_sql())
    assert r.status_code == 403 and r.json()["error"]["code"] == "budget.exhausted"


def test_one_request_id_on_every_replica_is_charged_once(cluster: Cluster) -> None:
    request_id, sql = rid(), fresh_sql()
    answers: list[requests.Response] = []
    go = threading.Event()

    def send(replica: int) -> None:
        go.wait()
        answers.append(cluster.query(replica, "carol", sql, request_id))

    threads = [threading.Thread(target=send, args=(i % 3,)) for i in range(6)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(timeout=120)
    codes = [r.status_code if r.status_code == 200 else r.json()["error"]["code"]
             for r in answers]
    assert set(codes) <= {200, "request.in_progress"} and 200 in codes, codes
    retries = [cluster.query(i, "carol", sql, request_id) for i in range(3)]
    assert all(r.status_code == 200 and r.json()["replayed"] for r in retries)
    releases = {r.json()["release_id"] for r in [*answers, *retries] if r.status_code == 200}
    assert len(releases) == 1
    state = cluster.state()
    try:
        rows = state.con.execute("SELECT c.state FROM requests r JOIN charges c ON c.id = "
                                 "r.charge_id WHERE r.member = 'carol' AND r.request_id = ?",
                                 (request_id,)).fetchall()
        assert rows == [("committed",)]
        charged = [r for r in state.records(kind="query.charged", member="carol")
                   if r["sql"] == sql]
        assert len(charged) == 1
    finally:
        state.close()


def test_an_export_made_on_one_replica_is_seen_on_another(cluster: Cluster) -> None:
    r = cluster.query(0, "carol", fresh_sql())
    assert r.status_code == 200, r.text
    rel = r.json()
    item = {"kind": "frame", "name": "mix", "columns": rel["columns"], "rows": rel["rows"],
            "release_ids": [rel["release_id"]]}
    sub = cluster.replicas[1].call("POST", f"workspaces/{WS}/exports", cluster.tokens["carol"],
                                   json={"title": "loan mix", "purpose": "report",
                                         "items": [item], "request_id": rid()})
    assert sub.status_code in (200, 201), sub.text
    export_id = sub.json()["id"]
    listed = cluster.replicas[2].call("GET", f"workspaces/{WS}/exports",
                                      cluster.tokens["carol"]).json()
    assert export_id in [e["id"] for e in listed]
    gone = cluster.replicas[0].call("POST", f"workspaces/{WS}/exports/{export_id}/withdraw",
                                    cluster.tokens["carol"], json={"comment": ""})
    assert gone.status_code == 200 and gone.json()["state"] == "withdrawn", gone.text


def _reserved_by(con: psycopg.Connection, request_ids: set[str]) -> dict[str, str]:
    rows = con.execute("SELECT r.request_id, c.id FROM requests r JOIN charges c ON c.id = "
                       "r.charge_id WHERE c.state = 'reserved' AND r.member = 'rita'").fetchall()
    return {cid: req for req, cid in rows if req in request_ids}


def test_a_replica_killed_mid_load_leaves_nothing_open(cluster: Cluster) -> None:
    victim = cluster.replicas[2]
    sent_to_victim: set[str] = set()
    survivors_ok: list[float] = []
    stop_load, lock = threading.Event(), threading.Lock()

    def load(replica: int) -> None:
        while not stop_load.is_set():
            request_id = rid()
            if replica == 2:
                with lock:
                    sent_to_victim.add(request_id)
            try:
                r = cluster.query(replica, "rita", fresh_sql(), request_id)
            except requests.RequestException:
                if replica == 2:
                    return  # the victim is gone
                raise
            if replica != 2 and r.status_code == 200:
                with lock:
                    survivors_ok.append(time.monotonic())

    threads = [threading.Thread(target=load, args=(i,), daemon=True)
               for i in (2, 2, 2, 2, 0, 1)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    # Hold the state's writer lock: requests that have reserved wait to commit. Once the
    # victim holds reservations, kill it there.
    admin = psycopg.connect(cluster.url, autocommit=True)
    held: dict[str, str] = {}
    try:
        for _ in range(20):
            admin.execute(f"BEGIN; SELECT pg_advisory_xact_lock({WRITER_LOCK})")
            with psycopg.connect(cluster.url, autocommit=True) as reader:
                deadline = time.monotonic() + 1.5
                while not held and time.monotonic() < deadline:
                    with lock:
                        ids = set(sent_to_victim)
                    held = _reserved_by(reader, ids)
                    time.sleep(0.05)
            if held:
                os.killpg(victim.proc.pid, signal.SIGKILL)
                victim.proc.wait(10)
                admin.execute("COMMIT")
                break
            admin.execute("COMMIT")
            time.sleep(0.3)
        assert held, "the victim never held a reservation"
        killed_at = time.monotonic()
        # the survivors go on, and close the victim's reservations (recover_after_s: 6)
        deadline = killed_at + 30
        states: dict[str, str] = {}
        with psycopg.connect(cluster.url, autocommit=True) as reader:
            while time.monotonic() < deadline:
                states = dict(reader.execute("SELECT id, state FROM charges WHERE id = ANY(%s)",
                                             (list(held),)).fetchall())
                if set(states.values()) == {"interrupted"}:
                    break
                time.sleep(0.5)
        assert set(states.values()) == {"interrupted"}, states
    finally:
        stop_load.set()
        if admin.info.transaction_status != 0:
            admin.execute("ROLLBACK")
        admin.close()
    for t in threads:
        t.join(timeout=60)
    with lock:
        assert any(t > killed_at for t in survivors_ok), "the survivors stopped answering"
    state = cluster.state()
    try:
        interrupted = {r["charge_id"]: r for r in state.records(kind="query.interrupted")}
        assert set(held) <= set(interrupted)
        assert all(interrupted[c]["member"] == "rita" and interrupted[c]["epsilon"] == EPS
                   for c in held)
        (open_left,) = state.con.execute("SELECT count(*) FROM charges WHERE state = "
                                         "'reserved'").fetchone()
        assert open_left == 0
    finally:
        state.close()
    verified = cluster.cli("audit", "verify")
    assert verified.returncode == 0 and verified.stdout.rstrip().endswith("ok"), \
        verified.stdout + verified.stderr
    # the two that are left still answer
    for replica in (0, 1):
        assert cluster.query(replica, "rita", fresh_sql()).status_code == 200
