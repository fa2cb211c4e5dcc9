"""Tests of sandbox.dp: calibration against OpenDP's maps, noise spread, intervals,
accounting, thresholds, quantiles and input validation.

OpenDP samples from a CSPRNG that cannot be seeded, so the statistical tests use large
samples (20k draws) with tolerances of many standard errors that still catch a scale
that is wrong by a factor of 1.5. The data of the tests is drawn with a seeded numpy RNG.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import subprocess
import sys
import threading
import time
from decimal import Decimal
from fractions import Fraction

import numpy as np
import opendp.prelude as opendp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox import dp
from sandbox.errors import SandboxError

opendp.enable_features("contrib")

N_DRAWS = 20_000


def draws(mech: dp.Mechanism, true_value: float = 0.0) -> np.ndarray:
    """N_DRAWS independent noisy releases of the same true value (noise only)."""
    values = [int(true_value)] * N_DRAWS if mech.integer else [float(true_value)] * N_DRAWS
    return np.asarray(dp.release(mech, values), dtype=float) - true_value


def discrete_laplace_moments(scale: float) -> tuple[float, float]:
    """E|X| and sd of the discrete Laplace P(k) ∝ exp(-|k| / scale)."""
    p = math.exp(-1.0 / scale)
    mean_abs = 2 * p / (1 - p * p)
    sd = math.sqrt(2 * p) / (1 - p)
    return mean_abs, sd


# --------------------------------------------------------------------------- noise spread


def test_discrete_laplace_spread_matches_scale() -> None:
    mech = dp.plan_laplace(0.1, 1, integer=True)
    assert mech.kind == "discrete_laplace"
    assert mech.scale == pytest.approx(10.0, rel=1e-9)
    noisy = dp.release(mech, [1000] * N_DRAWS)
    assert all(type(v) is int for v in noisy)
    err = np.asarray(noisy, dtype=float) - 1000
    mean_abs, sd = discrete_laplace_moments(mech.scale)
    assert np.mean(np.abs(err)) == pytest.approx(mean_abs, rel=0.05)
    assert np.std(err) == pytest.approx(sd, rel=0.05)
    assert abs(np.mean(err)) < 5 * sd / math.sqrt(N_DRAWS)


def test_continuous_laplace_spread_matches_scale() -> None:
    mech = dp.plan_laplace(0.5, 2.5, integer=False)
    assert mech.kind == "laplace"
    assert mech.scale == pytest.approx(5.0, rel=1e-9)
    noisy = dp.release(mech, [3.25] * N_DRAWS)
    assert all(type(v) is float for v in noisy)
    err = np.asarray(noisy) - 3.25
    assert np.mean(np.abs(err)) == pytest.approx(mech.scale, rel=0.05)
    assert np.std(err) == pytest.approx(mech.scale * math.sqrt(2), rel=0.05)
    assert len(set(noisy)) > N_DRAWS * 0.99  # continuous, not on an integer grid


@pytest.mark.parametrize("integer", [False, True])
def test_gaussian_std_matches_scale(integer: bool) -> None:
    mech = dp.plan_gaussian(1.0, 1e-6, 3.0, integer=integer)
    err = draws(mech, 7)
    assert np.std(err) == pytest.approx(mech.scale, rel=0.05)
    assert abs(np.mean(err)) < 5 * mech.scale / math.sqrt(N_DRAWS)
    noisy = dp.release(mech, [7, 8] if integer else [7.0, 8.5])
    assert all(type(v) is (int if integer else float) for v in noisy)


def test_scale_wrong_by_factor_1_5_would_be_caught() -> None:
    """The spread tolerance (5%) is far tighter than a 1.5x error of the scale."""
    mech = dp.plan_laplace(0.2, 1, integer=False)
    wide = dataclasses.replace(mech, scale=mech.scale * 1.5, cost=dp.Cost(mech.cost.epsilon / 1.5))
    err = draws(wide)
    assert np.mean(np.abs(err)) != pytest.approx(mech.scale, rel=0.05)


def test_vector_release_keeps_order_and_length() -> None:
    mech = dp.plan_laplace(1000.0, 1, integer=True)  # tiny noise
    values = list(range(0, 10_000, 1000))
    noisy = dp.release(mech, values)
    assert len(noisy) == len(values)
    assert all(abs(a - b) <= 2 for a, b in zip(noisy, values, strict=True))
    assert dp.release(mech, []) == []
    from_numpy = dp.release(mech, np.arange(3, dtype=np.int64))  # numpy ints are accepted
    assert len(from_numpy) == 3 and all(type(v) is int for v in from_numpy)


# --------------------------------------------------------------------------- intervals


@pytest.mark.parametrize(
    "plan",
    [
        lambda: dp.plan_laplace(0.1, 1, integer=True),
        lambda: dp.plan_laplace(0.3, 1.5, integer=False),
        lambda: dp.plan_gaussian(0.5, 1e-6, 2.0, integer=False),
        lambda: dp.plan_gaussian(0.5, 1e-6, 4.0, integer=True),
    ],
    ids=["discrete_laplace", "laplace", "gaussian", "discrete_gaussian"],
)
def test_95_interval_covers_truth_about_95_percent(plan) -> None:
    mech = plan()
    half = mech.ci_halfwidth(0.95)
    assert half > 0
    covered = np.mean(np.abs(draws(mech, 100)) <= half)
    assert 0.93 <= covered <= 0.97
    assert mech.ci_halfwidth(0.99) > half > mech.ci_halfwidth(0.5)


def test_interval_uses_opendp_accuracy_helpers() -> None:
    lap = dp.plan_laplace(0.5, 1, integer=False)
    assert lap.ci_halfwidth(0.9) == pytest.approx(
        opendp.laplacian_scale_to_accuracy(lap.scale, 0.1)
    )
    assert lap.ci_halfwidth(0.9) == pytest.approx(lap.scale * math.log(10))
    dlap = dp.plan_laplace(0.5, 1, integer=True)
    acc = opendp.discrete_laplacian_scale_to_accuracy(dlap.scale, 0.05)
    assert dlap.ci_halfwidth() == math.floor(acc)
    gauss = dp.plan_gaussian(1.0, 1e-5, 1.0, integer=False)
    assert gauss.ci_halfwidth() == pytest.approx(1.959964 * gauss.scale, rel=1e-5)


# --------------------------------------------------------------------------- cost = OpenDP map


@pytest.mark.parametrize(
    ("epsilon", "sensitivity", "integer"),
    [(1.0, 1, True), (0.7, 3, True), (0.1, 2.5, True), (0.3, 0.01, False), (5.0, 1e6, False)],
)
def test_laplace_cost_is_opendp_map(epsilon: float, sensitivity: float, integer: bool) -> None:
    mech = dp.plan_laplace(epsilon, sensitivity, integer)
    domain = opendp.vector_domain(
        opendp.atom_domain(T="i64") if integer else opendp.atom_domain(T=float, nan=False)
    )
    meas = opendp.m.make_laplace(domain, opendp.l1_distance(T=float), scale=mech.scale)
    assert mech.cost.epsilon == meas.map(float(sensitivity))
    assert mech.cost.epsilon <= epsilon
    assert mech.cost.epsilon == pytest.approx(epsilon, rel=1e-9)
    assert mech.scale == pytest.approx(sensitivity / epsilon, rel=1e-9)
    assert (mech.cost.delta, mech.cost.rho) == (0.0, 0.0)


@pytest.mark.parametrize("integer", [False, True])
def test_gaussian_cost_is_opendp_zcdp_conversion(integer: bool) -> None:
    mech = dp.plan_gaussian(0.8, 1e-7, 2.0, integer)
    domain = opendp.vector_domain(
        opendp.atom_domain(T="i64") if integer else opendp.atom_domain(T=float, nan=False)
    )
    gauss = opendp.m.make_gaussian(domain, opendp.l2_distance(T=float), scale=mech.scale)
    assert mech.cost.rho == gauss.map(2.0)
    assert mech.cost.rho == pytest.approx(2.0**2 / (2 * mech.scale**2), rel=1e-9)
    profile = opendp.c.make_zCDP_to_approxDP(gauss).map(2.0)
    assert mech.cost.epsilon == pytest.approx(profile.epsilon(1e-7), rel=1e-12)
    assert mech.cost.epsilon <= 0.8
    assert mech.cost.epsilon == pytest.approx(0.8, rel=1e-6)
    assert mech.cost.delta == 1e-7
    # tighter than the classical (eps < 1) Gaussian calibration
    assert mech.scale < 2.0 * math.sqrt(2 * math.log(1.25 / 1e-7)) / 0.8


@pytest.mark.parametrize("integer", [False, True])
def test_joint_gaussian_spends_the_request_and_less_noise_than_parts_apart(
        integer: bool) -> None:
    sens = (1.0, 3.0, 2.0)
    joint = dp.plan_gaussian_joint(0.3, 1e-6, sens, integer)
    total = dp.compose([m.cost for m in joint])
    assert total.epsilon <= 0.3 and total.epsilon == pytest.approx(0.3, rel=1e-6)
    assert total.delta == pytest.approx(1e-6)
    domain = opendp.vector_domain(
        opendp.atom_domain(T="i64") if integer else opendp.atom_domain(T=float, nan=False))
    for m, x in zip(joint, sens, strict=True):
        gauss = opendp.m.make_gaussian(domain, opendp.l2_distance(T=float), scale=m.scale)
        assert m.cost.rho == gauss.map(x)  # OpenDP's map is the cost
        assert m.cost.rho == pytest.approx(joint[0].cost.rho, rel=1e-9)  # equal shares
    apart = [dp.plan_gaussian(0.1, 1e-6 / 3, x, integer) for x in sens]
    assert dp.compose([m.cost for m in apart]).epsilon < 0.2  # what apart under-spent
    for a, j in zip(apart, joint, strict=True):
        assert j.scale < 0.6 * a.scale
    # one part is plan_gaussian's calibration
    one = dp.plan_gaussian_joint(0.5, 1e-6, (2.0,), integer)[0]
    assert one.scale == pytest.approx(dp.plan_gaussian(0.5, 1e-6, 2.0, integer).scale,
                                      rel=1e-9)


def test_mechanism_to_dict_is_json() -> None:
    mech = dp.plan_laplace(1.0, 1, integer=True)
    data = json.loads(json.dumps(mech.to_dict()))
    assert data["kind"] == "discrete_laplace"
    assert data["cost"]["epsilon"] == mech.cost.epsilon
    assert data["ci95_halfwidth"] == mech.ci_halfwidth()
    thr, _ = dp.plan_threshold(1.0, 1e-6, 1, 3)
    assert json.loads(json.dumps(thr.to_dict()))["d_in"] == [3, 3, 1]
    q = dp.plan_quantile(1.0, [0.0, 1.0], 0.5, 1)
    assert "ci95_halfwidth" not in json.loads(json.dumps(q.to_dict()))


# --------------------------------------------------------------------------- accounting


def test_cost_add_is_basic_composition() -> None:
    total = dp.Cost(0.5, 1e-6) + dp.Cost(0.25) + dp.Cost(1.0, 1e-6, rho=0.1)
    assert total.epsilon == pytest.approx(1.75)
    assert total.delta == pytest.approx(2e-6)
    assert total.rho == pytest.approx(0.1)
    assert total.zcdp_epsilon == pytest.approx(1.0)


def test_compose_pure_costs_adds() -> None:
    costs = [dp.Cost(0.1), dp.Cost(0.2, 1e-6), dp.Cost(0.3)]
    total = dp.compose(costs)
    assert total.epsilon == pytest.approx(0.6)
    assert total.delta == pytest.approx(1e-6)
    assert dp.compose([]) == dp.Cost(0.0)


def test_zcdp_composition_beats_basic_for_many_gaussians() -> None:
    mech = dp.plan_gaussian(0.1, 1e-8, 1.0, integer=False)
    costs = [mech.cost] * 50
    basic = sum(costs[1:], costs[0])
    total = dp.compose(costs)
    assert total.rho == pytest.approx(50 * mech.cost.rho)
    assert total.delta == pytest.approx(50 * 1e-8)
    assert total.epsilon < 0.2 * basic.epsilon  # about 0.66 instead of 5
    assert total.epsilon == pytest.approx(dp.rho_to_epsilon(total.rho, total.delta), rel=1e-9)


def test_compose_mixed_keeps_pure_part_and_takes_min_for_gaussian() -> None:
    gauss = dp.plan_gaussian(0.5, 1e-6, 1.0, integer=False).cost
    lap = dp.plan_laplace(0.3, 1, integer=True).cost
    total = dp.compose([lap, gauss, lap])
    # one Gaussian: the conversion of its own rho is its epsilon, so nothing is saved
    assert total.epsilon == pytest.approx(0.6 + gauss.epsilon, rel=1e-9)
    assert total.epsilon <= 0.6 + gauss.epsilon + 1e-12
    assert total.delta == pytest.approx(1e-6)
    # composing again with more Gaussians keeps the pure 0.6 apart
    again = dp.compose([total, gauss, gauss])
    three = dp.compose([gauss, gauss, gauss])
    assert again.epsilon == pytest.approx(0.6 + three.epsilon, rel=1e-9)


def test_split_epsilon_sums_to_total() -> None:
    parts = dp.split_epsilon(1.0, [1, 2, 3])
    assert parts == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert math.fsum(parts) <= 1.0 and sum(parts) <= 1.0
    assert sum(parts) == pytest.approx(1.0, rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    total=st.floats(min_value=1e-6, max_value=1e3),
    weights=st.lists(st.floats(min_value=1e-3, max_value=1e3), min_size=1, max_size=30),
)
def test_split_epsilon_property(total: float, weights: list[float]) -> None:
    parts = dp.split_epsilon(total, weights)
    assert len(parts) == len(weights)
    assert all(p > 0 for p in parts)
    assert sum(parts) <= total and math.fsum(parts) <= total
    assert math.fsum(parts) == pytest.approx(total, rel=1e-12)
    assert parts == pytest.approx([total * w / math.fsum(weights) for w in weights], rel=1e-9)


@settings(max_examples=30, deadline=None)
@given(
    eps=st.floats(min_value=0.01, max_value=10.0),
    factor=st.floats(min_value=1.01, max_value=10.0),
    sens=st.integers(min_value=1, max_value=1000),
    integer=st.booleans(),
)
def test_smaller_epsilon_gives_larger_scale(
    eps: float, factor: float, sens: int, integer: bool
) -> None:
    loose = dp.plan_laplace(eps, sens, integer)
    tight = dp.plan_laplace(eps / factor, sens, integer)
    assert tight.scale > loose.scale
    assert tight.ci_halfwidth() >= loose.ci_halfwidth()
    assert tight.cost.epsilon < loose.cost.epsilon


cost_strategy = st.builds(
    dp.Cost,
    epsilon=st.floats(min_value=0.0, max_value=10.0),
    delta=st.floats(min_value=0.0, max_value=1e-3),
)


@settings(max_examples=200, deadline=None)
@given(a=cost_strategy, b=cost_strategy, c=cost_strategy)
def test_compose_is_associative_on_eps_delta(a: dp.Cost, b: dp.Cost, c: dp.Cost) -> None:
    left = dp.compose([dp.compose([a, b]), c])
    right = dp.compose([a, dp.compose([b, c])])
    flat = dp.compose([a, b, c])
    for x in (left, right):
        assert x.epsilon == pytest.approx(flat.epsilon, rel=1e-12, abs=1e-15)
        assert x.delta == pytest.approx(flat.delta, rel=1e-12, abs=1e-18)
    ab_c, a_bc = (a + b) + c, a + (b + c)
    assert ab_c.epsilon == pytest.approx(a_bc.epsilon, rel=1e-12, abs=1e-15)
    assert ab_c.delta == pytest.approx(a_bc.delta, rel=1e-12, abs=1e-18)


def test_a_history_of_pure_charges_is_also_accounted_in_zcdp() -> None:
    """ε-DP implies ε²/2-zCDP: many small Laplace charges convert, at the budget's delta,
    to less than their sum; a few large ones stay with basic composition."""
    many = [dp.Cost(0.1)] * 100
    assert dp.compose(many).epsilon == pytest.approx(10.0)
    z = dp.compose(many, 1e-5)
    assert z.epsilon == pytest.approx(dp.rho_to_epsilon(100 * 0.1**2 / 2, 1e-5))
    assert z.epsilon < 6 and z.delta == pytest.approx(1e-5)
    few = [dp.Cost(1.0)] * 3
    assert dp.compose(few, 1e-5) == dp.compose(few)  # basic is tighter: charged as it was
    # a threshold's delta comes off the conversion's; its epsilon stays basic
    mixed = dp.compose([*many, dp.Cost(0.2, 1e-6)], 1e-5)
    assert mixed.epsilon == pytest.approx(0.2 + dp.rho_to_epsilon(0.5, 9e-6))
    # a query of k Laplace parts at ε/k is k(ε/k)²/2 in zCDP, not ε²/2
    parts = dp.compose([dp.Cost(0.05)] * 4)
    assert parts.pure_epsilon == pytest.approx(0.2) and parts.pure_rho == pytest.approx(0.005)
    # charges stored before these fields existed: pure when delta and rho are 0
    assert dp.Cost(0.3, 0.0, 0.0, None, None, None, None).pure_rho == pytest.approx(0.045)
    assert dp.Cost(0.3, 1e-6).pure_rho == 0


@settings(max_examples=100, deadline=None)
@given(eps=st.lists(st.floats(min_value=1e-3, max_value=2.0), min_size=1, max_size=40),
       extra=st.floats(min_value=1e-3, max_value=2.0),
       delta=st.floats(min_value=1e-9, max_value=1e-3))
def test_zcdp_accounting_is_never_worse_and_monotone(eps: list[float], extra: float,
                                                     delta: float) -> None:
    costs = [dp.Cost(e) for e in eps]
    basic, best = dp.compose(costs), dp.compose(costs, delta)
    assert best.epsilon <= basic.epsilon
    assert dp.compose([*costs, dp.Cost(extra)], delta).epsilon >= best.epsilon * (1 - 1e-9)
    if best.epsilon < basic.epsilon:  # the zCDP route: exactly OpenDP's conversion of rhos
        rho = math.fsum(e * e / 2 for e in eps)
        assert best.epsilon == pytest.approx(dp.rho_to_epsilon(rho, delta), rel=1e-9)


# --------------------------------------------------------------------------- thresholds


def test_threshold_plan_matches_opendp_map() -> None:
    mech, threshold = dp.plan_threshold(1.0, 1e-6, 2, 5)
    assert mech.threshold == threshold
    assert mech.d_in == (5, 10, 2)

    def opendp_map(t: int) -> tuple[float, float]:
        meas = opendp.m.make_laplace_threshold(
            opendp.map_domain(opendp.atom_domain(T=str), opendp.atom_domain(T="i64")),
            opendp.l01inf_distance(opendp.absolute_distance(T="i64")),
            scale=mech.scale,
            threshold=t,
        )
        return meas.map((5, 10, 2))

    # epsilon is OpenDP's; delta is OpenDP's map one threshold lower (opendp/opendp#2922)
    assert mech.cost.epsilon == opendp_map(threshold)[0] <= 1.0
    assert mech.cost.delta == opendp_map(threshold - 1)[1] <= 1e-6
    assert mech.cost.epsilon == pytest.approx(1.0, rel=1e-9)
    # exact: a unit's key (count <= 2) passes when noise >= threshold - 2; 5 such keys
    q = math.exp(-1.0 / mech.scale)
    single = q ** (threshold - 2) / (1 + q)
    assert mech.cost.delta == pytest.approx(1 - (1 - single) ** 5, rel=1e-6)
    # the threshold is the smallest that fits
    assert dp.plan_threshold(1.0, mech.cost.delta, 2, 5)[1] == threshold
    assert opendp_map(threshold - 2)[1] > 1e-6  # i.e. the delta of threshold - 1


def test_threshold_with_a_total_per_unit_has_less_noise_and_a_lower_threshold() -> None:
    """A unit with at most 6 rows in all, in up to 6 groups: l1 is 6, not 6 * 6."""
    loose, t_loose = dp.plan_threshold(1.0, 1e-6, 6, 6)
    tight, t_tight = dp.plan_threshold(1.0, 1e-6, 6, 6, max_total=6)
    assert loose.d_in == (6, 36, 6) and tight.d_in == (6, 6, 6)
    assert tight.scale == pytest.approx(loose.scale / 6, rel=1e-9)
    assert t_tight < t_loose / 4
    meas = opendp.m.make_laplace_threshold(
        opendp.map_domain(opendp.atom_domain(T=str), opendp.atom_domain(T="i64")),
        opendp.l01inf_distance(opendp.absolute_distance(T="i64")),
        scale=tight.scale, threshold=t_tight - 1)
    eps, delta = meas.map(tight.d_in)
    assert tight.cost.epsilon <= 1.0 and eps <= 1.0
    assert tight.cost.delta == delta <= 1e-6
    # a total below the per-group bound caps that bound too
    assert dp.plan_threshold(1.0, 1e-6, 6, 3, max_total=2)[0].d_in == (3, 2, 2)


def test_threshold_rarely_releases_a_single_unit_key() -> None:
    """Measured release rate of count-1 keys matches the planned delta.

    OpenDP 0.16's own map under-reports this delta by e^(1/scale) (2.7x here), which
    this test would catch.
    """
    delta = 1e-2
    mech, threshold = dp.plan_threshold(1.0, delta, 1, 1)
    assert mech.cost.delta <= delta
    n_keys = 50_000
    released = dp.release_threshold(mech, threshold, {f"k{i}": 1 for i in range(n_keys)})
    rate = len(released) / n_keys
    # about 250 expected, binomial sd about 16: +-30% is more than 4.5 sd
    assert 0.7 * mech.cost.delta <= rate <= 1.3 * mech.cost.delta
    assert all(v >= threshold for v in released.values())


def test_threshold_always_releases_large_counts() -> None:
    mech, threshold = dp.plan_threshold(1.0, 1e-6, 1, 1)
    big = 10 * threshold
    counts = {f"g{i}": big for i in range(2000)}
    counts["tiny"] = 0
    released = dp.release_threshold(mech, threshold, counts)
    assert set(released) == set(counts) - {"tiny"}
    assert all(type(v) is int for v in released.values())
    err = np.asarray(list(released.values()), dtype=float) - big
    assert np.mean(np.abs(err)) == pytest.approx(discrete_laplace_moments(mech.scale)[0], rel=0.1)
    assert dp.release_threshold(mech, threshold, {}) == {}


def test_threshold_refuses_lower_threshold_and_wrong_mechanism() -> None:
    mech, threshold = dp.plan_threshold(1.0, 1e-6, 1, 1)
    with pytest.raises(dp.InvalidParameterError, match="threshold"):
        dp.release_threshold(mech, threshold - 1, {"a": 5})
    assert dp.release_threshold(mech, threshold + 5, {"a": 10_000}).keys() == {"a"}
    with pytest.raises(dp.MechanismMismatchError):
        dp.release_threshold(dp.plan_laplace(1.0, 1, True), threshold, {"a": 5})
    with pytest.raises(dp.MechanismMismatchError):
        dp.release(mech, [1, 2])
    with pytest.raises(dp.InvalidParameterError, match="key"):
        dp.release_threshold(mech, threshold, {1: 5})  # type: ignore[dict-item]


# --------------------------------------------------------------------------- quantiles


def opendp_scores(data: list[float], candidates: list[float], alpha: float) -> list[int]:
    trans = opendp.t.make_quantile_score_candidates(
        opendp.vector_domain(opendp.atom_domain(T=float, nan=False)),
        opendp.symmetric_distance(),
        candidates,
        alpha,
    )
    return list(trans(data))


def counts_for(data: np.ndarray, candidates: list[float]) -> tuple[list[int], list[int]]:
    ordered = np.sort(data)
    below = np.searchsorted(ordered, candidates, side="left")
    above = len(data) - np.searchsorted(ordered, candidates, side="right")
    return [int(v) for v in below], [int(v) for v in above]


@pytest.mark.parametrize("alpha", [0.5, 0.25, 0.3, 0.9, 0.01])
def test_count_based_scores_equal_opendp_scores_with_ties(alpha: float) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 20, size=500).astype(float)  # many rows equal to candidates
    candidates = [float(c) for c in range(-2, 23)]
    below, above = counts_for(data, candidates)
    expected = opendp_scores(list(data), candidates, alpha)
    assert dp.quantile_scores(candidates, alpha, below, above) == expected
    assert dp.quantile_scores(candidates, alpha, below, above, n=len(data)) == expected


@pytest.mark.parametrize("alpha", [0.5, 0.75, 0.123])
def test_count_based_scores_without_counts_above_equal_opendp_without_ties(alpha: float) -> None:
    rng = np.random.default_rng(2)
    data = rng.normal(10, 3, size=2000)
    candidates = list(np.linspace(0, 20, 81))
    below, _ = counts_for(data, candidates)
    expected = opendp_scores(list(data), candidates, alpha)
    assert dp.quantile_scores(candidates, alpha, below, n=len(data)) == expected


def test_quantile_plan_sensitivity_and_cost_match_opendp() -> None:
    candidates = [float(c) for c in range(101)]
    for alpha, rows in [(0.5, 1), (0.3, 3)]:
        mech = dp.plan_quantile(1.0, candidates, alpha, rows)
        trans = opendp.t.make_quantile_score_candidates(
            opendp.vector_domain(opendp.atom_domain(T=float, nan=False)),
            opendp.symmetric_distance(),
            candidates,
            alpha,
        )
        assert mech.sensitivity == trans.map(rows)
        chain = trans >> opendp.m.then_noisy_max(opendp.max_divergence(), mech.scale, negate=True)
        assert mech.cost.epsilon == chain.map(rows)
        assert mech.cost.epsilon <= 1.0
        assert mech.cost.epsilon == pytest.approx(1.0, rel=1e-9)
    assert dp.plan_quantile(1.0, candidates, 0.5, 1).sensitivity == 1.0
    assert dp.plan_quantile(1.0, candidates, 0.3, 3).sensitivity == 3 * 7000


def test_quantile_median_is_accurate() -> None:
    rng = np.random.default_rng(3)
    data = rng.normal(50.0, 10.0, size=10_000)
    candidates = [float(c) for c in np.linspace(0.0, 100.0, 201)]  # step 0.5
    step = candidates[1] - candidates[0]
    mech = dp.plan_quantile(1.0, candidates, 0.5, 1)
    below, above = counts_for(data, candidates)
    released = [
        dp.release_quantile(mech, candidates, 0.5, below, above, n=len(data)) for _ in range(200)
    ]
    assert all(r in candidates for r in released)
    close = sum(abs(r - 50.0) <= 3 * step for r in released)
    assert close >= 190


def test_quantile_with_counts_below_only_and_other_alpha() -> None:
    rng = np.random.default_rng(4)
    data = rng.uniform(0.0, 100.0, size=10_000)
    candidates = [float(c) for c in np.linspace(0.0, 100.0, 101)]
    mech = dp.plan_quantile(1.0, candidates, 0.25, 1)
    below, _ = counts_for(data, candidates)
    released = [dp.release_quantile(mech, candidates, 0.25, below, n=len(data)) for _ in range(200)]
    assert sum(abs(r - 25.0) <= 3.0 for r in released) >= 190


def test_quantile_release_refuses_mismatches() -> None:
    candidates = [0.0, 1.0, 2.0]
    mech = dp.plan_quantile(1.0, candidates, 0.5, 1)
    with pytest.raises(dp.MechanismMismatchError, match="alpha"):
        dp.release_quantile(mech, candidates, 0.25, [0, 1, 2], n=3)
    with pytest.raises(dp.MechanismMismatchError):
        dp.release_quantile(dp.plan_laplace(1.0, 1, True), candidates, 0.5, [0, 1, 2], n=3)
    with pytest.raises(dp.MechanismMismatchError):
        dp.release(mech, [1, 2, 3])
    with pytest.raises(dp.MechanismMismatchError):
        mech.ci_halfwidth()
    with pytest.raises(dp.InvalidParameterError, match="n"):
        dp.release_quantile(mech, candidates, 0.5, [0, 1, 2])
    with pytest.raises(dp.InvalidParameterError, match="counts_below"):
        dp.release_quantile(mech, candidates, 0.5, [0, 1], n=3)
    with pytest.raises(dp.InvalidParameterError, match="counts_below"):
        dp.release_quantile(mech, candidates, 0.5, [0, 1.5, 2], n=3)  # a type, not a value
    # inconsistent counts are refused by the helper, but repaired by a release (below)
    with pytest.raises(dp.InvalidParameterError, match="monotone"):
        dp.quantile_scores(candidates, 0.5, [0, 2, 1], n=3)
    with pytest.raises(dp.InvalidParameterError, match="between 0 and n"):
        dp.quantile_scores(candidates, 0.5, [0, 1, 2], [3, 3, 1], n=3)
    # a mechanism planned for 1 row per unit cannot release scores of 2 rows per unit
    forged = dataclasses.replace(mech, d_in=2)
    with pytest.raises(dp.MechanismMismatchError):
        dp.release_quantile(forged, candidates, 0.5, [0, 1, 2], n=3)


# --------------------------------------------------------------------------- fail closed


def test_hand_edited_mechanism_is_refused() -> None:
    mech = dp.plan_laplace(1.0, 1, integer=True)
    cheaper = dataclasses.replace(mech, scale=mech.scale / 2)
    with pytest.raises(dp.MechanismMismatchError):
        dp.release(cheaper, [1, 2])
    gauss = dp.plan_gaussian(1.0, 1e-6, 1.0, integer=False)
    with pytest.raises(dp.MechanismMismatchError):
        dp.release(dataclasses.replace(gauss, sensitivity=2.0), [1.0])


def test_release_refuses_bad_types_without_showing_values() -> None:
    """Only the *type* of a value is refused (fixed by the query, not by the rows)."""
    ints = dp.plan_laplace(1.0, 1, integer=True)
    with pytest.raises(dp.InvalidParameterError, match=r"values\[1\]") as exc:
        dp.release(ints, [1, 2.5])
    assert "2.5" not in str(exc.value)
    with pytest.raises(dp.InvalidParameterError):
        dp.release(ints, [1.0])  # every float, whatever its value
    with pytest.raises(dp.InvalidParameterError):
        dp.release(ints, [True])
    floats = dp.plan_laplace(1.0, 1, integer=False)
    with pytest.raises(dp.InvalidParameterError):
        dp.release(floats, ["1.0"])
    mixed = dp.release(floats, [1, 2.5])  # ints are fine for a float mechanism
    assert len(mixed) == 2 and all(type(v) is float for v in mixed)


BAD_CALLS = [
    ("epsilon", lambda: dp.plan_laplace(0.0, 1, True)),
    ("epsilon", lambda: dp.plan_laplace(-1.0, 1, True)),
    ("epsilon", lambda: dp.plan_laplace(math.nan, 1, True)),
    ("epsilon", lambda: dp.plan_laplace(math.inf, 1, True)),
    ("epsilon", lambda: dp.plan_laplace("1", 1, True)),
    ("epsilon", lambda: dp.plan_gaussian(0.0, 1e-6, 1.0, False)),
    ("epsilon", lambda: dp.plan_threshold(-0.5, 1e-6, 1, 1)),
    ("epsilon", lambda: dp.plan_quantile(math.inf, [0.0, 1.0], 0.5, 1)),
    ("sensitivity", lambda: dp.plan_laplace(1.0, -1, True)),
    ("sensitivity", lambda: dp.plan_laplace(1.0, 0, False)),
    ("sensitivity", lambda: dp.plan_laplace(1.0, math.inf, False)),
    ("sensitivity_l2", lambda: dp.plan_gaussian(1.0, 1e-6, -2.0, False)),
    ("sensitivity", lambda: dp.plan_threshold(1.0, 1e-6, 0, 1)),
    ("sensitivity", lambda: dp.plan_threshold(1.0, 1e-6, 1.5, 1)),
    ("max_groups_per_unit", lambda: dp.plan_threshold(1.0, 1e-6, 1, 0)),
    ("delta", lambda: dp.plan_gaussian(1.0, 0.0, 1.0, False)),
    ("delta", lambda: dp.plan_gaussian(1.0, 1.0, 1.0, False)),
    ("delta", lambda: dp.plan_gaussian(1.0, -1e-6, 1.0, False)),
    ("delta", lambda: dp.plan_threshold(1.0, 0.0, 1, 1)),
    ("delta", lambda: dp.plan_threshold(1.0, 1.5, 1, 1)),
    ("delta", lambda: dp.Cost(1.0, delta=1.0)),
    ("delta", lambda: dp.Cost(1.0, delta=-0.1)),
    ("epsilon", lambda: dp.Cost(-1.0)),
    ("epsilon", lambda: dp.Cost(math.inf)),
    ("rho", lambda: dp.Cost(1.0, rho=-1.0)),
    ("integer", lambda: dp.plan_laplace(1.0, 1, "yes")),
    ("candidates", lambda: dp.plan_quantile(1.0, [], 0.5, 1)),
    ("candidates", lambda: dp.plan_quantile(1.0, [1.0, 0.0], 0.5, 1)),
    ("candidates", lambda: dp.plan_quantile(1.0, [0.0, 1.0, 0.5], 0.5, 1)),
    ("candidates", lambda: dp.plan_quantile(1.0, [0.0, math.inf], 0.5, 1)),
    ("sensitivity", lambda: dp.plan_laplace(1.0, -1e-9, True)),
    ("sensitivity_l2", lambda: dp.plan_gaussian(1.0, 1e-6, math.nan, True)),
    ("sensitivity", lambda: dp.plan_laplace(1.0, 10**400, True)),
    ("the Laplace noise scale", lambda: dp.plan_laplace(1e-300, 1e300, True)),
    ("the Gaussian noise scale", lambda: dp.plan_gaussian(1e-300, 1e-8, 1e300, True)),
    ("rho", lambda: dp.rho_to_epsilon(1e7, 1e-8)),
    ("candidates", lambda: dp.plan_quantile(1.0, [0.0, math.nan], 0.5, 1)),
    ("alpha", lambda: dp.plan_quantile(1.0, [0.0, 1.0], 0.0, 1)),
    ("alpha", lambda: dp.plan_quantile(1.0, [0.0, 1.0], 1.0, 1)),
    ("alpha", lambda: dp.plan_quantile(1.0, [0.0, 1.0], 1.5, 1)),
    ("max_contributions", lambda: dp.plan_quantile(1.0, [0.0, 1.0], 0.5, 0)),
    ("total", lambda: dp.split_epsilon(0.0, [1.0])),
    ("weights", lambda: dp.split_epsilon(1.0, [])),
    ("weights[1]", lambda: dp.split_epsilon(1.0, [1.0, 0.0])),
    ("weights[0]", lambda: dp.split_epsilon(1.0, [-1.0])),
    ("confidence", lambda: dp.plan_laplace(1.0, 1, True).ci_halfwidth(1.0)),
    ("confidence", lambda: dp.plan_laplace(1.0, 1, True).ci_halfwidth(0.0)),
    ("costs[1]", lambda: dp.compose([dp.Cost(1.0), 1.0])),
    ("kind", lambda: dp.Mechanism("uniform", 1.0, 1.0, dp.Cost(1.0), False)),
]


@pytest.mark.parametrize(
    ("name", "call"), BAD_CALLS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD_CALLS)]
)
def test_validation_errors_name_parameter_and_range(name: str, call) -> None:
    with pytest.raises(dp.InvalidParameterError) as exc:
        call()
    err = exc.value
    assert isinstance(err, SandboxError)
    assert err.code == "dp.invalid_parameter"
    assert err.message.startswith(f"{name} must be")
    assert err.hint
    assert err.to_dict()["code"] == "dp.invalid_parameter"


def test_error_codes_are_stable() -> None:
    assert dp.DPError.code == "dp.error"
    assert dp.InvalidParameterError.code == "dp.invalid_parameter"
    assert dp.MechanismMismatchError.code == "dp.mechanism_mismatch"
    assert issubclass(dp.MechanismMismatchError, dp.DPError)


def test_dp_imports_no_engine_web_or_cli() -> None:
    code = (
        "import sys, sandbox.dp\n"
        "bad = {'duckdb', 'click', 'jupyterhub', 'tornado', 'sandbox.engine', 'sandbox.cli'}\n"
        "assert not bad & set(sys.modules), bad & set(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- bounded time


def within(seconds: float, call, *args):
    """Run ``call(*args)`` in a daemon thread; fail if it has not returned after ``seconds``.

    OpenDP's slow helpers run in C with the GIL released, so a thread lets the test fail
    quickly instead of hanging for the 40 minutes such a call used to take."""
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["value"] = call(*args)
        except BaseException as exc:  # re-raised below
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    start = time.perf_counter()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not finish within {seconds} s"
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    assert time.perf_counter() - start < seconds
    return out["value"]


def test_sum_of_income_interval_is_fast() -> None:
    """The audit's case: sum(income) with bounds [0, 1e6] at fixed-point scale 1e4 under
    a Gaussian policy (L2 sensitivity 1e10): the 95% interval took 46 minutes."""
    mech = within(2.0, dp.plan_gaussian, 0.1, 1e-8, 1e10, True)
    half = within(2.0, mech.ci_halfwidth)
    assert half == math.ceil(mech.scale * 1.959963984540054 * (1 + 1e-12))
    assert within(2.0, mech.to_dict)["ci95_halfwidth"] == half  # type: ignore[index]


# Generous per-call bound: the calls take milliseconds; OpenDP's helpers took minutes.
GRID_SENS = [1, 1e5, 1e10, 1e15]
GRID_EPS = [1e-3, 0.1, 10.0]
GRID_DELTA = [1e-12, 1e-8, 1e-3]


@pytest.mark.parametrize("integer", [True, False])
def test_gaussian_plans_and_intervals_are_fast_on_extreme_grid(integer: bool) -> None:
    for sens, eps, delta in itertools.product(GRID_SENS, GRID_EPS, GRID_DELTA):
        eps_fresh = eps * 1.0123  # not in any cache of an earlier test
        mech = within(2.0, dp.plan_gaussian, eps_fresh, delta, sens, integer)
        assert mech.cost.epsilon <= eps_fresh
        for confidence in (0.5, 0.95, 1 - 1e-12):
            half = within(2.0, mech.ci_halfwidth, confidence)
            # integer noise of a small scale is 0 with probability over one half
            assert half > 0 or (integer and confidence == 0.5 and half == 0)
        within(2.0, dp.rho_to_epsilon, mech.cost.rho * 3, delta)


@pytest.mark.parametrize("integer", [True, False])
def test_laplace_plans_and_intervals_are_fast_on_extreme_grid(integer: bool) -> None:
    for sens, eps in itertools.product([*GRID_SENS, 0.001], [1e-6, *GRID_EPS, 1e3]):
        mech = within(2.0, dp.plan_laplace, eps, sens, integer)
        for confidence in (0.5, 0.95, 1 - 1e-12):
            half = within(2.0, mech.ci_halfwidth, confidence)
            assert half >= 0 and math.isfinite(half)


def test_threshold_and_quantile_plans_are_fast_on_extreme_grid() -> None:
    for eps, delta, sens, l0 in itertools.product(
        [1e-3, 1.0, 10.0], [1e-12, 1e-3, 0.3], [1, 10**6], [1, 1000]
    ):
        mech, threshold = within(2.0, dp.plan_threshold, eps, delta, sens, l0)
        assert mech.cost.delta <= delta and threshold > sens
    for eps, rows in itertools.product([1e-6, 1.0, 100.0], [1, 1000]):
        within(2.0, dp.plan_quantile, eps, [0.0, 1.0, 2.0], 0.3, rows)
    many = [dp.plan_gaussian(0.1, 1e-8, 1.0, True).cost] * 1000
    within(2.0, dp.compose, many)


def test_repeated_plans_are_cached() -> None:
    first = dp.plan_gaussian(0.3141, 1e-9, 12345.0, integer=True)
    start = time.perf_counter()
    for _ in range(100):
        assert dp.plan_gaussian(0.3141, 1e-9, 12345.0, integer=True) == first
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize(
    ("epsilon", "delta", "sensitivity"),
    [(0.1, 1e-8, 1e10), (1e-3, 1e-12, 1.0), (10.0, 1e-3, 7.0), (1e-6, 0.5, 1.0), (50.0, 1e-6, 2.0)],
)
@pytest.mark.parametrize("integer", [True, False])
def test_gaussian_scale_is_the_smallest_that_opendp_accepts(
    epsilon: float, delta: float, sensitivity: float, integer: bool
) -> None:
    mech = dp.plan_gaussian(epsilon, delta, sensitivity, integer)
    domain = opendp.vector_domain(
        opendp.atom_domain(T="i64") if integer else opendp.atom_domain(T=float, nan=False)
    )

    def opendp_cost(scale: float) -> tuple[float, float]:
        gauss = opendp.m.make_gaussian(domain, opendp.l2_distance(T=float), scale=scale)
        return opendp.c.make_fix_delta(opendp.c.make_zCDP_to_approxDP(gauss), delta).map(
            sensitivity
        )

    assert mech.cost.epsilon == opendp_cost(mech.scale)[0] <= epsilon
    assert opendp_cost(mech.scale * (1 - 1e-7))[0] > epsilon  # minimal to 1e-7


# --------------------------------------------------------------------------- intervals, proofs


def exact_discrete_gaussian_halfwidth(scale: float, alpha: float) -> int:
    """Smallest integer h with P[|X| > h] <= alpha, by summing the pmf (tails from the top)."""
    size = int(40 * scale + 40)
    weights = [math.exp(-j * j / (2 * scale * scale)) for j in range(size)]
    total = weights[0] + 2 * math.fsum(weights[1:])
    tail = 0.0
    tails = [0.0] * size
    for j in range(size - 1, -1, -1):
        tails[j] = 2 * tail / total  # P[|X| > j]
        tail += weights[j]
    return next(h for h in range(size) if tails[h] <= alpha)


@pytest.mark.parametrize("scale", [0.01, 0.3, 0.5, 0.8, 1.0, 1.5, 3.3, 7.0, 31.6, 100.0, 1000.0])
@pytest.mark.parametrize("confidence", [0.5, 0.9, 0.95, 0.99, 1 - 1e-6, 1 - 1e-12])
def test_discrete_gaussian_interval_covers_and_is_tight(scale: float, confidence: float) -> None:
    """The half-width is the exact one (the smallest that covers), and within one of
    OpenDP's helper (where that helper is fast enough to call)."""
    mech = dataclasses.replace(
        dp.plan_gaussian(1.0, 1e-6, 1.0, integer=True), scale=scale, cost=dp.Cost(0.0)
    )
    half = mech.ci_halfwidth(confidence)
    exact = exact_discrete_gaussian_halfwidth(scale, 1 - confidence)
    assert half == exact
    opendp_half = math.floor(opendp.discrete_gaussian_scale_to_accuracy(scale, 1 - confidence))
    assert abs(half - opendp_half) <= 1


