"""The state database on PostgreSQL (tests/pgkit.py starts a real server): migrations kept
in a table and run once by replicas starting together, one chain of records however many
connections append, tampering found, lost connections opened again, clear errors; the one
setting that chooses the back end; and `sandbox state migrate`, which copies a SQLite state
and verifies it.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sandbox.dp import Cost
from sandbox.errors import ConfigError
from sandbox.ledger import SqliteLedger
from sandbox.policy import BudgetPolicy
from sandbox.service.config import cookie_secret, load_config
from sandbox.settings import Paths
from sandbox.state import MIGRATIONS, State, StateError
from sandbox.statedb import IntegrityError, describe
from sandbox.statedb.postgres import PgConnection

KEY = Ed25519PrivateKey.generate()
SANDBOX = pathlib.Path(sys.executable).with_name("sandbox")


def _charge(state: State, n: int, member: str = "alice") -> None:
    ledger = SqliteLedger.open(state, "ws", "p", BudgetPolicy(100.0, 1e-6, "never"))
    for i in range(n):
        r = ledger.reserve(member, Cost(0.1), sql=f"SELECT {i}", request_id=f"r{i}")
        ledger.commit(r, release_id=f"x{i}", response={"release_id": f"x{i}"},
                      replay_key=f"k{i}", request_id=f"r{i}")


# -- migrations ------------------------------------------------------------------------------
def test_a_new_database_is_at_the_latest_version(pg_url: str) -> None:
    State(pg_url, KEY).close()
    with psycopg.connect(pg_url) as con:
        assert con.execute("SELECT id, version FROM state_schema").fetchall() == [
            (1, len(MIGRATIONS))]
        types = dict(con.execute("SELECT column_name, data_type FROM information_schema."
                                 "columns WHERE table_name = 'charges'").fetchall())
    assert types["epsilon"] == "double precision" and types["pure_rho"] == "double precision"
    State(pg_url, KEY).close()  # opening again changes nothing


def test_replicas_starting_together_migrate_once(pg_url: str) -> None:
    errors: list[BaseException] = []
    go = threading.Event()

    def start() -> None:
        go.wait()
        try:
            State(pg_url, KEY).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    state = State(pg_url, KEY)
    try:
        assert state.con.schema_version() == len(MIGRATIONS)
        assert state.size() == 0 and state.verify().ok
    finally:
        state.close()


def test_an_older_schema_is_brought_up_to_date(pg_url: str) -> None:
    con = PgConnection(pg_url, read_only=False)
    con.begin_write()
    MIGRATIONS[0](con)
    con.set_schema_version(1)
    con.commit()
    assert "pure_rho" not in con.columns("charges")
    con.close()
    state = State(pg_url, KEY)
    try:
        assert {"pure_epsilon", "pure_rho"} <= state.con.columns("charges")
        assert "request_digest" in state.con.columns("requests")
        assert "export_requests" in {r[0] for r in state.con.execute(
            "SELECT table_name FROM information_schema.tables")}
        _charge(state, 2)
        assert state.verify().ok
    finally:
        state.close()


def test_a_database_of_a_newer_version_is_refused(pg_url: str) -> None:
    State(pg_url, KEY).close()
    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute("UPDATE state_schema SET version = %s", (len(MIGRATIONS) + 1,))
    with pytest.raises(StateError, match="newer than this version of the sandbox"):
        State(pg_url, KEY)


# -- the log -----------------------------------------------------------------------------------
def test_concurrent_appenders_make_one_chain(state_location: Path | str) -> None:
    """Threads with a connection each append at once: one total order, and it verifies."""
    State(state_location, KEY).close()
    go, errors = threading.Event(), []

    def append(worker: int) -> None:
        state = State(state_location, KEY, checkpoint_every=7)
        try:
            go.wait()
            for i in range(15):
                state.record("request.invalid", member=f"m{worker}", endpoint="x", code="c",
                             message=str(i), input="")
        except BaseException as exc:
            errors.append(exc)
        finally:
            state.close()

    threads = [threading.Thread(target=append, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    state = State(state_location, KEY)
    try:
        report = state.verify()
        assert report.ok, report.problems
        assert report.records == 90 and report.checkpoints == 90 // 7
        seqs = [r["seq"] for r in state.records()]
        assert seqs == list(range(1, 91))
    finally:
        state.close()


def test_tampering_is_found(pg_url: str) -> None:
    state = State(pg_url, KEY)
    _charge(state, 3)
    assert state.verify().ok
    with psycopg.connect(pg_url, autocommit=True) as con:
        (body,) = con.execute("SELECT body FROM audit_records WHERE seq = 2").fetchone()
        changed = json.loads(body) | {"epsilon": 0.0}
        con.execute("UPDATE audit_records SET body = %s WHERE seq = 2",
                    (json.dumps(changed, separators=(",", ":")),))
    report = state.verify()
    assert not report.ok and report.first_bad == 2
    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute("UPDATE audit_records SET body = %s WHERE seq = 2", (body,))
        assert state.verify().ok
        con.execute("DELETE FROM audit_records WHERE seq = (SELECT max(seq) FROM "
                    "audit_records)")
    assert "were removed" in " ".join(state.verify().problems)
    state.close()


def test_a_read_only_state_verifies_and_writes_nothing(pg_url: str) -> None:
    state = State(pg_url, KEY)
    _charge(state, 2)
    state.close()
    ro = State(pg_url, KEY.public_key())
    try:
        assert ro.verify().ok and ro.size() == 4
        with pytest.raises(StateError, match="read-only"):
            ro.record("request.invalid", endpoint="x", code="c", message="m", input="")
    finally:
        ro.close()


def test_a_constraint_is_one_error_type_and_nothing_is_kept(
        state_location: Path | str) -> None:
    state = State(state_location, KEY)
    try:
        size = state.size()
        with pytest.raises(IntegrityError), state.transaction() as con:
            state.append(con, "request.invalid", endpoint="x", code="c", message="m", input="")
            con.execute("INSERT INTO meta VALUES ('k', 'v')")
            con.execute("INSERT INTO meta VALUES ('k', 'w')")
        assert state.size() == size and state.verify().ok
        state.record("request.invalid", endpoint="x", code="c", message="m", input="")
        assert state.size() == size + 1
    finally:
        state.close()


def test_a_lost_connection_is_opened_again(pg_url: str) -> None:
    state = State(pg_url, KEY)
    try:
        _charge(state, 1)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            pid = state.con._con.info.backend_pid  # type: ignore[attr-defined]
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert state.size() == 2  # a read outside a transaction is tried again
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)",
                          (state.con._con.info.backend_pid,))  # type: ignore[attr-defined]
        state.record("request.invalid", endpoint="x", code="c", message="m", input="")
        assert state.size() == 3 and state.verify().ok
    finally:
        state.close()


def test_an_unreachable_server_is_a_clear_error_without_the_password() -> None:
    url = "postgresql://sandbox:hunter2@127.0.0.1:1/sandbox"
    with pytest.raises(StateError) as err:
        State(url, KEY)
    text = err.value.message + err.value.hint
    assert "did not answer" in text and "hunter2" not in text
    assert "sandbox:***@127.0.0.1:1" in err.value.message
    assert describe(url) == "postgresql://sandbox:***@127.0.0.1:1/sandbox"


# -- the one setting -------------------------------------------------------------------------
def test_the_state_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SANDBOX_KEYSTORE", str(tmp_path / "ks"))
    monkeypatch.delenv("SANDBOX_STATE", raising=False)
    assert Paths.resolve().state_db == tmp_path / "home" / "state.sqlite"
    monkeypatch.setenv("SANDBOX_STATE", "postgresql://u@h/db")
    assert Paths.resolve().state_db == "postgresql://u@h/db"
    monkeypatch.setenv("SANDBOX_STATE", str(tmp_path / "elsewhere.sqlite"))
    assert Paths.resolve().state_db == tmp_path / "elsewhere.sqlite"
    cfg = tmp_path / "service.yaml"
    cfg.write_text("state: postgresql://u@db:5432/sandbox\n")
    assert load_config(cfg).state == "postgresql://u@db:5432/sandbox"
    cfg.write_text("state: data/state.sqlite\n")
    state = load_config(cfg).state
    assert state == str(tmp_path / "data" / "state.sqlite")
    assert Paths.resolve(None, None, state).state_db == tmp_path / "data" / "state.sqlite"
    assert load_config(tmp_path / "service.yaml").state is not None
    cfg.write_text("home: h\n\nstate: mysql://u@db/x\n")
    with pytest.raises(ConfigError, match=r"service.yaml:3: 'state' names an unknown kind"):
        load_config(cfg)


def test_the_cookie_secret_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SANDBOX_COOKIE_SECRET", raising=False)
    assert cookie_secret() != cookie_secret()  # unset: random per process
    monkeypatch.setenv("SANDBOX_COOKIE_SECRET", "x" * 40)
    assert cookie_secret() == b"x" * 40 == cookie_secret()
    monkeypatch.setenv("SANDBOX_COOKIE_SECRET", "short")
    with pytest.raises(ConfigError, match="shorter than 32"):
        cookie_secret()


# -- sandbox state migrate ---------------------------------------------------------------------
def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(SANDBOX), *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


@pytest.fixture
def sqlite_home(tmp_path: Path) -> dict[str, str]:
    """A home with a key store and a SQLite state holding charges and checkpoints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SANDBOX_", "PG"))}
    env |= {"SANDBOX_HOME": str(tmp_path / "home"), "SANDBOX_KEYSTORE": str(tmp_path / "ks")}
    assert _cli(env, "keys", "init").returncode == 0
    from sandbox.keys import load_kms

    paths = Paths.resolve(env["SANDBOX_HOME"], env["SANDBOX_KEYSTORE"])
    paths.ensure_home()
    state = State(paths.state_db, load_kms(paths.keystore).audit_signing_key(),
                  checkpoint_every=4)
    _charge(state, 6)
    state.checkpoint()
    state.close()
    return env


