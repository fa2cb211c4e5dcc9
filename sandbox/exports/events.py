"""The audit record kinds of the export airlock (fields: docs/audit-events.md)."""

from __future__ import annotations

from .. import audit

EXPORT_KINDS: dict[str, tuple[str, ...]] = {
    kind: fields for kind, fields in audit.KINDS.items() if kind.startswith("export.")}
