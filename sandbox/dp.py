"""Differential privacy: plan the cost and accuracy of a release, then release noise.

This is the only module of the product that imports OpenDP. It is pure: it never sees
rows, only exact bounded aggregates that the gate computed (counts, fixed-point sums,
per-candidate cumulative counts, quantile histograms) together with the sensitivities the
gate enforced.

Planning (``plan_*``) is deterministic and spends nothing: it builds the OpenDP
measurement, reads its privacy map and returns a :class:`Mechanism` whose
:class:`Cost` is exactly what OpenDP says the measurement costs. Releasing
(``release*``) rebuilds the same measurement from the plan, checks that the plan still
matches OpenDP's map (fail closed) and samples noise from OpenDP's CSPRNG.

See ``docs/dp.md`` for the mechanisms, the formulas and the accounting rules.
"""

from __future__ import annotations

import contextlib
import decimal
import functools
import inspect
import itertools
import math
import numbers
import operator
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import opendp.prelude as dp

from sandbox.errors import SandboxError

dp.enable_features("contrib")

__all__ = [
    "KINDS",
    "Cost",
    "DPError",
    "InvalidParameterError",
    "Mechanism",
    "MechanismMismatchError",
    "compose",
    "plan_binned_quantile",
    "plan_gaussian",
    "plan_gaussian_joint",
    "plan_laplace",
    "plan_quantile",
    "plan_threshold",
    "quantile_rank_error",
    "quantile_scores",
    "release",
    "release_binned_quantile",
    "release_quantile",
    "release_threshold",
    "rho_to_epsilon",
    "split_epsilon",
    "zcdp_accounting",
]

KINDS = ("discrete_laplace", "laplace", "gaussian", "exponential")

# Largest magnitude a value may have before noise is added: every released value is
# clipped to [-2**62, 2**62] first (OpenDP's int64 arithmetic saturates near the int64
# limits). Clipping each coordinate is 1-Lipschitz, so it never increases a sensitivity.
_INT_LIMIT = 2**62
_FLOAT_LIMIT = float(_INT_LIMIT)
# Relative slack when comparing a planned cost with OpenDP's map (float round-off only).
_REL_TOL = 1e-9
# Smallest sensitivity an integer mechanism is planned with: one unit.
_MIN_INT_SENS = 1.0
# Largest zCDP rho converted with OpenDP (epsilon about 1e4 at rho = 1e4: no privacy).
# OpenDP's conversion overflows from about rho = 1e5, and each OpenDP error costs tens
# of milliseconds (a backtrace is captured), so larger rhos are not sent to it.
_MAX_RHO = 1e4


# --------------------------------------------------------------------------- errors


class DPError(SandboxError):
    """A differential-privacy plan or release could not be made."""

    code = "dp.error"


class InvalidParameterError(DPError):
    """A privacy parameter (epsilon, delta, sensitivity, ...) is out of range."""

    code = "dp.invalid_parameter"


class MechanismMismatchError(DPError):
    """A release was asked with a mechanism planned for something else."""

    code = "dp.mechanism_mismatch"


def _invalid(name: str, allowed: str, got: str, hint: str) -> InvalidParameterError:
    return InvalidParameterError(f"{name} must be {allowed}, got {got}", hint)


def _describe(value: Any) -> str:
    """Describe a *parameter* value for an error message (never used for data)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number = int(value)
        return repr(number) if abs(number) < 10**30 else "a very large integer"
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return repr(float(value))
    return f"a value of type {type(value).__name__}"


def _real(name: str, value: Any) -> float:
    """A real number (int, float or numpy scalar) as float; bools and strings refused.

    An int too large for a float becomes +/-inf (the range checks then refuse it)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _invalid(name, "a real number", _describe(value), f"pass {name} as an int or float")
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf  # type: ignore[operator]  # a Real


def _check_epsilon(value: Any, name: str = "epsilon") -> float:
    eps = _real(name, value)
    if not math.isfinite(eps) or eps <= 0:
        raise _invalid(
            name,
            "a finite number > 0",
            _describe(value),
            "epsilon is the privacy loss of this release; take it from the budget plan, "
            "e.g. 0.1 to 1.0",
        )
    return eps


def _check_delta(value: Any, *, positive: bool, name: str = "delta") -> float:
    delta = _real(name, value)
    if positive and not (0.0 < delta < 1.0):
        raise _invalid(
            name,
            "in the open interval (0, 1)",
            _describe(value),
            "this mechanism needs a small positive delta, e.g. 1e-6 (well below 1/n)",
        )
    if not (0.0 <= delta < 1.0):
        raise _invalid(
            name,
            "in [0, 1)",
            _describe(value),
            "delta is a probability of failure; use 0 for pure DP or e.g. 1e-6",
        )
    return delta


def _check_sensitivity(value: Any, name: str = "sensitivity", *, integer: bool = False) -> float:
    """A sensitivity; for integer mechanisms at least one unit (see :data:`_MIN_INT_SENS`).

    Values from 0 upwards are accepted for integer mechanisms and planned at
    ``max(value, 1)``: integer aggregates that differ differ by at least 1, a bound below
    one unit means the aggregate cannot change, and a larger bound is always sound.
    """
    sens = _real(name, value)
    if not math.isfinite(sens) or sens < 0 or (sens == 0 and not integer):
        raise _invalid(
            name,
            "a finite number > 0" + (" (or 0 for an integer mechanism)" if not integer else ""),
            _describe(value),
            "the sensitivity is the most one privacy unit can change the released vector; "
            "for a float mechanism pass a positive bound",
        )
    return max(sens, _MIN_INT_SENS) if integer else sens


def _check_positive_int(value: Any, name: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise _invalid(
            name, "an integer >= 1", _describe(value), f"pass {name} as a whole number"
        ) from None
    if number < 1:
        raise _invalid(
            name, "an integer >= 1", _describe(value), f"{name} bounds one unit's contribution"
        )
    return number


def _check_confidence(value: Any) -> float:
    conf = _real("confidence", value)
    if not (0.0 < conf < 1.0):
        raise _invalid(
            "confidence",
            "in the open interval (0, 1)",
            _describe(value),
            "use e.g. 0.95 for a 95% interval",
        )
    return conf


def _check_alpha(value: Any) -> float:
    alpha = _real("alpha", value)
    if not (0.0 < alpha < 1.0):
        raise _invalid(
            "alpha",
            "in the open interval (0, 1)",
            _describe(value),
            "alpha is the quantile to release: 0.5 for the median, 0.25 for the first quartile",
        )
    return alpha


def _check_candidates(candidates: Any) -> list[float]:
    try:
        cands = [_real("candidates", c) for c in candidates]
    except TypeError:
        raise _invalid(
            "candidates",
            "a sequence of numbers",
            _describe(candidates),
            "build an increasing grid between the measure's bounds",
        ) from None
    if not cands:
        raise _invalid(
            "candidates",
            "a non-empty sequence",
            "an empty sequence",
            "build an increasing grid between the measure's bounds, e.g. 101 points",
        )
    if not all(math.isfinite(c) for c in cands):
        raise _invalid(
            "candidates",
            "finite numbers",
            "a non-finite candidate",
            "build the grid from the measure's finite bounds",
        )
    if any(b < a for a, b in itertools.pairwise(cands)):
        raise _invalid(
            "candidates",
            "non-decreasing",
            "a decreasing step",
            "sort the grid (repeated candidates are allowed and merged)",
        )
    return cands


def _distinct(cands: list[float]) -> tuple[list[float], list[int]]:
    """The distinct candidates of a non-decreasing grid and the index of the first of each.

    A grid built between equal bounds (``median(5)`` with bounds [5, 5]) or with a step
    below the float resolution repeats values; equal candidates have equal counts and
    scores, so the mechanism runs on the distinct ones.
    """
    first = [i for i, c in enumerate(cands) if i == 0 or c != cands[i - 1]]
    return [cands[i] for i in first], first


def _opendp_failed(what: str, exc: Exception, *, show: bool) -> DPError:
    """Wrap an OpenDP failure; release-time messages are not shown (they may touch data)."""
    detail = f": {exc}" if show else ""
    return DPError(
        f"OpenDP could not {what}{detail}",
        "check the privacy parameters; this is a bug in the caller if they are valid",
    )


# --------------------------------------------------------------------------- cost


@dataclass(frozen=True)
class Cost:
    """Privacy cost of one measurement or of a composition of measurements.

    ``epsilon``/``delta`` is the (approximate) DP guarantee of the whole thing. ``rho`` is
    the zero-concentrated DP (zCDP) parameter of its Gaussian parts, and ``zcdp_epsilon``/
    ``zcdp_delta`` say how much of ``epsilon``/``delta`` those parts account for, so that
    :func:`compose` can re-account all Gaussian parts together. For a cost built by hand
    with ``rho > 0`` they default to the whole ``epsilon``/``delta`` (a Gaussian cost).

    ``pure_epsilon`` is the share of ``epsilon`` from pure ε-DP parts (Laplace, noisy max)
    and ``pure_rho`` their zCDP cost, the sum of ε_i²/2 over those parts (ε-DP implies
    ε²/2-zCDP): :func:`compose` may account them in zCDP too when that is tighter. A pure
    cost built by hand (``delta`` and ``rho`` 0) is one pure part by default.
    """

    epsilon: float
    delta: float = 0.0
    rho: float = 0.0
    zcdp_epsilon: float | None = field(default=None, repr=False)
    zcdp_delta: float | None = field(default=None, repr=False)
    pure_epsilon: float | None = field(default=None, repr=False)
    pure_rho: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        eps = _real("epsilon", self.epsilon)
        if not math.isfinite(eps) or eps < 0:
            raise _invalid(
                "epsilon",
                "a finite number >= 0",
                _describe(self.epsilon),
                "a cost comes from plan_* or compose",
            )
        delta = _check_delta(self.delta, positive=False)
        rho = _real("rho", self.rho)
        if not math.isfinite(rho) or rho < 0:
            raise _invalid(
                "rho",
                "a finite number >= 0",
                _describe(self.rho),
                "rho is the zCDP cost of Gaussian parts",
            )
        if rho == 0:
            z_eps = 0.0 if self.zcdp_epsilon is None else _real("zcdp_epsilon", self.zcdp_epsilon)
            z_delta = 0.0 if self.zcdp_delta is None else _real("zcdp_delta", self.zcdp_delta)
            if z_eps != 0 or z_delta != 0:
                raise _invalid(
                    "zcdp_epsilon and zcdp_delta",
                    "0 when rho is 0",
                    "a non-zero value",
                    "only Gaussian (zCDP) parts have a zCDP share",
                )
        else:
            z_eps = eps if self.zcdp_epsilon is None else _real("zcdp_epsilon", self.zcdp_epsilon)
            z_delta = delta if self.zcdp_delta is None else _real("zcdp_delta", self.zcdp_delta)
            if not (0 <= z_eps <= eps * (1 + _REL_TOL)) or not (
                0 <= z_delta <= delta * (1 + _REL_TOL)
            ):
                raise _invalid(
                    "zcdp_epsilon and zcdp_delta",
                    "between 0 and epsilon (resp. delta)",
                    "a value outside",
                    "they are the share of the total taken by Gaussian parts",
                )
        if self.pure_epsilon is None and self.pure_rho is None:
            one = delta == 0 and rho == 0
            p_eps, p_rho = (eps, eps * eps / 2) if one else (0.0, 0.0)
        else:
            p_eps, p_rho = _real("pure_epsilon", _f(self.pure_epsilon)), \
                _real("pure_rho", _f(self.pure_rho))
            if not (0 <= p_eps <= (eps - z_eps) * (1 + _REL_TOL) + _REL_TOL) or \
                    not (0 <= p_rho <= p_eps * p_eps / 2 * (1 + _REL_TOL) + _REL_TOL):
                raise _invalid(
                    "pure_epsilon and pure_rho",
                    "0 <= pure_epsilon <= epsilon - zcdp_epsilon, 0 <= pure_rho <= "
                    "pure_epsilon^2 / 2",
                    "values outside",
                    "they describe the pure-DP parts of the cost",
                )
        for name, value in (
            ("epsilon", eps),
            ("delta", delta),
            ("rho", rho),
            ("zcdp_epsilon", z_eps),
            ("zcdp_delta", z_delta),
            ("pure_epsilon", p_eps),
            ("pure_rho", p_rho),
        ):
            object.__setattr__(self, name, value)

    def __add__(self, other: object) -> Cost:
        """Basic composition: epsilons, deltas and rhos add."""
        if not isinstance(other, Cost):
            return NotImplemented
        return Cost(
            epsilon=self.epsilon + other.epsilon,
            delta=self.delta + other.delta,
            rho=self.rho + other.rho,
            zcdp_epsilon=_f(self.zcdp_epsilon) + _f(other.zcdp_epsilon),
            zcdp_delta=_f(self.zcdp_delta) + _f(other.zcdp_delta),
            pure_epsilon=_f(self.pure_epsilon) + _f(other.pure_epsilon),
            pure_rho=_f(self.pure_rho) + _f(other.pure_rho),
        )

    def to_dict(self) -> dict[str, float]:
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "rho": self.rho,
            "zcdp_epsilon": _f(self.zcdp_epsilon),
            "zcdp_delta": _f(self.zcdp_delta),
            "pure_epsilon": _f(self.pure_epsilon),
            "pure_rho": _f(self.pure_rho),
        }


