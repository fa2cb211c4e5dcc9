"""Differential privacy: plan the cost and accuracy of a release, then release noise.

This is the only module of the product that imports OpenDP. It is pure: it never sees
rows, only exact bounded aggregates that the gate computed (counts, fixed-point sums,
per-candidate cumulative counts) together with the sensitivities the gate enforced.

Planning (``plan_*``) is deterministic and spends nothing: it builds the OpenDP
measurement, reads its privacy map and returns a :class:`Mechanism` whose
:class:`Cost` is exactly what OpenDP says the measurement costs. Releasing
(``release*``) rebuilds the same measurement from the plan, checks that the plan still
matches OpenDP's map (fail closed) and samples noise from OpenDP's CSPRNG.

See ``docs/dp.md`` for the mechanisms, the formulas and the accounting rules.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import numbers
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

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
    "plan_gaussian",
    "plan_laplace",
    "plan_quantile",
    "plan_threshold",
    "quantile_scores",
    "release",
    "release_quantile",
    "release_threshold",
    "rho_to_epsilon",
    "split_epsilon",
]

KINDS = ("discrete_laplace", "laplace", "gaussian", "exponential")

# Largest magnitude an int64 noisy value may start from. OpenDP saturates on overflow
# instead of failing, so refuse values that could get near the int64 limits.
_INT_LIMIT = 2**62
# Relative slack when comparing a planned cost with OpenDP's map (float round-off only).
_REL_TOL = 1e-9


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
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return repr(int(value) if isinstance(value, numbers.Integral) else float(value))
    return f"a value of type {type(value).__name__}"


def _real(name: str, value: Any) -> float:
    """A real number (int, float or numpy scalar) as float; bools and strings refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _invalid(name, "a real number", _describe(value), f"pass {name} as an int or float")
    return float(value)


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


def _check_sensitivity(value: Any, name: str = "sensitivity") -> float:
    sens = _real(name, value)
    if not math.isfinite(sens) or sens <= 0:
        raise _invalid(
            name,
            "a finite number > 0",
            _describe(value),
            "the sensitivity is the most one privacy unit can change the released vector; "
            "a zero bound means the query does not need noise, which the gate never plans",
        )
    return sens


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
    if any(b <= a for a, b in itertools.pairwise(cands)):
        raise _invalid(
            "candidates",
            "strictly increasing",
            "a sequence that is not",
            "sort the grid and remove duplicates",
        )
    return cands


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
    """

    epsilon: float
    delta: float = 0.0
    rho: float = 0.0
    zcdp_epsilon: float | None = field(default=None, repr=False)
    zcdp_delta: float | None = field(default=None, repr=False)

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
        for name, value in (
            ("epsilon", eps),
            ("delta", delta),
            ("rho", rho),
            ("zcdp_epsilon", z_eps),
            ("zcdp_delta", z_delta),
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
        )

    def to_dict(self) -> dict[str, float]:
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "rho": self.rho,
            "zcdp_epsilon": _f(self.zcdp_epsilon),
            "zcdp_delta": _f(self.zcdp_delta),
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
    gauss = dp.m.make_gaussian(
        dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float), scale=1.0
    )
    d_in = math.sqrt(2.0 * rho)  # rho = d_in^2 / (2 scale^2) with scale 1
    while gauss.map(d_in) < rho:
        d_in = math.nextafter(d_in, math.inf)
    profile = dp.c.make_zCDP_to_approxDP(gauss).map(d_in)
    return float(profile.epsilon(delta))


def compose(costs: Iterable[Cost]) -> Cost:
    """Compose costs; the one accounting rule of the product.

    * Pure and approximate-DP parts (Laplace, thresholds, exponential): basic
      composition, epsilons and deltas add.
    * Gaussian (zCDP) parts: their rhos add; the total rho is converted once to
      (epsilon, delta_g) with delta_g the sum of their deltas, and the Gaussian part is
      charged the smaller of that and the plain sum of their epsilons (both are valid).

    The total is pure part + Gaussian part. ``compose`` of a flat list is the rule;
    composing already-composed costs is valid but may give a slightly different bound.
    """
    items = list(costs)
    for i, cost in enumerate(items):
        if not isinstance(cost, Cost):
            raise _invalid(
                f"costs[{i}]", "a Cost", _describe(cost), "compose the Cost of each plan"
            )
    if not items:
        return Cost(0.0)
    rho = math.fsum(c.rho for c in items)
    if rho == 0:
        return Cost(
            epsilon=math.fsum(c.epsilon for c in items),
            delta=math.fsum(c.delta for c in items),
        )
    pure_eps = math.fsum(c.epsilon - _f(c.zcdp_epsilon) for c in items)
    pure_delta = math.fsum(c.delta - _f(c.zcdp_delta) for c in items)
    g_delta = math.fsum(_f(c.zcdp_delta) for c in items)
    g_eps_basic = math.fsum(_f(c.zcdp_epsilon) for c in items)
    g_eps = g_eps_basic
    if g_delta > 0:
        g_eps = min(g_eps_basic, rho_to_epsilon(rho, g_delta))
    return Cost(
        epsilon=max(pure_eps, 0.0) + g_eps,
        delta=max(pure_delta, 0.0) + g_delta,
        rho=rho,
        zcdp_epsilon=g_eps,
        zcdp_delta=g_delta,
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
    quantile or a lower threshold.
    """

    kind: str
    scale: float
    sensitivity: float
    cost: Cost
    integer: bool
    d_in: Any = None
    alpha: float | None = None
    threshold: int | None = None

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

    def ci_halfwidth(self, confidence: float = 0.95) -> float:
        """Half-width of the two-sided ``confidence`` interval of one noisy value.

        Computed by OpenDP's accuracy helpers from the scale only; no budget is spent.
        For integer mechanisms it is the largest integer error covered (floor).
        """
        conf = _check_confidence(confidence)
        alpha = 1.0 - conf
        if self.kind == "exponential":
            raise MechanismMismatchError(
                "a quantile (exponential mechanism) has no per-value confidence interval",
                "report the candidate grid step and the planned epsilon instead",
            )
        if self.kind == "discrete_laplace":
            acc = dp.discrete_laplacian_scale_to_accuracy(self.scale, alpha)
        elif self.kind == "laplace":
            acc = dp.laplacian_scale_to_accuracy(self.scale, alpha)
        elif self.integer:  # discrete Gaussian
            acc = dp.discrete_gaussian_scale_to_accuracy(self.scale, alpha)
        else:
            acc = dp.gaussian_scale_to_accuracy(self.scale, alpha)
        acc = float(acc)
        return float(math.floor(acc)) if self.integer else acc

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
        return out


