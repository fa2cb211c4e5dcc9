"""What a reviewer should question before approving a policy: values that are allowed but
far from common practice (``sandbox policy check`` and ``scenario review`` print them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .policy import Policy

# Values a reviewer should look at twice: allowed, but far from common practice.
SANE = {"epsilon_max": 3.0, "epsilon_default": 1.0, "budget_epsilon": 50.0,
        "budget_delta": 1e-4, "max_rows_per_unit": 100, "max_groups_per_unit": 50}


def warnings(policy: Policy) -> list[str]:
    """What a reviewer should question before approving ``policy`` (nothing is refused)."""
    out: list[str] = []
    pr, b = policy.privacy, policy.budget
    if pr.epsilon_max > SANE["epsilon_max"]:
        out.append(f"privacy.epsilon_max {pr.epsilon_max:g} lets one query spend more than "
                   f"{SANE['epsilon_max']:g}; answers that precise protect little")
    if pr.epsilon_default > SANE["epsilon_default"]:
        out.append(f"privacy.epsilon_default {pr.epsilon_default:g} is above "
                   f"{SANE['epsilon_default']:g}: every query that omits epsilon spends it")
    if b.epsilon > SANE["budget_epsilon"]:
        out.append(f"budget.epsilon {b.epsilon:g} per member and period is far above common "
                   f"budgets (a few, at most {SANE['budget_epsilon']:g})")
    if b.delta > SANE["budget_delta"]:
        out.append(f"budget.delta {b.delta:g} is above {SANE['budget_delta']:g}: delta is a "
                   "probability of failure and should be far below 1 / (number of persons); "
                   "the ledger may spend all of it")
    for t in policy.tables.values():
        if not t.public and t.max_rows_per_unit > SANE["max_rows_per_unit"]:
            out.append(f"tables.{t.alias}.max_rows_per_unit {t.max_rows_per_unit} makes one "
                       f"unit's rows count up to {t.max_rows_per_unit} times: noise grows with "
                       "it; check the data's own rows per unit")
    if pr.max_groups_per_unit > SANE["max_groups_per_unit"]:
        out.append(f"privacy.max_groups_per_unit {pr.max_groups_per_unit} lets one unit "
                   "touch that many groups of one query")
    return out


@dataclass
class DataFigures:
    """What the data itself holds, measured by the operator's command (never shown to
    developers): the most rows one unit has per table, and each numeric column's range."""

    most_rows: dict[str, int] = field(default_factory=dict)  # engine table -> rows
    ranges: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)


# A bound this many times what the data needs only adds noise.
FAR_ABOVE = 2.0
WIDER = 10.0


def data_warnings(policy: Policy, figures: DataFigures) -> list[str]:
    """Contribution bounds far above the data's own figures: a row bound above twice the
    most rows any unit has, measure bounds ten times wider than the column's range."""
    out: list[str] = []
    for t in policy.tables.values():
        if t.public:
            continue
        most = figures.most_rows.get(t.engine_table)
        if most and t.max_rows_per_unit > FAR_ABOVE * most:
            out.append(f"tables.{t.alias}.max_rows_per_unit {t.max_rows_per_unit} is far above "
                       f"the {most} rows the busiest unit has in {t.dataset} v{t.version}: the "
                       f"noise of counts and sums grows with the bound for nothing")
        for name, col in t.columns.items():
            seen = figures.ranges.get((t.engine_table, name))
            if col.bounds is None or seen is None or seen[1] <= seen[0]:
                continue
            width, data = col.bounds[1] - col.bounds[0], seen[1] - seen[0]
            if width > WIDER * data:
                out.append(f"tables.{t.alias}.columns.{name}.bounds [{col.bounds[0]:g}, "
                           f"{col.bounds[1]:g}] are {width / data:.0f} times as wide as the "
                           f"data's range [{seen[0]:g}, {seen[1]:g}]: sums and means get that "
                           "much more noise")
    return out
