"""The `sandbox` command: operator and auditor commands over one home directory."""

from __future__ import annotations

import getpass
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from . import __version__
from .catalog import Catalog
from .display import caret, pad, printable, width
from .errors import (
    InputError,
    SandboxError,
    SpecError,
)
from .fsutil import atomic_write_bytes
from .keys import FileKeyStore, Kms, key_info_dicts, load_kms
from .settings import Paths

EXIT_ERROR = 2
EXIT_INTERNAL = 70


@dataclass
class Context:
    paths: Paths

    def catalog(self) -> Catalog:
        self.paths.ensure_home()
        return Catalog(self.paths.catalog_db, self.paths.vault_dir)

    def kms(self) -> Kms:
        return load_kms(self.paths.keystore)

    def state(self):  # type: ignore[no-untyped-def]
        """The state database (audit log and ledger), signing with the key store's key."""
        from .state import State

        self.paths.ensure_home()
        return State(self.paths.state_db, self.kms().audit_signing_key())

    def file_keystore(self) -> FileKeyStore:
        kms = self.kms()
        if not isinstance(kms, FileKeyStore):
            raise kms._read_only()
        return kms


pass_ctx = click.make_pass_decorator(Context)


class SandboxGroup(click.Group):
    """Turns every SandboxError into a one-line message and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SandboxError as exc:
            _echo_error(exc)
            ctx.exit(EXIT_ERROR)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted; nothing was registered", err=True)
            ctx.exit(130)
        except BrokenPipeError:  # the reader went away (`sandbox audit log | head`)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(0)
        except Exception as exc:
            if os.environ.get("SANDBOX_DEBUG") == "1":
                traceback.print_exc()
            click.secho(f"internal error: {type(exc).__name__}", fg="red", err=True)
            click.echo("hint: set SANDBOX_DEBUG=1 to see the traceback, and report it", err=True)
            ctx.exit(EXIT_INTERNAL)


@click.group(cls=SandboxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sandbox")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="State directory (catalog, vault). Default: $SANDBOX_HOME or "
                   "~/.local/share/sandbox.")
@click.option("--keystore", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Key store directory, outside the home. Default: $SANDBOX_KEYSTORE or "
                   "~/.config/sandbox/keystore.")
@click.pass_context
def main(ctx: click.Context, home: Path | None, keystore: Path | None) -> None:
    """Privacy-preserving data sandbox (数据沙箱): usable but invisible data (可用不可见)."""
    try:
        ctx.obj = Context(Paths.resolve(home, keystore))
    except SandboxError as exc:
        click.secho(f"error [{exc.code}]: {exc.message}", fg="red", err=True)
        if exc.hint:
            click.echo(f"hint: {exc.hint}", err=True)
        ctx.exit(EXIT_ERROR)


def _echo_error(exc: SandboxError, sql: str | None = None) -> None:
    """An error as ``error [code]: message``, problems, and ``hint:`` last. A refusal that
    the gate located also names its line and column and, given the SQL, shows that line
    with a caret under the refused part."""
    where = getattr(exc, "position", None)
    at = f" (line {where[0]}, column {where[1]})" if where else ""
    click.secho(f"error [{exc.code}]: {printable(exc.message)}{at}", fg="red", err=True)
    if isinstance(exc, SpecError) and len(exc.problems) > 1:
        for p in exc.problems:
            click.echo(f"  - {p}", err=True)
    if where and sql is not None:
        for line in caret(sql, *where):
            click.echo(f"  {line}", err=True)
    if exc.hint:
        click.echo(f"hint: {printable(exc.hint)}", err=True)


def _print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str],
                 upper: bool = True) -> None:
    """Aligned columns, measured in display width so CJK text lines up."""
    if not rows:
        click.echo("(none)")
        return
    cells = [[printable(str(r.get(c, ""))) for c in columns] for r in rows]
    heads = [printable(c.upper() if upper else c) for c in columns]
    widths = [max(width(h), *(width(row[i]) for row in cells)) for i, h in enumerate(heads)]
    for row in [heads, *cells]:
        click.echo("  ".join(pad(t, w) for t, w in zip(row, widths, strict=True)).rstrip())


def _emit(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(list(rows), ensure_ascii=False, indent=2))
    else:
        _print_table(rows, columns)


format_option = click.option("--format", "fmt", type=click.Choice(["table", "json"]),
                             default="table", show_default=True, help="Output format.")




MEMBER_MAX = 64


def _actor() -> str:
    """The OS user running this command: the actor of the audit records it writes."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return f"uid:{os.getuid()}"


