"""Moving the state from SQLite to PostgreSQL: every table copied in one transaction of
the target, and the audit log verified on both sides before it is committed.

The target must be empty (a fresh database, migrated to this version's schema when
opened); the copy holds the target's writer lock, so no replica writes meanwhile, and
reads the source in one snapshot. The target's log must verify and have the source's
records and root hash, or nothing is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .audit import VerifyReport
from .state import State
from .statedb import TABLES, Connection, StateError, describe

BATCH = 1000


@dataclass
class CopyReport:
    source: VerifyReport
    target: VerifyReport
    rows: dict[str, int] = field(default_factory=dict)


def filled_tables(con: Connection) -> list[str]:
    """The sandbox's tables that hold rows."""
    return [t for t in TABLES if con.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone()]


def _copy_table(src: Connection, dst: Connection, table: str) -> int:
    cols = sorted(src.columns(table))
    if set(cols) != dst.columns(table):
        raise StateError(f"the table {table} differs between the two databases",
                         "open both with this version of the sandbox first (it migrates "
                         "them), then copy again")
    names = ", ".join(cols)
    insert = f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(cols))})"
    n, batch = 0, []
    for row in src.stream(f"SELECT {names} FROM {table}", (), BATCH):
        batch.append(row)
        if len(batch) >= BATCH:
            n, batch = n + _insert(dst, insert, table, batch), []
    return n + (_insert(dst, insert, table, batch) if batch else 0)


def _insert(dst: Connection, insert: str, table: str, rows: list[object]) -> int:
    try:
        dst.executemany(insert, rows)  # type: ignore[arg-type]
    except StateError:
        raise
    except Exception as exc:  # a value the target cannot hold (e.g. a NUL in a text)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise StateError(f"a row of {table} cannot be stored in the target ({first}); "
                         "nothing was kept", "run `sandbox audit verify` on the source; "
                         "the source is unchanged") from None
    return len(rows)


def copy_state(source: State, target: State) -> CopyReport:
    """Copy every table of ``source`` into the empty ``target``; verified, or nothing kept."""
    if source.public_key.public_bytes_raw() != target.public_key.public_bytes_raw():
        raise StateError("the two databases are opened with different signing keys",
                         "use the key store of the sandbox that wrote the source")
    where = describe(target.path)
    if filled := filled_tables(target.con):
        raise StateError(f"the target database {where} is not empty (it holds "
                         f"{', '.join(filled)})", "copy into a new, empty database")
    source.con.begin_read()  # one snapshot of the source
    try:
        before = source.verify()
        if not before.ok:
            raise StateError(f"the source's audit log fails verification: "
                             f"{before.problems[0]}; nothing was copied",
                             "run `sandbox audit verify` and restore the source from a backup")
        report = CopyReport(before, before)
        with target.transaction() as dst:
            if filled := filled_tables(dst):  # again, under the target's writer lock
                raise StateError(f"the target database {where} is not empty (it holds "
                                 f"{', '.join(filled)})", "copy into a new, empty database")
            for table in TABLES:
                report.rows[table] = _copy_table(source.con, dst, table)
            report.target = after = target.verify()
            if not after.ok or (after.records, after.root_hash) != (before.records,
                                                                   before.root_hash):
                why = after.problems[0] if after.problems else (
                    f"{after.records} records with root {after.root_hash}, not "
                    f"{before.records} with root {before.root_hash}")
                raise StateError(f"the copy's audit log does not verify ({why}); nothing "
                                 "was kept", "report this; the source is unchanged")
    finally:
        if source.con.in_transaction:
            source.con.commit()
    return report