def test_large_scale_discrete_gaussian_interval_covers_draws() -> None:
    mech = dp.plan_gaussian(0.1, 1e-8, 1e6, integer=True)  # scale about 5e7
    half = mech.ci_halfwidth(0.95)
    assert half == pytest.approx(1.959964 * mech.scale, rel=1e-6)
    covered = np.mean(np.abs(draws(mech, 0)) <= half)
    assert 0.94 <= covered <= 0.96


def test_discrete_laplace_interval_at_tiny_scale() -> None:
    """OpenDP's helper underflows to -inf at a tiny scale: the half-width is 0 there."""
    mech = dp.plan_laplace(1e4, 1, integer=True)
    assert mech.ci_halfwidth(0.95) == 0.0
    assert mech.to_dict()["ci95_halfwidth"] == 0.0
    assert set(dp.release(mech, [5] * 100)) == {5}


# --------------------------------------------------------------------------- never raises on data


def test_integer_release_clips_instead_of_raising_at_the_limit() -> None:
    """Whether release raised used to flip on one person: with 1e15 per row, 4,611 rows at
    the bound fit in 2**62 and 4,612 do not. Both must release, clipped to 2**62."""
    mech = dp.plan_laplace(1e4, 1, integer=True)  # noise is 0 with overwhelming probability
    per_row = 10**15
    limit = 2**62
    assert 4611 * per_row <= limit < 4612 * per_row
    assert dp.release(mech, [4611 * per_row]) == [4611 * per_row]
    assert dp.release(mech, [4612 * per_row]) == [limit]
    huge = [10**40, -(10**40), 2**63, -(2**63) - 1, limit + 1, None, 0]  # HUGEINT sums
    assert dp.release(mech, huge) == [limit, -limit, limit, -limit, limit, 0, 0]
    assert dp.release(mech, np.asarray([2**63 - 1], dtype=np.int64)) == [limit]
    for policy in (
        dp.plan_laplace(0.01, 10**15, integer=True),
        dp.plan_gaussian(0.1, 1e-8, 1e15, integer=True),
    ):
        noisy = dp.release(policy, [10**30, -(10**30), None])
        assert all(type(v) is int for v in noisy)