def _f(value: float | None) -> float:
    return 0.0 if value is None else value


def rho_to_epsilon(rho: float, delta: float) -> float:
    """Smallest epsilon such that rho-zCDP implies (epsilon, delta)-DP, per OpenDP.

    OpenDP only converts the privacy map of a measurement, so this builds a Gaussian
    measurement whose map at some ``d_in`` is at least ``rho`` (rounding ``d_in`` up, so
    the answer is never optimistic) and reads the converted privacy profile.
    """
    rho = _real("rho", rho)
    if not math.isfinite(rho) or rho <= 0:
        raise _invalid("rho", "a finite number > 0", _describe(rho), "rho is a zCDP cost")
    delta = _check_delta(delta, positive=True)
    if rho > _MAX_RHO:
        raise _invalid(
            "rho",
            f"at most {_MAX_RHO:g} for a conversion",
            _describe(rho),
            "such a rho gives no meaningful privacy; compose uses basic composition then",
        )
    try:
        return _rho_to_epsilon(rho, delta)
    except (dp.OpenDPException, ValueError, OverflowError) as exc:
        raise _opendp_failed("convert rho to (epsilon, delta)", exc, show=True) from exc


@lru_cache(maxsize=4096)
def _rho_to_epsilon(rho: float, delta: float) -> float:
    gauss = dp.m.make_gaussian(
        dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float), scale=1.0
    )
    d_in = math.sqrt(2.0 * rho)  # rho = d_in^2 / (2 scale^2) with scale 1
    for _ in range(64):  # one or two steps in practice
        if gauss.map(d_in) >= rho:  # type: ignore[no-untyped-call]  # OpenDP is untyped
            break
        d_in = math.nextafter(d_in, math.inf)
    else:
        raise ValueError("no Gaussian map reaches rho")
    profile = dp.c.make_zCDP_to_approxDP(gauss).map(d_in)  # type: ignore[no-untyped-call]
    # OpenDP's epsilon(delta) searches down to 0 when the answer is 0 (tens of ms);
    # its own profile says so directly when delta(0) already fits.
    if float(profile.delta(0.0)) <= delta:
        return 0.0
    return float(profile.epsilon(delta))


def compose(costs: Iterable[Cost], delta_budget: float | None = None) -> Cost:
    """Compose costs; the one accounting rule of the product.

    * Pure and approximate-DP parts (Laplace, thresholds, exponential): basic
      composition, epsilons and deltas add.
    * Gaussian (zCDP) parts: their rhos add; the total rho is converted once to
      (epsilon, delta_g) with delta_g the sum of their deltas, and the Gaussian part is
      charged the smaller of that and the plain sum of their epsilons (both are valid).

    The total is pure part + Gaussian part. ``compose`` of a flat list is the rule;
    composing already-composed costs is valid but may give a slightly different bound.

    With ``delta_budget`` (a ledger composing a member's history), the pure-DP parts may
    be accounted in zCDP as well: their rhos (ε_i²/2) join the Gaussian ones and the total
    is converted at whatever delta the approximate-DP parts leave of the budget. That is
    charged when its epsilon is smaller (:func:`zcdp_accounting`); both are valid bounds
    for the whole history, and the smaller of two valid bounds is one.
    """
    basic = _compose(costs)
    if delta_budget is None:
        return basic
    return min((basic, zcdp_accounting(basic, delta_budget)), key=lambda c: c.epsilon)


def zcdp_accounting(total: Cost, delta_budget: float) -> Cost:
    """``total`` (from :func:`compose`) with its pure-DP parts accounted in zCDP, converted
    at the delta the approximate-DP parts leave of ``delta_budget``; ``total`` itself when
    there is no pure part or no delta left, or OpenDP cannot convert."""
    approx_eps = total.epsilon - _f(total.zcdp_epsilon) - _f(total.pure_epsilon)
    approx_delta = total.delta - _f(total.zcdp_delta)
    conv_delta = min(delta_budget - approx_delta, 1.0)
    rho = total.rho + _f(total.pure_rho)
    if rho <= 0 or conv_delta <= 0 or rho > _MAX_RHO:
        return total
    try:
        g_eps = rho_to_epsilon(rho, conv_delta)
    except DPError:
        return total
    return Cost(
        epsilon=max(approx_eps, 0.0) + g_eps,
        delta=max(approx_delta, 0.0) + conv_delta,
        rho=rho,
        zcdp_epsilon=g_eps,
        zcdp_delta=conv_delta,
        pure_epsilon=0.0,
        pure_rho=0.0,
    )


def _compose(costs: Iterable[Cost]) -> Cost:
    items = list(costs)
    for i, cost in enumerate(items):
        if not isinstance(cost, Cost):
            raise _invalid(
                f"costs[{i}]", "a Cost", _describe(cost), "compose the Cost of each plan"
            )
    if not items:
        return Cost(0.0)
    rho = math.fsum(c.rho for c in items)
    p_eps = math.fsum(_f(c.pure_epsilon) for c in items)
    p_rho = math.fsum(_f(c.pure_rho) for c in items)
    if rho == 0:
        eps = math.fsum(c.epsilon for c in items)
        return Cost(
            epsilon=eps,
            delta=math.fsum(c.delta for c in items),
            pure_epsilon=min(p_eps, eps),
            pure_rho=min(p_rho, min(p_eps, eps) ** 2 / 2),
        )
    basic_eps = math.fsum(c.epsilon - _f(c.zcdp_epsilon) for c in items)  # not Gaussian
    basic_delta = math.fsum(c.delta - _f(c.zcdp_delta) for c in items)
    g_delta = math.fsum(_f(c.zcdp_delta) for c in items)
    g_eps_basic = math.fsum(_f(c.zcdp_epsilon) for c in items)
    g_eps = g_eps_basic
    if g_delta > 0:
        # OpenDP overflows for a huge rho: the basic composition is still valid then.
        with contextlib.suppress(DPError):
            g_eps = min(g_eps_basic, rho_to_epsilon(rho, g_delta))
    return Cost(
        epsilon=max(basic_eps, 0.0) + g_eps,
        delta=max(basic_delta, 0.0) + g_delta,
        rho=rho,
        zcdp_epsilon=g_eps,
        zcdp_delta=g_delta,
        pure_epsilon=min(p_eps, max(basic_eps, 0.0)),
        pure_rho=min(p_rho, min(p_eps, max(basic_eps, 0.0)) ** 2 / 2),
    )


def split_epsilon(total: float, weights: Sequence[float]) -> list[float]:
    """Split a budget across aggregates in proportion to ``weights``.

    The parts are positive and their sum equals ``total`` up to float round-off and never
    exceeds it, so reserving every part never overdraws the budget.
    """
    total = _check_epsilon(total, name="total")
    ws = list(weights)
    if not ws:
        raise _invalid(
            "weights", "a non-empty sequence", "an empty one", "give one weight per aggregate"
        )
    clean = []
    for i, w in enumerate(ws):
        value = _real(f"weights[{i}]", w)
        if not math.isfinite(value) or value <= 0:
            raise _invalid(
                f"weights[{i}]",
                "a finite number > 0",
                _describe(w),
                "drop aggregates that should get no budget instead of weighting them 0",
            )
        clean.append(value)
    wsum = math.fsum(clean)
    parts = [total * (w / wsum) for w in clean]
    # Trim round-off so that neither fsum nor left-to-right sum exceeds the total.
    while math.fsum(parts) > total or sum(parts) > total:
        i = max(range(len(parts)), key=parts.__getitem__)
        parts[i] = math.nextafter(parts[i], 0.0)
    return parts


