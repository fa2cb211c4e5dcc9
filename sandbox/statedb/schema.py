"""The state database's schema and its numbered migrations, for both back ends.

The tables are written once, with SQLite's type names; PostgreSQL gets them translated
(``Connection.ddl``: REAL is double precision, INTEGER bigint, BLOB bytea). The version
is SQLite's ``PRAGMA user_version`` or PostgreSQL's table ``state_schema``. Each step
runs in a writing transaction (PostgreSQL's DDL is transactional too) and reads the
version again under the writer lock, so replicas starting together migrate once.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import Connection, StateError, describe

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_records (
    seq INTEGER PRIMARY KEY, time TEXT NOT NULL, kind TEXT NOT NULL, workspace TEXT,
    member TEXT, body TEXT NOT NULL, leaf TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_by_member ON audit_records (workspace, member, time);
CREATE INDEX IF NOT EXISTS audit_by_time ON audit_records (time);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    tree_size INTEGER PRIMARY KEY, root_hash TEXT NOT NULL, time TEXT NOT NULL,
    public_key TEXT NOT NULL, signature TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS budgets (
    workspace TEXT NOT NULL, member TEXT NOT NULL, epsilon_total REAL NOT NULL,
    delta_total REAL NOT NULL, refresh TEXT NOT NULL, PRIMARY KEY (workspace, member));
CREATE TABLE IF NOT EXISTS workspaces (
    name TEXT PRIMARY KEY, policy_id TEXT NOT NULL, epsilon REAL NOT NULL, delta REAL NOT NULL,
    refresh TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scenarios (
    id TEXT NOT NULL, version INTEGER NOT NULL, title TEXT NOT NULL,
    content_hash TEXT NOT NULL, text TEXT NOT NULL, datasets TEXT NOT NULL,
    reviewer TEXT NOT NULL, reference TEXT NOT NULL, reviewed TEXT NOT NULL,
    source TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (id, version));
CREATE TABLE IF NOT EXISTS members (
    workspace TEXT NOT NULL, member TEXT NOT NULL, added TEXT NOT NULL,
    PRIMARY KEY (workspace, member));
CREATE INDEX IF NOT EXISTS members_by_member ON members (member);
CREATE TABLE IF NOT EXISTS charges (
    id TEXT PRIMARY KEY, workspace TEXT NOT NULL, member TEXT NOT NULL, period TEXT NOT NULL,
    epsilon REAL NOT NULL, delta REAL NOT NULL, rho REAL NOT NULL, zcdp_epsilon REAL,
    zcdp_delta REAL, state TEXT NOT NULL, created REAL NOT NULL, opened_seq INTEGER NOT NULL,
    closed_seq INTEGER);
CREATE INDEX IF NOT EXISTS charges_by_member ON charges (workspace, member, period);
CREATE TABLE IF NOT EXISTS requests (
    workspace TEXT NOT NULL, member TEXT NOT NULL, request_id TEXT NOT NULL,
    charge_id TEXT NOT NULL, response TEXT, PRIMARY KEY (workspace, member, request_id));
CREATE INDEX IF NOT EXISTS requests_by_charge ON requests (charge_id);
CREATE TABLE IF NOT EXISTS releases (
    workspace TEXT NOT NULL, member TEXT NOT NULL, replay_key TEXT NOT NULL,
    charge_id TEXT NOT NULL, response TEXT NOT NULL,
    PRIMARY KEY (workspace, member, replay_key));
"""