def test_float_release_maps_non_finite_values_deterministically() -> None:
    mech = dp.plan_laplace(1e6, 1, integer=False)  # noise about 1e-6
    limit = float(2**62)
    values = [math.nan, math.inf, -math.inf, 1e300, -1e300, None, 10**400, 2.5]
    values += [Decimal("NaN"), Decimal("sNaN"), Decimal("1.5"), Fraction(10**400)]
    values += [np.float64("nan")]
    expected = [0.0, limit, -limit, limit, -limit, 0.0, limit, 2.5, 0.0, 0.0, 1.5, limit, 0.0]
    noisy = dp.release(mech, values)
    assert all(type(v) is float and math.isfinite(v) for v in noisy)
    assert noisy == pytest.approx(expected, abs=1e-3)
    gauss = dp.plan_gaussian(1.0, 1e-6, 1.0, integer=False)
    assert all(math.isfinite(v) for v in dp.release(gauss, [math.nan, math.inf, -math.inf]))


def test_threshold_release_never_raises_on_counts() -> None:
    mech, threshold = dp.plan_threshold(1.0, 1e-6, 1, 1)
    released = dp.release_threshold(mech, threshold, {"a": 10**30, "b": None, "c": -(10**30)})
    assert set(released) == {"a"}
    assert released["a"] == pytest.approx(2**62, rel=1e-12)