def test_migrate_copies_a_sqlite_state_and_verifies_it(
        sqlite_home: dict[str, str], pg_url: str) -> None:
    done = _cli(sqlite_home, "state", "migrate", "--to", pg_url)
    assert done.returncode == 0, done.stderr
    assert "ok: verified on both sides" in done.stdout
    assert "audit_records" in done.stdout and "charges" in done.stdout
    root = [line for line in done.stdout.splitlines() if line.startswith("root hash")]
    on_pg = sqlite_home | {"SANDBOX_STATE": pg_url}
    for env in (sqlite_home, on_pg):  # the same log on both sides, and the source unchanged
        verified = _cli(env, "audit", "verify")
        assert verified.returncode == 0, verified.stderr
        assert root and root[0] in verified.stdout
    budget = _cli(on_pg, "budget", "show", "--format", "json")
    assert budget.returncode == 0, budget.stderr
    assert json.loads(budget.stdout)[0]["epsilon_spent"] == pytest.approx(0.6)
    again = _cli(sqlite_home, "state", "migrate", "--to", pg_url)
    assert again.returncode == 2 and "is not empty" in again.stderr


def test_migrate_refuses_a_log_that_fails_and_keeps_nothing(
        sqlite_home: dict[str, str], pg_url: str) -> None:
    import sqlite3

    db = Path(sqlite_home["SANDBOX_HOME"]) / "state.sqlite"
    con = sqlite3.connect(db)
    con.execute("UPDATE audit_records SET body = replace(body, '\"epsilon\":0.1', "
                "'\"epsilon\":0.0') WHERE seq = 3")
    con.commit()
    con.close()
    done = _cli(sqlite_home, "state", "migrate", "--to", pg_url)
    assert done.returncode == 2 and "fails verification" in done.stderr, done.stderr
    with psycopg.connect(pg_url) as pg:
        assert pg.execute("SELECT count(*) FROM audit_records").fetchone() == (0,)
    bad = _cli(sqlite_home, "state", "migrate", "--to", "/tmp/x.sqlite")
    assert bad.returncode == 2 and "not a postgresql:// URL" in bad.stderr


def test_placeholders_are_translated_outside_quotes_only(pg_url: str) -> None:
    from sandbox.statedb.postgres import translate

    assert translate("SELECT ? || '?' || \"a?\" || '50%' WHERE x LIKE ? ESCAPE '\\'") == \
        "SELECT %s || '?' || \"a?\" || '50%%' WHERE x LIKE %s ESCAPE '\\'"
    con = PgConnection(pg_url, read_only=True)
    try:
        row = con.execute("SELECT ? || '?' || '50%', 'a_b' LIKE ? ESCAPE '\\'",
                          ("x", "a\\_b")).fetchone()
        assert row == ("x?50%", True)
    finally:
        con.close()