# --------------------------------------------------------------------------- mechanism


@dataclass(frozen=True)
class Mechanism:
    """A planned noise mechanism: what OpenDP will do and what it costs.

    ``d_in`` is the input distance the cost was computed at (OpenDP's ``map(d_in)``):
    the sensitivity for vector mechanisms, ``(l0, l1, linf)`` for thresholds and the
    number of rows per unit for quantiles. ``alpha`` and ``threshold`` are set only for
    quantile and threshold mechanisms, so a release cannot use a plan made for another
    quantile or a lower threshold. ``stages`` is how many selections a quantile makes
    (2 for :func:`plan_binned_quantile`), each at ``scale``; the cost covers all of them.
    """

    kind: str
    scale: float
    sensitivity: float
    cost: Cost
    integer: bool
    d_in: Any = None
    alpha: float | None = None
    threshold: int | None = None
    stages: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise _invalid("kind", f"one of {', '.join(KINDS)}", repr(self.kind), "use plan_*")
        scale = _real("scale", self.scale)
        if not math.isfinite(scale) or scale <= 0:
            raise _invalid("scale", "a finite number > 0", _describe(self.scale), "use plan_*")
        _check_sensitivity(self.sensitivity)
        if not isinstance(self.cost, Cost) or not isinstance(self.integer, bool):
            raise _invalid(
                "cost and integer", "a Cost and a bool", "other types", "use plan_* to plan"
            )
        if isinstance(self.stages, bool) or not isinstance(self.stages, int) or self.stages < 1:
            raise _invalid("stages", "an integer >= 1", _describe(self.stages), "use plan_*")

    def ci_halfwidth(self, confidence: float = 0.95) -> float:
        """Half-width h of the two-sided ``confidence`` interval of one noisy value.

        ``P[|noise| <= h] >= confidence``, from the scale only; no budget is spent, and
        the time does not depend on the scale. Laplace, discrete Laplace and Gaussian use
        OpenDP's accuracy helpers (closed forms); for integer mechanisms h is an integer.
        The discrete Gaussian uses the bound of :func:`_discrete_gaussian_halfwidth`
        (OpenDP's helper sums the pmf and takes time linear in the scale: 40 minutes at
        a scale of 1e10).
        """
        conf = _check_confidence(confidence)
        if self.kind == "exponential":
            raise MechanismMismatchError(
                "a quantile (exponential mechanism) has no per-value confidence interval",
                "report the candidate grid step and the planned epsilon instead",
            )
        return _ci_halfwidth(self.kind, self.integer, self.scale, 1.0 - conf)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able description for release metadata and ``explain`` output."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "scale": self.scale,
            "sensitivity": self.sensitivity,
            "integer": self.integer,
            "cost": self.cost.to_dict(),
            "d_in": list(self.d_in) if isinstance(self.d_in, tuple) else self.d_in,
        }
        if self.kind != "exponential":
            out["ci95_halfwidth"] = self.ci_halfwidth(0.95)
        if self.alpha is not None:
            out["alpha"] = self.alpha
        if self.threshold is not None:
            out["threshold"] = self.threshold
        if self.stages != 1:
            out["stages"] = self.stages
        return out


def _normal_quantile(alpha: float) -> float:
    """z with 2 * Q(z) = alpha (Q the standard normal upper tail), accurate for tiny alpha."""
    return -statistics.NormalDist().inv_cdf(alpha / 2.0)


def _discrete_gaussian_halfwidth(scale: float, alpha: float) -> float:
    """Integer h with P[|X| > h] <= alpha for the discrete Gaussian X of this scale.

    h = ceil(scale * z) with 2 Q(z) = alpha: the continuous Gaussian's half-width rounded
    up (plus a relative margin of 1e-12 for the float error of z and of the product).
    Proof, with s = scale and w(j) = exp(-j^2 / (2 s^2)): X has P(j) = w(j) / W with
    W = sum over all integers of w(j) = s sqrt(2 pi) * sum_m exp(-2 pi^2 s^2 m^2) >= s
    sqrt(2 pi) (Poisson summation, every term positive). For an integer k >= 1, w is
    decreasing on [0, inf), so w(j) <= integral of w over [j - 1, j] and
    P[X >= k] <= (integral of w over [k - 1, inf)) / (s sqrt(2 pi)) = Q((k - 1) / s).
    By symmetry P[|X| > h] = P[|X| >= h + 1] <= 2 Q(h / s) <= 2 Q(z) = alpha as h >= s z.
    The bound is never below the exact quantile and at most one above it; up to a scale of
    ``_EXACT_DG_SCALE`` one less is tried by summing the pmf, so there it is the exact
    quantile (checked against exact sums in tests/test_dp.py). Beyond, one unit is under
    0.05% of the half-width.
    """
    half = scale * _normal_quantile(alpha) * (1.0 + 1e-12)
    if not math.isfinite(half):
        return math.inf
    h = math.ceil(half)
    if h >= 1 and scale <= _EXACT_DG_SCALE and _discrete_gaussian_tail(scale, h - 1) <= \
            alpha * (1.0 - 1e-9):
        h -= 1
    return float(h)


_EXACT_DG_SCALE = 1000.0


def _discrete_gaussian_tail(scale: float, k: int) -> float:
    """P[|X| > k] for the discrete Gaussian of this scale, by summing its pmf (each weight
    computed directly, so tiny tails keep their relative precision)."""
    size = k + int(40 * scale) + 40
    weights = [math.exp(-j * j / (2.0 * scale * scale)) for j in range(size)]
    total = weights[0] + 2.0 * math.fsum(weights[1:])
    return 2.0 * math.fsum(weights[k + 1:]) / total


@lru_cache(maxsize=4096)
def _ci_halfwidth(kind: str, integer: bool, scale: float, alpha: float) -> float:
    if kind == "gaussian" and integer:
        return _discrete_gaussian_halfwidth(scale, alpha)
    if kind == "gaussian":
        acc = float(dp.gaussian_scale_to_accuracy(scale, alpha))
    elif kind == "laplace":
        acc = float(dp.laplacian_scale_to_accuracy(scale, alpha))
    else:  # discrete Laplace: alpha = P[|X| >= acc], so floor(acc) covers (OpenDP's docs)
        acc = float(dp.discrete_laplacian_scale_to_accuracy(scale, alpha))
        if math.isnan(acc):  # never seen; the closed form P[|X| > h] = 2 p^(h+1) / (1 + p)
            p = math.exp(-1.0 / scale)
            acc = scale * math.log(2.0 / (alpha * (1.0 + p)))
        # A tiny scale underflows OpenDP's formula to -inf: no error beyond 0 is likely.
        return float(max(math.floor(acc), 0)) if math.isfinite(acc) else max(acc, 0.0)
    return acc if math.isfinite(acc) else math.inf


def _search_scale(make: Callable[[float], Any], d_in: Any, d_out: Any, what: str) -> float:
    """Smallest scale whose privacy map at d_in fits d_out (OpenDP's binary search)."""
    try:
        return float(dp.binary_search_param(make, d_in=d_in, d_out=d_out, T=float))
    except (dp.OpenDPException, ValueError, TypeError) as exc:
        raise _opendp_failed(f"calibrate the {what} scale", exc, show=True) from exc


@lru_cache(maxsize=8)
def _vector_space(integer: bool, l2: bool) -> tuple[Any, Any]:
    """OpenDP domain and metric (immutable, so built once)."""
    domain = dp.vector_domain(
        dp.atom_domain(T="i64") if integer else dp.atom_domain(T=float, nan=False)
    )
    metric = dp.l2_distance(T=float) if l2 else dp.l1_distance(T=float)
    return domain, metric


def _laplace_measurement(scale: float, integer: bool) -> Any:
    return dp.m.make_laplace(*_vector_space(integer, l2=False), scale=scale)


def _gaussian_measurement(scale: float, integer: bool) -> Any:
    return dp.m.make_gaussian(*_vector_space(integer, l2=True), scale=scale)


def _check_integer(integer: Any) -> bool:
    if not isinstance(integer, bool):
        raise _invalid(
            "integer", "True or False", _describe(integer), "True for counts and fixed-point sums"
        )
    return integer


