"""What every command group of `sandbox` shares: the context, the error-printing group,
output helpers and the common options.

Group modules import from here and never from ``sandbox.cli`` itself, so the package
``__init__`` can import them all to register their groups without an import cycle.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..catalog import Catalog
from ..display import pad, printable, width
from ..errors import InputError, SandboxError, error_lines
from ..fsutil import atomic_write_bytes
from ..hubsync import HubClient, operator
from ..keys import FileKeyStore, Kms, load_kms
from ..settings import Paths
from ..workspaces import check_member

if TYPE_CHECKING:
    from ..state import State

EXIT_ERROR = 2
EXIT_INTERNAL = 70


@dataclass
class Context:
    """The home and key store one invocation works on; opened lazily per command."""

    paths: Paths
    home_source: str = "the default"  # where the home came from: --home, SANDBOX_HOME

    def dataset_names(self) -> list[str]:
        """The datasets of this home, without creating anything (none: no catalog yet)."""
        if not self.paths.catalog_db.is_file():
            return []
        catalog = Catalog(self.paths.catalog_db, self.paths.vault_dir)
        try:
            return catalog.names()
        finally:
            catalog.close()

    def home_note(self) -> str:
        """Which home is in use and where that came from, for messages."""
        return f"the home {self.paths.home} (from {self.home_source})"

    def catalog(self) -> Catalog:
        self.paths.ensure_home()
        return Catalog(self.paths.catalog_db, self.paths.vault_dir)

    def kms(self) -> Kms:
        return load_kms(self.paths.keystore)

    def state(self) -> State:
        """The state database (audit log and ledger), signing with the key store's key."""
        from ..state import State

        self.paths.ensure_home()
        return State(self.paths.state_db, self.kms().audit_signing_key())

    def file_keystore(self) -> FileKeyStore:
        kms = self.kms()
        if not isinstance(kms, FileKeyStore):
            raise kms._read_only()
        return kms


def home_source(option: Path | None) -> str:
    """Where the home of this invocation comes from (see ``Paths.resolve``)."""
    if option:
        return "--home"
    if os.environ.get("SANDBOX_HOME"):
        return "SANDBOX_HOME"
    return "the default, as neither --home nor SANDBOX_HOME is set"


_MISSING = re.compile(r"dataset '([^']+)'(?: version \d+)? is not in the catalog")


def about_home(c: Context | None, exc: SandboxError) -> SandboxError:
    """A dataset missing from the catalog may mean the wrong home (an empty default one
    when SANDBOX_HOME is not set): say which home was used and what it holds."""
    if c is None or exc.code not in ("catalog.not_found", "policy.invalid"):
        return exc
    texts = [exc.message, *(getattr(exc, "problems", None) or [])]
    missing = {m for t in texts for m in _MISSING.findall(t)}
    try:
        names = c.dataset_names() if missing else []
    except (SandboxError, OSError):
        return exc
    if not missing or missing <= set(names):  # only a version is missing: the home is right
        return exc
    held = (f"holds {len(names)} dataset(s): {', '.join(names[:10])}"
            f"{', ...' if len(names) > 10 else ''}" if names else "is empty (no datasets)")
    fix = ("set SANDBOX_HOME or pass --home to use the home that holds your data"
           if c.home_source.startswith("the default")
           else "check that this is the home that holds your data")
    exc.hint = f"this command used {c.home_note()}, which {held}; {fix}" + (
        f"; {exc.hint}" if names and exc.hint else "")
    return exc


pass_ctx = click.make_pass_decorator(Context)


class SandboxGroup(click.Group):
    """Turns every SandboxError into a one-line message and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SandboxError as exc:
            echo_error(about_home(ctx.find_object(Context), exc))
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


def echo_error(exc: SandboxError, sql: str | None = None) -> None:
    """An error in the one terminal format (``sandbox.errors.error_lines``), its first line
    in red when standard error is a terminal."""
    head, *rest = error_lines(exc, sql)
    click.secho(head, fg="red", err=True)
    for line in rest:
        click.echo(line, err=True)


# -- output ------------------------------------------------------------------------
def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str],
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


def emit(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str) -> None:
    """Rows as a table or as JSON, as ``--format`` asks."""
    if fmt == "json":
        click.echo(json.dumps(list(rows), ensure_ascii=False, indent=2))
    else:
        print_table(rows, columns)


def clean(text: Any, limit: int | None = None) -> str:
    """One line of untrusted text safe for a terminal: no control characters."""
    out = "".join(ch if ch.isprintable() else " " for ch in str(text))
    out = " ".join(out.split())
    if limit is not None and len(out) > limit:
        out = out[:limit - 1] + "…"
    return out


def write_out(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write an output file atomically, or fail with a clear error."""
    try:
        atomic_write_bytes(path, data, mode)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}",
                         "choose a writable --out path in an existing directory") from None


def read_json(path: Path, what: str, hint: str) -> Any:
    """A JSON input file, or an InputError that says what was expected."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{what} file {path} not found", hint) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not valid JSON"
        raise InputError(f"{path} is not a readable {what} file ({reason})", hint) from None


format_option = click.option("--format", "fmt", type=click.Choice(["table", "json"]),
                             default="table", show_default=True, help="Output format.")


# -- the state database and its audit records ---------------------------------------
def current_actor() -> str:
    """The OS user running this command: the actor of the audit records it writes. Read
    from the password database by the effective uid, never from $LOGNAME or $USER (which
    anyone can set to another name)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # no passwd entry (containers)
        return f"uid:{os.geteuid()}"


@contextmanager
def opened_state(c: Context) -> Iterator[Any]:
    """The state database, closed when the block ends (even on an error)."""
    state = c.state()
    try:
        yield state
    finally:
        state.close()


def record_action(c: Context, kind: str, **fields: Any) -> int:
    """Record an operator action that has just succeeded; returns the record number."""
    with opened_state(c) as state:
        return int(state.record(kind, actor=current_actor(), **fields))


# -- members -----------------------------------------------------------------------
def member_option(required: bool, help: str) -> Callable[[Any], Any]:
    """``--member``, checked as it is parsed (before any state is opened)."""
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        return None if value is None else check_member(value)

    return click.option("--member", required=required, default=None, callback=callback,
                        help=help)


# -- the hub -----------------------------------------------------------------------
hub_url_option = click.option("--hub-url", default=None, metavar="URL",
                              help="The hub's REST API (default: $JUPYTERHUB_API_URL or "
                                   "http://127.0.0.1:8081/hub/api).")
hub_token_option = click.option("--hub-token-file", type=click.Path(dir_okay=False,
                                path_type=Path), default=None,
                                help="File holding your hub API token (default: "
                                     "$JUPYTERHUB_API_TOKEN).")


def hub_operator(hub_url: str | None, token_file: Path | None) -> tuple[HubClient, str]:
    """The hub client and the operator its token names (checked for the operator scope)."""
    hub = HubClient.from_env(hub_url, token_file)
    return hub, operator(hub)
