"""Where the checks find a workspace's releases: the answers kept in the state database.

The ledger keeps the JSON answer of every query the service answered (``requests.response``,
keyed by workspace, member and request id, the answer holding its release id), and the
audit log keeps the SQL of each charge. Which released columns are noisy counts (the group
sizes the small-cell rule needs) is found by checking that SQL with the scenario's gate
again: deterministic, and it touches no data.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import SandboxError
from .checks import CheckContext, IdentifierLookup, Limits, ReleaseRecord

CountColumns = Callable[[str], Sequence[str]]  # SQL -> names of its noisy-count columns

_SELECT = """
SELECT r.member, r.response, a.body FROM requests r
LEFT JOIN charges c ON c.id = r.charge_id
LEFT JOIN audit_records a ON a.seq = c.opened_seq
WHERE r.workspace = ? AND r.response IS NOT NULL
"""


def gate_count_columns(gate: Any) -> CountColumns:
    """Count columns of a query, by the gate (``sandbox.gate.Gate``) of its scenario."""
    cache: dict[str, list[str]] = {}

    def counts(sql: str) -> list[str]:
        if sql not in cache:
            try:
                q = gate.check(sql)
            except SandboxError:
                cache[sql] = []  # the scenario changed since: sizes unknown
            else:
                cache[sql] = [o.name for o in q.outputs if o.placeholder is not None and
                              q.analysis.aggs[o.placeholder].kind in ("count", "count_units")]
        return cache[sql]

    return counts


class StateReleases:
    """The releases of one workspace, read from the state database."""

    def __init__(self, con: sqlite3.Connection, workspace: str,
                 count_columns: CountColumns | None = None) -> None:
        self.con, self.workspace, self.count_columns = con, workspace, count_columns

    def _record(self, member: str, response: str, body: str | None) -> ReleaseRecord | None:
        try:
            d = json.loads(response)
            sql = json.loads(body).get("sql") if body else None
        except ValueError:
            return None
        if not isinstance(d, dict) or not d.get("release_id"):
            return None
        counts = self.count_columns(sql) if self.count_columns and sql else ()
        return ReleaseRecord.from_response(d, counts, member)

    def get(self, release_id: str) -> ReleaseRecord | None:
        row = self.con.execute(_SELECT + " AND json_extract(r.response, '$.release_id') = ?",
                               (self.workspace, release_id)).fetchone()
        return None if row is None else self._record(*row)

    def all(self) -> list[ReleaseRecord]:
        out = []
        for row in self.con.execute(_SELECT, (self.workspace,)):
            rec = self._record(*row)
            if rec is not None:
                out.append(rec)
        return out


def state_context(state: Any, workspace: str, identifiers: IdentifierLookup | None, *,
                  min_group_count: int = 10, gate: Any = None,
                  limits: Limits | None = None) -> CheckContext:
    """A ``CheckContext`` over the state database for ``workspace`` (the export store adds
    the earlier approved exports)."""
    releases = StateReleases(state.con, workspace,
                             gate_count_columns(gate) if gate is not None else None)
    return CheckContext(identifiers, releases.get, releases.all, min_group_count,
                        limits=limits or Limits())
