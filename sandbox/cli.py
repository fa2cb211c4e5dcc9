"""The `sandbox` command: operator and auditor commands over one home directory."""

from __future__ import annotations

import csv
import datetime as dt
import getpass
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from . import __version__
from . import audit as auditlog
from .catalog import Catalog
from .errors import InputError, SandboxError, SpecError
from .fsutil import atomic_write_bytes
from .keys import FileKeyStore, Kms, key_info_dicts, load_kms
from .report import key_fingerprint
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
            click.secho(f"error [{exc.code}]: {exc.message}", fg="red", err=True)
            if isinstance(exc, SpecError) and len(exc.problems) > 1:
                for p in exc.problems:
                    click.echo(f"  - {p}", err=True)
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
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


def _print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str],
                 upper: bool = True) -> None:
    if not rows:
        click.echo("(none)")
        return
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    click.echo("  ".join((c.upper() if upper else c).ljust(w)
                         for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        click.echo("  ".join(str(r.get(c, "")).ljust(w)
                             for c, w in zip(columns, widths, strict=True)).rstrip())


def _emit(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(list(rows), ensure_ascii=False, indent=2))
    else:
        _print_table(rows, columns)


format_option = click.option("--format", "fmt", type=click.Choice(["table", "json"]),
                             default="table", show_default=True, help="Output format.")


class AuditFailedError(SandboxError):
    """The audit log does not verify (edited, removed, inserted or reordered records)."""

    code = "audit.failed"


class ProofInvalidError(SandboxError):
    """An inclusion proof does not prove its record."""

    code = "audit.proof_invalid"


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
    from .errors import DatasetNotFoundError
    from .policy import load_policy

    catalog = c.catalog()

    def resolve(name: str, version: int | None):  # type: ignore[no-untyped-def]
        try:
            dv = catalog.get(name, version)
        except DatasetNotFoundError:
            return None
        return dv.spec, dv.version

    return load_policy(path, resolve)


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
@click.argument("sql")
@pass_ctx
def explain_cmd(c: Context, policy_path: Path, epsilon: float | None, sql: str) -> None:
    """Show how the gate would answer SQL: rewrite, plan, cost, accuracy. Spends nothing."""
    from .gate import Gate

    result = Gate(_load_policy(c, policy_path)).explain(sql, epsilon)
    click.echo(json.dumps(result, ensure_ascii=False, indent=2, default=str))


@main.command("query")
@policy_option
@_member_option(True, "Member whose budget is charged.")
@click.option("--workspace", default=None,
              help="Workspace whose ledger is charged (default: the policy's id).")
@epsilon_option
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True)
@click.option("--batch", is_flag=True,
              help='Read one JSON object per line from standard input ({"sql": ..., '
                   '"epsilon": ...}) and write one JSON result per line.')
@click.argument("sql", required=False)
@pass_ctx
def query_cmd(c: Context, policy_path: Path, member: str, workspace: str | None,
              epsilon: float | None, fmt: str, batch: bool, sql: str | None) -> None:
    """Answer SQL with differentially private noise, in-process over the vault (operators).

    Every answer and refusal is charged to the durable ledger and written to the audit log.
    """
    from .engine import Engine
    from .gate import Gate
    from .ledger import SqliteLedger

    if batch == (sql is not None):
        raise SandboxError("give either SQL or --batch", "see `sandbox query --help`")
    pol = _load_policy(c, policy_path)
    gate = Gate(pol)
    state = c.state()
    state.recover()
    ledger = SqliteLedger.open(state, workspace or pol.id, pol.id, pol.budget)
    if not batch:
        assert sql is not None
        try:
            gate.check(sql, epsilon)  # refuse before loading any data
        except SandboxError as exc:
            from .sql.refusal import Refusal

            if isinstance(exc, Refusal):
                ledger.refused(member, sql, exc.code, exc.message)
            if fmt == "json":
                click.echo(json.dumps({"error": exc.to_dict()}, ensure_ascii=False))
                click.get_current_context().exit(EXIT_ERROR)
            raise
    engine = Engine.from_catalog(c.catalog(), c.kms(),
                                 [(t.dataset, t.version) for t in pol.tables.values()])
    if batch:
        for line_no, line in enumerate(sys.stdin, start=1):
            if not line.strip():
                continue
            click.echo(json.dumps(_batch_one(gate, engine, ledger, member, line, line_no),
                                  ensure_ascii=False, default=str))
        return
    assert sql is not None
    try:
        release = gate.answer(sql, member=member, ledger=ledger, executor=engine,
                              epsilon=epsilon)
    except SandboxError as exc:
        if fmt == "json":
            click.echo(json.dumps({"error": exc.to_dict()}, ensure_ascii=False))
            click.get_current_context().exit(EXIT_ERROR)
        raise
    _print_release(release, fmt)


def _batch_one(gate, engine, ledger, member: str, line: str,  # type: ignore[no-untyped-def]
               line_no: int) -> dict[str, Any]:
    try:
        req = json.loads(line)
        if not isinstance(req, dict) or not isinstance(req.get("sql"), str):
            raise ValueError
        eps = req.get("epsilon")
        if eps is not None and (isinstance(eps, bool) or not isinstance(eps, int | float)):
            raise ValueError
    except ValueError:
        return {"error": {"code": "input.invalid", "line": line_no,
                          "message": f"line {line_no} is not a JSON object with a string 'sql'",
                          "hint": 'write {"sql": "SELECT ...", "epsilon": 0.5}'}}
    try:
        return gate.answer(req["sql"], member=member, ledger=ledger, executor=engine,
                           epsilon=eps).to_dict()
    except SandboxError as exc:
        return {"error": exc.to_dict()}


def _print_release(release, fmt: str) -> None:  # type: ignore[no-untyped-def]
    d = release.to_dict()
    if fmt == "json":
        click.echo(json.dumps(d, ensure_ascii=False, default=str))
        return
    if fmt == "csv":
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(d["columns"] + [f"{c}_ci95" for c in d["columns"]])
        for row, ci in zip(d["rows"], d["ci95"], strict=True):
            w.writerow(row + ci)
        return
    rows = []
    for row, ci in zip(d["rows"], d["ci95"], strict=True):
        rows.append({c: _fmt_cell(v, h) for c, v, h in zip(d["columns"], row, ci, strict=True)})
    _print_table(rows, d["columns"], upper=False)
    click.echo(f"noisy values (differential privacy), ± = 95% interval; epsilon spent "
               f"{d['epsilon']:.4g}, delta {d['delta']:.2g}; groups suppressed "
               f"{d['suppressed_groups']}; release {d['release_id']}")


def _fmt_number(value: Any, digits: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _fmt_cell(value: Any, half: float | None) -> str:
    text = _fmt_number(value, 4)
    return f"{text} ± {_fmt_number(half, 3)}" if half is not None else text


# -- budgets -----------------------------------------------------------------------
@main.group()
def budget() -> None:
    """Privacy budgets (隐私预算) of workspace members: show, grant, set."""


def _workspace_names(state: Any) -> list[str]:
    return [r[0] for r in state.con.execute("SELECT name FROM workspaces ORDER BY 1")]


def _balance_rows(state: Any, workspace: str | None,
                  member: str | None) -> list[dict[str, Any]]:
    from .ledger import SqliteLedger

    rows = []
    for name in [workspace] if workspace else _workspace_names(state):
        ledger = SqliteLedger.existing(state, name)
        members = ledger.members()
        if member is not None:
            members = [member] if workspace or member in members else []
        for m in members:
            rows.append({"workspace": name, "member": m, **ledger.balance(m).to_dict()})
    return rows


def _balance_table_row(r: dict[str, Any]) -> dict[str, Any]:
    return {"workspace": _clean(r["workspace"]), "member": _clean(r["member"]),
            "eps_total": f"{r['epsilon_total']:.4g}", "eps_spent": f"{r['epsilon_spent']:.4g}",
            "eps_remaining": f"{r['epsilon_remaining']:.4g}",
            "delta_total": f"{r['delta_total']:.3g}", "delta_spent": f"{r['delta_spent']:.3g}",
            "delta_remaining": f"{r['delta_remaining']:.3g}",
            "refreshes_on": r["refreshes_on"] or "never"}


@budget.command("show")
@click.option("--workspace", default=None, help="Only this workspace (default: every workspace).")
@_member_option(False, "Only this member (default: every member with a budget or charges).")
@format_option
@pass_ctx
def budget_show(c: Context, workspace: str | None, member: str | None, fmt: str) -> None:
    """Show total, spent and remaining epsilon and delta per workspace and member."""
    with _opened_state(c) as state:
        rows = _balance_rows(state, workspace, member)
    if fmt == "json":
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    _print_table([_balance_table_row(r) for r in rows],
                 ["workspace", "member", "eps_total", "eps_spent", "eps_remaining",
                  "delta_total", "delta_spent", "delta_remaining", "refreshes_on"])


def _change_budget(c: Context, workspace: str, member: str, epsilon: float | None,
                   delta: float | None, add: bool) -> None:
    from .ledger import SqliteLedger

    with _opened_state(c) as state:
        ledger = SqliteLedger.existing(state, workspace)
        if add and delta is not None and ledger.balance(member).delta_total + delta >= 1:
            raise InputError("the delta total would reach 1 or more, which protects nothing",
                             "grant a small delta, e.g. --delta 1e-6")
        b = ledger.set_budget(member, epsilon=epsilon, delta=delta, add=add, actor=_actor())
    verb = "granted more budget to" if add else "set the budget of"
    click.echo(f"{verb} {_clean(member)} in {workspace}: epsilon total {b.epsilon_total:.4g} "
               f"(spent {b.epsilon_spent:.4g}, remaining {b.epsilon_remaining:.4g}), delta "
               f"total {b.delta_total:.3g}; recorded in the audit log")


workspace_required = click.option("--workspace", required=True,
                                  help="Workspace of the member (see `sandbox budget show`).")


@budget.command("grant")
@workspace_required
@_member_option(True, "Member who gets more budget.")
@click.option("--epsilon", type=float, required=True, help="Epsilon to add to the total.")
@click.option("--delta", type=float, default=None, help="Delta to add to the total (default: 0).")
@pass_ctx
def budget_grant(c: Context, workspace: str, member: str, epsilon: float,
                 delta: float | None) -> None:
    """Add epsilon (and delta) to a member's budget; recorded in the audit log."""
    _change_budget(c, workspace, member, epsilon, delta, add=True)


@budget.command("set")
@workspace_required
@_member_option(True, "Member whose budget is set.")
@click.option("--epsilon", type=float, default=None, help="New epsilon total.")
@click.option("--delta", type=float, default=None, help="New delta total (below 1).")
@pass_ctx
def budget_set(c: Context, workspace: str, member: str, epsilon: float | None,
               delta: float | None) -> None:
    """Set a member's epsilon and/or delta totals; recorded in the audit log."""
    if epsilon is None and delta is None:
        raise InputError("nothing to set", "give --epsilon, --delta or both")
    _change_budget(c, workspace, member, epsilon, delta, add=False)


# -- the audit log -------------------------------------------------------------------
@main.group("audit")
def audit_group() -> None:
    """The tamper-evident audit log (审计日志): read, verify, checkpoint, prove, report."""


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_when(text: str, option: str, end: bool = False) -> str:
    """YYYY-MM-DD or ISO 8601 -> the log's UTC time format; a date ``end`` takes its whole day."""
    try:
        if _DATE.match(text):
            t = dt.datetime.combine(dt.date.fromisoformat(text), dt.time(), tzinfo=dt.UTC)
            t += dt.timedelta(days=1) if end else dt.timedelta(0)
        elif "T" in text or " " in text:
            t = dt.datetime.fromisoformat(text)
            t = t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)
        else:
            raise ValueError(text)
    except (ValueError, OverflowError):
        raise InputError(f"{option} {_clean(text, 40)!r} is not a date or time",
                         f"write {option} as YYYY-MM-DD (UTC) or a full ISO 8601 time such as "
                         "2026-11-23T08:00:00Z") from None
    return t.isoformat(timespec="microseconds")


def _when_option(name: str, help: str) -> Callable[[Any], Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        return None if value is None else parse_when(value, name, end=name == "--until")

    return click.option(name, default=None, callback=callback, help=help)


def kind_prefixes() -> list[str]:
    return sorted({k[:i + 1] for k in auditlog.KINDS for i, ch in enumerate(k) if ch == "."})


def check_kind(kind: str) -> str:
    if kind in auditlog.KINDS or kind in kind_prefixes():
        return kind
    raise InputError(f"unknown audit record kind {_clean(kind, 40)!r}",
                     f"use a kind ({', '.join(auditlog.KINDS)}) or a family ending in '.' "
                     f"({', '.join(kind_prefixes())})")


def _kind_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else check_kind(value)


def summary(r: dict[str, Any]) -> str:
    """A short line about one record, for the table format."""
    kind, eps = r.get("kind"), _num(r.get("epsilon"))
    if kind == "query.charged":
        text = f"eps {eps} · {r.get('sql')}"
    elif kind == "query.answered":
        text = f"release {r.get('release_id')} · eps {eps} · {r.get('rows')} row(s)"
    elif kind == "query.refused":
        text = f"{r.get('rule')} · {r.get('sql')}"
    elif kind == "query.failed":
        text = f"{r.get('error_code')} · eps {eps}"
    elif kind in ("query.cancelled", "query.interrupted"):
        text = f"charge {str(r.get('charge_id'))[:12]}" + (f" · eps {eps}" if eps != "-" else "")
    elif kind == "budget.changed":
        text = (f"{r.get('operation')} · eps total {_num(r.get('epsilon_total'))} · delta "
                f"total {_num(r.get('delta_total'))}")
    elif kind == "audit.read":
        filters = {k: v for k, v in (r.get("filters") or {}).items() if v is not None}
        text = f"{r.get('what')}" + (f" {json.dumps(filters, ensure_ascii=False)}"
                                     if filters else "")
    else:
        from .report import operation_summary

        text = operation_summary(r)
    return (f"by {r['actor']} · " if r.get("actor") else "") + text


def _num(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, int | float) and not isinstance(x, bool) else "-"


LOG_COLUMNS = (("seq", 6), ("time", 19), ("kind", 17), ("workspace", 20), ("member", 14),
               ("summary", 72))


def _log_table_line(r: dict[str, Any]) -> str:
    from .report import short_time

    cells = {"seq": r.get("seq"), "time": short_time(r.get("time")), "kind": r.get("kind"),
             "workspace": r.get("workspace") or "-", "member": r.get("member") or "-",
             "summary": summary(r)}
    return "  ".join(_clean(cells[c], w).ljust(w) for c, w in LOG_COLUMNS).rstrip()


def _csv_columns() -> list[str]:
    fields = [f for kind_fields in auditlog.KINDS.values() for f in kind_fields]
    return [*auditlog.COMMON, *dict.fromkeys(f for f in fields if f not in auditlog.COMMON)]


def _csv_cell(value: Any) -> Any:
    if isinstance(value, list | dict):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value  # not a formula when opened in a spreadsheet
    return "" if value is None else value


def _write_log(records: Iterable[dict[str, Any]], fmt: str) -> int:
    """Stream records in a format; returns how many."""
    n, columns = 0, _csv_columns()
    writer = csv.writer(sys.stdout) if fmt == "csv" else None
    if writer:
        writer.writerow(columns)
    for n, r in enumerate(records, start=1):
        if writer:
            writer.writerow([_csv_cell(r.get(col)) for col in columns])
        elif fmt == "jsonl":
            click.echo(auditlog.canonical(r).decode())  # the stored bytes: hash them to check
        else:
            if n == 1:
                click.echo("  ".join(c.upper().ljust(w) for c, w in LOG_COLUMNS).rstrip())
            click.echo(_log_table_line(r))
    if fmt == "table":
        click.echo("(none)" if n == 0 else f"({n} record(s))")
    return n


def _read_record(state: Any, what: str, filters: dict[str, Any],
                 workspace: str | None = None) -> None:
    state.record("audit.read", actor=_actor(), workspace=workspace, what=what, filters=filters)


@audit_group.command("log")
@click.option("--workspace", default=None, help="Only records of this workspace.")
@_member_option(False, "Only records about this member.")
@click.option("--kind", default=None, callback=_kind_callback,
              help="Only this kind (e.g. query.refused) or family ending in '.' (e.g. query.).")
@_when_option("--since", "From this time on: YYYY-MM-DD (start of that day, UTC) or ISO 8601.")
@_when_option("--until", "Before this time: YYYY-MM-DD includes that whole day (UTC); an ISO "
                         "8601 time is exclusive.")
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl", "csv"]), default="table",
              show_default=True,
              help="table: one line per record; jsonl: each record exactly as stored and "
                   "hashed; csv: one column per field (text starting with = + - @ gets a "
                   "leading ').")
@pass_ctx
def audit_log(c: Context, workspace: str | None, member: str | None, kind: str | None,
              since: str | None, until: str | None, fmt: str) -> None:
    """Print audit records, oldest first; the read itself is recorded (audit.read)."""
    from .ledger import SqliteLedger

    if since and until and since >= until:
        raise InputError("--since is not before --until", "swap them, or widen the range")
    filters = {"workspace": workspace, "member": member, "kind": kind, "since": since,
               "until": until}
    with _opened_state(c) as state:
        if workspace is not None:
            SqliteLedger.existing(state, workspace)
        records = state.records(**filters)
        try:
            _write_log(records, fmt)
        finally:  # also when the reader stopped early: what was printed was read
            records.close()  # end the read before writing
            _read_record(state, "log", filters, workspace)


def _load_checkpoint(path: Path) -> auditlog.Checkpoint:
    hint = "use a file written by `sandbox audit checkpoint --out FILE`"
    try:
        return auditlog.Checkpoint.from_dict(_read_json(path, "checkpoint", hint))
    except InputError as exc:
        if exc.message.startswith("this is not"):
            raise InputError(f"{path} is not a sandbox audit checkpoint", hint) from None
        raise


def _key_lines(public_hex: str) -> list[str]:
    return [f"signing key:         {public_hex}",
            f"key fingerprint:     {key_fingerprint(public_hex)}"]


def _print_verification(report: auditlog.VerifyReport, public_hex: str,
                        external: auditlog.Checkpoint | None) -> None:
    yours = f" + your checkpoint at size {external.tree_size}" if external else ""
    for line in (f"records:             {report.records:,}",
                 f"checkpoints checked: {report.checkpoints}{yours}",
                 f"root hash:           {report.root_hash}", *_key_lines(public_hex)):
        click.echo(line)
    if report.ok:
        click.echo("ok")
        return
    first = f"; first bad record: #{report.first_bad}" if report.first_bad is not None else ""
    click.echo(f"FAILED: {len(report.problems)} problem(s){first}")
    for p in report.problems:
        click.echo(f"  - {p}")


def _failed(report: auditlog.VerifyReport) -> AuditFailedError:
    first = f"; first bad record: #{report.first_bad}" if report.first_bad is not None else ""
    more = len(report.problems) - 1
    return AuditFailedError(
        f"the audit log failed verification{first}: {report.problems[0]}"
        + (f" (and {more} more problem(s), listed above)" if more else ""),
        "nothing was written to it; keep a copy of the state database as evidence and "
        "compare it with a backup and with the checkpoints you kept")


def _verified(state: Any) -> auditlog.VerifyReport:
    """Verify before signing anything: never sign the head of a log that fails."""
    report = state.verify()
    if not report.ok:
        _print_verification(report, auditlog.public_hex(state.signer), None)
        raise _failed(report)
    return report


@audit_group.command("verify")
@click.option("--checkpoint", "checkpoint_path", default=None,
              type=click.Path(dir_okay=False, path_type=Path),
              help="A checkpoint file you kept (`sandbox audit checkpoint`): also prove that no "
                   "record it covers was changed or cut off.")
@pass_ctx
def audit_verify(c: Context, checkpoint_path: Path | None) -> None:
    """Recompute every record hash, the chain, the Merkle tree and every signed checkpoint."""
    external = _load_checkpoint(checkpoint_path) if checkpoint_path else None
    with _opened_state(c) as state:
        report = state.verify(external)
        _print_verification(report, auditlog.public_hex(state.signer), external)
        if not report.ok:
            raise _failed(report)
        _read_record(state, "verify", {"checkpoint": str(checkpoint_path)
                                       if checkpoint_path else None,
                                       "records": report.records, "root_hash": report.root_hash})


out_option = click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
                          help="File to write.")


