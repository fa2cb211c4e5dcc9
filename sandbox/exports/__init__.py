"""The export airlock: nothing leaves the platform except through a reviewed export.

A developer asks to take out frames and files (``FrameItem``, ``FileItem``); automatic
checks (``run_checks``) catch what must never leave and flag what a person must look at;
auditors review (``ExportStore.decide``); the released export is a signed bundle whose
contents anyone can verify against the audit log (``verify_bundle``). See docs/exports.md.

Importing this package loads only the error classes: a notebook kernel that sends an
export (``sandbox.exports.wire``) must not pull in the store, the checks, SQLite or
cryptography. Every other name is imported on first use (PEP 562). The keyed identifier
index is built beside the vault (``sandbox.identifier_index``); ``IdentifierIndex``,
``build_index`` and ``ensure_indexes`` are re-exported from there for callers that wire
the airlock up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    BundleInvalidError,
    DuplicateApprovalError,
    ExportBlockedError,
    ExportDummyError,
    ExportError,
    ExportHeldError,
    ExportInputError,
    ExportNotFoundError,
    ExportQuotaError,
    ExportRevokedError,
    ExportStateError,
    IdentifierIndexError,
    NotRequesterError,
    SelfApprovalError,
)

if TYPE_CHECKING:
    from ..identifier_index import IdentifierIndex, build_index, ensure_indexes
    from .bundle import BundleReport, verify_bundle
    from .checks import (
        CONFIDENTIAL_RULES,
        RULES,
        RULES_VERSION,
        CheckContext,
        CheckReport,
        Fingerprint,
        Limits,
        ReleaseRecord,
        RuleResult,
        run_checks,
    )
    from .events import EXPORT_KINDS
    from .identifiers import normalise
    from .items import ExportItem, FileItem, FrameItem
    from .sources import StateReleases, gate_count_columns, state_context
    from .store import ExportRequest, ExportStore
    from .wire import item_from_dict, item_to_dict

# name -> module that defines it (relative to this package, or absolute)
_LAZY: dict[str, str] = {
    **dict.fromkeys(("BundleReport", "verify_bundle"), ".bundle"),
    **dict.fromkeys(("CONFIDENTIAL_RULES", "RULES", "RULES_VERSION", "CheckContext",
                     "CheckReport", "Fingerprint", "Limits", "ReleaseRecord", "RuleResult",
                     "run_checks"), ".checks"),
    "EXPORT_KINDS": ".events",
    "normalise": ".identifiers",
    **dict.fromkeys(("ExportItem", "FileItem", "FrameItem"), ".items"),
    **dict.fromkeys(("item_from_dict", "item_to_dict"), ".wire"),
    **dict.fromkeys(("StateReleases", "gate_count_columns", "state_context"), ".sources"),
    **dict.fromkeys(("ExportRequest", "ExportStore"), ".store"),
    **dict.fromkeys(("IdentifierIndex", "build_index", "ensure_indexes"),
                    "sandbox.identifier_index"),
}


def __getattr__(name: str) -> Any:
    """Import the module defining ``name`` when it is first asked for."""
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "CONFIDENTIAL_RULES",
    "EXPORT_KINDS",
    "RULES",
    "RULES_VERSION",
    "BundleInvalidError",
    "BundleReport",
    "CheckContext",
    "CheckReport",
    "DuplicateApprovalError",
    "ExportBlockedError",
    "ExportDummyError",
    "ExportError",
    "ExportHeldError",
    "ExportInputError",
    "ExportItem",
    "ExportNotFoundError",
    "ExportQuotaError",
    "ExportRequest",
    "ExportRevokedError",
    "ExportStateError",
    "ExportStore",
    "FileItem",
    "Fingerprint",
    "FrameItem",
    "IdentifierIndex",
    "IdentifierIndexError",
    "Limits",
    "NotRequesterError",
    "ReleaseRecord",
    "RuleResult",
    "SelfApprovalError",
    "StateReleases",
    "build_index",
    "ensure_indexes",
    "gate_count_columns",
    "item_from_dict",
    "item_to_dict",
    "normalise",
    "run_checks",
    "state_context",
    "verify_bundle",
]