def _planned(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Cache plans: they are pure functions of their arguments, and the OpenDP
    calibration behind them (a binary search over privacy maps) costs milliseconds.
    Keys carry each argument's type, so ``True`` never hits the entry of ``1``."""
    cache: dict[tuple[Any, ...], Any] = {}
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            values = signature.bind(*args, **kwargs).arguments.values()
            key = tuple((type(v).__name__, tuple(v) if isinstance(v, list | tuple) else v)
                        for v in values)
            hash(key)
        except TypeError:
            return fn(*args, **kwargs)  # let the function report its own usage error
        if key not in cache:
            if len(cache) >= 4096:
                cache.clear()
            cache[key] = fn(*args, **kwargs)
        return cache[key]

    return wrapper


def _check_scale(scale: float, what: str) -> float:
    """Refuse (before asking OpenDP) a noise scale that overflows the float range."""
    if not (math.isfinite(scale) and 0 < scale <= 1e300):
        raise _invalid(
            f"the {what} noise scale",
            "a finite float (sensitivity / epsilon at most 1e300)",
            "an overflow",
            "use a larger epsilon or a smaller sensitivity (coarser fixed-point scale)",
        )
    return scale


def _laplace_scale(sens: float, eps: float, integer: bool) -> float:
    """sensitivity / epsilon, nudged up until OpenDP's map accepts it (else a search)."""
    scale = _check_scale(sens / eps, "Laplace")
    try:
        for _ in range(8):
            if float(_laplace_measurement(scale, integer).map(sens)) <= eps:
                return scale
            scale = math.nextafter(scale, math.inf)
    except dp.OpenDPException as exc:
        raise _opendp_failed("calibrate the Laplace scale", exc, show=True) from exc
    return _search_scale(lambda s: _laplace_measurement(s, integer), sens, eps, "Laplace")


@_planned
def plan_laplace(epsilon: float, sensitivity: float, integer: bool) -> Mechanism:
    """Plan Laplace noise for a vector with L1 ``sensitivity`` at ``epsilon``.

    ``integer=True`` gives the discrete Laplace over int64 (counts, fixed-point sums; no
    float leaks); otherwise the continuous Laplace over float64. The scale is the
    smallest one OpenDP's map accepts (``sensitivity / epsilon`` up to round-off) and the
    cost is ``measurement.map(sensitivity)``. Integer mechanisms are planned with a
    sensitivity of at least one unit, so ``sensitivity=0`` (e.g. ``sum(0)``) is accepted.
    """
    eps = _check_epsilon(epsilon)
    integer = _check_integer(integer)
    sens = _check_sensitivity(sensitivity, integer=integer)
    scale = _laplace_scale(sens, eps, integer)
    try:
        spent = float(_laplace_measurement(scale, integer).map(sens))
    except dp.OpenDPException as exc:
        raise _opendp_failed("calibrate the Laplace scale", exc, show=True) from exc
    _assert_fits(spent, eps, "epsilon")
    return Mechanism(
        kind="discrete_laplace" if integer else "laplace",
        scale=scale,
        sensitivity=sens,
        cost=Cost(epsilon=spent),
        integer=integer,
        d_in=sens,
    )


def _approx_gaussian(scale: float, integer: bool, delta: float) -> Any:
    return dp.c.make_fix_delta(
        dp.c.make_zCDP_to_approxDP(_gaussian_measurement(scale, integer)), delta
    )


def _gaussian_delta_at(scale: float, integer: bool, epsilon: float) -> float:
    """OpenDP's delta at ``epsilon`` of the Gaussian of this scale at sensitivity 1.

    ``profile.delta(eps)`` is a closed form in OpenDP (0.1 ms) while the (eps, delta)
    map inverts it by a search (2 ms or more), so the calibration searches with this one.
    """
    if not 0.5 / (scale * scale) <= _MAX_RHO:  # too large for OpenDP: treated as not
        return math.inf  # fitting, so the search settles on a larger (sound) scale
    try:
        profile = dp.c.make_zCDP_to_approxDP(  # type: ignore[no-untyped-call]
            _gaussian_measurement(scale, integer)).map(1.0)
        return float(profile.delta(epsilon))
    except (dp.OpenDPException, OverflowError):
        return math.inf


def _bracket(
    gap: Callable[[float], float], x: float, step: float
) -> tuple[float, float, float, float]:
    """(lo, gap(lo), hi, gap(hi)) with gap(lo) > 0 >= gap(hi) and lo < hi, for a gap that
    decreases in x: galloping from x with steps that double (O(log) evaluations)."""
    g = gap(x)
    for _ in range(64):
        nxt = x + step if g > 0 else x - step
        g_nxt = gap(nxt)
        if (g > 0) != (g_nxt > 0):
            return (x, g, nxt, g_nxt) if g > 0 else (nxt, g_nxt, x, g)
        x, g, step = nxt, g_nxt, step * 2.0
    raise ValueError("no sign change of the calibration gap")


def _illinois(
    gap: Callable[[float], float],
    ends: tuple[float, float, float, float],
    *,
    tol: float,
    gap_tol: float,
) -> tuple[float, float]:
    """Shrink a bracket (gap(lo) > 0 >= gap(hi)) by regula falsi with the Illinois rule.

    Returns (hi, gap(hi)): the end that fits, within ``tol`` of the boundary or with
    ``-gap_tol <= gap(hi) <= 0``. Each step stays at least ``tol`` inside the bracket, so
    an end that already sits on the boundary is passed in one step; at most 200 steps.
    """
    lo, g_lo, hi, g_hi = ends
    w_lo, w_hi, side = g_lo, g_hi, 0  # weights of the ends for the interpolation
    for _ in range(200):
        if hi - lo <= 2.0 * tol or -gap_tol <= g_hi <= 0:
            break
        mid = (lo + hi) / 2.0
        if math.isfinite(w_hi) and math.isfinite(w_lo) and w_hi != w_lo:
            interp = hi - w_hi * (hi - lo) / (w_hi - w_lo)
            if math.isfinite(interp):
                mid = min(max(interp, lo + tol), hi - tol)
        g_mid = gap(mid)
        if g_mid > 0:
            lo, g_lo, w_lo = mid, g_mid, g_mid
            if side == -1:
                w_hi /= 2.0  # Illinois: the end kept twice in a row gets half the weight
            side = -1
        else:
            hi, g_hi, w_hi = mid, g_mid, g_mid
            if side == 1:
                w_lo /= 2.0
            side = 1
    return hi, g_hi


def _cks_log_delta(rho: float, eps: float) -> float:
    """ln(delta) of OpenDP's zCDP -> (eps, delta) conversion, modelled in floats.

    The conversion of Canonne, Kamath and Steinke (2020) that OpenDP implements:
    delta = min over a > 1 of exp((a - 1)(a rho - eps) + a ln(1 - 1/a)) / (a - 1), the
    optimal a found by bisection of the derivative (2a - 1) rho - eps + ln(1 - 1/a) on
    [1.01, (eps + 1) / (2 rho) + 2]. Used only to *guess* a scale, which OpenDP's own
    map then confirms; it never decides a cost.
    """
    a_lo, a_hi = 1.01, (eps + 1.0) / (2.0 * rho) + 2.0
    for _ in range(256):
        a = a_lo + (a_hi - a_lo) / 2.0
        if a in (a_lo, a_hi):
            break
        if (2.0 * a - 1.0) * rho - eps + math.log1p(-1.0 / a) < 0:
            a_lo = a
        else:
            a_hi = a
    a = a_lo + (a_hi - a_lo) / 2.0
    return min((a - 1.0) * (a * rho - eps) + a * math.log1p(-1.0 / a) - math.log(a - 1.0), 0.0)


def _gaussian_unit_guess(eps: float, delta: float) -> float:
    """ln(scale) at sensitivity 1 where the model :func:`_cks_log_delta` reaches delta.

    Starts from the classical conversion eps = rho + 2 sqrt(rho ln(1/delta)), which is
    looser than CKS, so its rho gives a scale that fits."""
    log_delta = math.log(delta)

    def gap(x: float) -> float:  # x = ln(scale), rho = e^(-2x) / 2
        return _cks_log_delta(math.exp(-2.0 * x) / 2.0, eps) - log_delta

    big_l = -log_delta
    rho_c = (eps / (math.sqrt(big_l + eps) + math.sqrt(big_l))) ** 2
    ends = _bracket(gap, -0.5 * math.log(2.0 * rho_c), math.log(2.0))
    return _illinois(gap, ends, tol=1e-14, gap_tol=1e-13)[0]


@lru_cache(maxsize=1024)
def _gaussian_unit_scale(eps: float, delta: float, integer: bool) -> float:
    """A scale s, minimal to 1e-8 relative, whose OpenDP delta at ``eps`` (sensitivity 1)
    is at most ``delta``: OpenDP's (eps, delta) map at s then fits (up to round-off,
    which :func:`plan_gaussian` checks and nudges).

    The guess comes from a float model of OpenDP's conversion (:func:`_cks_log_delta`,
    about 0.5 ms) and is confirmed by two OpenDP evaluations: the guess plus 1e-11 fits
    and the guess minus 1e-8 (relative) does not. If the model ever disagrees with
    OpenDP, the bracket is completed by galloping and shrunk by regula falsi with
    OpenDP's own ``delta``: about ten evaluations instead of the ~60 evaluations of the
    2 ms (eps, delta) map that OpenDP's binary search needs. Bounded for any input.
    """
    log_delta = math.log(delta)

    def gap(x: float) -> float:  # > 0: does not fit, <= 0: fits (x = ln(scale))
        d = _gaussian_delta_at(math.exp(x), integer, eps)
        return math.log(d) - log_delta if d > 0 else -math.inf

    try:
        guess = _gaussian_unit_guess(eps, delta)
    except (ValueError, OverflowError, ZeroDivisionError):
        guess = -0.5 * math.log(2.0 * eps)  # any start: the bracket gallops from it
    hi = guess + 1e-11
    g_hi = gap(hi)
    if g_hi <= 0:
        lo = guess - 1e-8
        g_lo = gap(lo)
        if g_lo > 0:
            return math.exp(hi)
        ends = _bracket(gap, lo, 1e-8)
    else:
        ends = _bracket(gap, hi, 1e-8)
    return math.exp(_illinois(gap, ends, tol=1e-12, gap_tol=1e-9)[0])


@_planned
def plan_gaussian(epsilon: float, delta: float, sensitivity_l2: float, integer: bool) -> Mechanism:
    """Plan Gaussian noise for a vector with L2 ``sensitivity_l2`` at (epsilon, delta).

    Calibrated through zCDP: the Gaussian's rho = sensitivity^2 / (2 scale^2) is converted
    to (epsilon, delta) with OpenDP's ``make_zCDP_to_approxDP``; the scale is the smallest
    whose converted epsilon at ``delta`` fits. The cost carries rho (for composition) and
    the converted (epsilon, delta). ``integer=True`` uses the discrete Gaussian, with a
    sensitivity of at least one unit (``sensitivity_l2=0`` is accepted).

    The converted cost depends on rho = (sensitivity / scale)^2 / 2 only, so the scale is
    calibrated once per (epsilon, delta, integer) at sensitivity 1 (cached; see
    :func:`_gaussian_unit_scale`) and multiplied by the sensitivity; a few ulps are then
    added until OpenDP's rho at the real sensitivity is at most the calibrated one.
    """
    eps = _check_epsilon(epsilon)
    delta = _check_delta(delta, positive=True)
    integer = _check_integer(integer)
    sens = _check_sensitivity(sensitivity_l2, name="sensitivity_l2", integer=integer)
    try:
        unit = _gaussian_unit_scale(eps, delta, integer)
        unit_rho = float(_gaussian_measurement(unit, integer).map(1.0))
        scale = _check_scale(unit * sens, "Gaussian")
        for i in range(64):
            rho = float(_gaussian_measurement(scale, integer).map(sens))
            if rho > unit_rho:  # round-off of unit * sens: a few ulps
                scale = math.nextafter(scale, math.inf) if i < 8 else scale * (1 + 2**-40)
                continue
            spent_eps, spent_delta = _approx_gaussian(scale, integer, delta).map(sens)
            if spent_eps <= eps:  # OpenDP's map is the cost (2 ms; once in practice)
                break
            scale *= 1 + 1e-12
        else:
            raise ValueError("no scale near the calibrated one fits OpenDP's map")
    except (dp.OpenDPException, ValueError, TypeError, OverflowError) as exc:
        raise _opendp_failed("calibrate the Gaussian scale", exc, show=True) from exc
    _assert_fits(float(spent_eps), eps, "epsilon")
    return Mechanism(
        kind="gaussian",
        scale=scale,
        sensitivity=sens,
        cost=Cost(epsilon=float(spent_eps), delta=float(spent_delta), rho=rho),
        integer=integer,
        d_in=sens,
    )


@_planned
def plan_gaussian_joint(epsilon: float, delta: float, sensitivities: tuple[float, ...],
                        integer: bool) -> list[Mechanism]:
    """Plan several Gaussian releases of one query so that together they cost (epsilon,
    delta) under zCDP composition, each with an equal share of rho.

    Planning each part at epsilon/k and composing under-spends: three parts at 0.1 each
    compose to about 0.17, so a request for 0.3 would get the noise of 0.1 per part. Here
    the total rho is calibrated once from (epsilon, delta) (the rho of the unit-sensitivity
    Gaussian that :func:`plan_gaussian` would choose) and split evenly: part i has scale
    ``sensitivity_i * s * sqrt(k)``. Each part's cost is OpenDP's map (its rho, and its
    own (epsilon, delta/k) for the basic-composition alternative of :func:`compose`), so
    ``compose`` of the parts is at most the request (checked).
    """
    eps = _check_epsilon(epsilon)
    delta = _check_delta(delta, positive=True)
    integer = _check_integer(integer)
    if not sensitivities:
        raise _invalid("sensitivities", "a non-empty sequence", "an empty sequence",
                       "plan at least one release")
    sens = [_check_sensitivity(x, name="sensitivity_l2", integer=integer)
            for x in sensitivities]
    k = len(sens)
    part_delta = delta / k
    try:
        unit = _gaussian_unit_scale(eps, delta, integer)
        unit_rho = float(_gaussian_measurement(unit, integer).map(1.0))
        plans = []
        for x in sens:
            scale = _check_scale(unit * x * math.sqrt(k), "Gaussian")
            for i in range(64):
                rho = float(_gaussian_measurement(scale, integer).map(x))
                if rho <= unit_rho / k:
                    break
                scale = math.nextafter(scale, math.inf) if i < 8 else scale * (1 + 2**-40)
            else:
                raise ValueError("no scale near the calibrated one fits OpenDP's map")
            spent_eps, spent_delta = _approx_gaussian(scale, integer, part_delta).map(x)
            plans.append(Mechanism(
                kind="gaussian", scale=scale, sensitivity=x,
                cost=Cost(epsilon=float(spent_eps), delta=float(spent_delta), rho=rho),
                integer=integer, d_in=x))
    except (dp.OpenDPException, ValueError, TypeError, OverflowError) as exc:
        raise _opendp_failed("calibrate the Gaussian scales", exc, show=True) from exc
    total = compose([m.cost for m in plans])
    _assert_fits(total.epsilon, eps, "epsilon")
    _assert_fits(total.delta, delta, "delta")
    return plans


def _assert_fits(spent: float, budget: float, name: str) -> None:
    if not spent <= budget * (1 + _REL_TOL):
        raise DPError(
            f"the calibrated {name} {spent!r} exceeds the requested {budget!r}",
            "this is a bug in dp.py; do not release",
        )


def _vector_measurement(mech: Mechanism) -> tuple[Any, float]:
    """Rebuild the OpenDP measurement of a plan and the cost its map gives now."""
    if mech.kind in ("discrete_laplace", "laplace"):
        meas = _laplace_measurement(mech.scale, mech.integer)
        return meas, float(meas.map(mech.sensitivity))
    meas = _gaussian_measurement(mech.scale, mech.integer)
    return meas, float(meas.map(mech.sensitivity))


def _check_plan_cost(mech: Mechanism, now: float) -> None:
    planned = mech.cost.rho if mech.kind == "gaussian" else mech.cost.epsilon
    if now > planned * (1 + _REL_TOL):
        raise MechanismMismatchError(
            "the mechanism's cost does not match OpenDP's privacy map for its scale",
            "plan mechanisms with plan_*; do not build or edit them by hand",
        )


def _int_data(values: Iterable[Any], name: str, *, clip: bool) -> list[int]:
    """Integers computed by the gate (counts, fixed-point sums), never refused for a value.

    ``None`` (SQL NULL, e.g. the sum of an empty group) is 0; Python ints of any size are
    accepted (DuckDB's HUGEINT sums arrive as Python ints) and, with ``clip``, clipped to
    [-2**62, 2**62]. Only the *type* of an element is refused (a float or a bool for an
    integer mechanism): it is fixed by the query, not by the rows, so it is a caller bug
    and never a signal about the data. Messages never contain values.
    """
    out = []
    for i, v in enumerate(values):
        if v is None:
            out.append(0)
            continue
        if isinstance(v, bool):
            raise _invalid(f"{name}[{i}]", "an integer", "a bool", "pass counts as int")
        try:
            number = operator.index(v)
        except TypeError:
            raise _invalid(
                f"{name}[{i}]",
                "an integer for an integer mechanism",
                f"a value of type {type(v).__name__}",
                "compute counts and fixed-point sums as integers, or plan with integer=False",
            ) from None
        out.append(min(max(number, -_INT_LIMIT), _INT_LIMIT) if clip else number)
    return out


def _clip_float(value: Any) -> float:
    """The finite float released for ``value``: NaN (and None) -> 0, otherwise clipped
    to [-2**62, 2**62] (so +inf -> 2**62 and -inf -> -2**62). Deterministic."""
    if isinstance(value, numbers.Integral):  # exact for ints of any size
        return float(min(max(int(value), -_INT_LIMIT), _INT_LIMIT))
    try:
        number = float(value)
    except OverflowError:  # e.g. a huge Fraction
        return _FLOAT_LIMIT if value > 0 else -_FLOAT_LIMIT
    except ValueError:  # Decimal('sNaN')
        return 0.0
    if math.isnan(number):
        return 0.0
    return min(max(number, -_FLOAT_LIMIT), _FLOAT_LIMIT)


def _float_data(values: Iterable[Any], name: str) -> list[float]:
    """Floats for a float mechanism, never refused for a value (see :func:`_clip_float`).

    Ints, floats, numpy scalars, Decimals and Fractions are accepted, ``None`` is 0;
    only another type (str, bool, ...) is refused, whatever its value.
    """
    out = []
    for i, v in enumerate(values):
        if v is None:
            out.append(0.0)
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Real | decimal.Decimal):
            raise _invalid(
                f"{name}[{i}]",
                "a real number",
                f"a value of type {type(v).__name__}",
                "pass the aggregates as ints or floats",
            )
        out.append(_clip_float(v))
    return out