@audit_group.command("checkpoint")
@out_option
@pass_ctx
def audit_checkpoint(c: Context, out: Path) -> None:
    """Sign the current tree head and save it, for the auditor to keep off this machine."""
    with _opened_state(c) as state:
        _verified(state)
        cp = state.checkpoint()
    _write_out(out, (json.dumps(cp.to_dict(), indent=2) + "\n").encode(), 0o644)
    click.echo(f"checkpoint of {cp.tree_size:,} records written to {out}")
    for line in (f"root hash:           {cp.root_hash}", *_key_lines(cp.public_key)):
        click.echo(line)
    click.echo("keep it off this machine; later run `sandbox audit verify --checkpoint FILE`")


@audit_group.command("proof")
@click.argument("record_id", type=click.IntRange(min=1))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File to write the proof to (default: standard output).")
@pass_ctx
def audit_proof(c: Context, record_id: int, out: Path | None) -> None:
    """Prove that record RECORD_ID is in the log (JSON anyone can check with check-proof)."""
    with _opened_state(c) as state:
        size = state.size()
        if record_id > size:
            raise InputError(f"there is no audit record #{record_id}",
                             f"record numbers run from 1 to {size}" if size else
                             "the audit log is empty")
        _verified(state)
        doc = state.proof(record_id)
        text = json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
        if out is None:
            click.echo(text, nl=False)
        else:
            _write_out(out, text.encode(), 0o644)
            click.echo(f"proof of record #{record_id} against a signed checkpoint of "
                       f"{doc['tree_size']:,} records written to {out}")
        _read_record(state, "proof", {"seq": record_id})