def _search_scale(make: Callable[[float], Any], d_in: Any, d_out: Any, what: str) -> float:
    """Smallest scale whose privacy map at d_in fits d_out (OpenDP's binary search)."""
    try:
        return float(dp.binary_search_param(make, d_in=d_in, d_out=d_out, T=float))
    except (dp.OpenDPException, ValueError, TypeError) as exc:
        raise _opendp_failed(f"calibrate the {what} scale", exc, show=True) from exc


def _vector_space(integer: bool, l2: bool) -> tuple[Any, Any]:
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


def _laplace_scale(sens: float, eps: float, integer: bool) -> float:
    """sensitivity / epsilon, nudged up until OpenDP's map accepts it (else a search)."""
    scale = sens / eps
    for _ in range(8):
        if float(_laplace_measurement(scale, integer).map(sens)) <= eps:
            return scale
        scale = math.nextafter(scale, math.inf)
    return _search_scale(lambda s: _laplace_measurement(s, integer), sens, eps, "Laplace")


@_planned
def plan_laplace(epsilon: float, sensitivity: float, integer: bool) -> Mechanism:
    """Plan Laplace noise for a vector with L1 ``sensitivity`` at ``epsilon``.

    ``integer=True`` gives the discrete Laplace over int64 (counts, fixed-point sums; no
    float leaks); otherwise the continuous Laplace over float64. The scale is the
    smallest one OpenDP's map accepts (``sensitivity / epsilon`` up to round-off) and the
    cost is ``measurement.map(sensitivity)``.
    """
    eps = _check_epsilon(epsilon)
    sens = _check_sensitivity(sensitivity)
    integer = _check_integer(integer)
    scale = _laplace_scale(sens, eps, integer)
    spent = float(_laplace_measurement(scale, integer).map(sens))
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


@_planned
def plan_gaussian(epsilon: float, delta: float, sensitivity_l2: float, integer: bool) -> Mechanism:
    """Plan Gaussian noise for a vector with L2 ``sensitivity_l2`` at (epsilon, delta).

    Calibrated through zCDP: the Gaussian's rho = sensitivity^2 / (2 scale^2) is converted
    to (epsilon, delta) with OpenDP's ``make_zCDP_to_approxDP``; the scale is the smallest
    whose converted epsilon at ``delta`` fits. The cost carries rho (for composition) and
    the converted (epsilon, delta). ``integer=True`` uses the discrete Gaussian.
    """
    eps = _check_epsilon(epsilon)
    delta = _check_delta(delta, positive=True)
    sens = _check_sensitivity(sensitivity_l2, name="sensitivity_l2")
    integer = _check_integer(integer)
    # The Gaussian's cost depends on sensitivity / scale only: calibrate at sensitivity 1
    # (large sensitivities overflow OpenDP's search) and scale up, then check the map.
    unit = _search_scale(
        lambda s: _approx_gaussian(s, integer, delta), 1.0, (eps, delta), "Gaussian"
    )
    scale = unit * sens
    for _ in range(8):
        if float(_approx_gaussian(scale, integer, delta).map(sens)[0]) <= eps:
            break
        scale = math.nextafter(scale, math.inf)
    rho = float(_gaussian_measurement(scale, integer).map(sens))
    spent_eps, spent_delta = _approx_gaussian(scale, integer, delta).map(sens)
    _assert_fits(float(spent_eps), eps, "epsilon")
    return Mechanism(
        kind="gaussian",
        scale=scale,
        sensitivity=sens,
        cost=Cost(epsilon=float(spent_eps), delta=float(spent_delta), rho=rho),
        integer=integer,
        d_in=sens,
    )


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