def test_quantile_release_repairs_inconsistent_counts() -> None:
    candidates = [0.0, 1.0, 2.0, 3.0]
    mech = dp.plan_quantile(1.0, candidates, 0.5, 1)
    garbage = [
        ([7, -3, None, 10**40], [None, 10**30, -5, 3], -4),
        ([0, 2, 1, 3], [3, 3, 1, 0], 3),
        ([0, 1, 2, 3], None, 10**40),
        ([0, 0, 0, 0], [0, 0, 0, 0], None),
    ]
    for below, above, n in garbage:
        assert dp.release_quantile(mech, candidates, 0.5, below, above, n) in candidates


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=-5, max_value=25), min_size=1, max_size=60))
def test_repair_is_the_identity_on_real_counts(data: list[int]) -> None:
    candidates = [float(c) for c in range(-2, 24, 3)]
    below, above = counts_for(np.asarray(data, dtype=float), candidates)
    assert dp._repair_counts(below, above, len(data)) == (below, above)
    assert dp._repair_counts(below, None, len(data)) == (below, [len(data) - b for b in below])


# --------------------------------------------------------------------------- degenerate plans


@pytest.mark.parametrize("integer", [True, False])
def test_zero_sensitivity_is_planned_as_one_unit(integer: bool) -> None:
    """sum(0): every row adds 0, so any sensitivity bound is sound; integer mechanisms use
    one unit. Float mechanisms have no unit and still refuse 0."""
    if not integer:
        with pytest.raises(dp.InvalidParameterError, match="sensitivity"):
            dp.plan_laplace(1.0, 0, integer=False)
        return
    lap = dp.plan_laplace(0.5, 0, integer=True)
    assert lap == dp.plan_laplace(0.5, 1, integer=True)
    assert lap.sensitivity == 1.0 and lap.cost.epsilon == pytest.approx(0.5)
    assert dp.plan_laplace(0.5, 0.25, integer=True).sensitivity == 1.0
    gauss = dp.plan_gaussian(0.5, 1e-6, 0.0, integer=True)
    assert gauss.scale == dp.plan_gaussian(0.5, 1e-6, 1.0, integer=True).scale
    assert len(dp.release(lap, [0, 0])) == 2 and len(dp.release(gauss, [0])) == 1