def _pinned_key(text: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text.strip()))
    except ValueError:
        raise InputError("--public-key is not an Ed25519 public key",
                         "give the 64 hex digits printed as 'signing key' by "
                         "`sandbox audit verify`") from None


def _proof_problem(doc: dict[str, Any], pinned: Any) -> str:
    """Why check_proof said no, in words."""
    try:
        cp = auditlog.Checkpoint.from_dict(doc.get("checkpoint"))
    except InputError:
        return "its checkpoint is malformed"
    if not cp.verify_signature(pinned):
        return "the checkpoint's signature does not verify" + (
            " with the key you pinned" if pinned else "")
    try:
        leaf = auditlog.record_leaf(doc["record"]).hex()
    except (KeyError, TypeError, ValueError):
        return "its record cannot be hashed"
    if leaf != doc.get("leaf_hash"):
        return "the record does not match its leaf hash (altered)"
    if doc.get("tree_size") != cp.tree_size:
        return "its tree size differs from the signed checkpoint's"
    return "the audit path does not lead from the record to the signed root hash"


def _describe_proof(doc: dict[str, Any], pinned_hex: str | None) -> None:
    rec, cp = doc["record"], doc["checkpoint"]
    key = _clean(cp.get("public_key"), 80)
    click.echo(f"record #{_clean(rec.get('seq'))}: {_clean(rec.get('kind'), 40)} at "
               f"{_clean(rec.get('time'), 40)}")
    click.echo(f"checkpoint: {_clean(cp.get('tree_size'))} records, root "
               f"{_clean(cp.get('root_hash'), 80)}, signed {_clean(cp.get('time'), 40)}")
    click.echo(f"signing key:     {key}")
    click.echo(f"key fingerprint: {key_fingerprint(key)}")
    if pinned_hex is None:
        click.echo("compare this fingerprint with the one you trust, or pin the key with "
                   "--public-key")
    elif pinned_hex.strip().lower() == key.lower():
        click.echo("the proof's key is the key you pinned")
    else:
        click.echo(f"the proof names another key than the one you pinned "
                   f"({key_fingerprint(pinned_hex.strip())})")


