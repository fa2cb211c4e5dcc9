"""What both back ends of the state database share: the errors, and what a connection offers.

A connection runs the sandbox's one portable SQL: ``?`` placeholders, standard joins,
``INSERT ... ON CONFLICT (...) DO UPDATE`` for upserts. What differs between SQLite and
PostgreSQL sits behind the few methods of ``Connection`` (transactions, the schema
version, reading JSON and raw text, type names in DDL), so callers never branch on the
back end.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from ..errors import SandboxError

URL_SCHEMES = ("postgresql", "postgres")


class StateError(SandboxError):
    code = "state.error"


class IntegrityError(Exception):
    """A uniqueness or foreign-key constraint refused a write, on either back end (the
    transaction is then rolled back by whoever raised it out of ``State.transaction``)."""


def is_url(location: object) -> bool:
    """Whether the state location names a PostgreSQL database rather than a SQLite file."""
    return isinstance(location, str) and location.split("://", 1)[0].lower() in URL_SCHEMES


def describe(location: object) -> str:
    """The location for messages and logs: a URL without its password."""
    text = str(location)
    if not is_url(text):
        return text
    parts = urlsplit(text)
    if parts.password is None:
        return text
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[-1]}"))


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchmany(self, size: int = ...) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """One connection to the state database (one per thread)."""

    backend: str  # "sqlite" | "postgresql"

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Cursor: ...
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any: ...
    def execute_batch(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Statements whose results are not needed, in one round trip where that matters."""
    @property
    def in_transaction(self) -> bool: ...
    def begin_write(self) -> None:
        """Start a writing transaction holding the database's one writer lock."""
    def begin_read(self) -> None:
        """Start a read-only transaction that sees one snapshot."""
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def close(self) -> None: ...
    def stream(self, sql: str, params: Sequence[Any] = (), batch: int = 10_000
               ) -> Iterator[Any]:
        """Rows of a large result, fetched ``batch`` at a time."""
    def raw_text(self, column: str) -> str:
        """SQL reading a text column as stored (bytes on SQLite: it may not be UTF-8)."""
    def ddl(self, statement: str) -> str:
        """A CREATE/ALTER statement written with SQLite's types, for this back end."""
    def columns(self, table: str) -> set[str]: ...
    def schema_version(self) -> int: ...
    def set_schema_version(self, version: int) -> None: ...