def _int_values(values: Iterable[Any], name: str) -> list[int]:
    out = []
    for i, v in enumerate(values):
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
        if abs(number) > _INT_LIMIT:
            raise _invalid(
                f"{name}[{i}]",
                "within +/- 2**62",
                "a value outside",
                "use a coarser fixed-point scale for the sum",
            )
        out.append(number)
    return out


def _float_values(values: Iterable[Any], name: str) -> list[float]:
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise _invalid(
                f"{name}[{i}]",
                "a real number",
                f"a value of type {type(v).__name__}",
                "pass the aggregates as ints or floats",
            )
        number = float(v)
        if not math.isfinite(number):
            raise _invalid(
                f"{name}[{i}]",
                "finite",
                "a non-finite value",
                "clamp measures before aggregating; an empty group must be handled before DP",
            )
        out.append(number)
    return out


def release(mech: Mechanism, values: Sequence[int] | Sequence[float]) -> list:
    """Add the planned noise to each value (one OpenDP vector measurement).

    Integer mechanisms take and return ints (refusing floats rather than rounding them);
    float mechanisms return floats. The caller must have bounded the sensitivity of the
    whole vector by ``mech.sensitivity`` (L1 for Laplace kinds, L2 for Gaussian).
    """
    if not isinstance(mech, Mechanism) or mech.kind == "exponential" or mech.threshold is not None:
        raise MechanismMismatchError(
            "release needs a vector mechanism from plan_laplace or plan_gaussian",
            "use release_quantile for quantiles and release_threshold for private keys",
        )
    data: list[Any] = (
        _int_values(values, "values") if mech.integer else _float_values(values, "values")
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


def _threshold_space() -> tuple[Any, Any]:
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
    _, delta = _threshold_measurement(scale, threshold - 1).map(d_in)
    return float(eps), float(delta)


@_planned
def plan_threshold(
    epsilon: float, delta: float, sensitivity: int, max_groups_per_unit: int
) -> tuple[Mechanism, int]:
    """Plan noisy counts for PRIVATE group keys, with suppression of rare keys.

    Uses OpenDP's ``make_laplace_threshold`` (discrete Laplace on each count; a key is
    kept when its noisy count is >= threshold). One unit touches at most
    ``max_groups_per_unit`` keys and adds at most ``sensitivity`` to each, so
    ``d_in = (l0, l1, linf) = (max_groups, max_groups * sensitivity, sensitivity)``.
    The scale fits epsilon; the threshold is the smallest integer for which delta (the
    chance that one of the keys only that unit has is released) fits ``delta``; it is one
    more than OpenDP's own map would suggest, see :func:`_threshold_cost`.
    """
    eps = _check_epsilon(epsilon)
    delta = _check_delta(delta, positive=True)
    linf = _check_positive_int(sensitivity, "sensitivity")
    l0 = _check_positive_int(max_groups_per_unit, "max_groups_per_unit")
    d_in = (l0, l0 * linf, linf)
    big = 2**62
    try:
        # The epsilon of the map does not depend on the threshold: search the scale alone.
        scale = float(
            dp.binary_search(
                lambda s: _threshold_measurement(s, big).map(d_in)[0] <= eps,
                bounds=(0.0, 4.0 * d_in[1] / eps),
                T=float,
            )
        )
        threshold = int(
            dp.binary_search(
                lambda t: _threshold_cost(scale, t, d_in)[1] <= delta,
                bounds=(linf + 1, big),
                T="i64",
            )
        )
        spent_eps, spent_delta = _threshold_cost(scale, threshold, d_in)
    except (dp.OpenDPException, ValueError, TypeError) as exc:
        raise _opendp_failed("calibrate the threshold", exc, show=True) from exc
    _assert_fits(float(spent_eps), eps, "epsilon")
    _assert_fits(float(spent_delta), delta, "delta")
    mech = Mechanism(
        kind="discrete_laplace",
        scale=scale,
        sensitivity=float(l0 * linf),
        cost=Cost(epsilon=float(spent_eps), delta=float(spent_delta)),
        integer=True,
        d_in=d_in,
        threshold=threshold,
    )
    return mech, threshold


def release_threshold(mech: Mechanism, threshold: int, counts: Mapping[str, int]) -> dict[str, int]:
    """Noisy counts of the keys whose noisy count is >= ``threshold``; others are dropped.

    ``threshold`` must be at least the planned one (a lower threshold would break delta).
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
    values = _int_values((counts[k] for k in keys), "counts")
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
    """
    cands = _check_candidates(candidates)
    alpha = _check_alpha(alpha)
    k = len(cands)
    below = _int_values(counts_below, "counts_below")
    if len(below) != k:
        raise _invalid(
            "counts_below",
            f"of length {k} (one per candidate)",
            f"length {len(below)}",
            "compute count(x < c) for every candidate, in candidate order",
        )
    if n is not None:
        n = _check_count(n, "n")
    if counts_above is None:
        if n is None:
            raise _invalid(
                "n",
                "given when counts_above is not",
                "None",
                "pass the total row count n, or the per-candidate counts above",
            )
        above = [n - b for b in below]
    else:
        above = _int_values(counts_above, "counts_above")
        if len(above) != k:
            raise _invalid(
                "counts_above",
                f"of length {k} (one per candidate)",
                f"length {len(above)}",
                "compute count(x > c) for every candidate, in candidate order",
            )
    _check_cumulative(below, above, n)
    num, den = _quantile_constants(alpha)
    size_limit = (2**64 - 1) // den
    return [
        abs((den - num) * min(lt, size_limit) - num * min(gt, size_limit))
        for lt, gt in zip(below, above, strict=True)
    ]


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


@_planned
def plan_quantile(
    epsilon: float, candidates: Sequence[float], alpha: float, max_contributions: int
) -> Mechanism:
    """Plan an exponential-mechanism quantile over a candidate grid.

    The score sensitivity is OpenDP's stability map of ``make_quantile_score_candidates``
    at ``max_contributions`` rows per unit (``max_contributions * max(num, den - num)``);
    selection is OpenDP's report-noisy-max with Gumbel noise (``make_noisy_max``,
    minimising the score), whose map gives the cost.
    """
    eps = _check_epsilon(epsilon)
    cands = _check_candidates(candidates)
    alpha = _check_alpha(alpha)
    rows = _check_positive_int(max_contributions, "max_contributions")
    try:
        score_sens = int(_score_transformation(cands, alpha).map(rows))
    except dp.OpenDPException as exc:
        raise _opendp_failed("build the quantile score", exc, show=True) from exc
    scale = _search_scale(_noisy_max, score_sens, eps, "quantile")
    spent = float(_noisy_max(scale).map(score_sens))
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


def release_quantile(
    mech: Mechanism,
    candidates: Sequence[float],
    alpha: float,
    counts_below: Sequence[int],
    counts_above: Sequence[int] | None = None,
    n: int | None = None,
) -> float:
    """Pick the candidate for the ``alpha``-quantile with OpenDP's noisy max.

    ``counts_below[i]`` is ``#(x < candidates[i])``; ``counts_above[i]`` is
    ``#(x > candidates[i])`` (or give ``n`` and ties are counted above). See
    :func:`quantile_scores`.
    """
    if not isinstance(mech, Mechanism) or mech.kind != "exponential" or mech.alpha is None:
        raise MechanismMismatchError(
            "release_quantile needs a mechanism from plan_quantile",
            "plan quantiles with plan_quantile",
        )
    alpha = _check_alpha(alpha)
    if alpha != mech.alpha:
        raise MechanismMismatchError(
            f"the mechanism was planned for alpha={mech.alpha!r}, not alpha={alpha!r}",
            "plan one mechanism per quantile",
        )
    if isinstance(mech.d_in, bool) or not isinstance(mech.d_in, int):
        raise MechanismMismatchError(
            "the quantile mechanism has no row bound (d_in)", "plan it with plan_quantile"
        )
    cands = _check_candidates(candidates)
    scores = quantile_scores(cands, alpha, counts_below, counts_above, n)
    score_sens = int(_score_transformation(cands, alpha).map(mech.d_in))
    meas = _noisy_max(mech.scale)
    if score_sens > mech.sensitivity or float(meas.map(score_sens)) > mech.cost.epsilon * (
        1 + _REL_TOL
    ):
        raise MechanismMismatchError(
            "the mechanism's cost does not match OpenDP's privacy map for its scale",
            "plan mechanisms with plan_quantile; do not build or edit them by hand",
        )
    try:
        index = int(meas(scores))
    except dp.OpenDPException as exc:
        raise _opendp_failed("select the quantile", exc, show=False) from exc
    return cands[index]
