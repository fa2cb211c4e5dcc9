"""Helpers shared by the gate tests (plain functions; fixtures live in the test modules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from sandbox.catalog import Catalog
from sandbox.policy import Policy, load_policy

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"


def resolver(catalog: Catalog):  # type: ignore[no-untyped-def]
    return catalog.resolve


def policy(catalog: Catalog, name: str = "credit_underwriting") -> Policy:
    return load_policy(POLICIES / f"{name}.yaml", resolver(catalog))


class SpyExecutor:
    """The real engine, counting what reaches it."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.executed: list[str] = []

    def execute(self, sql: str, params: list[object] | None = None,
                timeout_s: float | None = None) -> pa.Table:
        self.executed.append(sql)
        return self.engine.execute(sql, params, timeout_s)

    def bind(self, sql: str) -> pa.Schema:
        return self.engine.bind(sql)

    def postprocess(self, sql: str, table: pa.Table) -> pa.Table:
        return self.engine.postprocess(sql, table)

    def is_unique(self, table: str, column: str) -> bool:
        return self.engine.is_unique(table, column)

    def column_range(self, table: str, column: str) -> tuple[float, float] | None:
        return self.engine.column_range(table, column)


# The core columns (数据分类分级) each shipped policy exposes: its review must accept them.
CORE_COLUMNS = {
    "credit_underwriting": ("loans.amount", "persons.credit_score", "persons.income"),
    "population_livelihood": ("persons.income",),
}


def accept_core(policy_stem: str) -> list[str]:
    """The `scenario review` options that accept the shipped policy's core columns."""
    return [arg for col in CORE_COLUMNS[policy_stem] for arg in ("--accept-core", col)]