@contextmanager
def _opened_state(c: Context) -> Iterator[Any]:
    state = c.state()
    try:
        yield state
    finally:
        state.close()


def _audit(c: Context, kind: str, **fields: Any) -> int:
    """Record an operator action that has just succeeded; returns the record number."""
    with _opened_state(c) as state:
        return int(state.record(kind, actor=_actor(), **fields))


def _clean(text: Any, limit: int | None = None) -> str:
    """One line of untrusted text safe for a terminal: no control characters."""
    out = "".join(ch if ch.isprintable() else " " for ch in str(text))
    out = " ".join(out.split())
    if limit is not None and len(out) > limit:
        out = out[:limit - 1] + "…"
    return out


def check_member(name: str) -> str:
    """A member name: 1-64 printable characters, no whitespace."""
    if (not name or len(name) > MEMBER_MAX or not name.isprintable()
            or any(ch.isspace() for ch in name)):
        raise InputError(f"invalid member name {name[:MEMBER_MAX + 8]!r}",
                         f"a member name is 1 to {MEMBER_MAX} printable characters without "
                         "spaces, e.g. alice or zhang.san")
    return name


def _member_option(required: bool, help: str) -> Callable[[Any], Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        return None if value is None else check_member(value)

    return click.option("--member", required=required, default=None, callback=callback,
                        help=help)


def _write_out(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write an output file atomically, or fail with a clear error."""
    try:
        atomic_write_bytes(path, data, mode)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}",
                         "choose a writable --out path in an existing directory") from None


def _read_json(path: Path, what: str, hint: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{what} file {path} not found", hint) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not valid JSON"
        raise InputError(f"{path} is not a readable {what} file ({reason})", hint) from None


# -- keys ------------------------------------------------------------------------
@main.group()
def keys() -> None:
    """Master keys: create, list, rotate, destroy (密钥管理)."""


@keys.command("init")
@pass_ctx
def keys_init(c: Context) -> None:
    """Create the file key store with a first master key."""
    key_id = FileKeyStore(c.paths.keystore).init()
    click.echo(f"key store created at {c.paths.keystore}; active master key {key_id}")
    click.echo("back up this directory separately from the data: without it the data is lost")


@keys.command("list")
@format_option
@pass_ctx
def keys_list(c: Context, fmt: str) -> None:
    """List master keys and their states (never their material)."""
    rows = key_info_dicts(c.kms())
    from .operations import keys_in_use

    use = keys_in_use(c.catalog())
    for r in rows:
        r["datasets"] = ", ".join(use.get(r["id"], [])) or "-"
    _emit(rows, ["id", "state", "created", "changed", "datasets"], fmt)


@keys.command("rotate")
@pass_ctx
def keys_rotate(c: Context) -> None:
    """New master key; re-wrap every data key (no data rewritten); retire the old key."""
    from .operations import rotate_master_key

    result = rotate_master_key(c.catalog(), c.file_keystore())
    _audit(c, "key.rotated", new_key=result.new_key, retired=result.retired,
           rewrapped=result.rewrapped)
    click.echo(f"active master key is now {result.new_key}; re-wrapped {result.rewrapped} data "
               f"key(s); every file opens; retired: {', '.join(result.retired) or '-'}")


@keys.command("destroy")
@click.argument("key_id")
@click.option("--force", is_flag=True,
              help="Destroy even if datasets still depend on the key (they become unreadable).")
@pass_ctx
def keys_destroy(c: Context, key_id: str, force: bool) -> None:
    """Erase a retired master key (crypto-shredding of data still wrapped under it)."""
    from .operations import keys_in_use

    users = keys_in_use(c.catalog()).get(key_id, [])
    if users and not force:
        raise SandboxError(
            f"master key {key_id} still wraps data keys of {', '.join(users)}",
            "run `sandbox keys rotate` first, or pass --force to make that data unreadable",
        )
    c.file_keystore().destroy(key_id)
    _audit(c, "key.destroyed", key_id=key_id)
    click.echo(f"master key {key_id} destroyed")


# -- datasets --------------------------------------------------------------------
@main.group()
def dataset() -> None:
    """Encrypted datasets and their catalog (数据目录)."""


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int], None]]:
    started = time.monotonic()
    shown = [0.0]

    def update(rows: int) -> None:
        now = time.monotonic()
        if sys.stderr.isatty() and now - shown[0] > 0.2:
            shown[0] = now
            rate = rows / max(now - started, 1e-9)
            click.echo(f"\r{label}: {rows:,} rows ({rate:,.0f} rows/s)", err=True, nl=False)

    yield update
    if sys.stderr.isatty():
        click.echo("", err=True)


@dataset.command("add")
@click.argument("name")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--spec", "spec_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="YAML spec classifying every column (see docs/dataset-spec.md).")
@pass_ctx
def dataset_add(c: Context, name: str, path: Path, spec_path: Path) -> None:
    """Encrypt a CSV or Parquet file and register it as NAME (re-adding makes a new version)."""
    from .ingest import ingest
    from .spec import load_spec, validate_name

    validate_name(name)
    spec = load_spec(spec_path, name_override=name)
    catalog, kms = c.catalog(), c.kms()
    with _progress(f"ingesting {name}") as progress:
        dv = ingest(catalog, kms, path, spec, progress)
    _audit_added(c, dv)
    click.echo(f"added {dv.name} version {dv.version}: {dv.row_count:,} rows, "
               f"{len(dv.spec.identifier_columns)} identifier column(s) under their own key")


def _audit_added(c: Context, dv: Any) -> None:
    _audit(c, "dataset.added", dataset=dv.name, version=dv.version, rows=dv.row_count,
           sha256=dv.files[0].sha256 if dv.files else None)


@dataset.command("list")
@format_option
@pass_ctx
def dataset_list(c: Context, fmt: str) -> None:
    """List datasets (latest version of each)."""
    catalog = c.catalog()
    rows = []
    for name in catalog.names():
        dv = catalog.get(name)
        rows.append({"name": name, "version": dv.version, "rows": dv.row_count,
                     "columns": len(dv.spec.columns), "public": dv.spec.public,
                     "title": dv.spec.title, "owner": dv.spec.owner})
    _emit(rows, ["name", "version", "rows", "columns", "public", "title", "owner"], fmt)


@dataset.command("show")
@click.argument("name")
@click.option("--version", "version", type=click.IntRange(min=1), default=None,
              help="Version to show (default: latest).")
@format_option
@pass_ctx
def dataset_show(c: Context, name: str, version: int | None, fmt: str) -> None:
    """Show a dataset's metadata, files and column classification."""
    dv = c.catalog().get(name, version)
    if fmt == "json":
        click.echo(json.dumps(dv.to_dict(), ensure_ascii=False, indent=2))
        return
    d = dv.to_dict()
    for key in ("name", "version", "title", "description", "owner", "source", "public",
                "row_count", "created_at"):
        click.echo(f"{key + ':':<12} {d[key]}")
    click.echo("files:")
    for f in dv.files:
        click.echo(f"  {f.file_name}  {f.size:,} bytes  {f.rows:,} rows  sha256 {f.sha256}")
    click.echo("columns:")
    _print_table([c.__dict__ for c in dv.spec.columns],
                 ["name", "type", "role", "grade", "description"])


@dataset.command("verify")
@click.argument("name", required=False)
@click.option("--version", "version", type=click.IntRange(min=1), default=None,
              help="Verify only this version (default: every version).")
@pass_ctx
def dataset_verify(c: Context, name: str | None, version: int | None) -> None:
    """Check every file's SHA-256 and decrypt every page; non-zero exit on any problem."""
    from .ingest import gc_orphans
    from .operations import verify_dataset

    catalog, kms = c.catalog(), c.kms()
    targets = [catalog.get(name, version)] if name else catalog.all_versions()
    bad = 0
    for dv in targets:
        result = verify_dataset(catalog, kms, dv)
        status = "ok" if result.ok else "FAILED"
        click.echo(f"{dv.name}@{dv.version}: {status}")
        for p in result.problems:
            click.echo(f"  - {p}")
        bad += not result.ok
    if not name:
        for orphan in gc_orphans(catalog):
            click.echo(f"removed leftover of an interrupted ingest: {orphan}")
    if bad:
        raise SandboxError(f"{bad} dataset version(s) failed verification",
                           "restore the named files from a backup or ingest the dataset again")


@dataset.command("remove")
@click.argument("name")
@click.option("--version", "version", type=click.IntRange(min=1), default=None,
              help="Remove only this version (default: all versions).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def dataset_remove(c: Context, name: str, version: int | None, yes: bool) -> None:
    """Remove a dataset (or one version) from the catalog and delete its encrypted files."""
    from .operations import remove_dataset

    catalog = c.catalog()
    catalog.get(name, version)
    what = f"{name} version {version}" if version else f"every version of {name}"
    if not yes and not click.confirm(f"remove {what}?", default=False):
        raise SandboxError("nothing removed", "pass --yes to confirm without a prompt")
    removed = remove_dataset(catalog, name, version)
    _audit(c, "dataset.removed", dataset=name, versions=removed)
    click.echo(f"removed {name} version(s) {', '.join(map(str, removed))}")


# -- policies and the gate ----------------------------------------------------------
def _load_policy(c: Context, path: Path):  # type: ignore[no-untyped-def]
    from .policy import load_policy

    return load_policy(path, c.catalog().resolve)


@main.group()
def policy() -> None:
    """Scenario policies (场景策略): what one reviewed kind of use may ask."""


@policy.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@pass_ctx
def policy_check(c: Context, file: Path) -> None:
    """Validate a policy file against the catalog; report every problem with file:line."""
    from .policy import PolicyError

    try:
        pol = _load_policy(c, file)
    except PolicyError as exc:
        for p in exc.problems:
            click.echo(p, err=True)
        raise SandboxError(f"{len(exc.problems)} problem(s) in {file}",
                           "fix them; see docs/policy.md") from None
    tables = ", ".join(f"{a} -> {t.dataset}@{t.version}" for a, t in pol.tables.items())
    click.echo(f"{file}: ok ({pol.id}: {tables}; epsilon per query {pol.privacy.epsilon_default}"
               f" default, {pol.privacy.epsilon_max} max; budget {pol.budget.epsilon})")


policy_option = click.option("--policy", "policy_path", required=True,
                             type=click.Path(dir_okay=False, path_type=Path),
                             help="Scenario policy file (policies/*.yaml).")
epsilon_option = click.option("--epsilon", type=float, default=None,
                              help="Privacy cost of this query (default: the policy's).")


@main.command("explain")
@policy_option
@epsilon_option
@click.option("-f", "--file", "sql_file", default=None,
              type=click.Path(dir_okay=False, allow_dash=True),
              help="Read the query from FILE ('-': standard input) instead of the argument.")
@click.argument("sql", required=False)
@pass_ctx
def explain_cmd(c: Context, policy_path: Path, epsilon: float | None, sql_file: str | None,
                sql: str | None) -> None:
    """Show how the gate would answer SQL: rewrite, plan, cost, accuracy. Spends nothing."""
    from .gate import Gate
    from .sql.refusal import Refusal

    if sql_file is not None and sql is not None:
        raise InputError("give the SQL either as an argument or with --file, not both",
                         "sandbox explain --policy P.yaml -f query.sql")
    if sql_file is None and sql is None:
        raise InputError("no SQL to explain", 'sandbox explain --policy P.yaml "SELECT ..." '
                         "(or -f query.sql)")
    text = _read_sql_file(sql_file) if sql_file is not None else sql
    assert text is not None
    try:
        result = Gate(_load_policy(c, policy_path)).explain(text, epsilon)
    except Refusal as exc:
        _echo_error(exc, text)
        raise click.exceptions.Exit(EXIT_ERROR) from None
    click.echo(json.dumps(result, ensure_ascii=False, indent=2, default=str))


SQL_FILE_MAX = 1_000_000  # bytes; the gate itself refuses queries over 20,000 characters


def _read_sql_file(name: str) -> str:
    """One query from a file or, for '-', standard input (UTF-8, a BOM is allowed)."""
    try:
        if name == "-":
            data = sys.stdin.buffer.read(SQL_FILE_MAX + 1)
        else:
            with open(name, "rb") as fh:
                data = fh.read(SQL_FILE_MAX + 1)
    except FileNotFoundError:
        raise InputError(f"query file {name} not found",
                         "give the path of a file holding one SELECT query") from None
    except OSError as exc:
        raise InputError(f"cannot read query file {name}: {exc.strerror or exc}",
                         "give the path of a readable file holding one SELECT query") from None
    where = "standard input" if name == "-" else f"query file {name}"
    if len(data) > SQL_FILE_MAX:
        raise InputError(f"{where} is larger than {SQL_FILE_MAX:,} bytes",
                         "a file holds one query; for many queries use --batch")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{where} is not UTF-8 text (byte {exc.start + 1})",
                         "save the query as UTF-8") from None
    if not text.strip():
        raise InputError(f"{where} is empty", "write one SELECT query in it")
    return text


@main.command("query")
@policy_option
@_member_option(True, "Member whose budget is charged.")
@click.option("--workspace", default=None,
              help="Workspace whose ledger is charged (default: the policy's id).")
@epsilon_option
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True,
              help="table: values ± 95% intervals and what the release is; json: the release "
                   "as the service answers it; csv: one row per group with <column>_ci95 "
                   "columns and the release's release_id, epsilon, delta, suppressed_groups "
                   "and suppressed_groups_ci95 on every row.")
@click.option("-f", "--file", "sql_file", default=None,
              type=click.Path(dir_okay=False, allow_dash=True),
              help="Read one query from FILE ('-': standard input) instead of the argument.")
@click.option("--batch", is_flag=True,
              help="Read queries from standard input, one per line: plain SQL, or JSON "
                   '{"id": ..., "sql": ..., "epsilon": ...} (id and epsilon optional). '
                   "Write one JSON line per query, each with input_line (and id when "
                   "given). Blank lines and lines starting with -- are skipped.")
@click.option("--dummy", is_flag=True,
              help="Answer from the policy's dummy data: no vault data read, no budget spent.")
@click.argument("sql", required=False)
@pass_ctx
def query_cmd(c: Context, policy_path: Path, member: str, workspace: str | None,
              epsilon: float | None, fmt: str, sql_file: str | None, batch: bool,
              dummy: bool, sql: str | None) -> None:
    """Answer SQL with differentially private noise, in-process over the vault (operators).

    The query is the SQL argument, a file (-f FILE, or -f - for standard input), or, with
    --batch, one query per line of standard input. Every answer and refusal is charged to
    the durable ledger and written to the audit log. With --dummy the same gate answers
    from dummy data instead: free, recorded as query.dummy.
    """
    from functools import partial

    from . import dummy as dummymod
    from .engine import Engine
    from .gate import Gate
    from .ledger import SqliteLedger
    from .sql.refusal import Refusal

    if batch and (sql is not None or sql_file is not None):
        raise InputError("--batch reads its queries from standard input; give no SQL "
                         "argument or --file with it",
                         "sandbox query --batch --policy P.yaml --member M < queries.jsonl")
    if batch and fmt == "csv":
        raise InputError("--batch writes one JSON line per query; --format csv does not "
                         "apply", "drop --format, or run each query on its own with "
                         "--format csv")
    if sql is not None and sql_file is not None:
        raise InputError("give the SQL either as an argument or with --file, not both",
                         "sandbox query ... -f query.sql, or sandbox query ... \"SELECT ...\"")
    if not batch and sql is None and sql_file is None:
        raise InputError("no SQL to answer", 'give it as an argument ("SELECT ..."), in a '
                         "file (-f query.sql, or -f - for standard input), or many with "
                         "--batch")
    if sql_file is not None:
        sql = _read_sql_file(sql_file)
    pol = _load_policy(c, policy_path)
    gate = Gate(pol)
    state = c.state()
    state.recover()
    ledger: Any = SqliteLedger.open(state, workspace or pol.id, pol.id, pol.budget)
    if dummy:
        ledger = dummymod.DummyLedger(ledger.workspace, state, ledger)

    def fail(exc: SandboxError) -> NoReturn:
        if fmt == "json":
            click.echo(json.dumps({"error": exc.to_dict()}, ensure_ascii=False))
        else:
            _echo_error(exc, sql)
        raise click.exceptions.Exit(EXIT_ERROR)

    if not batch:
        assert sql is not None
        try:
            gate.check(sql, epsilon)  # refuse before loading any data
        except SandboxError as exc:
            if isinstance(exc, Refusal):
                ledger.refused(member, sql, exc.code, exc.message)
            fail(exc)
    if dummy:
        engine = Engine.from_arrow([(t.engine_table, t.table, t.privacy_unit)
                                    for t in dummymod.dummy_tables(pol)])
        answer = partial(dummymod.answer, gate)
    else:
        engine = Engine.from_catalog(c.catalog(), c.kms(),
                                     [(t.dataset, t.version) for t in pol.tables.values()])
        answer = gate.answer
    if batch:
        for line_no, raw in enumerate(sys.stdin.buffer, start=1):
            out = _batch_one(answer, engine, ledger, member, raw, line_no, epsilon)
            if out is not None:
                click.echo(json.dumps(out, ensure_ascii=False, default=str))
        return
    assert sql is not None
    try:
        release = answer(sql, member=member, ledger=ledger, executor=engine, epsilon=epsilon)
    except SandboxError as exc:
        fail(exc)
    _print_release(release, fmt)


BATCH_FIELDS = ("id", "sql", "epsilon")
BATCH_ID_MAX = 200


def _batch_request(raw: bytes, line_no: int) -> dict[str, Any] | None:
    """One batch line as {"sql", "epsilon"?, "id"?}; None for a blank or comment line.
    Raises InputError naming the line when it is neither SQL nor a valid JSON request."""
    try:
        text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8").strip()
    except UnicodeDecodeError:
        raise InputError(f"line {line_no} is not UTF-8 text", "save the input as UTF-8") \
            from None
    if not text or text.startswith("--"):
        return None
    if not text.startswith("{"):
        return {"sql": text}
    shape = 'write plain SQL, or {"id": "q1", "sql": "SELECT ...", "epsilon": 0.5}'
    try:
        req = json.loads(text)
    except ValueError:
        raise InputError(f"line {line_no} starts with '{{' but is not valid JSON", shape) \
            from None
    if not isinstance(req, dict):  # pragma: no cover - '{' starts an object or nothing
        raise InputError(f"line {line_no} is not a JSON object", shape)
    unknown = sorted(set(req) - set(BATCH_FIELDS))
    if unknown:
        raise InputError(f"line {line_no} has unknown field(s) {', '.join(map(repr, unknown))}",
                         f"the fields are {', '.join(BATCH_FIELDS)}; {shape}")
    if not isinstance(req.get("sql"), str):
        raise InputError(f"line {line_no} has no string 'sql'", shape)
    eps = req.get("epsilon")
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, int | float)):
        raise InputError(f"line {line_no}: 'epsilon' must be a number", shape)
    rid = req.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, str | int) or
                            (isinstance(rid, str) and not 1 <= len(rid) <= BATCH_ID_MAX)):
        raise InputError(f"line {line_no}: 'id' must be a string of 1 to {BATCH_ID_MAX} "
                         "characters or an integer", shape)
    return req


