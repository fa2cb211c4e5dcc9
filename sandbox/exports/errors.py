"""Errors of the export airlock, part of the one exception tree (``sandbox.errors``).

    SandboxError
    └── ExportError                     export.error
        ├── ExportNotFoundError         export.not_found
        ├── ExportStateError            export.state            (transition not allowed now)
        ├── SelfApprovalError           export.self_approval    (reviewer is the requester)
        ├── DuplicateApprovalError      export.duplicate_approval (two-person rule)
        ├── NotRequesterError           export.not_requester    (only the requester may)
        ├── ExportBlockedError          export.blocked          (automatic checks blocked it)
        ├── ExportHeldError             export.held             (the member's requests are held)
        ├── ExportQuotaError            limits.export_quota     (the member's storage quota is full)
        ├── ExportRevokedError          export.revoked
        ├── ExportInputError            export.invalid          (bad items or fields)
        │   └── ExportDummyError        export.dummy            (an item comes from dummy data)
        ├── IdentifierIndexError        export.index            (identifier index missing/damaged)
        └── BundleInvalidError          export.bundle_invalid   (verify failed)

Messages never contain a matched identifier value, and nothing a requester can receive
says that a value is in the vault: ``export.held`` has one generic message.
"""

from __future__ import annotations

from ..errors import SandboxError


class ExportError(SandboxError):
    code = "export.error"


class ExportNotFoundError(ExportError):
    code = "export.not_found"


class ExportStateError(ExportError):
    code = "export.state"


class SelfApprovalError(ExportError):
    code = "export.self_approval"


class DuplicateApprovalError(ExportError):
    code = "export.duplicate_approval"


class NotRequesterError(ExportError):
    code = "export.not_requester"


class ExportBlockedError(ExportError):
    code = "export.blocked"


class ExportHeldError(ExportError):
    """The member's export requests are held (too many identifier hits, see
    docs/exports.md); the message is the same whatever the reason."""

    code = "export.held"


class ExportQuotaError(ExportError):
    """Storing the submission would take the member's requests awaiting a decision over
    their export storage quota (docs/exports.md); nothing was stored."""

    code = "limits.export_quota"


class ExportRevokedError(ExportError):
    code = "export.revoked"


class ExportInputError(ExportError):
    code = "export.invalid"


class ExportDummyError(ExportInputError):
    """An item comes from dummy data (``sandbox.dummy``): such results describe no one and
    are for developing queries only, so they never leave."""

    code = "export.dummy"


class IdentifierIndexError(ExportError):
    code = "export.index"


class BundleInvalidError(ExportError):
    code = "export.bundle_invalid"
