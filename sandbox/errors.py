"""The one exception tree of the sandbox.

Every error carries a stable ``code`` (for machines and the audit log), a
``message`` that names the problem, and a ``hint`` that says what to do. Messages
never contain data values, key material or engine internals.

    SandboxError                      sandbox.error
    ├── ConfigError                   config.invalid
    ├── InputError                    input.invalid
    │   ├── SpecError                 spec.invalid
    │   ├── ConfirmationRequiredError input.confirmation_required
    │   └── IngestError               ingest.failed
    │       ├── MalformedRowError     ingest.malformed_row
    │       ├── TypeMismatchError     ingest.type_mismatch
    │       └── EmptyUnitError        ingest.empty_unit
    ├── KeyStoreError                 keys.error
    │   ├── KeyStoreMissingError      keys.not_initialised
    │   ├── KeyNotFoundError          keys.not_found
    │   ├── KeyDestroyedError         keys.destroyed
    │   ├── KeyInUseError             keys.in_use
    │   └── KeyUnwrapError            keys.unwrap_failed
    ├── VaultError                    vault.error
    │   ├── IntegrityError            vault.integrity
    │   └── VerifyFailedError         vault.verify_failed
    ├── CatalogError                  catalog.error
    │   ├── DatasetNotFoundError      catalog.not_found
    │   └── CatalogCorruptError       catalog.corrupt
    ├── EngineError                   engine.error
    ├── AuditFailedError              audit.failed
    └── ProofInvalidError             audit.proof_invalid
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable
from typing import TextIO

from .display import caret, printable


class SandboxError(Exception):
    """Base of every error the sandbox raises on purpose."""

    code = "sandbox.error"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "hint": self.hint}

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class ConfigError(SandboxError):
    code = "config.invalid"


class InputError(SandboxError):
    code = "input.invalid"


class SpecError(InputError):
    """A dataset spec file is invalid; ``problems`` lists every problem found."""

    code = "spec.invalid"

    def __init__(self, message: str, hint: str | None = None, problems: list[str] | None = None):
        super().__init__(message, hint)
        self.problems = problems or [message]


class ConfirmationRequiredError(InputError):
    """A destructive command was not confirmed (no terminal to ask on, or the answer was no)."""

    code = "input.confirmation_required"


class IngestError(InputError):
    code = "ingest.failed"


class MalformedRowError(IngestError):
    code = "ingest.malformed_row"


class TypeMismatchError(IngestError):
    code = "ingest.type_mismatch"


class EmptyUnitError(IngestError):
    """Rows without a privacy unit: they would all count as one person."""

    code = "ingest.empty_unit"


class KeyStoreError(SandboxError):
    code = "keys.error"


class KeyStoreMissingError(KeyStoreError):
    code = "keys.not_initialised"


class KeyNotFoundError(KeyStoreError):
    code = "keys.not_found"


class KeyDestroyedError(KeyStoreError):
    code = "keys.destroyed"


class KeyInUseError(KeyStoreError):
    """A master key still wraps keys in use, so destroying it would lose them."""

    code = "keys.in_use"


class KeyUnwrapError(KeyStoreError):
    code = "keys.unwrap_failed"


class VaultError(SandboxError):
    code = "vault.error"


class IntegrityError(VaultError):
    code = "vault.integrity"


class VerifyFailedError(VaultError):
    """`dataset verify` found problems; the hint follows their cause."""

    code = "vault.verify_failed"


class CatalogError(SandboxError):
    code = "catalog.error"


class DatasetNotFoundError(CatalogError):
    code = "catalog.not_found"


class CatalogCorruptError(CatalogError):
    code = "catalog.corrupt"


class EngineError(SandboxError):
    code = "engine.error"


class AuditFailedError(SandboxError):
    """The audit log does not verify (edited, removed, inserted or reordered records)."""

    code = "audit.failed"


class ProofInvalidError(SandboxError):
    """An inclusion proof does not prove its record."""

    code = "audit.proof_invalid"


def suggest(name: str, known: Iterable[str], what: str) -> str:
    """A hint for an unknown name: the closest known one, then what is known."""
    names = sorted(set(known))
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    listed = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "") or "none yet"
    return (f"did you mean {close[0]!r}? " if close else "") + f"known {what}: {listed}"


def error_lines(exc: SandboxError, sql: str | None = None) -> list[str]:
    """An error as a terminal shows it: ``error [code]: message``, a spec's problems, and
    ``hint:`` last. A refusal the gate located also names its line and column and, given
    the SQL, shows that line with a caret under the refused part. One format for every
    entry point (the `sandbox` command, the service's start-up), so they cannot drift."""
    where = getattr(exc, "position", None)
    at = f" (line {where[0]}, column {where[1]})" if where else ""
    problems = getattr(exc, "problems", None) or []  # a spec's or a policy's
    problems = problems if len(problems) > 1 else []
    message = exc.message
    if problems and message.endswith(joined := "; ".join(problems)):
        message = message.removesuffix(joined).rstrip(": ")  # listed below, once
    lines = [f"error [{exc.code}]: {printable(message)}{at}"]
    lines += [f"  - {printable(p)}" for p in problems]
    if where and sql is not None:
        lines += [f"  {line}" for line in caret(sql, *where)]
    if exc.hint:
        lines.append(f"hint: {printable(exc.hint)}")
    return lines


def print_error(exc: SandboxError, file: TextIO | None = None) -> None:
    """Print an error's lines to standard error (or ``file``), without colour."""
    for line in error_lines(exc):
        print(line, file=file or sys.stderr)