def _batch_one(answer, engine, ledger, member: str,  # type: ignore[no-untyped-def]
               raw: bytes, line_no: int, epsilon: float | None) -> dict[str, Any] | None:
    """The JSON line answering one batch line: ``input_line``, the caller's ``id`` when
    given, then the release or ``error``; None for a blank or comment line. A line's own
    epsilon wins over --epsilon, which wins over the policy's default."""
    head: dict[str, Any] = {"input_line": line_no}
    try:
        req = _batch_request(raw, line_no)
    except InputError as exc:
        return {**head, "error": exc.to_dict()}
    if req is None:
        return None
    if req.get("id") is not None:
        head["id"] = req["id"]
    eps = req["epsilon"] if req.get("epsilon") is not None else epsilon
    try:
        return {**head, **answer(req["sql"], member=member, ledger=ledger, executor=engine,
                                 epsilon=eps).to_dict()}
    except SandboxError as exc:
        return {**head, "error": exc.to_dict()}


def _key_columns(d: dict[str, Any]) -> set[str]:
    """The release's grouping keys: exact values, released without a mechanism or an
    interval (every noisy or derived column names its mechanism)."""
    mechanisms = d.get("mechanisms") or {}
    return {c for i, c in enumerate(d["columns"])
            if c not in mechanisms and all(ci[i] is None for ci in d["ci95"])}


