"""`sandbox policy`, `sandbox explain` and `sandbox query`: scenario policies and the gate,
in-process over the vault (operators)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from ..errors import InputError, SandboxError, suggest
from .common import EXIT_ERROR, Context, current_actor, echo_error, member_option, pass_ctx
from .release import print_release

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..engine import Engine
    from ..gate import Release
    from ..ledger import Ledger
    from ..ledger_state import StateLedger
    from ..policy import Policy
    from ..policy_review import DataFigures
    from ..state import State


def load_policy_of(c: Context, path: Path) -> Policy:
    """A policy file, its tables resolved against this home's catalog."""
    from ..policy import load_policy

    return load_policy(path, c.catalog().resolve)


@click.group()
def policy() -> None:
    """Scenario policies (场景策略): what one reviewed kind of use may ask."""


no_data_option = click.option(
    "--no-data", is_flag=True,
    help="Do not read the data to compare the policy's bounds with it (the comparison "
         "decrypts the policy's tables in this process).")


@policy.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@no_data_option
@pass_ctx
def policy_check(c: Context, file: Path, no_data: bool) -> None:
    """Validate a policy file against the catalog; report every problem with file:line.

    Warnings name values far from common practice and, unless --no-data, contribution
    bounds far above what the data itself holds."""
    pol = load_policy_of(c, file)  # policy.invalid lists every problem, sorted by line
    tables = ", ".join(f"{a} -> {t.dataset}@{t.version}" for a, t in pol.tables.items())
    click.echo(f"{file}: ok ({pol.id}: {tables}; epsilon per query {pol.privacy.epsilon_default}"
               f" default, {pol.privacy.epsilon_max} max; budget {pol.budget.epsilon})")
    echo_warnings(pol, None if no_data else c)


def echo_warnings(pol: Policy, c: Context | None = None) -> None:
    """Values far from common practice, and with ``c`` bounds far above the data's own
    figures, for the reviewer (stderr; nothing is refused)."""
    from ..policy_review import data_warnings, warnings

    found = warnings(pol)
    if c is not None:
        found += data_warnings(pol, data_figures(c, pol))
    for w in found:
        click.echo(f"warning: {w}", err=True)


def data_figures(c: Context, pol: Policy) -> DataFigures:
    """The most rows per unit and the column ranges of the policy's tables, read from the
    vault by this operator's process (never shown to developers)."""
    from ..engine import Engine
    from ..policy_review import DataFigures

    engine = Engine.from_catalog(c.catalog(), c.kms(),
                                 [(t.dataset, t.version) for t in pol.tables.values()],
                                 memory_limit="2GB")
    figures = DataFigures()
    for t in pol.tables.values():
        most = engine.most_rows_per_unit(t.engine_table)
        if most is not None:
            figures.most_rows[t.engine_table] = most
        for name in t.columns:
            seen = engine.column_range(t.engine_table, name)
            if seen is not None:
                figures.ranges[(t.engine_table, name)] = seen
    return figures


policy_option = click.option("--policy", "policy_path", required=True,
                             type=click.Path(dir_okay=False, path_type=Path),
                             help="Scenario policy file (policies/*.yaml).")
epsilon_option = click.option("--epsilon", type=float, default=None,
                              help="Privacy cost of this query (default: the policy's).")


@click.command("explain")
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
    from ..gate import Gate
    from ..sql.refusal import Refusal

    if sql_file is not None and sql is not None:
        raise InputError("give the SQL either as an argument or with --file, not both",
                         "sandbox explain --policy P.yaml -f query.sql")
    if sql_file is None and sql is None:
        raise InputError("no SQL to explain", 'sandbox explain --policy P.yaml "SELECT ..." '
                         "(or -f query.sql)")
    text = read_sql_file(sql_file) if sql_file is not None else sql
    assert text is not None
    try:
        result = Gate(load_policy_of(c, policy_path)).explain(text, epsilon)
    except Refusal as exc:
        echo_error(exc, text)
        raise click.exceptions.Exit(EXIT_ERROR) from None
    click.echo(json.dumps(result, ensure_ascii=False, indent=2, default=str))


