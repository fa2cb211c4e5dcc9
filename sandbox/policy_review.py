"""What a reviewer should question before approving a policy: values that are allowed but
far from common practice (``sandbox policy check`` and ``scenario review`` print them)."""

from __future__ import annotations

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