def _suppressed_text(d: dict[str, Any]) -> str:
    ci = d.get("suppressed_groups_ci95")
    return f"{d['suppressed_groups']:,}" + ("" if ci is None else f" ± {ci:,.0f}")


def _print_release(release, fmt: str) -> None:  # type: ignore[no-untyped-def]
    d = release.to_dict()
    if fmt == "json":
        click.echo(json.dumps(d, ensure_ascii=False, default=str))
        return
    if fmt == "csv":
        _write_csv(d)
        return
    keys = _key_columns(d)
    rows = []
    for row, ci in zip(d["rows"], d["ci95"], strict=True):
        rows.append({c: _fmt_key(v) if c in keys else _fmt_cell(v, h)
                     for c, v, h in zip(d["columns"], row, ci, strict=True)})
    _print_table(rows, d["columns"], upper=False)
    spent = (f"the stored answer of the same question (epsilon {d['epsilon']:.4g} spent then, "
             "nothing now)" if d.get("replayed") else
             f"epsilon spent {d['epsilon']:.4g}, delta {d['delta']:.2g}")
    if d.get("dummy"):
        spent = (f"epsilon spent 0 (on real data: epsilon {d['epsilon']:.4g}, delta "
                 f"{d['delta']:.2g})")
        click.echo("DUMMY DATA: made-up values with the policy's schema, not real records; "
                   "free and never exportable")
    click.echo(f"noisy values (differential privacy), ± = 95% interval; {spent}; groups "
               f"suppressed {_suppressed_text(d)}; release {d['release_id']}")
    bounding = d.get("bounding") or {}
    if bounding.get("units_cut") is not None:
        rows = ", ".join(f"{k} rows of {t}" for t, k in bounding["rows_per_unit"].items())
        click.echo(f"bounding: each unit keeps at most {rows}; about "
                   f"{max(bounding['units_cut'], 0):,} (± {bounding['units_cut_ci95']:,.0f}) "
                   "units had matching rows left out, so counts and sums can be low")


