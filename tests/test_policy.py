"""Scenario policy files: the shipped examples are valid; every mistake is reported."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from gatekit import POLICIES, resolver
from sandbox.policy import PolicyError, load_policy

BASE = """\
policy_version: 1
id: test-policy
title: Test
tables:
  persons:
    dataset: persons
    version: 1
    privacy_unit: person_id
    max_rows_per_unit: 1
    columns:
      district: {role: dimension, keys: [Siming, Huli]}
      income: {role: measure, bounds: [0, 1000000]}
  districts:
    dataset: districts
    columns:
      district: dimension
joins:
  - [persons.district, districts.district]
privacy: {epsilon_default: 0.5, epsilon_max: 1.0, delta: 1.0e-7, max_groups_per_unit: 1}
budget: {epsilon: 5, delta: 1.0e-5, refresh: none}
"""


@pytest.fixture(scope="module")
def resolve(tiny_vault):  # type: ignore[no-untyped-def]
    return resolver(tiny_vault.catalog)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("name", ["credit_underwriting", "population_livelihood"])
def test_shipped_policies_are_valid(resolve, name: str) -> None:  # type: ignore[no-untyped-def]
    p = load_policy(POLICIES / f"{name}.yaml", resolve)
    assert p.tables and p.budget.epsilon > 0
    for t in p.tables.values():
        assert not any(c.name in ("name", "id_number", "phone", "loan_id")
                       for c in t.columns.values())


def test_base_policy_loads(tmp_path, resolve) -> None:  # type: ignore[no-untyped-def]
    p = load_policy(write(tmp_path, BASE), resolve)
    assert p.tables["persons"].columns["person_id"].role == "unit"
    assert p.joins[0].kind == "lookup"
    assert p.content_hash and len(p.content_hash) == 64


@pytest.mark.parametrize(("old", "new", "line", "words"), [
    ("dataset: persons\n", "dataset: people\n", 6, "not in the catalog"),
    ("      income: {role: measure, bounds: [0, 1000000]}",
     "      income: {role: measure, bounds: [1000000, 0]}", 12, "reversed"),
    ("      income: {role: measure, bounds: [0, 1000000]}",
     "      income: {role: measure}", 12, "needs bounds"),
    ("      district: {role: dimension, keys: [Siming, Huli]}",
     "      district: {role: measure, bounds: [0, 1]}", 11, "must be numeric"),
    ("      income: {role: measure, bounds: [0, 1000000]}",
     "      name: dimension", 12, "identifier"),
    ("      income: {role: measure, bounds: [0, 1000000]}",
     "      salary: dimension", 12, "has no column"),
    ("      income: {role: measure, bounds: [0, 1000000]}",
     "      income: {role: secret}", 12, "unknown role"),
    ("    privacy_unit: person_id\n", "    privacy_unit: district\n", 8, "privacy_unit must be"),
    ("    max_rows_per_unit: 1\n", "    max_rows_per_unit: 0\n", 9, "max_rows_per_unit"),
    ("epsilon_default: 0.5, epsilon_max: 1.0", "epsilon_default: 2.0, epsilon_max: 1.0", 19,
     "larger than"),
    ("delta: 1.0e-7,", "delta: 0.5,", 19, "delta"),
    ("refresh: none", "refresh: weekly", 20, "refresh"),
    ("  - [persons.district, districts.district]", "  - [persons.income, districts.district]",
     18, "lookup join must use a dimension"),
    ("title: Test\n", "title: Test\ncolour: blue\n", 4, "unknown key 'colour'"),
    ("id: test-policy", "id: Test Policy!", 2, "invalid or missing policy id"),
])
def test_each_problem_names_file_line_and_fix(tmp_path, resolve, old, new, line, words) -> None:  # type: ignore[no-untyped-def]
    assert old in BASE
    path = write(tmp_path, BASE.replace(old, new, 1))
    with pytest.raises(PolicyError) as info:
        load_policy(path, resolve)
    problems = info.value.problems
    assert any(p.startswith(f"{path}:{line}:") and words in p for p in problems), problems


RANGE = "      registered_on: {role: dimension, keys: %s}\n"


@pytest.mark.parametrize(("keys", "words"), [
    ("{from: 2020-01-01, to: 2020-03-31, step: fortnight}", "a step of day, week"),
    ("{from: 2020-01-01, step: month}", "a key range is {from: <first>, to: <last>"),
    ("{from: 2020-01-01, to: 2020-03-31, every: month}", "unknown: every"),
    ("{from: 2020-04-01, to: 2020-03-31, step: day}", "must hold 1 to 10,000 values"),
    ("{from: 1900-01-01, to: 2020-03-31, step: day}", "must hold 1 to 10,000 values"),
    ("{from: 2020-01-31, to: 2020-12-31, step: month}", "must start on day 1 to 28"),
    ("{from: 2020, to: 2024}", "YYYY-MM-DD dates"),
])
def test_a_bad_key_range_is_named(tmp_path, resolve, keys: str, words: str) -> None:  # type: ignore[no-untyped-def]
    text = BASE.replace("      income:", RANGE % keys + "      income:")
    with pytest.raises(PolicyError) as info:
        load_policy(write(tmp_path, text), resolve)
    assert any(":12:" in p and "registered_on" in p and words in p
               for p in info.value.problems), info.value.problems


def test_a_key_range_lists_every_key(tmp_path, resolve) -> None:  # type: ignore[no-untyped-def]
    import datetime as dt

    text = BASE.replace("      income:", RANGE % "{from: 2020-01-15, to: 2021-01-15, step: "
                        "quarter}" + "      income:")
    keys = load_policy(write(tmp_path, text), resolve).tables["persons"].columns[
        "registered_on"].keys
    assert keys == tuple(dt.date(y, m, 15) for y, m in ((2020, 1), (2020, 4), (2020, 7),
                                                        (2020, 10), (2021, 1)))


def test_a_bad_version_does_not_hide_the_tables_other_problems(tmp_path, resolve) -> None:  # type: ignore[no-untyped-def]
    text = BASE.replace("    version: 1\n", "    version: first\n", 1).replace(
        "bounds: [0, 1000000]", "bounds: [5, 1]")
    with pytest.raises(PolicyError) as info:
        load_policy(write(tmp_path, text), resolve)
    problems = info.value.problems
    assert any("version must be a positive integer" in p for p in problems), problems
    assert any("reversed" in p for p in problems), problems


def test_every_problem_is_reported_at_once(tmp_path, resolve) -> None:  # type: ignore[no-untyped-def]
    text = BASE.replace("bounds: [0, 1000000]", "bounds: [5, 1]").replace(
        "refresh: none", "refresh: yearly").replace("dataset: districts", "dataset: nowhere")
    with pytest.raises(PolicyError) as info:
        load_policy(write(tmp_path, text), resolve)
    assert len(info.value.problems) >= 3


def test_broken_yaml_names_the_line(tmp_path, resolve) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path, BASE.replace("title: Test", "title: [unclosed"))
    with pytest.raises(Exception) as info:
        load_policy(path, resolve)
    assert re.search(rf"{re.escape(str(path))}:\d+", str(info.value))


def test_cli_policy_check(tmp_path, cli_env, ingest_demo) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    sandbox = str(Path(sys.executable).with_name("sandbox"))
    ingest_demo("persons", "loans", "districts")
    ok = subprocess.run([sandbox, "policy", "check",
                         str(POLICIES / "credit_underwriting.yaml")],
                        env=cli_env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout and "warning" not in ok.stderr
    lax = write(tmp_path, BASE.replace("epsilon_max: 1.0", "epsilon_max: 1000"))
    warned = subprocess.run([sandbox, "policy", "check", str(lax)], env=cli_env,
                            capture_output=True, text=True)
    assert warned.returncode == 0 and "ok" in warned.stdout
    assert "warning: privacy.epsilon_max 1000" in warned.stderr
    bad = write(tmp_path, BASE.replace("bounds: [0, 1000000]", "bounds: [9, 1]"))
    res = subprocess.run([sandbox, "policy", "check", str(bad)], env=cli_env,
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert f"{bad}:12:" in res.stderr and "Traceback" not in res.stderr


def test_a_join_of_columns_of_different_types_is_refused(tmp_path, resolve) -> None:  # type: ignore[no-untyped-def]
    """An ON equality of unlike types would convert values at run time (a failure on one
    value would be a signal), so the policy cannot declare it."""
    text = (POLICIES / "credit_underwriting.yaml").read_text().replace(
        "  - [persons.district, districts.district]",
        "  - [persons.district, districts.area_km2]")
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(path, resolve)
    assert "different types" in str(info.value)


def test_numbers_yaml_reads_as_text_are_named_with_the_fix(tmp_path, resolve) -> None:  # type: ignore[no-untyped-def]
    """YAML 1.1 reads 1e-7 (no dot) as the text '1e-7': the error says how to write it."""
    text = BASE.replace("delta: 1.0e-7,", "delta: 1e-7,").replace(
        "bounds: [0, 1000000]", "bounds: [0, 1e6]")
    with pytest.raises(PolicyError) as info:
        load_policy(write(tmp_path, text), resolve)
    problems = info.value.problems
    assert any("got the text '1e-7'" in p and "write 1.0e-7" in p for p in problems), problems
    assert any("got the text '1e6'" in p and "write 1.0e+6" in p for p in problems), problems


def test_values_far_from_common_practice_are_warned_about(tmp_path, resolve) -> None:  # type: ignore[no-untyped-def]
    from sandbox.policy_review import warnings

    assert warnings(load_policy(write(tmp_path, BASE), resolve)) == []
    for path in POLICIES.glob("*.yaml"):
        assert warnings(load_policy(path, resolve)) == [], path.name
    text = BASE.replace("epsilon_default: 0.5, epsilon_max: 1.0",
                        "epsilon_default: 2, epsilon_max: 1000").replace(
        "budget: {epsilon: 5, delta: 1.0e-5", "budget: {epsilon: 100000, delta: 0.5").replace(
        "    max_rows_per_unit: 1\n", "    max_rows_per_unit: 1000\n")
    found = warnings(load_policy(write(tmp_path, text), resolve))
    for words in ("epsilon_max 1000", "epsilon_default 2", "budget.epsilon 100000",
                  "budget.delta 0.5", "max_rows_per_unit 1000"):
        assert any(words in w for w in found), (words, found)


def test_bounds_far_above_the_datas_own_figures_are_warned_about(tiny_vault,  # type: ignore[no-untyped-def]
                                                                 engine) -> None:
    from sandbox.policy_review import DataFigures, data_warnings

    credit = POLICIES / "credit_underwriting.yaml"
    pol = load_policy(credit, tiny_vault.catalog.resolve)
    loans, persons = pol.tables["loans"].engine_table, pol.tables["persons"].engine_table
    most = engine.most_rows_per_unit(loans)
    assert most is not None and most >= 2  # the demo has persons with several loans
    assert engine.most_rows_per_unit(pol.tables["districts"].engine_table) is None  # public
    figures = DataFigures({loans: most}, {(persons, "income"): (0.0, 1000.0)})
    found = data_warnings(pol, figures)
    # income bounds [0, 2e6] are 2000 times the range; the loans bound of 10 is not far above
    assert found == ["tables.persons.columns.income.bounds [0, 2e+06] are 2000 times as wide "
                     "as the data's range [0, 1000]: sums and means get that much more noise"]
    figures.most_rows[loans] = 3
    assert any("max_rows_per_unit 10 is far above the 3 rows" in w
               for w in data_warnings(pol, figures))
    # the shipped policy on its own demo data warns about nothing
    real = DataFigures({loans: most}, {(persons, "income"): engine.column_range(persons,
                                                                                "income")})
    assert data_warnings(pol, real) == []
