"""What the rewrite passes share: the analysis, the policy and the measurements."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlglot import exp

from ...policy import Policy
from ..analyse import AggSpec, Analysis

FIXED_POINT_DIGITS = 4
# Quantiles: a histogram of 2**20 equal bins between the bounds (only non-empty bins
# come back), selected in two stages of 1024 candidates (sandbox.dp).
QUANTILE_BINS = 2**20


@dataclass
class Measurement:
    """One exact per-group aggregate that will be released with noise."""

    name: str  # output column, __m<i>
    kind: str  # count | count_units | sum | histogram
    value: exp.Expression  # the row-level value the aggregate reads
    sensitivity: float  # L1 contribution of one unit to one group's value
    scale: float = 1.0  # fixed-point factor: released value = noisy / scale
    bounds: tuple[float, float] | None = None  # of the (clamped) row value, before scale
    bins: int = 0  # histogram bins (quantiles)
    hidden: bool = False  # internal (threshold count), not shown to the user
    fraction: float | None = None  # quantiles: which one


@dataclass
class RewriteContext:
    analysis: Analysis
    policy: Policy
    measurements: list[Measurement] = field(default_factory=list)
    agg_measurements: dict[int, list[str]] = field(default_factory=dict)  # id(AggSpec) -> names
    group_bounded: bool = False
    threshold: str | None = None  # name of the hidden count used for thresholding
    # How many units had a matching row left out by a row bound above 1 (measurements);
    # None when no such bound applies.
    cut: exp.Select | None = None

    @property
    def units_only(self) -> bool:
        """Whether every aggregate counts distinct units and the keys (if any) are public.

        Then no row bound is needed: a unit moves each distinct-unit count by at most 1
        whatever its row count, and the group bound limits how many counts it moves. The
        rows a row bound would drop are units that would go uncounted (a bias, not a
        protection), so the scans keep every row. Only when at most one table read may
        hold several rows per unit: a join of two such tables (a self-join) would multiply
        a heavy unit's rows unbounded, and the query could run out of time after its charge.
        """
        from .measurements import ctx_public

        a = self.analysis
        many = [t for t in a.sources.tables.values()
                if not t.public and t.max_rows_per_unit > 1]
        return bool(a.aggs) and all(s.kind == "count_units" for s in a.aggs) and \
            len(many) <= 1 and (not a.grouped or ctx_public(self))

    @property
    def max_groups(self) -> int:
        """How many groups one unit can touch (L0)."""
        a = self.analysis
        if not a.grouped:
            return 1
        if self.units_only:  # rows unbounded: the group bound alone (bound_groups)
            return self.policy.privacy.max_groups_per_unit
        if self.group_bounded:
            return min(a.rows_per_unit, self.policy.privacy.max_groups_per_unit)
        return a.rows_per_unit

    def measurements_of(self, spec: AggSpec) -> list[Measurement]:
        """In the order the aggregate's formula expects (AVG: sum, count)."""
        by_name = {m.name: m for m in self.measurements}
        return [by_name[n] for n in self.agg_measurements[id(spec)]]