@audit_group.command("check-proof")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--public-key", "public_key", default=None,
              help="Hex Ed25519 public key you trust: the checkpoint must be signed by it.")
def audit_check_proof(file: Path, public_key: str | None) -> None:
    """Check an inclusion proof offline: 'valid' (exit 0) or 'INVALID' (exit 2). Needs no keys."""
    hint = "use a file written by `sandbox audit proof RECORD_ID --out FILE`"
    pinned = _pinned_key(public_key) if public_key else None
    doc = _read_json(file, "proof", hint)
    if not (isinstance(doc, dict) and isinstance(doc.get("record"), dict)
            and isinstance(doc.get("checkpoint"), dict)):
        raise InputError(f"{file} is not a sandbox audit proof", hint)
    _describe_proof(doc, public_key)
    if auditlog.check_proof(doc, pinned):
        click.echo("valid")
        return
    click.echo("INVALID")
    raise ProofInvalidError(f"the proof is INVALID: {_proof_problem(doc, pinned)}",
                            "this record is not proven to be in the log; ask for a new proof "
                            "and compare the record with the one you were given")


@audit_group.command("report")
@click.option("--workspace", required=True, help="Workspace to report on.")
@click.option("--period", required=True, help="Month to report on, YYYY-MM (UTC).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="HTML file to write (one self-contained page).")
@pass_ctx
def audit_report(c: Context, workspace: str, period: str, out: Path) -> None:
    """Write a monthly HTML report of a workspace: decisions, refusals, spend, releases."""
    from .ledger import SqliteLedger
    from .report import period_bounds, render

    start, end = period_bounds(period)
    since, until = (t.isoformat(timespec="microseconds") for t in (start, end))
    with _opened_state(c) as state:
        SqliteLedger.existing(state, workspace)
        records = [*state.records(workspace=workspace, since=since, until=until),
                   *state.records(kind="key.", since=since, until=until),
                   *state.records(kind="dataset.", since=since, until=until)]
        report = state.verify()
        cp = state.checkpoint().to_dict() if report.ok else None  # never sign a bad log
        page = render(records, report, workspace, period,
                      public_key=auditlog.public_hex(state.signer), checkpoint=cp)
        _write_out(out, page.encode())
        click.echo(f"report of {workspace} for {period} ({len(records)} record(s); log "
                   f"verification {'ok' if report.ok else 'FAILED'}) written to {out}")
        if not report.ok:
            raise _failed(report)
        _read_record(state, "report", {"workspace": workspace, "period": period}, workspace)


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


if __name__ == "__main__":  # pragma: no cover
    main()