def release(mech: Mechanism, values: Sequence[int] | Sequence[float]) -> list[Any]:
    """Add the planned noise to each value (one OpenDP vector measurement).

    Integer mechanisms take and return ints (refusing floats rather than rounding them);
    float mechanisms return floats. The caller must have bounded the sensitivity of the
    whole vector by ``mech.sensitivity`` (L1 for Laplace kinds, L2 for Gaussian).

    Never raises on a data value: each value is clipped to [-2**62, 2**62] *before* the
    noise is added (Python ints of any size are accepted), ``None`` counts as 0, and for
    float mechanisms NaN is 0 and +/-inf is +/-2**62. Clipping each coordinate is
    1-Lipschitz (|clip(a) - clip(b)| <= |a - b|), so the clipped vector has at most the
    L1 and L2 sensitivity of the exact one and the planned cost still holds. Errors are
    raised only for the mechanism and for the *type* of a value (fixed by the query, the
    same for every dataset), and before any noise is drawn.
    """
    if not isinstance(mech, Mechanism) or mech.kind == "exponential" or mech.threshold is not None:
        raise MechanismMismatchError(
            "release needs a vector mechanism from plan_laplace or plan_gaussian",
            "use release_quantile for quantiles and release_threshold for private keys",
        )
    data: list[Any] = (
        _int_data(values, "values", clip=True) if mech.integer else _float_data(values, "values")
    )
    if not data:
        return []
    meas, now = _vector_measurement(mech)
    _check_plan_cost(mech, now)
    try:
        noisy = meas(data)
    except dp.OpenDPException as exc:
        raise _opendp_failed("add noise", exc, show=False) from exc
    return [int(v) for v in noisy] if mech.integer else [float(v) for v in noisy]


# --------------------------------------------------------------------------- thresholds


@lru_cache(maxsize=1)
def _threshold_space() -> tuple[Any, Any]:
    """OpenDP domain and metric of private-key counts (immutable, so built once)."""
    domain = dp.map_domain(dp.atom_domain(T=str), dp.atom_domain(T="i64"))
    metric = dp.l01inf_distance(dp.absolute_distance(T="i64"))
    return domain, metric


def _threshold_measurement(scale: float, threshold: int) -> Any:
    return dp.m.make_laplace_threshold(*_threshold_space(), scale=scale, threshold=threshold)


def _threshold_cost(
    scale: float, threshold: int, d_in: tuple[int, int, int]
) -> tuple[float, float]:
    """(epsilon, delta) of releasing keys whose noisy count is >= ``threshold``.

    OpenDP 0.16 keeps a key when ``noisy >= threshold`` but its map bounds the tail
    ``P[noise > threshold - linf]``, which misses the mass at exactly the threshold
    (opendp/opendp#2922): measured release rates are about ``e^(1/scale)`` times the
    reported delta. ``P[noise >= threshold - linf] = P[noise > (threshold - 1) - linf]``,
    so OpenDP's map at ``threshold - 1`` is the correct delta at ``threshold``. The
    epsilon part does not depend on the threshold.
    """
    eps, _ = _threshold_measurement(scale, threshold).map(d_in)
    return float(eps), _threshold_delta(scale, threshold, d_in)


def _threshold_delta(scale: float, threshold: int, d_in: tuple[int, int, int]) -> float:
    """The delta part of :func:`_threshold_cost` (OpenDP's map one threshold lower)."""
    return float(_threshold_measurement(scale, threshold - 1).map(d_in)[1])


def _threshold_scale(eps: float, d_in: tuple[int, int, int]) -> float:
    """Smallest scale whose threshold-map epsilon fits: l1 / eps up to a few ulps."""
    scale = _check_scale(d_in[1] / eps, "threshold")
    for _ in range(8):
        if _threshold_measurement(scale, _INT_LIMIT).map(d_in)[0] <= eps:
            return scale
        scale = math.nextafter(scale, math.inf)
    return float(
        dp.binary_search(
            lambda s: _threshold_measurement(s, _INT_LIMIT).map(d_in)[0] <= eps,
            bounds=(0.0, 4.0 * d_in[1] / eps),
            T=float,
        )
    )