SQL_FILE_MAX = 1_000_000  # bytes; the gate itself refuses queries over 20,000 characters


def read_sql_file(name: str) -> str:
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


@click.command("query")
@policy_option
@member_option(True, "Member whose budget is charged.")
@click.option("--workspace", default=None,
              help="Ad-hoc ledger to charge: an existing one, or a new one named adhoc:NAME "
                   "(default: adhoc:<policy id>). Provisioned workspaces are queried through "
                   "the service.")
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

    from .. import dummy as dummymod
    from ..engine import Engine
    from ..gate import Gate
    from ..sql.refusal import Refusal

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
        sql = read_sql_file(sql_file)
    pol = load_policy_of(c, policy_path)
    gate = Gate(pol)
    state = c.state()
    state.recover()
    ledger: Any = _adhoc_ledger(state, workspace, pol)
    if dummy:
        ledger = dummymod.DummyLedger(ledger.workspace, state, ledger)

    def fail(exc: SandboxError) -> NoReturn:
        if fmt == "json":
            click.echo(json.dumps({"error": exc.to_dict()}, ensure_ascii=False))
        else:
            echo_error(exc, sql)
        raise click.exceptions.Exit(EXIT_ERROR)

    if not batch:
        assert sql is not None
        try:
            gate.check(sql, epsilon)  # refuse before loading any data
        except SandboxError as exc:
            if isinstance(exc, Refusal):
                ledger.refused(member, sql, exc.code, exc.message)
            fail(exc)
    answer: Callable[..., Release]
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
    print_release(release, fmt)


ADHOC = "adhoc:"  # the names of command-line ledgers, apart from provisioned workspaces


class PolicyMismatchError(SandboxError):
    code = "workspace.policy_mismatch"


def _adhoc_ledger(state: State, workspace: str | None, pol: Policy) -> StateLedger:
    """The ledger a command-line query charges, attributed to the OS user and the policy
    text. It is visibly ad hoc (``adhoc:NAME``), or an older ledger named by ``--workspace``;
    an unknown name that is not ``adhoc:...`` is a typo, not a new ledger with a full
    budget. A ledger named after a reviewed scenario (from before ad-hoc names) is charged
    only under a reviewed version of that scenario's policy text."""
    from ..ledger import attribution
    from ..ledger_state import StateLedger
    from ..scenarios import Scenarios
    from ..workspaces import NAME_RE, WorkspaceNotFoundError

    scenarios = Scenarios(state)
    reviewed = next((v.version for v in scenarios.versions(pol.id)
                     if v.content_hash == pol.content_hash), None)
    known = [r[0] for r in state.con.execute("SELECT name FROM workspaces")]
    name = workspace or ADHOC + pol.id
    if name not in known and not name.startswith(ADHOC):
        raise WorkspaceNotFoundError(
            f"there is no ledger {name[:80]!r}",
            suggest(name, known, "ledgers") + f"; a new ad-hoc ledger is named {ADHOC}NAME, "
            f"and without --workspace the query charges {ADHOC}{pol.id}")
    if name not in known and not NAME_RE.match(name.removeprefix(ADHOC)):
        raise InputError(f"invalid ad-hoc ledger name {name[:80]!r}",
                         f"{ADHOC}NAME with NAME 1-64 lower-case letters, digits, '.', '_' or "
                         "'-', starting with a letter or digit")
    if name in known and name in scenarios.ids() and (pol.id != name or reviewed is None):
        raise PolicyMismatchError(
            f"the ledger {name!r} belongs to the reviewed scenario {name!r}, and this policy "
            "text was never reviewed for it", "use the reviewed policy file, or leave out "
            f"--workspace to charge the ad-hoc ledger {ADHOC}{pol.id}")
    return StateLedger.open(state, name, pol.id, pol.budget, attribution=attribution(
        current_actor(), pol.id, pol.content_hash, reviewed))


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


def _batch_one(answer: Callable[..., Release], engine: Engine, ledger: Ledger, member: str,
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

