"""Pass 6: plan the privacy cost, then (at release) add the noise.

The query's epsilon is split evenly and explicitly across its measurements (and
the threshold of private keys); delta goes to whatever needs it (thresholds,
Gaussian noise). Planning is deterministic and touches no data; ``release``
is the only random step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .. import dp
from .analyse import AggSpec
from .rewrite.context import Measurement, RewriteContext

# Share of the query's epsilon (relative to one measurement's) spent on the noisy count
# of groups that says how many private groups were suppressed.
GROUP_COUNT_WEIGHT = 0.25
# Share (relative to one measurement's) spent on the noisy count of units whose matching
# rows a row bound left out: it says how much counts and sums may be low.
BOUNDING_WEIGHT = 0.05


@dataclass
class Planned:
    measurement: Measurement
    epsilon: float
    delta: float
    mechanism: dp.Mechanism
    per_group: int = 1  # quantiles: groups one unit can touch, each paying mechanism.cost

    def to_dict(self) -> dict[str, Any]:
        m = self.measurement
        return {"measurement": m.name, "kind": m.kind, "epsilon": self.epsilon,
                "delta": self.delta, "sensitivity": m.sensitivity, "fixed_point_scale": m.scale,
                "mechanism": self.mechanism.to_dict()}


@dataclass
class PrivacyPlan:
    epsilon: float
    delta: float
    items: list[Planned] = field(default_factory=list)
    threshold: Planned | None = None
    threshold_value: int | None = None
    # How many groups existed is itself private (one unit can add groups): it is released
    # noisily, so that the count of suppressed groups leaks nothing.
    group_count: dp.Mechanism | None = None
    # The noisy count of units a row bound cut (RewriteContext.cut), when one applies.
    bounding: dp.Mechanism | None = None
    cost: dp.Cost = field(default_factory=lambda: dp.Cost(0.0))

    def item(self, name: str) -> Planned:
        return next(p for p in self.items if p.measurement.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epsilon": self.cost.epsilon, "delta": self.cost.delta,
            "requested_epsilon": self.epsilon,
            "measurements": [p.to_dict() for p in self.items],
            "threshold": None if self.threshold is None else {
                **self.threshold.to_dict(), "threshold": self.threshold_value,
                "group_count": None if self.group_count is None else
                self.group_count.to_dict()},
            "bounding": None if self.bounding is None else self.bounding.to_dict(),
        }


def plan(ctx: RewriteContext, epsilon: float) -> PrivacyPlan:
    privacy = ctx.policy.privacy
    gaussian = privacy.mechanism == "gaussian"
    # a COUNT(*) that is also the threshold's count is released by the threshold
    shared = next((m for m in ctx.measurements if m.name == ctx.threshold and not m.hidden),
                  None)
    released = [m for m in ctx.measurements if not m.hidden and m is not shared]
    # private keys: the threshold takes a full share, the noisy count of groups (only
    # used to say how many groups were suppressed) a small one
    weights = [1.0] * len(released) + ([1.0, GROUP_COUNT_WEIGHT] if ctx.threshold else []) + \
        ([BOUNDING_WEIGHT] if ctx.cut is not None else [])
    shares = dp.split_epsilon(epsilon, weights)
    if ctx.cut is not None:
        bounding_eps = shares.pop()
    delta_users = (len([m for m in released if m.kind != "histogram"]) if gaussian else 0) + \
        (1 if ctx.threshold else 0)
    delta_share = privacy.delta / delta_users if delta_users else 0.0
    l0 = ctx.max_groups
    out = PrivacyPlan(epsilon, privacy.delta if delta_users else 0.0)
    costs: list[dp.Cost] = []
    joint: dict[str, dp.Mechanism] = {}
    noisy = [(m, eps) for m, eps in zip(released, shares, strict=False)
             if m.kind != "histogram"]
    if gaussian and noisy:
        # one calibration for all Gaussian parts: composed in zCDP they cost exactly
        # their shares together (planned apart, each at its share, they under-spend)
        l2s = tuple(math.sqrt(l0) if m.kind == "count_units" else m.sensitivity
                    for m, _ in noisy)
        mechs = dp.plan_gaussian_joint(math.fsum(e for _, e in noisy),
                                       delta_share * len(noisy), l2s, integer=True)
        joint = {m.name: mech for (m, _), mech in zip(noisy, mechs, strict=True)}
    for m, eps in zip(released, shares, strict=False):
        if m.kind == "histogram":
            assert m.fraction is not None
            mech = dp.plan_binned_quantile(eps / l0, m.fraction, ctx.analysis.rows_per_unit)
            item = Planned(m, eps, 0.0, mech, per_group=l0)
            costs.extend([mech.cost] * l0)
        else:
            l1 = float(l0) if m.kind == "count_units" else m.sensitivity
            mech = joint[m.name] if gaussian else dp.plan_laplace(eps, l1, integer=True)
            item = Planned(m, eps, delta_share if gaussian else 0.0, mech)
            costs.append(mech.cost)
        out.items.append(item)
    if ctx.threshold:
        m = next(x for x in ctx.measurements if x.name == ctx.threshold)
        rows = int(ctx.analysis.rows_per_unit)
        # a unit's rows are spread over at most l0 groups: at most `rows` in all
        mech, value = dp.plan_threshold(shares[-2], delta_share, rows, l0, max_total=rows)
        out.threshold = Planned(m, shares[-2], delta_share, mech)
        out.threshold_value = value
        if shared is not None:
            out.items.append(out.threshold)
        out.group_count = dp.plan_laplace(shares[-1], float(min(l0, rows)), integer=True)
        costs.extend([mech.cost, out.group_count.cost])
    if ctx.cut is not None:  # a unit is in the count or not: sensitivity 1
        out.bounding = dp.plan_laplace(bounding_eps, 1.0, integer=True)
        costs.append(out.bounding.cost)
    out.cost = dp.compose(costs)
    return out


@dataclass
class Noisy:
    values: dict[str, list[Any]]  # measurement name -> released value per kept group
    keep: list[int]  # indices of the groups kept (all, unless thresholded)
    suppressed: int
    units_cut: int | None = None  # noisy; None when no row bound applies


def release(p: PrivacyPlan, exact: dict[str, list[Any]], groups: int,
            cut: int | None = None) -> Noisy:
    """Add noise to every measurement; drop private groups under the noisy threshold.

    ``cut`` is the exact count of units a row bound cut (when the plan has ``bounding``)."""
    keep = list(range(groups))
    suppressed = 0
    shared: list[int] = []
    if p.threshold is not None and p.threshold_value is not None:
        counts = {str(i): int(v or 0) for i, v in enumerate(exact[p.threshold.measurement.name])}
        kept = dp.release_threshold(p.threshold.mechanism, p.threshold_value, counts)
        keep = sorted(int(k) for k in kept)
        shared = [kept[str(i)] for i in keep]  # the threshold's noisy counts, kept keys
        assert p.group_count is not None
        noisy_groups = dp.release(p.group_count, [groups])[0]
        suppressed = max(int(noisy_groups) - len(keep), 0)
    values: dict[str, list[Any]] = {}
    for item in p.items:
        m = item.measurement
        if item is p.threshold:  # a COUNT(*) released by the threshold itself
            values[m.name] = shared
            continue
        raw = [exact[m.name][i] for i in keep]
        if m.kind == "histogram":
            values[m.name] = [_quantile(item, h) for h in raw]
            continue
        noisy = dp.release(item.mechanism, [int(v or 0) for v in raw])
        values[m.name] = noisy if m.scale == 1 else [v / m.scale for v in noisy]
    units_cut = None
    if p.bounding is not None:
        units_cut = int(dp.release(p.bounding, [int(cut or 0)])[0])
    return Noisy(values, keep, suppressed, units_cut)


def _quantile(item: Planned, histogram: Any) -> float:
    m = item.measurement
    assert m.fraction is not None and m.bounds is not None
    lo, hi = m.bounds
    return dp.release_binned_quantile(item.mechanism, lo, hi, m.bins, m.fraction, histogram)


def ci_halfwidth(item: Planned) -> float | None:
    if item.measurement.kind == "histogram":
        return None
    return item.mechanism.ci_halfwidth(0.95) / item.measurement.scale


def halfwidths(spec: AggSpec, items: list[Planned], values: list[list[Any]]
               ) -> list[float | None]:
    """95% half-widths of one aggregate per released group, from its noisy parts.

    A count or sum has its mechanism's exact interval. An average, variance or standard
    deviation is a function of several noisy parts: its half-width combines theirs by the
    delta method (first-order error of the formula, the parts' half-widths added in
    quadrature), evaluated at the noisy values, so computing it is post-processing. The
    coverage of every kind is measured in tests/test_coverage.py. Quantiles have none (see
    ``quantile_accuracy``).
    """
    n = len(values[0]) if values else 0
    if spec.kind == "quantile":
        return [None] * n
    hw = [ci_halfwidth(i) or 0.0 for i in items]
    if spec.kind in ("count", "count_units", "sum"):
        return [hw[0]] * n
    out: list[float | None] = []
    for parts in zip(*values, strict=True):
        if spec.kind == "avg":
            s, c = float(parts[0]), max(float(parts[1]), 1.0)
            out.append(math.hypot(hw[0] / c, s * hw[1] / c**2))
            continue
        c, s1, s2 = max(float(parts[0]), 1.0), float(parts[1]), float(parts[2])
        mean = s1 / c
        var = max(s2 / c - mean * mean, 0.0)
        h = math.hypot(hw[2] / c, 2 * mean * hw[1] / c, (s2 / c - 2 * mean * mean) * hw[0] / c)
        if spec.sample and c > 1:
            var, h = var * c / (c - 1), h * c / (c - 1)
        if spec.kind == "stddev":  # the wider side of sqrt over [var - h, var + h]
            sd = math.sqrt(var)
            h = max(math.sqrt(var + h) - sd, sd - math.sqrt(max(var - h, 0.0)))
        out.append(h)
    return out


def quantile_accuracy(item: Planned) -> str:
    """What a quantile's accuracy is, in words: its grid and its rank error (95 %)."""
    m = item.measurement
    assert m.bounds is not None
    lo, hi = m.bounds
    rank = dp.quantile_rank_error(item.mechanism, m.bins, 0.95)
    return (f"noisy selection (OpenDP permute-and-flip, two stages) over {m.bins} bins of "
            f"[{lo:.6g}, {hi:.6g}], resolution {(hi - lo) / m.bins:.3g}; with 95% "
            f"probability within {math.ceil(rank)} rows in rank of the exact quantile")
