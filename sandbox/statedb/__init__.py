"""The state database behind ``sandbox.state``: SQLite (a file, the embedded default) or
PostgreSQL (a ``postgresql://`` URL, shared by several service replicas).

One setting chooses it (``SANDBOX_STATE``, or ``state:`` in the service's configuration;
``sandbox.settings.Paths.state_db``). ``connect`` opens either and migrates it to the
latest schema; callers then speak the portable SQL of ``base.Connection``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import Connection, IntegrityError, StateError, describe, is_url
from .schema import MIGRATIONS, TABLES, migrate

__all__ = ["MIGRATIONS", "TABLES", "Connection", "IntegrityError", "StateError", "connect",
           "describe", "is_url", "migrate"]


def connect(location: str | Path, *, read_only: bool,
            prepare: Callable[[Any], None] | None = None) -> Connection:
    """Open the state database at ``location``; unless ``read_only``, migrate it first.
    ``prepare`` runs last (a first read), inside the back end's error handling."""

    def ready(con: Any) -> None:
        if not read_only:
            migrate(con, location)
        if prepare is not None:
            prepare(con)

    if is_url(location):
        from . import postgres  # psycopg is imported only when PostgreSQL is configured

        return postgres.connect(str(location), read_only=read_only, prepare=ready)
    from . import sqlite

    return sqlite.connect(location, read_only=read_only, prepare=ready)  # type: ignore[return-value]
