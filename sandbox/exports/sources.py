"""Where the checks find a workspace's releases: the answers the ledger keeps.

The ledger keeps the JSON answer of every query the service answered (keyed by workspace,
member and request id, the answer holding its release id) and the SQL of each charge; the
airlock asks it for them (``sandbox.ledger_state.released_answers``) and never reads its
tables. Which released columns are noisy counts (the group sizes the small-cell rule
needs) is found by checking that SQL with the scenario's gate again: deterministic, and
it touches no data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import SandboxError
from ..ledger_state import ReleasedAnswer, released_answer, released_answers
from ..statedb import Connection
from .checks import CheckContext, IdentifierLookup, Limits, ReleaseRecord

CountColumns = Callable[[str], Sequence[str]]  # SQL -> names of its noisy-count columns


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

    def __init__(self, con: Connection, workspace: str,
                 count_columns: CountColumns | None = None) -> None:
        self.con, self.workspace, self.count_columns = con, workspace, count_columns

    def _record(self, answer: ReleasedAnswer | None) -> ReleaseRecord | None:
        if answer is None:
            return None
        counts = self.count_columns(answer.sql) if self.count_columns and answer.sql else ()
        return ReleaseRecord.from_response(answer.response, counts, answer.member)

    def get(self, release_id: str) -> ReleaseRecord | None:
        return self._record(released_answer(self.con, self.workspace, release_id))

    def all(self) -> list[ReleaseRecord]:
        return [rec for a in released_answers(self.con, self.workspace)
                if (rec := self._record(a)) is not None]


def state_context(state: Any, workspace: str, identifiers: IdentifierLookup | None, *,
                  min_group_count: int = 10, gate: Any = None,
                  limits: Limits | None = None) -> CheckContext:
    """A ``CheckContext`` over the state database for ``workspace`` (the export store adds
    the earlier approved exports)."""
    releases = StateReleases(state.con, workspace,
                             gate_count_columns(gate) if gate is not None else None)
    return CheckContext(identifiers, releases.get, releases.all, min_group_count,
                        limits=limits or Limits())
