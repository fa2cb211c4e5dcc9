"""`sandbox audit`: read, verify, checkpoint, prove and report on the audit log (审计日志)."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

from .. import audit as auditlog
from ..audit import parse_when
from ..errors import AuditFailedError, InputError, ProofInvalidError
from ..report import key_fingerprint
from .common import (
    Context,
    clean,
    current_actor,
    member_option,
    opened_state,
    pass_ctx,
    read_json,
    write_out,
)


@click.group("audit")
def audit_group() -> None:
    """The tamper-evident audit log (审计日志): read, verify, checkpoint, prove, report."""


def _when_option(name: str, help: str) -> Callable[[Any], Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        return None if value is None else parse_when(value, name, end=name == "--until")

    return click.option(name, default=None, callback=callback, help=help)


def kind_prefixes() -> list[str]:
    """The record families ``--kind`` accepts besides exact kinds ("query.", "export.")."""
    return sorted({k[:i + 1] for k in auditlog.KINDS for i, ch in enumerate(k) if ch == "."})


def check_kind(kind: str) -> str:
    """``--kind`` as given, or an InputError listing the kinds and families."""
    if kind in auditlog.KINDS or kind in kind_prefixes():
        return kind
    raise InputError(f"unknown audit record kind {clean(kind, 40)!r}",
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
        text = f"{r.get('rule')}{' · dummy data' if r.get('dummy') else ''} · {r.get('sql')}"
    elif kind == "query.dummy":
        outcome = (f"release {r.get('release_id')}" if r.get("release_id") else
                   str(r.get("error_code")))
        text = f"dummy data, free · {outcome} · {r.get('sql')}"
    elif kind == "query.replayed":
        text = f"release {r.get('release_id')} again, free · {r.get('sql')}"
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
        from ..report import operation_summary

        text = operation_summary(r)
    return (f"by {r['actor']} · " if r.get("actor") else "") + text


def _num(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, int | float) and not isinstance(x, bool) else "-"


LOG_COLUMNS = (("seq", 6), ("time", 19), ("kind", 17), ("workspace", 20), ("member", 14),
               ("summary", 72))
UNCUT = ("kind", "workspace", "member")  # names are never cut: a long one pushes its line


def _log_table_line(r: dict[str, Any]) -> str:
    from ..report import short_time

    cells = {"seq": r.get("seq"), "time": short_time(r.get("time")), "kind": r.get("kind"),
             "workspace": r.get("workspace") or "-", "member": r.get("member") or "-",
             "summary": summary(r)}
    return "  ".join((clean(cells[c]) if c in UNCUT else clean(cells[c], w)).ljust(w)
                     for c, w in LOG_COLUMNS).rstrip()


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
    state.record("audit.read", actor=current_actor(), workspace=workspace, what=what,
                 filters=filters)


@audit_group.command("log")
@click.option("--workspace", default=None, help="Only records of this workspace.")
@member_option(False, "Only records about this member.")
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
    from ..ledger import SqliteLedger

    if since and until and since >= until:
        raise InputError("--since is not before --until", "swap them, or widen the range")
    filters = {"workspace": workspace, "member": member, "kind": kind, "since": since,
               "until": until}
    with opened_state(c) as state:
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
        return auditlog.Checkpoint.from_dict(read_json(path, "checkpoint", hint))
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
    report: auditlog.VerifyReport = state.verify()
    if not report.ok:
        _print_verification(report, auditlog.public_hex(state.public_key), None)
        raise _failed(report)
    return report


@audit_group.command("verify")
@click.option("--checkpoint", "checkpoint_path", default=None,
              type=click.Path(dir_okay=False, path_type=Path),
              help="A checkpoint file you kept (`sandbox audit checkpoint`): also prove that no "
                   "record it covers was changed or cut off.")
@click.option("--database", "database", default=None,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Verify a copy of the state database (state.sqlite) instead of this home's, "
                   "read-only and without the key store; needs --public-key.")
@click.option("--public-key", "public_key", default=None,
              help="With --database: the log's Ed25519 public key (64 hex digits, printed as "
                   "'signing key' by `sandbox audit verify`).")
@pass_ctx
def audit_verify(c: Context, checkpoint_path: Path | None, database: Path | None,
                 public_key: str | None) -> None:
    """Recompute every record hash, the chain, the Merkle tree and every signed checkpoint."""
    external = _load_checkpoint(checkpoint_path) if checkpoint_path else None
    if database is not None or public_key is not None:
        if database is None or public_key is None:
            raise InputError("--database and --public-key go together",
                             "give both to verify a copy away from the key store")
        from ..state import State

        state = State(database, _pinned_key(public_key))
        try:
            report = state.verify(external)
        finally:
            state.close()
        _print_verification(report, public_key.strip().lower(), external)
        if not report.ok:
            raise _failed(report)
        return
    with opened_state(c) as state:
        report = state.verify(external)
        _print_verification(report, auditlog.public_hex(state.public_key), external)
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
    with opened_state(c) as state:
        _verified(state)
        cp = state.checkpoint()
    write_out(out, (json.dumps(cp.to_dict(), indent=2) + "\n").encode(), 0o644)
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
    with opened_state(c) as state:
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
            write_out(out, text.encode(), 0o644)
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
    key = clean(cp.get("public_key"), 80)
    click.echo(f"record #{clean(rec.get('seq'))}: {clean(rec.get('kind'), 40)} at "
               f"{clean(rec.get('time'), 40)}")
    click.echo(f"checkpoint: {clean(cp.get('tree_size'))} records, root "
               f"{clean(cp.get('root_hash'), 80)}, signed {clean(cp.get('time'), 40)}")
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
    doc = read_json(file, "proof", hint)
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
    from ..ledger import SqliteLedger
    from ..report import period_bounds, render

    start, end = period_bounds(period)
    since, until = (t.isoformat(timespec="microseconds") for t in (start, end))
    with opened_state(c) as state:
        ledger = SqliteLedger.existing(state, workspace)
        budgets = {m: ledger.balance(m) for m in ledger.members()}
        records = [*state.records(workspace=workspace, since=since, until=until),
                   *state.records(kind="key.", since=since, until=until),
                   *state.records(kind="dataset.", since=since, until=until)]
        report = state.verify()
        cp = state.checkpoint().to_dict() if report.ok else None  # never sign a bad log
        page = render(records, report, workspace, period,
                      public_key=auditlog.public_hex(state.public_key), checkpoint=cp,
                      budgets=budgets)
        write_out(out, page.encode())
        click.echo(f"report of {workspace} for {period} ({len(records)} record(s); log "
                   f"verification {'ok' if report.ok else 'FAILED'}) written to {out}")
        if not report.ok:
            raise _failed(report)
        _read_record(state, "report", {"workspace": workspace, "period": period}, workspace)