CSV_META = ("release_id", "epsilon", "delta", "suppressed_groups", "suppressed_groups_ci95")


def _write_csv(d: dict[str, Any]) -> None:
    """One row per group: the values, a ``<column>_ci95`` per column, then what the
    release is on every row (so a spreadsheet or ``pandas.read_csv`` keeps it with the
    numbers, and a filtered or pasted part still says where it came from). A meta name
    taken by a result column gets the prefix ``sandbox_``. The same facts go to standard
    error, for the zero-row answer whose CSV is only its header."""
    import csv

    names = d["columns"] + [f"{c}_ci95" for c in d["columns"]]
    meta = []
    for m in CSV_META:
        while m in names:
            m = f"sandbox_{m}"
        meta.append(m)
    meta_values = [d[m] for m in CSV_META]
    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(names + meta)
    for row, ci in zip(d["rows"], d["ci95"], strict=True):
        w.writerow(row + ci + meta_values)
    click.echo(f"release {d['release_id']}: epsilon {d['epsilon']:.4g}, delta "
               f"{d['delta']:.2g}, groups suppressed {_suppressed_text(d)}"
               + (" (DUMMY DATA)" if d.get("dummy") else ""), err=True)


def _fmt_key(value: Any) -> str:
    """A grouping key as written: no thousands separators (years, months, codes) and every
    digit of a non-integral number (a key is exact, not an estimate)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "NULL" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.15g}"


def _fmt_number(value: Any, digits: int) -> str:
    """A noisy number for reading: thousands separators, a few significant digits."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _fmt_cell(value: Any, half: float | None) -> str:
    text = _fmt_number(value, 4)
    return f"{text} ± {_fmt_number(half, 3)}" if half is not None else text


