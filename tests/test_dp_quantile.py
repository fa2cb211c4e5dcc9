"""Tests of the binned quantile of sandbox.dp (plan_binned_quantile, release_binned_quantile).

The release selects a fine bin of a histogram in two stages with OpenDP's noisy max, whose
randomness cannot be seeded: the statistical tests compare thousands of releases with the
exact distribution, with tolerances of several standard errors. Data come from a seeded
numpy RNG.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import time

import numpy as np
import opendp.prelude as opendp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox import dp

opendp.enable_features("contrib")


def histogram_of(values: np.ndarray, lo: float, hi: float, bins: int) -> list[tuple[int, int]]:
    """What the gate's SQL computes: rows per non-empty bin of floor((x - lo) / step)."""
    step = (hi - lo) / bins
    index = np.minimum(np.floor((np.clip(values, lo, hi) - lo) / step), bins - 1).astype(int)
    return sorted(collections.Counter(index.tolist()).items())


def opendp_bin_scores(hist: list[tuple[int, int]], bins: int, alpha: float) -> list[int]:
    """OpenDP's own quantile scores, each bin a candidate and its rows equal to it."""
    rows = [float(b) for b, c in hist for _ in range(c)]
    trans = opendp.t.make_quantile_score_candidates(
        opendp.vector_domain(opendp.atom_domain(T=float, nan=False)),
        opendp.symmetric_distance(),
        [float(f) for f in range(bins)],
        alpha,
    )
    return [int(s) for s in trans(rows)]


def permute_and_flip(scores: list[int], scale: float) -> list[float]:
    """Exact output distribution of permute-and-flip (minimising) by enumerating orders."""
    best = min(scores)
    accept = [math.exp(-(s - best) / scale) for s in scores]
    probs = [0.0] * len(scores)
    orders = list(itertools.permutations(range(len(scores))))
    for order in orders:
        still = 1.0
        for j in order:
            probs[j] += still * accept[j] / len(orders)
            still *= 1.0 - accept[j]
    return probs


# --------------------------------------------------------------------------- plan


@pytest.mark.parametrize(("alpha", "rows"), [(0.5, 1), (0.3, 3), (0.9, 2)])
def test_plan_costs_epsilon_as_two_opendp_noisy_maxes(alpha: float, rows: int) -> None:
    mech = dp.plan_binned_quantile(1.0, alpha, rows)
    one_stage = dp.plan_quantile(1.0, [0.0, 1.0], alpha, rows)
    assert mech.stages == 2 and mech.sensitivity == one_stage.sensitivity
    assert mech.cost.epsilon <= 1.0 and mech.cost.epsilon == pytest.approx(1.0, rel=1e-9)
    assert mech.cost.delta == 0.0
    noisy_max = opendp.m.make_noisy_max(
        opendp.vector_domain(opendp.atom_domain(T="u64")),
        opendp.linf_distance(T="u64"),
        opendp.max_divergence(),
        scale=mech.scale,
        negate=True,
    )
    assert mech.cost.epsilon == 2 * noisy_max.map(int(mech.sensitivity))
    assert mech.scale == pytest.approx(2 * one_stage.scale, rel=1e-9)  # each stage: eps / 2
    assert mech.to_dict()["stages"] == 2


def test_opendp_noisy_max_is_permute_and_flip() -> None:
    """Under max_divergence OpenDP 0.16 samples permute-and-flip, not the exponential
    mechanism: with scores (0, 1) at scale 1 the best is chosen with probability
    1 - e^-1 / 2 = 0.816, where the exponential mechanism would give 0.731."""
    meas = opendp.m.make_noisy_max(
        opendp.vector_domain(opendp.atom_domain(T="u64")),
        opendp.linf_distance(T="u64"),
        opendp.max_divergence(),
        scale=1.0,
        negate=True,
    )
    n = 20_000
    rate = sum(meas([0, 1]) == 0 for _ in range(n)) / n
    assert rate == pytest.approx(permute_and_flip([0, 1], 1.0)[0], abs=5 * math.sqrt(0.2 / n))


# --------------------------------------------------------------------------- scores


@pytest.mark.parametrize("alpha", [0.5, 0.25, 0.9, 0.123])
def test_bin_scores_are_opendp_scores_with_ties(alpha: float) -> None:
    rng = np.random.default_rng(11)
    bins = 64
    hist = sorted(collections.Counter(rng.integers(5, 50, size=400).tolist()).items())
    expected = opendp_bin_scores(hist, bins, alpha)
    keys, counts = dp._read_histogram(hist, bins)
    scores = dp._BinScores(keys, counts, alpha)
    got = np.abs(scores(np.arange(bins, dtype=np.int64)))
    assert got.tolist() == expected
    coarse = dp._coarse_scores(scores, 8, 8)
    assert coarse.tolist() == [min(expected[c * 8:(c + 1) * 8]) for c in range(8)]