def test_degenerate_quantile_grid_returns_its_single_candidate() -> None:
    """median(5) with bounds [5, 5]: every candidate is 5."""
    grid = [5.0] * 101
    mech = dp.plan_quantile(1.0, grid, 0.5, 1)
    assert mech.cost.epsilon == pytest.approx(1.0)
    for below, n in (([0] * 101, 10), ([3] * 101, 3), ([-1] * 101, None)):
        above = None if n is not None else [0] * 101
        assert dp.release_quantile(mech, grid, 0.5, below, above, n) == 5.0


def test_repeated_candidates_are_merged() -> None:
    rng = np.random.default_rng(5)
    data = rng.normal(50.0, 5.0, size=5000)
    grid = sorted([float(c) for c in range(0, 101, 2)] * 3)
    below, above = counts_for(data, grid)
    mech = dp.plan_quantile(1.0, grid, 0.5, 1)
    released = [dp.release_quantile(mech, grid, 0.5, below, above) for _ in range(50)]
    assert all(abs(r - 50.0) <= 4.0 for r in released)


def test_threshold_can_be_the_lowest_allowed() -> None:
    """A large epsilon and delta make linf + 1 fit; OpenDP's binary search refused that."""
    mech, threshold = dp.plan_threshold(10.0, 1e-3, 1, 1)
    assert threshold == 2 and mech.cost.delta <= 1e-3