# The export airlock's tables (``sandbox.exports.records`` reads and writes them); before
# they were a numbered step, the airlock created them when first opened.
_EXPORT_SCHEMA = """
CREATE TABLE IF NOT EXISTS export_requests (
    id TEXT PRIMARY KEY, workspace TEXT NOT NULL, requester TEXT NOT NULL, request_id TEXT,
    title TEXT NOT NULL, purpose TEXT NOT NULL, state TEXT NOT NULL, revision INTEGER NOT NULL,
    policy_id TEXT NOT NULL, policy_version INTEGER, policy_hash TEXT NOT NULL,
    approvals_required INTEGER NOT NULL, min_group_count INTEGER NOT NULL, report TEXT,
    fingerprint TEXT, created TEXT NOT NULL, updated TEXT NOT NULL, released_seq INTEGER,
    bundle BLOB, bundle_sha256 TEXT, UNIQUE (workspace, requester, request_id));
CREATE INDEX IF NOT EXISTS export_requests_by_workspace ON export_requests (workspace, state);
CREATE TABLE IF NOT EXISTS export_items (
    export_id TEXT NOT NULL REFERENCES export_requests(id), revision INTEGER NOT NULL,
    position INTEGER NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL,
    media_type TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL, data BLOB,
    meta TEXT NOT NULL, PRIMARY KEY (export_id, revision, position));
CREATE TABLE IF NOT EXISTS export_events (
    export_id TEXT NOT NULL REFERENCES export_requests(id), seq INTEGER NOT NULL,
    event TEXT NOT NULL, actor TEXT NOT NULL, revision INTEGER NOT NULL,
    comment TEXT NOT NULL, time TEXT NOT NULL, PRIMARY KEY (export_id, seq));
CREATE TABLE IF NOT EXISTS export_hits (
    member TEXT NOT NULL, time TEXT NOT NULL, export_id TEXT NOT NULL,
    revision INTEGER NOT NULL, strong INTEGER NOT NULL, weak INTEGER NOT NULL,
    seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS export_hits_by_member ON export_hits (member, time);
"""

# Columns added to ``workspaces`` when operators began provisioning them (sandbox.workspaces);
# a workspace made by an older ``sandbox query --workspace`` has state 'ad-hoc'.
_WORKSPACE_COLUMNS = (
    ("scenario_version", "INTEGER"), ("state", "TEXT NOT NULL DEFAULT 'ad-hoc'"),
    ("expires", "TEXT"), ("created", "TEXT"), ("hub_status", "TEXT"), ("hub_error", "TEXT"),
)


# Added to ``requests`` to tell a retry from a reused id (sandbox.ledger.request_digest);
# requests stored before have none and replay as they did.
_REQUEST_COLUMNS = (("request_digest", "TEXT"),)


# Added to ``charges`` when pure-DP parts began to be accounted in zCDP (dp.compose); NULL
# in older charges, whose pure parts sandbox.dp.Cost derives.
_CHARGE_COLUMNS = (("pure_epsilon", "REAL"), ("pure_rho", "REAL"))

Step = Callable[[Connection], None]


def _create(schema: str) -> Step:
    def step(con: Connection) -> None:
        for stmt in schema.split(";"):  # not executescript: it would commit
            if stmt.strip():
                con.execute(con.ddl(stmt))
    return step


def _add_columns(table: str, columns: tuple[tuple[str, str], ...]) -> Step:
    def step(con: Connection) -> None:
        # a database from before versions were numbered may have some of them already
        have = con.columns(table)
        for name, decl in columns:
            if name not in have:
                con.execute(con.ddl(f"ALTER TABLE {table} ADD COLUMN {name} {decl}"))
    return step


# The schema's history, oldest first: step i brings a database to version i + 1.
# Append only; never edit a step that has shipped.
MIGRATIONS: tuple[Step, ...] = (
    _create(_SCHEMA),
    _add_columns("workspaces", _WORKSPACE_COLUMNS),
    _add_columns("requests", _REQUEST_COLUMNS),
    _add_columns("charges", _CHARGE_COLUMNS),
    _create(_EXPORT_SCHEMA),
)

# Every table, parents before children (what `sandbox state migrate` copies, in order).
TABLES = ("meta", "audit_records", "audit_checkpoints", "budgets", "workspaces", "scenarios",
          "members", "charges", "requests", "releases", "export_requests", "export_items",
          "export_events", "export_hits")


def migrate(con: Connection, location: object) -> None:
    """Bring the database to the latest schema version, each step in its transaction."""
    version = con.schema_version()
    if version > len(MIGRATIONS):
        raise StateError(f"the state database {describe(location)} is at schema version "
                         f"{version}, newer than this version of the sandbox knows "
                         f"({len(MIGRATIONS)})",
                         "run the sandbox version that wrote it, or a newer one")
    for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
        con.begin_write()
        try:
            if con.schema_version() < number:  # not done meanwhile by another process
                step(con)
                con.set_schema_version(number)
        except BaseException:
            con.rollback()
            raise
        con.commit()