# --------------------------------------------------------------------------- distribution


def test_release_samples_the_two_stage_permute_and_flip_distribution() -> None:
    """16 bins = 4 coarse x 4 fine: each fine bin's release frequency matches the exact
    probability P(coarse) * P(fine | coarse) of two permute-and-flip selections."""
    bins, alpha = 16, 0.5
    hist = [(1, 2), (5, 3), (6, 1), (9, 2), (14, 1)]
    mech = dp.plan_binned_quantile(1.0, alpha, 1)
    fine_scores = opendp_bin_scores(hist, bins, alpha)
    coarse_scores = [min(fine_scores[c * 4:(c + 1) * 4]) for c in range(4)]
    stage1 = permute_and_flip(coarse_scores, mech.scale)
    expected = [
        stage1[f // 4] * permute_and_flip(fine_scores[f // 4 * 4:f // 4 * 4 + 4], mech.scale)[f % 4]
        for f in range(bins)
    ]
    n = 6000
    seen = collections.Counter(
        int(dp.release_binned_quantile(mech, 0.0, 16.0, bins, alpha, hist)) for _ in range(n)
    )
    assert set(seen) <= set(range(bins))
    for f in range(bins):
        p = expected[f]
        assert abs(seen[f] / n - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-3, (f, seen[f], p)
    chi2 = sum((seen[f] - n * p) ** 2 / (n * p) for f, p in enumerate(expected) if p > 0)
    assert chi2 < 45  # 15 degrees of freedom: P[chi2 > 45] < 1e-4
    # The test can tell this from the exponential mechanism over all 16 bins.
    best = min(fine_scores)
    weights = [math.exp(-(s - best) / mech.scale) for s in fine_scores]
    em = [w / sum(weights) for w in weights]
    assert max(abs(a - b) for a, b in zip(em, expected, strict=True)) > 0.03


# --------------------------------------------------------------------------- accuracy


def test_median_of_ten_thousand_values_with_wide_bounds_is_accurate() -> None:
    rng = np.random.default_rng(12)
    values = np.exp(rng.normal(math.log(50_000.0), 0.6, size=10_000))
    lo, hi, bins = 0.0, 1e6, 2**20
    hist = histogram_of(values, lo, hi, bins)
    mech = dp.plan_binned_quantile(1.0, 0.5, 1)
    truth = float(np.median(values))
    errors = [abs(dp.release_binned_quantile(mech, lo, hi, bins, 0.5, hist) - truth) / truth
              for _ in range(60)]
    assert sum(e < 5e-4 for e in errors) >= 38  # typically 50 of 60 (P[fewer] < 1e-4)
    assert max(errors) < 5e-3
    # The same median on the old grid of 1024 bins could not get closer than its step.
    assert (hi - lo) / 1024 / truth > 0.01


@pytest.mark.parametrize("alpha", [0.5, 0.1, 0.9])
def test_released_bins_are_within_the_documented_rank_error(alpha: float) -> None:
    rng = np.random.default_rng(13)
    values = rng.gamma(2.0, 30.0, size=3_000)
    lo, hi, bins = 0.0, 1000.0, 2**20
    hist = histogram_of(values, lo, hi, bins)
    mech = dp.plan_binned_quantile(0.5, alpha, 1)
    k = dp.quantile_rank_error(mech, bins, 0.95)
    keys, counts = dp._read_histogram(hist, bins)
    scores = dp._BinScores(keys, counts, alpha)
    _, den = dp._quantile_constants(alpha)
    best = min(abs(int(v)) for v in scores(np.arange(bins, dtype=np.int64))) / den
    step = (hi - lo) / bins
    for _ in range(100):
        v = dp.release_binned_quantile(mech, lo, hi, bins, alpha, hist)
        f = np.array([int((v - lo) // step)], dtype=np.int64)
        assert abs(int(scores(f)[0])) / den <= best + k


def test_rank_error_formula() -> None:
    mech = dp.plan_binned_quantile(1.0, 0.5, 1)  # scale 4, den 2, 1024 x 1024 bins
    expected = 2 * 4.0 * math.log(1024 / 0.025) / 2
    assert dp.quantile_rank_error(mech, 2**20) == pytest.approx(expected)
    one = dp.plan_quantile(1.0, [0.0, 1.0], 0.5, 1)  # scale 2
    assert dp.quantile_rank_error(one, 101) == pytest.approx(2.0 * math.log(101 / 0.05) / 2)
    with pytest.raises(dp.MechanismMismatchError):
        dp.quantile_rank_error(dp.plan_laplace(1.0, 1, True), 16)


def test_release_is_fast_on_a_large_histogram() -> None:
    rng = np.random.default_rng(14)
    hist = histogram_of(rng.uniform(0, 1e6, size=200_000), 0.0, 1e6, 2**20)
    assert len(hist) > 150_000
    mech = dp.plan_binned_quantile(1.0, 0.5, 1)
    start = time.perf_counter()
    value = dp.release_binned_quantile(mech, 0.0, 1e6, 2**20, 0.5, hist)
    assert time.perf_counter() - start < 0.5  # about 30 ms
    assert abs(value - 5e5) < 2e4


# --------------------------------------------------------------------------- validation


def test_release_refuses_mismatched_mechanisms_and_grids() -> None:
    mech = dp.plan_binned_quantile(1.0, 0.5, 1)
    hist = [(3, 2)]
    with pytest.raises(dp.MechanismMismatchError, match="alpha"):
        dp.release_binned_quantile(mech, 0.0, 1.0, 16, 0.25, hist)
    with pytest.raises(dp.MechanismMismatchError):  # a one-stage plan has another cost
        dp.release_binned_quantile(dp.plan_quantile(1.0, [0.0], 0.5, 1), 0.0, 1.0, 16, 0.5,
                                   hist)
    with pytest.raises(dp.MechanismMismatchError):
        dp.release_binned_quantile(dp.plan_laplace(1.0, 1, True), 0.0, 1.0, 16, 0.5, hist)
    with pytest.raises(dp.MechanismMismatchError):  # 2 rows per unit need a larger scale
        dp.release_binned_quantile(dataclasses.replace(mech, d_in=2), 0.0, 1.0, 16, 0.5, hist)
    with pytest.raises(dp.MechanismMismatchError):
        dp.release_binned_quantile(dataclasses.replace(mech, scale=mech.scale / 2), 0.0, 1.0,
                                   16, 0.5, hist)
    for bins in (12, 2, 2**25, 16.0, True):
        with pytest.raises(dp.InvalidParameterError, match="bins"):
            dp.release_binned_quantile(mech, 0.0, 1.0, bins, 0.5, hist)  # type: ignore[arg-type]
    for lo, hi in ((1.0, 0.0), (0.0, math.inf), (math.nan, 1.0)):
        with pytest.raises(dp.InvalidParameterError, match="lower and upper"):
            dp.release_binned_quantile(mech, lo, hi, 16, 0.5, hist)
    for bad in ([(1.5, 2)], [(1, 2.0)], [(True, 1)], ["ab"], 7):
        with pytest.raises(dp.InvalidParameterError, match="histogram"):
            dp.release_binned_quantile(mech, 0.0, 1.0, 16, 0.5, bad)
    with pytest.raises(dp.InvalidParameterError, match="stages"):
        dataclasses.replace(mech, stages=0)


def test_release_never_raises_on_histogram_values() -> None:
    mech = dp.plan_binned_quantile(1.0, 0.5, 1)
    garbage = [
        None,
        [],
        {},
        {3: 5, 7: 1},
        [(3, None), (None, 4), (-1, 5), (16, 2), (99, 1)],
        [(2, -7), (2, 3), (5, 10**40), (5, 1)],
        [(9, 2), (1, 3), (9, 1)],  # unsorted, repeated
        [(4, 2**62), (5, 2**62), (6, 2**62)],
    ]
    for hist in garbage:
        value = dp.release_binned_quantile(mech, -1.0, 3.0, 16, 0.5, hist)
        assert -1.0 <= value <= 3.0
    assert dp.release_binned_quantile(mech, 5.0, 5.0, 16, 0.5, [(0, 3)]) == 5.0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 20), st.integers(-5, 50)), max_size=30))
def test_read_histogram_is_the_identity_on_real_histograms(pairs: list[tuple[int, int]]) -> None:
    keys, counts = dp._read_histogram(pairs, 16)
    total: collections.Counter[int] = collections.Counter()
    for b, c in pairs:
        if 0 <= b < 16 and c > 0:
            total[b] += c
    assert list(zip(keys.tolist(), counts.tolist(), strict=True)) == sorted(
        (b, c) for b, c in total.items() if c > 0
    )