def _smallest_threshold(scale: float, delta: float, d_in: tuple[int, int, int]) -> int:
    """Smallest integer threshold T > linf whose delta (:func:`_threshold_delta`) fits.

    Starts from the closed form (docs/dp.md): one key passes with p = e^(-(T - linf)/b)
    / (1 + e^(-1/b)) and delta = 1 - (1 - p)^l0. OpenDP's map can differ from it by a
    fraction of b (it loses precision for small delta), so the guess is bracketed by
    galloping (steps from b/16, doubling) and the bracket shrunk by regula falsi on
    ln(delta), which is nearly linear in T, with a bisection step whenever a step
    does not halve the bracket: O(log) map evaluations for any scale and delta.
    """
    l0, _, linf = d_in
    low, high = linf + 1, _INT_LIMIT
    log_target = math.log(delta)

    def gap(t: int) -> float:  # > 0: does not fit, <= 0: fits; decreasing in t
        d = _threshold_delta(scale, t, d_in)
        return math.log(d) - log_target if d > 0 else -math.inf

    p_single = -math.expm1(math.log1p(-delta) / l0)  # 1 - (1 - delta)^(1/l0)
    guess = linf + scale * (-math.log(p_single) - math.log1p(math.exp(-1.0 / scale)))
    t = int(min(max(math.ceil(guess), low), high)) if math.isfinite(guess) else high
    g = gap(t)
    step = max(1, int(scale / 16))
    if g <= 0:  # gallop down to a threshold that does not fit (or to low)
        hi, g_hi = t, g
        while True:
            if hi == low:
                return low
            lo = max(hi - step, low)
            g_lo = gap(lo)
            if g_lo > 0:
                break
            hi, g_hi, step = lo, g_lo, step * 2
    else:  # gallop up to a threshold that fits
        lo, g_lo = t, g
        while True:
            if lo >= high:
                raise ValueError("no threshold up to 2**62 fits delta")
            hi = min(lo + step, high)
            g_hi = gap(hi)
            if g_hi <= 0:
                break
            lo, g_lo, step = hi, g_hi, step * 2
    w_lo, w_hi, side, bisect = g_lo, g_hi, 0, False
    while hi - lo > 1:  # lo does not fit, hi fits
        width = hi - lo
        mid = lo + width // 2
        if not bisect and math.isfinite(w_lo) and math.isfinite(w_hi) and w_hi != w_lo:
            interp = hi - w_hi * width / (w_hi - w_lo)
            if math.isfinite(interp):
                mid = min(max(round(interp), lo + 1), hi - 1)
        g_mid = gap(mid)
        if g_mid > 0:
            lo, g_lo, w_lo = mid, g_mid, g_mid
            if side == -1:
                w_hi /= 2.0
            side = -1
        else:
            hi, g_hi, w_hi = mid, g_mid, g_mid
            if side == 1:
                w_lo /= 2.0
            side = 1
        bisect = not bisect and 2 * (hi - lo) > width  # no halving: bisect next time
    return hi


@_planned
def plan_threshold(
    epsilon: float, delta: float, sensitivity: int, max_groups_per_unit: int,
    max_total: int | None = None,
) -> tuple[Mechanism, int]:
    """Plan noisy counts for PRIVATE group keys, with suppression of rare keys.

    Uses OpenDP's ``make_laplace_threshold`` (discrete Laplace on each count; a key is
    kept when its noisy count is >= threshold). One unit touches at most
    ``max_groups_per_unit`` keys and adds at most ``sensitivity`` to each, and at most
    ``max_total`` over all keys (its rows: each row is in one group), so
    ``d_in = (l0, l1, linf) = (max_groups, min(max_groups * sensitivity, max_total),
    sensitivity)``. With ``max_total`` the noise no longer grows with the number of
    groups a unit may touch, only the threshold does (through delta).
    The scale fits epsilon; the threshold is the smallest integer for which delta (the
    chance that one of the keys only that unit has is released) fits ``delta``; it is one
    more than OpenDP's own map would suggest, see :func:`_threshold_cost`.
    """
    eps = _check_epsilon(epsilon)
    delta = _check_delta(delta, positive=True)
    linf = _check_positive_int(sensitivity, "sensitivity")
    l0 = _check_positive_int(max_groups_per_unit, "max_groups_per_unit")
    total = l0 * linf if max_total is None else _check_positive_int(max_total, "max_total")
    linf = min(linf, total)
    d_in = (l0, min(l0 * linf, total), linf)
    try:
        # The epsilon of the map does not depend on the threshold: fit the scale alone.
        scale = _threshold_scale(eps, d_in)
        threshold = _smallest_threshold(scale, delta, d_in)
        spent_eps, spent_delta = _threshold_cost(scale, threshold, d_in)
    except (dp.OpenDPException, ValueError, TypeError, OverflowError) as exc:
        raise _opendp_failed("calibrate the threshold", exc, show=True) from exc
    _assert_fits(float(spent_eps), eps, "epsilon")
    _assert_fits(float(spent_delta), delta, "delta")
    mech = Mechanism(
        kind="discrete_laplace",
        scale=scale,
        sensitivity=float(d_in[1]),
        cost=Cost(epsilon=float(spent_eps), delta=float(spent_delta)),
        integer=True,
        d_in=d_in,
        threshold=threshold,
    )
    return mech, threshold


def release_threshold(mech: Mechanism, threshold: int, counts: Mapping[str, int]) -> dict[str, int]:
    """Noisy counts of the keys whose noisy count is >= ``threshold``; others are dropped.

    ``threshold`` must be at least the planned one (a lower threshold would break delta).
    Never raises on a count: ``None`` is 0 and counts are clipped to [-2**62, 2**62]
    before the noise (1-Lipschitz, as in :func:`release`); keys must be strings.
    """
    if not isinstance(mech, Mechanism) or mech.threshold is None:
        raise MechanismMismatchError(
            "release_threshold needs a mechanism from plan_threshold",
            "plan private-key counts with plan_threshold",
        )
    threshold = _check_count(threshold, "threshold")
    if threshold < mech.threshold:
        raise _invalid(
            "threshold",
            f">= the planned threshold {mech.threshold}",
            repr(threshold),
            "a lower threshold releases rare keys more often than delta allows",
        )
    if not isinstance(counts, Mapping):
        raise _invalid("counts", "a mapping of key to count", _describe(counts), "pass a dict")
    keys = list(counts)
    for i, key in enumerate(keys):
        if not isinstance(key, str):
            raise _invalid(
                f"counts key #{i}", "a str", f"a {type(key).__name__}", "encode keys as strings"
            )
    values = _int_data((counts[k] for k in keys), "counts", clip=True)
    if not keys:
        return {}
    meas = _threshold_measurement(mech.scale, threshold)
    now_eps, now_delta = _threshold_cost(mech.scale, threshold, mech.d_in)
    if now_eps > mech.cost.epsilon * (1 + _REL_TOL) or now_delta > mech.cost.delta * (1 + _REL_TOL):
        raise MechanismMismatchError(
            "the mechanism's cost does not match OpenDP's privacy map for its scale",
            "plan mechanisms with plan_threshold; do not build or edit them by hand",
        )
    try:
        noisy = meas(dict(zip(keys, values, strict=True)))
    except dp.OpenDPException as exc:
        raise _opendp_failed("add noise", exc, show=False) from exc
    return {str(k): int(v) for k, v in noisy.items()}


# --------------------------------------------------------------------------- quantiles


def _score_transformation(candidates: Sequence[float], alpha: float) -> Any:
    return dp.t.make_quantile_score_candidates(
        dp.vector_domain(dp.atom_domain(T=float, nan=False)),
        dp.symmetric_distance(),
        list(candidates),
        alpha,
    )


@lru_cache(maxsize=256)
def _quantile_constants(alpha: float) -> tuple[int, int]:
    """OpenDP's integer representation ``alpha = num / den`` of the quantile.

    Read from OpenDP itself, so the count-based scores match it exactly: with one
    candidate 0 and one record above it, OpenDP's score is ``num``; with one record
    below, it is ``den - num``.
    """
    trans = _score_transformation([0.0], alpha)
    num = int(trans([1.0])[0])
    den_minus_num = int(trans([-1.0])[0])
    return num, num + den_minus_num


def _read_counts(
    k: int, counts_below: Any, counts_above: Any, n: Any
) -> tuple[list[int], list[int] | None, int | None]:
    """Per-candidate counts as ints (``None`` entries are 0), checking types and lengths
    only: those are fixed by the query and the grid, never by the rows."""
    below = _int_data(counts_below, "counts_below", clip=False)
    if len(below) != k:
        raise _invalid(
            "counts_below",
            f"of length {k} (one per candidate)",
            f"length {len(below)}",
            "compute count(x < c) for every candidate, in candidate order",
        )
    above = None
    if counts_above is not None:
        above = _int_data(counts_above, "counts_above", clip=False)
        if len(above) != k:
            raise _invalid(
                "counts_above",
                f"of length {k} (one per candidate)",
                f"length {len(above)}",
                "compute count(x > c) for every candidate, in candidate order",
            )
    if n is not None:
        if isinstance(n, bool):
            raise _invalid("n", "an integer >= 0", "a bool", "pass the row count")
        try:
            n = operator.index(n)
        except TypeError:
            raise _invalid("n", "an integer >= 0", _describe(n), "pass the row count") from None
    elif above is None:
        raise _invalid(
            "n",
            "given when counts_above is not",
            "None",
            "pass the total row count n, or the per-candidate counts above",
        )
    return below, above, n


def _scores(alpha: float, below: list[int], above: list[int]) -> list[int]:
    num, den = _quantile_constants(alpha)
    size_limit = (2**64 - 1) // den
    return [
        abs((den - num) * min(lt, size_limit) - num * min(gt, size_limit))
        for lt, gt in zip(below, above, strict=True)
    ]