# -- demo ------------------------------------------------------------------------
@main.command("demo-data")
@click.option("--size", type=click.Choice(["tiny", "small", "large"]), default="small",
              show_default=True,
              help="tiny: 2k persons; small: 100k; large: 2M persons and 10M loans.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for the plaintext Parquet files and their specs.")
@click.option("--seed", type=int, default=20261123, show_default=True,
              help="Random seed: the same seed gives byte-identical files.")
def demo_data(size: str, out: Path, seed: int) -> None:
    """Generate a deterministic synthetic city dataset (persons, loans, districts)."""
    from .demo import generate

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SandboxError(f"cannot create {out}: {exc.strerror or exc}",
                           "choose a writable --out directory") from None
    paths = generate(out, size=size, seed=seed)
    for p in paths:
        click.echo(str(p))


@main.command("demo")
@click.option("--size", type=click.Choice(["tiny", "small", "large"]), default="small",
              show_default=True, help="Size of the synthetic data (see demo-data).")
@pass_ctx
def demo(c: Context, size: str) -> None:
    """Set up the demo: key store, synthetic data, encrypted ingest, catalog.

    The plaintext source is generated in a temporary directory and deleted after ingest:
    only encrypted files stay in the home.
    """
    import tempfile

    from .demo import generate
    from .ingest import ingest
    from .spec import load_spec

    c.paths.ensure_home()
    kms = c.kms()
    if isinstance(kms, FileKeyStore) and not kms.path.exists():
        click.echo(f"created key store {c.paths.keystore}, master key {kms.init()}")
    catalog = c.catalog()
    missing = [n for n in ("districts", "persons", "loans") if n not in catalog.names()]
    if missing:
        with tempfile.TemporaryDirectory(prefix="sandbox-demo-") as tmp:
            source = Path(tmp)
            click.echo(f"generating {size} synthetic demo data")
            generate(source, size=size)
            for n in missing:
                with _progress(f"ingesting {n}") as progress:
                    dv = ingest(catalog, kms, source / f"{n}.parquet",
                                load_spec(source / f"{n}.yaml"), progress)
                _audit_added(c, dv)
                click.echo(f"ingested {n}: {dv.row_count:,} rows (encrypted)")
    click.get_current_context().invoke(dataset_list, fmt="table")
    from .demo import NEXT_STEPS

    click.echo(NEXT_STEPS)


# Register the budget, audit, scenario and workspace commands.
from . import cli_audit, cli_export, cli_workspace  # noqa: E402,F401

if __name__ == "__main__":  # pragma: no cover
    main()
