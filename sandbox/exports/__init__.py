"""The export airlock: nothing leaves the platform except through a reviewed export.

A developer asks to take out frames and files (``FrameItem``, ``FileItem``); automatic
checks (``run_checks``) catch what must never leave and flag what a person must look at;
auditors review (``ExportStore.decide``); the released export is a signed bundle whose
contents anyone can verify against the audit log (``verify_bundle``). See docs/exports.md.
"""

from __future__ import annotations

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
from .events import EXPORT_KINDS
from .identifiers import IdentifierIndex, build_index, ensure_indexes, normalise
from .items import ExportItem, FileItem, FrameItem, item_from_dict, item_to_dict
from .sources import StateReleases, gate_count_columns, state_context
from .store import ExportRequest, ExportStore

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