def quantile_scores(
    candidates: Sequence[float],
    alpha: float,
    counts_below: Sequence[int],
    counts_above: Sequence[int] | None = None,
    n: int | None = None,
) -> list[int]:
    """OpenDP's quantile scores computed from per-candidate counts instead of rows.

    OpenDP 0.16 scores candidate c as ``|(den - num) * #(x < c) - num * #(x > c)|`` with
    ``alpha = num / den`` (lower is better). Without ``counts_above``, ``#(x > c)`` is taken
    as ``n - #(x < c)`` (ties counted above): identical to OpenDP when no row equals a
    candidate exactly, and with the same sensitivity otherwise.

    This helper checks that the counts are consistent and raises otherwise;
    :func:`release_quantile` instead repairs them (:func:`_repair_counts`), so that a
    release never raises on data.
    """
    cands = _check_candidates(candidates)
    alpha = _check_alpha(alpha)
    below, above, n = _read_counts(len(cands), counts_below, counts_above, n)
    if n is not None:
        n = _check_count(n, "n")
    if above is None:
        assert n is not None
        above = [n - b for b in below]
    _check_cumulative(below, above, n)
    return _scores(alpha, below, above)


def _repair_counts(
    below: list[int], above: list[int] | None, n: int | None
) -> tuple[list[int], list[int]]:
    """Make per-candidate counts consistent, deterministically; the identity on counts of
    a real dataset (0 <= lt, gt; lt + gt <= n; lt non-decreasing, gt non-increasing).

    lt_j becomes the running maximum of max(lt, 0), capped at n; gt_j the running minimum
    of max(gt, 0), capped at n - lt_j (or n - lt_j itself without ``counts_above``). The
    gate computes the counts in one query, so a repair means a bug upstream; repairing
    instead of raising keeps a release from failing on the data.
    """
    cap = None if n is None else max(n, 0)
    lows: list[int] = []
    run = 0
    for lt in below:
        run = max(run, lt)
        if cap is not None:
            run = min(run, cap)
        lows.append(run)
    if above is None:
        assert cap is not None
        return lows, [cap - lt for lt in lows]
    highs: list[int] = []
    top: int | None = None
    for lt, gt in zip(lows, above, strict=True):
        top = max(gt, 0) if top is None else min(top, max(gt, 0))
        if cap is not None:
            top = min(top, cap - lt)
        highs.append(top)
    return lows, highs


