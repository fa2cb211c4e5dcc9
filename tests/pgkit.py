"""A real PostgreSQL server for the tests: initdb in a temporary directory, one server per
test session on a loopback port, and a fresh database per test.

Needs PostgreSQL's server programs: ``initdb`` on the PATH or in Debian's
/usr/lib/postgresql/<version>/bin (deploy/test.sh installs the ``postgresql`` package when
they are missing). PostgreSQL refuses to run as root: as root the server runs as the
``postgres`` system user if there is one, else as ``nobody``.

``state_location`` is the fixture that runs a test on both back ends: a SQLite file, or
the URL of a new PostgreSQL database.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BACKENDS = ("sqlite", "postgresql")


def find_program(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit()
                      else 0)
    return versions[-1] if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL server in its own directory, on 127.0.0.1."""

    def __init__(self, *, fsync: bool = False, max_connections: int = 200) -> None:
        initdb, pg_ctl = find_program("initdb"), find_program("pg_ctl")
        if initdb is None or pg_ctl is None:
            pytest.fail("PostgreSQL's initdb and pg_ctl are not installed: install Debian's "
                        "`postgresql` package (deploy/test.sh does)")
        self.pg_ctl = pg_ctl
        self.root = Path(tempfile.mkdtemp(prefix="sandbox-pg-"))
        self.user: str | None = None
        if os.getuid() == 0:
            self.user = "postgres" if _has_user("postgres") else "nobody"
            shutil.chown(self.root, self.user)
        self.data = self.root / "data"
        self.port = _free_port()
        self._run(initdb, "-D", str(self.data), "-U", "sandbox", "--auth=trust", "--no-locale",
                  "-E", "UTF8", "--no-sync")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   f"-c max_connections={max_connections} -c fsync={'on' if fsync else 'off'}")
        self._run(pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                  "-w", "-t", "60", "start")
        self._names = itertools.count(1)

    def _run(self, *argv: str) -> None:
        cmd = list(argv) if self.user is None else ["runuser", "-u", self.user, "--", *argv]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            log = self.root / "log"
            raise RuntimeError(f"{' '.join(argv[:1])} failed: {done.stderr}{done.stdout}"
                               + (log.read_text() if log.exists() else ""))

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://sandbox@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; its URL."""
        import psycopg

        name = name or f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server (started on first use, stopped at the end)."""
    start = time.monotonic()
    server = PgServer()
    print(f"PostgreSQL started in {time.monotonic() - start:.1f} s on port {server.port}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """The URL of a new, empty database for this test."""
    return pg_server.create_database()


@pytest.fixture(params=BACKENDS)
def state_location(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where a test's state database lives, once per back end: a SQLite file, or a new
    PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "state.db"
    server: PgServer = request.getfixturevalue("pg_server")
    return server.create_database()
