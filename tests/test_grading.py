"""Classification and grading (数据分类分级) drive what a scenario may do: core columns are
accepted by name at review, the highest grade exposed sets floors the policy must meet,
operators make the floors stricter, and specs grade identifiers as core."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gatekit import CORE_COLUMNS, POLICIES
from sandbox.errors import ConfigError, SpecError
from sandbox.grading import DEFAULT_RULES, GradeRule, grade, load_rules
from sandbox.policy import load_policy
from sandbox.scenarios import GradingError, Scenarios
from sandbox.spec import load_spec
from sandbox.state import State

CREDIT = POLICIES / "credit_underwriting.yaml"


def _policy(tiny_vault):  # type: ignore[no-untyped-def]
    return load_policy(CREDIT, tiny_vault.catalog.resolve)


def test_the_policy_exposes_its_columns_by_grade_but_not_the_unit(tiny_vault) -> None:
    g = grade(_policy(tiny_vault), tiny_vault.catalog.resolve, DEFAULT_RULES)
    assert g.core == sorted(CORE_COLUMNS["credit_underwriting"])
    assert g.by_grade()["important"] == ["loans.rate", "loans.status", "persons.age"]
    assert "persons.person_id" not in g.grades and "loans.person_id" not in g.grades
    assert len(g.problems) == 3 and all("--accept-core" in p for p in g.problems)


def test_accepting_every_core_column_and_only_those(tiny_vault) -> None:
    pol, resolve = _policy(tiny_vault), tiny_vault.catalog.resolve
    ok = grade(pol, resolve, DEFAULT_RULES, CORE_COLUMNS["credit_underwriting"])
    assert ok.problems == [] and ok.accepted_core == ok.core
    typo = grade(pol, resolve, DEFAULT_RULES, [*CORE_COLUMNS["credit_underwriting"],
                                               "persons.incme"])
    assert typo.problems == ["--accept-core persons.incme: not a core column this policy "
                             "exposes (core: loans.amount, persons.credit_score, "
                             "persons.income)"]


@pytest.mark.parametrize(("rule", "fragment"), [
    (GradeRule(epsilon_max=1.0), "privacy.epsilon_max 2 is above 1, the ceiling for core"),
    (GradeRule(min_group_count=50), "export.min_group_count 20 is below 50"),
    (GradeRule(approvals=2), "export.approvals 1 is below 2"),
])
def test_the_highest_grade_sets_the_floors(tiny_vault, rule: GradeRule, fragment: str) -> None:
    rules = {**DEFAULT_RULES, "core": rule}
    g = grade(_policy(tiny_vault), tiny_vault.catalog.resolve, rules,
              CORE_COLUMNS["credit_underwriting"])
    assert len(g.problems) == 1 and fragment in g.problems[0]


def test_a_policy_of_important_data_only_meets_the_important_floors(tiny_vault) -> None:
    pol = _policy(tiny_vault)  # a fresh copy; its core columns taken out below
    for alias, col in (("persons", "income"), ("persons", "credit_score"), ("loans", "amount")):
        pol.tables[alias].columns.pop(col)
    rules = {**DEFAULT_RULES, "core": GradeRule(epsilon_max=0.1),
             "important": GradeRule(epsilon_max=1.0)}
    g = grade(pol, tiny_vault.catalog.resolve, rules)
    assert g.core == [] and g.problems == [
        "privacy.epsilon_max 2 is above 1, the ceiling for important data; lower it"]


def test_operators_configure_the_floors(tmp_path: Path) -> None:
    path = tmp_path / "grading.yaml"
    assert load_rules(path) == DEFAULT_RULES  # no file: the defaults
    path.write_text("grades:\n  core: {epsilon_max: 0.5, approvals: 2}\n")
    rules = load_rules(path)
    assert rules["core"] == GradeRule(epsilon_max=0.5, min_group_count=20, approvals=2)
    assert rules["important"] == DEFAULT_RULES["important"]
    for text, fragment in (("grades:\n  secret: {approvals: 2}\n", "unknown grade 'secret'"),
                           ("grades:\n  core: {approvals: 1.5}\n", "positive whole number"),
                           ("grades:\n  core: {epsilon_max: -1}\n", ":2: grades.core"),
                           ("grades:\n  core: {min_count: 3}\n", "takes epsilon_max"),
                           ("other: 1\n", "one mapping 'grades'")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=fragment):
            load_rules(path)


def test_review_refuses_until_core_columns_are_accepted(tiny_vault, keystore,  # type: ignore[no-untyped-def]
                                                        tmp_path: Path) -> None:
    state = State(tmp_path / "state.sqlite", keystore.audit_signing_key())
    policy = tmp_path / "credit.yaml"
    shutil.copy(CREDIT, policy)
    try:
        with pytest.raises(GradingError) as info:
            Scenarios(state).review(policy, tiny_vault.catalog.resolve, reviewer="board",
                                    reference="R-1", actor="oscar")
        assert info.value.code == "scenario.grading"
        assert len(info.value.problems) == 3 and Scenarios(state).ids() == []
        _, stored = Scenarios(state).review(
            policy, tiny_vault.catalog.resolve, reviewer="board", reference="R-1",
            actor="oscar", accept_core=CORE_COLUMNS["credit_underwriting"])
        assert stored
        (rec,) = state.records(kind="scenario.approved")
        assert rec["grades"]["core"] == sorted(CORE_COLUMNS["credit_underwriting"])
        assert rec["accepted_core"] == sorted(CORE_COLUMNS["credit_underwriting"])
    finally:
        state.close()


@pytest.mark.parametrize(("role", "grade_", "ok"), [
    ("identifier", "important", False), ("identifier", "core", True),
    ("sensitive", "general", False), ("sensitive", "important", True),
    ("attribute", "general", True),
])
def test_specs_grade_at_least_what_the_role_needs(tmp_path: Path, role: str, grade_: str,
                                                  ok: bool) -> None:
    spec = tmp_path / "t.yaml"
    spec.write_text("spec_version: 1\ndataset: t\ntitle: T\ndescription: d\nowner: o\n"
                    "source: s\npublic: false\ncolumns:\n"
                    "- {name: pid, type: string, role: privacy_unit, grade: important}\n"
                    f"- {{name: c, type: string, role: {role}, grade: {grade_}}}\n")
    if ok:
        load_spec(spec)
    else:
        with pytest.raises(SpecError, match=f"a {role} column is graded at least"):
            load_spec(spec)