def _check_count(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise _invalid(name, "an integer >= 0", "a bool", "pass the row count")
    try:
        number = operator.index(value)
    except TypeError:
        raise _invalid(name, "an integer >= 0", _describe(value), "pass the row count") from None
    if number < 0:
        raise _invalid(name, "an integer >= 0", "a negative value", "pass the row count")
    return number


def _check_cumulative(below: list[int], above: list[int], n: int | None) -> None:
    """Counts from the gate must be consistent cumulative counts (no values in messages)."""
    hint = "compute count(x < c) and count(x > c) for every candidate in one query"
    for i, (lt, gt) in enumerate(zip(below, above, strict=True)):
        if lt < 0 or gt < 0 or (n is not None and lt + gt > n):
            raise _invalid(
                f"counts at candidate #{i}", "between 0 and n", "an inconsistent count", hint
            )
        if i and (lt < below[i - 1] or gt > above[i - 1]):
            raise _invalid(
                f"counts at candidate #{i}",
                "monotone (below non-decreasing, above non-increasing)",
                "a non-monotone count",
                hint,
            )


def _noisy_max(scale: float) -> Any:
    return dp.m.make_noisy_max(
        dp.vector_domain(dp.atom_domain(T="u64")),
        dp.linf_distance(T="u64"),
        dp.max_divergence(),
        scale=scale,
        negate=True,
    )


@lru_cache(maxsize=1024)
def _score_sensitivity(alpha: float, rows: int) -> int:
    """OpenDP's stability map of the quantile score at ``rows`` rows per unit.

    The map (``rows * max(num, den - num)``) does not depend on the candidates, so it is
    read from a one-candidate transformation and cached."""
    return int(_score_transformation([0.0], alpha).map(rows))


def _noisy_max_scale(score_sens: int, eps: float) -> float:
    """Smallest noisy-max scale whose map fits: 2 * sensitivity / eps up to ulps."""
    scale = _check_scale(2.0 * score_sens / eps, "quantile")
    for _ in range(8):
        if float(_noisy_max(scale).map(score_sens)) <= eps:
            return scale
        scale = math.nextafter(scale, math.inf)
    return _search_scale(_noisy_max, score_sens, eps, "quantile")


@_planned
def plan_quantile(
    epsilon: float, candidates: Sequence[float], alpha: float, max_contributions: int
) -> Mechanism:
    """Plan an exponential-mechanism quantile over a candidate grid.

    The score sensitivity is OpenDP's stability map of ``make_quantile_score_candidates``
    at ``max_contributions`` rows per unit (``max_contributions * max(num, den - num)``);
    selection is OpenDP's ``make_noisy_max`` under ``max_divergence`` (minimising the
    score), which in OpenDP 0.16 is report-noisy-max with exponential noise, i.e.
    permute-and-flip; its map gives the cost. The gate uses
    :func:`plan_binned_quantile` instead, which reaches a much finer grid.

    The grid must be non-decreasing and finite; repeated candidates are merged (a grid
    between equal bounds, e.g. ``median(5)`` with bounds [5, 5], has one distinct
    candidate, which :func:`release_quantile` returns without looking at the counts).
    The cost is OpenDP's map in every case.
    """
    eps = _check_epsilon(epsilon)
    _check_candidates(candidates)
    alpha = _check_alpha(alpha)
    rows = _check_positive_int(max_contributions, "max_contributions")
    try:
        score_sens = _score_sensitivity(alpha, rows)
        scale = _noisy_max_scale(score_sens, eps)
        spent = float(_noisy_max(scale).map(score_sens))
    except (dp.OpenDPException, ValueError, TypeError, OverflowError) as exc:
        raise _opendp_failed("plan the quantile", exc, show=True) from exc
    _assert_fits(spent, eps, "epsilon")
    return Mechanism(
        kind="exponential",
        scale=scale,
        sensitivity=float(score_sens),
        cost=Cost(epsilon=spent),
        integer=True,
        d_in=rows,
        alpha=alpha,
    )


def _check_quantile_mechanism(mech: Any, alpha: Any, release: str, planner: str,
                              stages: int) -> float:
    """``alpha`` checked against a quantile mechanism made by ``planner`` (fail closed)."""
    if not isinstance(mech, Mechanism) or mech.kind != "exponential" or mech.alpha is None \
            or mech.stages != stages:
        raise MechanismMismatchError(f"{release} needs a mechanism from {planner}",
                                     f"plan the quantile with {planner}")
    alpha = _check_alpha(alpha)
    if alpha != mech.alpha:
        raise MechanismMismatchError(
            f"the mechanism was planned for alpha={mech.alpha!r}, not alpha={alpha!r}",
            "plan one mechanism per quantile",
        )
    if isinstance(mech.d_in, bool) or not isinstance(mech.d_in, int):
        raise MechanismMismatchError(
            "the quantile mechanism has no row bound (d_in)", f"plan it with {planner}")
    return float(alpha)


def release_quantile(
    mech: Mechanism,
    candidates: Sequence[float],
    alpha: float,
    counts_below: Sequence[int],
    counts_above: Sequence[int] | None = None,
    n: int | None = None,
) -> float:
    """Pick the candidate for the ``alpha``-quantile with OpenDP's noisy max (permute-and-flip).

    ``counts_below[i]`` is ``#(x < candidates[i])``; ``counts_above[i]`` is
    ``#(x > candidates[i])`` (or give ``n`` and ties are counted above). See
    :func:`quantile_scores`.

    Never raises on the counts: ``None`` is 0 and inconsistent counts are repaired
    deterministically (:func:`_repair_counts`). Errors come only from the mechanism, the
    grid, ``alpha`` and the types and lengths of the counts, all fixed by the query.
    With a single distinct candidate, that candidate is returned (it does not depend on
    the data).
    """
    alpha = _check_quantile_mechanism(mech, alpha, "release_quantile", "plan_quantile", 1)
    cands = _check_candidates(candidates)
    below, above, n = _read_counts(len(cands), counts_below, counts_above, n)
    score_sens = _score_sensitivity(alpha, mech.d_in)
    meas = _noisy_max(mech.scale)
    if score_sens > mech.sensitivity or float(meas.map(score_sens)) > mech.cost.epsilon * (
        1 + _REL_TOL
    ):
        raise MechanismMismatchError(
            "the mechanism's cost does not match OpenDP's privacy map for its scale",
            "plan mechanisms with plan_quantile; do not build or edit them by hand",
        )
    distinct, first = _distinct(cands)
    if len(distinct) == 1:
        return distinct[0]
    below = [below[i] for i in first]
    above = None if above is None else [above[i] for i in first]
    lows, highs = _repair_counts(below, above, n)
    try:
        index = int(meas(_scores(alpha, lows, highs)))
    except dp.OpenDPException as exc:
        raise _opendp_failed("select the quantile", exc, show=False) from exc
    return distinct[index]


# --------------------------------------------------------------------------- binned quantiles

# Largest grid of a binned quantile: the bin index must fit the engine's INTEGER and each
# stage's score vector stays at most 2**12 candidates.
_MAX_QUANTILE_BINS = 2**24
# Largest score handed to OpenDP's u64 noisy max (clipping a score is 1-Lipschitz).
_U64_SCORE_LIMIT = 2**62


def _stage_bins(bins: Any) -> tuple[int, int]:
    """Split a power-of-two grid into (coarse, fine) stages of about sqrt(bins) each."""
    if isinstance(bins, bool) or not isinstance(bins, numbers.Integral):
        raise _invalid("bins", "an integer", _describe(bins), "pass the histogram's bin count")
    total = int(bins)
    if not (4 <= total <= _MAX_QUANTILE_BINS) or total & (total - 1):
        raise _invalid(
            "bins",
            f"a power of two from 4 to {_MAX_QUANTILE_BINS}",
            _describe(bins),
            "build the histogram with 2**k bins between the bounds, e.g. 2**20",
        )
    fine = 1 << (total.bit_length() - 1) // 2
    return total // fine, fine


def _check_bounds(lower: Any, upper: Any) -> tuple[float, float]:
    lo, hi = _real("lower", lower), _real("upper", upper)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise _invalid(
            "lower and upper",
            "finite with lower <= upper",
            f"[{_describe(lower)}, {_describe(upper)}]",
            "pass the bounds the histogram was built between",
        )
    return lo, hi


@_planned
def plan_binned_quantile(epsilon: float, alpha: float, max_contributions: int) -> Mechanism:
    """Plan a quantile over a fine histogram of the bounds (see :func:`release_binned_quantile`).

    Two selections with OpenDP's ``make_noisy_max`` (permute-and-flip under
    ``max_divergence``), each planned at half of ``epsilon`` with the score sensitivity
    of :func:`plan_quantile` (OpenDP's stability map of the quantile score at
    ``max_contributions`` rows per unit). The cost is the basic composition of the two
    OpenDP maps, so it is at most ``epsilon``: the same as a one-stage quantile.
    """
    eps = _check_epsilon(epsilon)
    alpha = _check_alpha(alpha)
    rows = _check_positive_int(max_contributions, "max_contributions")
    halves = split_epsilon(eps, [1.0, 1.0])
    try:
        score_sens = _score_sensitivity(alpha, rows)
        scale = max(_noisy_max_scale(score_sens, half) for half in halves)
        spent = float(_noisy_max(scale).map(score_sens))
    except (dp.OpenDPException, ValueError, TypeError, OverflowError) as exc:
        raise _opendp_failed("plan the quantile", exc, show=True) from exc
    cost = Cost(epsilon=spent) + Cost(epsilon=spent)
    _assert_fits(cost.epsilon, eps, "epsilon")
    return Mechanism(
        kind="exponential",
        scale=scale,
        sensitivity=float(score_sens),
        cost=cost,
        integer=True,
        d_in=rows,
        alpha=alpha,
        stages=2,
    )


def _read_histogram(histogram: Any, bins: int) -> tuple[Any, Any]:
    """Sorted distinct bin indices and their counts (int64 arrays) from engine output.

    ``None`` (the histogram of a group without values) is empty; entries with a ``None``
    or out-of-range bin are dropped, ``None`` counts are 0 and counts are clipped to
    [0, 2**62]; repeated bins are added up. These repairs are per entry and the identity
    on a real histogram, so the sensitivity analysis is unchanged and the release never
    raises on data. Only the *type* of the entries is refused (bins and counts are ints;
    the query fixes the type, so the first entry is checked).
    """
    if histogram is None:
        pairs: list[Any] = []
    elif isinstance(histogram, Mapping):
        pairs = list(histogram.items())
    else:
        try:
            pairs = list(histogram)
        except TypeError:
            raise _invalid(
                "histogram",
                "a mapping or a sequence of (bin, count) pairs",
                _describe(histogram),
                "pass the engine's HISTOGRAM value",
            ) from None
    empty = np.zeros(0, dtype=np.int64)
    if not pairs:
        return empty, empty
    first = pairs[0]
    if not (
        isinstance(first, tuple | list)
        and len(first) == 2
        and all(v is None or (isinstance(v, numbers.Integral) and not isinstance(v, bool))
                for v in first)
    ):
        raise _invalid(
            "histogram entries",
            "(bin, count) pairs of integers",
            "another type",
            "build the histogram over integer bin indices",
        )
    try:
        flat = np.fromiter(
            itertools.chain.from_iterable(pairs), dtype=np.int64, count=2 * len(pairs)
        ).reshape(-1, 2)
        keys, counts = flat[:, 0], np.clip(flat[:, 1], 0, _INT_LIMIT)
    except (TypeError, ValueError, OverflowError):  # a None or a huge int: entry by entry
        rows = [
            (int(k), 0 if c is None else min(max(int(c), 0), _INT_LIMIT))
            for k, c in pairs
            if k is not None and 0 <= int(k) < bins
        ]
        keys = np.array([k for k, _ in rows], dtype=np.int64)
        counts = np.array([c for _, c in rows], dtype=np.int64)
    keep = (keys >= 0) & (keys < bins) & (counts > 0)
    keys, counts = keys[keep], counts[keep]
    if keys.size > 1 and not bool((keys[1:] > keys[:-1]).all()):  # the engine sorts them
        order = np.argsort(keys, kind="stable")
        keys, counts = keys[order], counts[order]
    if keys.size > 1 and bool((keys[1:] == keys[:-1]).any()):
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        keys, counts = keys[starts], np.add.reduceat(counts, starts)
    return keys, counts


class _BinScores:
    """Signed quantile scores J(f) = (den - num) * #(bins < f) - num * #(bins > f) of fine
    bins f, from a sparse histogram. J is non-decreasing in f; OpenDP's score of bin f as
    a candidate (its own rows counted as ties) is |J(f)|."""

    def __init__(self, keys: Any, counts: Any, alpha: float) -> None:
        num, den = _quantile_constants(alpha)
        # Exact integer arithmetic: int64 when no sum or score can overflow it (every real
        # dataset), Python ints otherwise.
        bound = int(counts.max()) * counts.size * den if counts.size else 0
        if bound >= 2**62:
            counts = counts.astype(object)
        self.keys, self.counts = keys, counts
        self.below = np.concatenate([np.zeros(1, dtype=counts.dtype), np.cumsum(counts)])
        self.n = self.below[-1]
        self.lo_w, self.hi_w = den - num, num

    def __call__(self, bins: Any) -> Any:
        idx = np.searchsorted(self.keys, bins, side="left")
        lt = self.below[idx]
        inside = idx < self.keys.size
        present = np.zeros(len(bins), dtype=bool)
        present[inside] = self.keys[idx[inside]] == bins[inside]
        own = np.zeros(len(bins), dtype=self.below.dtype)
        own[present] = self.counts[idx[present]]
        gt = self.n - lt - own
        return self.lo_w * lt - self.hi_w * gt


def _coarse_scores(scores: _BinScores, coarse: int, fine: int) -> Any:
    """Per coarse bin, the best (smallest) |J| of its fine bins.

    J is non-decreasing, so over a run of fine bins the minimum of |J| is at an end of the
    run, unless J changes sign inside it; that happens in at most one coarse bin, whose
    fine bins are then scored one by one."""
    starts = np.arange(coarse, dtype=np.int64) * fine
    first, last = scores(starts), scores(starts + (fine - 1))
    best = np.where(first >= 0, first, np.where(last <= 0, -last, 0))
    for c in np.flatnonzero((first < 0) & (last > 0)):
        inner = scores(np.arange(starts[c], starts[c] + fine, dtype=np.int64))
        best[c] = np.abs(inner).min()
    return best


def _select(meas: Any, scores: Any) -> int:
    """OpenDP's noisy max (minimising) over non-negative integer scores, clipped to u64."""
    clipped = np.ascontiguousarray(np.minimum(scores, _U64_SCORE_LIMIT), dtype=np.uint64)
    try:
        return int(meas(clipped))
    except dp.OpenDPException as exc:
        raise _opendp_failed("select the quantile", exc, show=False) from exc


def release_binned_quantile(
    mech: Mechanism,
    lower: float,
    upper: float,
    bins: int,
    alpha: float,
    histogram: Any,
) -> float:
    """Release the ``alpha``-quantile from a histogram of ``bins`` equal bins of [lower, upper].

    ``histogram`` holds (bin index, row count) pairs for the non-empty bins (a mapping or
    a sequence; the engine's ``HISTOGRAM`` of ``floor((x - lower) / step)``). Each fine bin
    is a candidate with OpenDP's quantile score, its own rows counted as ties:
    ``|(den - num) * #(rows in bins below) - num * #(rows in bins above)|``. The grid is
    split into ``coarse x fine`` bins (about ``sqrt(bins)`` each). Stage one selects a
    coarse bin scored by the best score of its fine bins; stage two selects a fine bin of
    it. Both are OpenDP's ``make_noisy_max`` at the planned scale (permute-and-flip), so
    each stage scores at most ``sqrt(bins)`` candidates, whatever the data. The released
    value is the midpoint of the chosen fine bin (resolution ``(upper - lower) / bins``).

    Never raises on the histogram's values (see :func:`_read_histogram`); with
    ``lower == upper`` that bound is returned (it does not depend on the data).
    """
    alpha = _check_quantile_mechanism(mech, alpha, "release_binned_quantile",
                                      "plan_binned_quantile", 2)
    coarse, fine = _stage_bins(bins)
    lo, hi = _check_bounds(lower, upper)
    score_sens = _score_sensitivity(alpha, mech.d_in)
    meas = _noisy_max(mech.scale)
    per_stage = float(meas.map(score_sens))
    if score_sens > mech.sensitivity or (Cost(per_stage) + Cost(per_stage)).epsilon > (
        mech.cost.epsilon * (1 + _REL_TOL)
    ):
        raise MechanismMismatchError(
            "the mechanism's cost does not match OpenDP's privacy map for its scale",
            "plan mechanisms with plan_binned_quantile; do not build or edit them by hand",
        )
    keys, counts = _read_histogram(histogram, coarse * fine)
    if lo == hi:
        return lo
    scores = _BinScores(keys, counts, alpha)
    c = _select(meas, _coarse_scores(scores, coarse, fine))
    inner = np.arange(c * fine, (c + 1) * fine, dtype=np.int64)
    f = c * fine + _select(meas, np.abs(scores(inner)))
    step = (hi - lo) / (coarse * fine)
    return min(max(lo + (f + 0.5) * step, lo), hi)


def quantile_rank_error(mech: Mechanism, bins: int, confidence: float = 0.95) -> float:
    """Rank error k of a quantile release, in rows, at ``confidence``; spends nothing.

    With probability at least ``confidence`` the released bin's imbalance
    ``(1 - alpha) * #(rows below) - alpha * #(rows above)`` (its own rows left out) is
    within k of the smallest imbalance of any bin of the grid, i.e. the value is at most
    about k rows away in rank from the exact quantile. Each selection over m candidates
    picks one whose score exceeds the best by t with probability at most
    ``m * exp(-t / scale)`` (permute-and-flip accepts a candidate with probability
    ``exp(-(score - best) / scale)``); the failure probability is split evenly over the
    stages, and a score is ``den`` times the imbalance. ``bins`` is the number of
    candidates of a one-stage plan, the grid of a binned one.
    """
    if not isinstance(mech, Mechanism) or mech.kind != "exponential" or mech.alpha is None:
        raise MechanismMismatchError(
            "quantile_rank_error needs a quantile mechanism", "plan it with plan_*quantile"
        )
    beta = 1.0 - _check_confidence(confidence)
    one_stage = mech.stages != 2
    sizes = [_check_positive_int(bins, "bins")] if one_stage else list(_stage_bins(bins))
    _, den = _quantile_constants(mech.alpha)
    share = beta / len(sizes)
    return sum(mech.scale * math.log(m / share) for m in sizes) / den
