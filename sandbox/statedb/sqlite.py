"""The SQLite back end: one file beside the data, the embedded default.

Durable before an answer is returned (WAL, synchronous=FULL); writers take the database
lock up front (BEGIN IMMEDIATE), so check-and-charge is atomic across threads and
processes of one machine.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .base import IntegrityError, StateError


class SqliteConnection(sqlite3.Connection):
    """sqlite3's connection with the methods the state needs (``base.Connection``)."""

    backend = "sqlite"

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        try:
            return super().execute(sql, params)
        except sqlite3.IntegrityError as exc:
            raise IntegrityError(str(exc)) from exc

    def execute_batch(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Statements whose results are not needed, in order (one process: no round trips)."""
        for sql, params in statements:
            self.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]  # type: ignore[override]
                    ) -> sqlite3.Cursor:
        try:
            return super().executemany(sql, rows)
        except sqlite3.IntegrityError as exc:
            raise IntegrityError(str(exc)) from exc

    def begin_write(self) -> None:
        try:
            super().execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StateError(f"the state database is busy or unwritable ({exc})",
                             "try again; if it persists check disk space and permissions") \
                from None

    def begin_read(self) -> None:
        super().execute("BEGIN")  # deferred: the snapshot is taken by the first read

    def commit(self) -> None:
        try:
            super().execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                super().execute("ROLLBACK")
            raise StateError(f"the state could not be saved ({exc}); nothing was recorded",
                             "check free disk space and permissions, then try again") from None

    def rollback(self) -> None:
        super().execute("ROLLBACK")

    def stream(self, sql: str, params: Sequence[Any] = (), batch: int = 10_000
               ) -> Iterator[Any]:
        cur = self.execute(sql, params)
        while rows := cur.fetchmany(batch):
            yield from rows

    def raw_text(self, column: str) -> str:
        return f"CAST({column} AS BLOB)"

    def ddl(self, statement: str) -> str:
        return statement

    def columns(self, table: str) -> set[str]:
        return {row[1] for row in super().execute(f"PRAGMA table_info({table})")}

    def schema_version(self) -> int:
        return int(super().execute("PRAGMA user_version").fetchone()[0])

    def set_schema_version(self, version: int) -> None:
        super().execute(f"PRAGMA user_version = {int(version)}")


def connect(path: str | Path, *, read_only: bool,
            prepare: Callable[[SqliteConnection], None]) -> SqliteConnection:
    """Open the file (read-only: never written, not even its journal) and ``prepare`` it
    (migrations, a first read), or fail with an error that says what is wrong."""
    con: SqliteConnection | None = None
    try:
        if read_only:
            if not Path(path).is_file():
                raise ConfigError(f"no state database at {path}", "check the path")
            con = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro&immutable=1",
                                  uri=True, isolation_level=None, check_same_thread=False,
                                  factory=SqliteConnection)
        else:
            con = sqlite3.connect(path, isolation_level=None, timeout=60,
                                  check_same_thread=False, factory=SqliteConnection)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA foreign_keys=ON")
        prepare(con)
        return con
    except sqlite3.Error as exc:
        if con is not None:
            con.close()  # also removes the -wal/-shm files it created
        # OperationalError is a DatabaseError too: tell damage from permissions by code
        if getattr(exc, "sqlite_errorname", "") in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
            raise StateError(
                f"the state database {path} is damaged or not a database ({exc})",
                "restore it from a backup; run `sandbox audit verify` on the restored copy",
            ) from None
        raise ConfigError(f"cannot open the state database {path}: {exc}",
                          "check that its directory exists and is writable") from None
    except BaseException:
        if con is not None:
            con.close()
        raise
