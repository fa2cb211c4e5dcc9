"""The auditor console: web pages served by the gate service behind hub OAuth.

TODO: pages (queue, request detail with previews and decisions, history, query log,
budgets, audit-log status) for users whose OAuth token carries custom:sandbox:review.
"""

from __future__ import annotations

from typing import Any


def routes(prefix: str, kwargs: dict[str, Any]) -> list[tuple[str, Any, dict[str, Any]]]:
    """Tornado handlers under ``{prefix}console/`` (and the OAuth callback)."""
    return []