@pytest.mark.parametrize(
    ("epsilon", "delta", "sensitivity", "groups"),
    [(1.0, 1e-6, 2, 5), (1e-3, 1e-12, 10**6, 1000), (0.5, 0.3, 3, 7), (10.0, 1e-9, 1, 1)],
)
def test_threshold_is_the_smallest_that_fits(
    epsilon: float, delta: float, sensitivity: int, groups: int
) -> None:
    mech, threshold = dp.plan_threshold(epsilon, delta, sensitivity, groups)
    meas = functools.partial(
        opendp.m.make_laplace_threshold,
        opendp.map_domain(opendp.atom_domain(T=str), opendp.atom_domain(T="i64")),
        opendp.l01inf_distance(opendp.absolute_distance(T="i64")),
        scale=mech.scale,
    )
    d_in = (groups, groups * sensitivity, sensitivity)
    assert meas(threshold=threshold - 1).map(d_in)[1] == mech.cost.delta <= delta
    assert meas(threshold=threshold - 2).map(d_in)[1] > delta


def test_compose_falls_back_to_basic_composition_for_huge_rho() -> None:
    huge = dp.Cost(100.0, 1e-8, rho=1e7)
    assert within(2.0, dp.compose, [huge, huge]).epsilon == pytest.approx(200.0)
