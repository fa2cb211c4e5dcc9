"""Classification and grading (数据分类分级) decide what a scenario may do.

Each dataset column has a grade in its spec: general, important or core (一般 / 重要 /
核心数据). A policy exposes the columns it declares, apart from the privacy unit (which the
gate never releases). At review the floors of every grade exposed hold, the strictest
of each winning (a per-query ε ceiling, a minimum group count and number of approvals for
exports), and
every core column must be accepted by name (``scenario review --accept-core``). Operators
may make the floors stricter per grade in ``$SANDBOX_HOME/grading.yaml``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .spec import GRADES, DatasetSpec
from .yamlio import line_of, load_yaml

if TYPE_CHECKING:  # pragma: no cover
    from .policy import Policy

Resolver = Callable[[str, int | None], "tuple[DatasetSpec, int] | None"]
RULE_KEYS = ("epsilon_max", "min_group_count", "approvals")


@dataclass(frozen=True)
class GradeRule:
    """What a policy exposing a column of this grade must at least meet (None: no floor)."""

    epsilon_max: float | None = None  # the policy's per-query ceiling, at most this
    min_group_count: int | None = None  # export.min_group_count, at least this
    approvals: int | None = None  # export.approvals, at least this


# The defaults: core data gets the shipped scenarios' own settings as floors, so a policy
# that loosens them for core columns is refused; important data a looser ceiling.
DEFAULT_RULES: dict[str, GradeRule] = {
    "general": GradeRule(),
    "important": GradeRule(epsilon_max=3.0, min_group_count=10),
    "core": GradeRule(epsilon_max=2.0, min_group_count=20, approvals=1),
}


@dataclass
class Grading:
    """The grades one policy exposes, and what keeps it from review."""

    grades: dict[str, str]  # "alias.column" -> grade, for every exposed column
    accepted_core: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def core(self) -> list[str]:
        return sorted(c for c, g in self.grades.items() if g == "core")

    def by_grade(self) -> dict[str, list[str]]:
        return {g: sorted(c for c, cg in self.grades.items() if cg == g) for g in GRADES
                if g in self.grades.values()}


def exposure(policy: Policy, resolve: Resolver) -> dict[str, str]:
    """The grade of every column ``policy`` exposes (its tables' columns but the unit)."""
    out: dict[str, str] = {}
    for t in policy.tables.values():
        found = resolve(t.dataset, t.version)
        if found is None:  # the policy loader already refused it
            continue
        spec_grades = {c.name: c.grade for c in found[0].columns}
        for name, col in t.columns.items():
            if col.role != "unit" and name in spec_grades:
                out[f"{t.alias}.{name}"] = spec_grades[name]
    return out


def grade(policy: Policy, resolve: Resolver, rules: dict[str, GradeRule],
          accept_core: Iterable[str] = ()) -> Grading:
    """Check ``policy`` against the floors of every grade it exposes (the strictest of
    each) and the core columns accepted by name; every problem is listed (nothing is
    raised here)."""
    g = Grading(exposure(policy, resolve))
    accepted = sorted(set(accept_core))
    g.accepted_core = [c for c in accepted if c in g.core]
    for name in accepted:
        if name not in g.core:
            g.problems.append(f"--accept-core {name}: not a core column this policy exposes "
                              f"(core: {', '.join(g.core) or 'none'})")
    for name in g.core:
        if name not in accepted:
            g.problems.append(f"{name} is core data (核心数据): accept it explicitly with "
                              f"--accept-core {name}")
    exposed = [gr for gr in GRADES if gr in g.grades.values()]
    pr, ex = policy.privacy, policy.export
    # every grade's floors hold: a core column never loosens what important ones need
    ceiling = _strictest(rules, exposed, "epsilon_max", min)
    if ceiling is not None and pr.epsilon_max > ceiling[0]:
        g.problems.append(f"privacy.epsilon_max {pr.epsilon_max:g} is above {ceiling[0]:g}, "
                          f"the ceiling for {ceiling[1]} data; lower it")
    for key, value, what in (("min_group_count", ex.min_group_count, "export.min_group_count"),
                             ("approvals", ex.approvals, "export.approvals")):
        floor = _strictest(rules, exposed, key, max)
        if floor is not None and value < floor[0]:
            g.problems.append(f"{what} {value} is below {floor[0]:g}, the floor for "
                              f"{floor[1]} data; raise it")
    return g


def _strictest(rules: dict[str, GradeRule], grades: list[str], key: str,
               pick: Callable[..., Any]) -> tuple[float, str] | None:
    """The strictest value of one floor over the grades exposed, and the grade it is
    from (the highest such grade when several agree); None when no grade sets it."""
    found = [(float(v), gr) for gr in reversed(grades)
             if (v := getattr(rules.get(gr, GradeRule()), key)) is not None]
    if not found:
        return None
    best = pick(v for v, _ in found)
    return best, next(gr for v, gr in found if v == best)


def load_rules(path: Path) -> dict[str, GradeRule]:
    """The floors per grade: the defaults, made stricter or looser by ``path`` if it exists::

        grades:
          core: {epsilon_max: 0.5, min_group_count: 50, approvals: 2}
          important: {epsilon_max: 1.0}
    """
    rules = dict(DEFAULT_RULES)
    if not path.is_file():
        return rules
    doc = load_yaml(path, "grading")
    if doc is None:
        doc = {}
    if not isinstance(doc, dict) or set(doc) - {"grades"}:
        raise ConfigError(f"{path}: expected one mapping 'grades' of grade -> floors",
                          "e.g. grades: {core: {epsilon_max: 0.5, min_group_count: 50}}")
    grades = doc.get("grades")
    if grades is None:  # "grades:" with nothing under it
        grades = {}
    if not isinstance(grades, dict):
        raise ConfigError(f"{path}:{line_of(doc, 'grades')}: 'grades' must be a mapping",
                          f"keys: {', '.join(GRADES)}")
    for name, body in grades.items():
        if name not in GRADES:
            raise ConfigError(f"{path}:{line_of(grades, name)}: unknown grade {name!r}",
                              f"grades are {', '.join(GRADES)}")
        rules[name] = _rule(path, name, body, rules[name])
    return rules


def _rule(path: Path, name: str, body: Any, base: GradeRule) -> GradeRule:
    if not isinstance(body, dict) or set(body) - set(RULE_KEYS):
        raise ConfigError(f"{path}: grade {name!r} takes {', '.join(RULE_KEYS)}",
                          "e.g. core: {epsilon_max: 0.5, min_group_count: 50, approvals: 2}")
    values: dict[str, Any] = {}
    for key, value in body.items():
        line = line_of(body, key)
        whole = key != "epsilon_max"
        if isinstance(value, bool) or not isinstance(value, int | float) or \
                not math.isfinite(value) or value <= 0 or (whole and value != int(value)):
            raise ConfigError(f"{path}:{line}: grades.{name}.{key} must be a positive "
                              f"{'whole ' if whole else ''}number, not {value!r}",
                              f"e.g. {key}: {1 if whole else 0.5}")
        values[key] = int(value) if whole else float(value)
    return replace(base, **values)
