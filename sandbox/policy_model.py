"""The reviewed policy as data: what one kind of use (一类场景) may see and ask, and the
limits of the policy format. ``sandbox.policy`` loads and checks policy files into these.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import SandboxError
from .spec import NUMERIC_TYPES, DatasetSpec

ROLES = ("dimension", "measure", "filter")
UNIT = "unit"  # the implied role of a table's privacy unit column
MECHANISMS = ("laplace", "gaussian")
REFRESH = ("none", "monthly")
DEFAULT_BUDGET_DELTA = 1e-5  # budget.delta when a policy gives none
DEFAULT_REFRESH = "none"
ID_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
MAX_ROWS_PER_UNIT_LIMIT = 1000
MAX_KEYS = 1000

TOP_KEYS = {"policy_version", "id", "title", "purpose", "review", "tables", "joins", "privacy",
            "budget", "export"}
TABLE_KEYS = {"dataset", "version", "description", "privacy_unit", "max_rows_per_unit",
              "columns"}
COLUMN_KEYS = {"role", "keys", "bounds", "description"}
PRIVACY_KEYS = {"epsilon_default", "epsilon_max", "delta", "max_groups_per_unit", "mechanism"}
BUDGET_KEYS = {"epsilon", "delta", "refresh"}
REVIEW_KEYS = {"reviewer", "reference", "date"}
EXPORT_KEYS = {"min_group_count", "approvals"}
EXPORT_APPROVALS = (1, 2)
MIN_GROUP_COUNT_LIMIT = 1_000_000
# The smallest epsilon any query may spend, in every scenario (the gate refuses a smaller
# one; a policy's epsilon_default and epsilon_max may not be smaller). Below it the noise
# scales overflow the engine's 64-bit sums (a count at 1e-300 came back as 2^63 - 1), and an
# answer that noisy says nothing anyway: at 1e-6 a count's 95% interval is about +-3.7
# million.
EPSILON_FLOOR = 1e-6

# (dataset, version or None for latest) -> (spec, resolved version), or None if unknown
DatasetResolver = Callable[[str, int | None], tuple[DatasetSpec, int] | None]


class PolicyError(SandboxError):
    """A policy file is invalid; ``problems`` lists every problem with file:line."""

    code = "policy.invalid"

    def __init__(self, message: str, hint: str | None = None, problems: list[str] | None = None):
        super().__init__(message, hint)
        self.problems = problems or [message]


@dataclass(frozen=True)
class ColumnPolicy:
    name: str
    role: str  # dimension | measure | filter | unit
    type: str  # the catalog type
    keys: tuple[Any, ...] | None = None
    bounds: tuple[float, float] | None = None
    description: str = ""

    @property
    def numeric(self) -> bool:
        return self.type in NUMERIC_TYPES


@dataclass(frozen=True)
class TablePolicy:
    alias: str
    dataset: str
    version: int
    public: bool
    privacy_unit: str | None
    max_rows_per_unit: int
    columns: dict[str, ColumnPolicy]
    description: str = ""

    @property
    def engine_table(self) -> str:
        """The table's name in the query engine (one per dataset version)."""
        return f"{self.dataset}_v{self.version}"


@dataclass(frozen=True)
class JoinPolicy:
    left: tuple[str, str]
    right: tuple[str, str]
    kind: str  # "unit" (between private tables on their units) | "lookup" (to a public table)

    def matches(self, a: tuple[str, str], b: tuple[str, str]) -> bool:
        return {a, b} == {self.left, self.right}


@dataclass(frozen=True)
class PrivacyParams:
    epsilon_default: float
    epsilon_max: float
    delta: float
    max_groups_per_unit: int
    mechanism: str


@dataclass(frozen=True)
class BudgetPolicy:
    epsilon: float
    delta: float
    refresh: str


@dataclass(frozen=True)
class ExportParams:
    """The ``export:`` section: what the export airlock asks of this scenario."""

    min_group_count: int = 10  # values of groups with a smaller noisy count are flagged
    approvals: int = 1  # independent reviewers needed (2: the two-person rule)


@dataclass(frozen=True)
class Policy:
    id: str
    title: str
    purpose: str
    tables: dict[str, TablePolicy]
    joins: tuple[JoinPolicy, ...]
    privacy: PrivacyParams
    budget: BudgetPolicy
    review: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    content_hash: str = ""
    export: ExportParams = field(default_factory=ExportParams)

    def join_for(self, a: tuple[str, str], b: tuple[str, str]) -> JoinPolicy | None:
        return next((j for j in self.joins if j.matches(a, b)), None)
