"""How many labels should we collect? A forecast of fine-tuning accuracy beyond the labels in hand,
from the learning curve's points (accuracy after fine-tuning on n labelled examples).

The field's current practice for sample-wise curves: fit a few saturating parametric laws and
extrapolate. POW4 and MMF4 extrapolate sample-wise curves better than the learned LC-PFN prior in
most cut-offs (LCDB 1.1, Yan, Mohr & Viering 2025; Cazacu 2025), and power laws fitted on small data
misestimate how much data a target needs (Mahmood et al., CVPR 2022) — so no single law is trusted:

- laws (accuracy y against labels n, all non-decreasing, asymptote in [0, 1]):
    pow3  y = a - b * n^(-c)
    pow4  y = a - b * (n + d)^(-c)
    mmf4  y = (a*b + c*n^d) / (b + n^d)      (Morgan-Mercer-Flodin: a at n = 0, c as n grows)
- each is fitted by least squares with the exact constraints, by variable projection (Golub &
  Pereyra 1973): given its nonlinear parameters (c; c, d; b, d) a law is linear in the other two,
  which have a closed-form constrained solution, so a dense grid over the nonlinear ones is
  searched for every bootstrap curve at once. A bounded optimiser per curve (curve_fit) takes
  ~1 ms a fit, 600 per forecast, and can stop at a local minimum; the grid cannot, and costs
  ~0.1 s for 200 resamples x 3 laws on 5 points.
- ensemble: equal weights over the laws that fit the points within their noise. With 4-6 points
  fit quality cannot tell the laws apart (each follows the points to within their noise), so
  quality weights would only track noise; a law whose misfit is far beyond the noise while another
  law's is not (chi-square test at 0.1%) is dropped, with a note.
- uncertainty: a bootstrap that resamples the test items (one resample of the shared columns for
  every point, since the points are scored on the same items) and each point's seed rows (each
  point's seeds are its own fine-tuning runs), refitting every law on every resample. The band is
  percentiles of the bootstrap predictions of all kept laws pooled with equal weight, so that the
  spread between laws — how far apart the laws extrapolate the same points — widens it along
  with the sampling noise.

Points at n = 0 (zero-shot, no labels) are ignored by the fit: no law here is defined there
consistently (pow3 diverges at n = 0) and the plain prompt is not the start of a fine-tuning curve.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as scipy_stats

from tuneorprompt import stats
from tuneorprompt.stats import StatsError

# labels_to_target's marker for a target that is not reached within HORIZON x the largest n.
HORIZON = 10
NOT_WITHIN = f"not within {HORIZON}x"
# Forecasts at these multiples of the largest observed n; the band runs to the last one.
MULTIPLES = (2, 4)
# Fewer points than this: forecast flagged unreliable, and no backtest (it needs 3 points to fit).
MIN_RELIABLE_POINTS = 4
# The warnings' paired tests (drops, flat curve) at the project's usual 95%, whatever the band level.
# Only their p-values are read (exact or F-referred, no resampling); the few resamples go to the
# difference's interval, which is not.
TEST_LEVEL = stats.DEFAULT_LEVEL
TEST_RESAMPLES = 200
# A law is dropped when its chi-square misfit has p below this while another law's does not.
DROP_P = 0.001
BAND_POINTS = 40
# labels_to_target is solved on this many log-spaced label counts up to HORIZON x the largest n
# (steps of ~1.3% for 5 doublings of data, then interpolated between them).
SOLVE_POINTS = 400


@dataclass(frozen=True)
class FittedLaw:
    name: str  # "pow3", "pow4", "mmf4"
    formula: str  # in labels n, e.g. "a - b * n^(-c)"
    parameters: dict[str, float]  # fitted on the observed points; n in labels, y in accuracy [0, 1]
    weight: float  # share in the ensemble; 0 when dropped or not fitted
    note: str | None  # why the law is out of the ensemble


@dataclass(frozen=True)
class Prediction:
    labels: float
    value: float  # ensemble accuracy [0, 1] at `labels`
    low: float  # the `level` band: percentiles of the pooled bootstrap predictions
    high: float


@dataclass(frozen=True)
class LabelsToTarget:
    """Labels needed for the ensemble to reach `target`; each of value/low/high is a label count or
    NOT_WITHIN. low comes from the optimistic end of the band (fewer labels), high from the other."""

    target: float
    value: int | str
    low: int | str
    high: int | str


@dataclass(frozen=True)
class Backtest:
    """The last point predicted from the others, an honest check of the extrapolation (one step of
    the curve, usually a doubling: the forecast's 4x reach is further)."""

    labels: float
    observed: float
    predicted: float
    low: float
    high: float
    error: float  # |predicted - observed|, accuracy units


@dataclass(frozen=True)
class LabelForecast:
    observed: tuple[tuple[float, float], ...]  # (labels, accuracy) as fitted, by labels
    laws: tuple[FittedLaw, ...]
    predictions: tuple[Prediction, ...]  # at MULTIPLES x the largest observed n; empty when unfittable
    labels_to_target: LabelsToTarget | None  # None when no target was given, or the curve is unfittable
    backtest: Backtest | None  # None with fewer than MIN_RELIABLE_POINTS points
    band: tuple[Prediction, ...]  # from the smallest n to the last multiple of the largest, for a plot
    warnings: tuple[str, ...]  # plain sentences about an ill-behaved curve, each naming its points
    level: float
    method: str

    def to_dict(self) -> dict:
        """JSON-ready: plain floats, ints, strings, None, lists and dicts."""
        return json.loads(json.dumps(asdict(self)))


# ---- laws -----------------------------------------------------------------------------------------
# Each law is y = alpha + beta * v(x; theta) in the scaled labels x = n / n_min (keeps powers of n
# in a sane range), linear in (alpha, beta) given theta, with linear constraints A @ (alpha, beta) <= b.


def _pow_shape(x: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """pow3/pow4: theta = (c, d), v = -(x + d)^(-c), so that beta = b >= 0 rises to alpha = a (d = 0: pow3)."""
    return -((x + grid[:, 1:]) ** -grid[:, :1])


def _pow_parameters(alpha: float, beta: float, theta: np.ndarray, scale: float) -> dict[str, float]:
    c, d = (float(value) for value in theta)  # a - b (x + d)^-c in x = n / scale is a - b scale^c (n + d scale)^-c
    return {"a": alpha, "b": beta * scale**c, "c": c, "d": d * scale}


def _pow3_parameters(alpha: float, beta: float, theta: np.ndarray, scale: float) -> dict[str, float]:
    return {name: value for name, value in _pow_parameters(alpha, beta, theta, scale).items() if name != "d"}


def _mmf_shape(x: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """mmf4: theta = (x_half, d), v = x^d / (x_half^d + x^d), the share of the way from a (alpha) to c (alpha + beta)."""
    return 1 / (1 + (grid[:, :1] / x) ** grid[:, 1:])


def _mmf_parameters(alpha: float, beta: float, theta: np.ndarray, scale: float) -> dict[str, float]:
    x_half, d = (float(value) for value in theta)
    return {"a": alpha, "b": (x_half * scale) ** d, "c": alpha + beta, "d": d}


@dataclass(frozen=True)
class _Law:
    name: str
    formula: str
    n_parameters: int
    grid: np.ndarray  # [G, 2] values of the nonlinear parameters theta searched
    constraints: np.ndarray  # [m, 3]: rows (A_alpha, A_beta, b) of A @ (alpha, beta) <= b
    shape_of: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (x [P], grid) -> v [G, P]
    parameters_of: Callable[[float, float, np.ndarray, float], dict[str, float]]  # (alpha, beta, theta, scale)

    def shape(self, x: np.ndarray) -> np.ndarray:
        """v(x; theta) for every grid theta: [G, len(x)]."""
        return self.shape_of(x, self.grid)

    def parameters(self, alpha: float, beta: float, index: int, scale: float) -> dict[str, float]:
        """The fit (alpha, beta, grid theta `index`) in the law's textbook form, in labels n = scale * x."""
        return self.parameters_of(alpha, beta, self.grid[index], scale)


def _grid(*axes: np.ndarray) -> np.ndarray:
    return np.stack([a.ravel() for a in np.meshgrid(*axes, indexing="ij")], axis=1)


# Exponents: learning-curve exponents of accuracy gaps are mostly 0.1-1 (LCDB); the range is wider so
# that a steep or a nearly flat curve is not forced onto the grid's edge. Shifts d and half-saturation
# points are in units of the smallest n, from well below it to far beyond the largest n of a sweep.
# Grid sizes trade time for resolution: against grids 3x finer on each axis, 4x-extrapolations of
# noisy 5-point curves differ by 0.3 points (median) and 1.3 points (90th percentile, mmf4), well
# inside the bootstrap band, at a tenth of the time.
_POW_EXPONENTS = np.geomspace(0.02, 4.0, 120)
# pow: 0 <= a <= 1 (asymptote), b >= 0 (rising). mmf4: a >= 0, c = a + beta <= 1, beta >= 0 (rising).
_POW_CONSTRAINTS = np.array([[-1.0, 0, 0], [1, 0, 1], [0, -1, 0]])
LAWS = (
    _Law("pow3", "a - b * n^(-c)", 3, _grid(_POW_EXPONENTS, np.zeros(1)), _POW_CONSTRAINTS,
         _pow_shape, _pow3_parameters),
    _Law("pow4", "a - b * (n + d)^(-c)", 4, _grid(np.geomspace(0.02, 4.0, 36), np.r_[0, np.geomspace(0.05, 30, 13)]),
         _POW_CONSTRAINTS, _pow_shape, _pow_parameters),
    _Law("mmf4", "(a*b + c*n^d) / (b + n^d)", 4, _grid(np.geomspace(0.03, 1000, 34), np.geomspace(0.15, 4, 26)),
         np.array([[-1.0, 0, 0], [0, -1, 0], [1, 1, 1]]), _mmf_shape, _mmf_parameters),
)


def _edges(constraints: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float, float]]:
    """The feasible polygon's edges as (point, direction, t_low, t_high): the segment point + t * direction."""
    edges = []
    for k, (a_alpha, a_beta, bound) in enumerate(constraints):
        normal = np.array([a_alpha, a_beta])
        point, direction = normal * bound / (normal @ normal), np.array([-a_beta, a_alpha])
        low, high = -math.inf, math.inf
        for j, row in enumerate(constraints):
            if j == k:
                continue
            slope, room = row[:2] @ direction, row[2] - row[:2] @ point
            if slope > 0:
                high = min(high, room / slope)
            elif slope < 0:
                low = max(low, room / slope)
            elif room < 0:
                low, high = math.inf, -math.inf  # a parallel constraint excludes this whole line
        if low <= high:
            edges.append((point, direction, low, high))
    return edges


def _fit(law: _Law, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares fit of `law` to each row of `y` [R, P] at scaled labels `x` [P].
    Returns alpha [R], beta [R] and the grid index of theta [R].

    For every row and grid theta the sum of squares of (alpha, beta) is, up to the constant sum y^2,
    the quadratic f = (alpha, beta) H (alpha, beta)^T - 2 (alpha, beta) . c, with H = [[P, sum v],
    [sum v, sum v^2]] and c = (sum y, sum v y): from these sums alone (one matrix product) every
    candidate is scored."""
    # A theta under which v is (nearly) constant over the points — mmf4 saturated before the first
    # point or not started by the last — is a constant law, which every other theta's beta = 0 edge
    # offers too; without it H is positive definite and no division below is by zero.
    usable = np.flatnonzero(np.ptp(law.shape(x), axis=1) > 1e-6)
    v = law.shape(x)[usable]  # [G, P]
    h_11, h_12, h_22 = float(len(x)), v.sum(axis=1), np.sum(v**2, axis=1)  # H, per grid theta: [G]
    c_1, c_2 = y.sum(axis=1, keepdims=True), y @ v.T  # c: [R, 1], [R, G]

    # Unconstrained: the normal equations H (alpha, beta) = c, where f = -(alpha, beta) . c; kept only
    # where the solution is feasible.
    determinant = h_11 * h_22 - h_12**2
    best_alpha = (h_22 * c_1 - h_12 * c_2) / determinant
    best_beta = (h_11 * c_2 - h_12 * c_1) / determinant
    feasible = np.all(law.constraints[:, :1, None] * best_alpha + law.constraints[:, 1:2, None] * best_beta
                      <= law.constraints[:, 2:, None] + 1e-12, axis=0)
    best = np.where(feasible, -(best_alpha * c_1 + best_beta * c_2), np.inf)

    # Otherwise the optimum lies on an edge of the feasible polygon: (alpha, beta) = p + t * d, where
    # f = f(p) - 2 t d . (c - H p) + t^2 d H d, minimised in t and clipped to the edge.
    for (p_alpha, p_beta), (d_alpha, d_beta), low, high in _edges(law.constraints):
        at_p = h_11 * p_alpha**2 + 2 * h_12 * p_alpha * p_beta + h_22 * p_beta**2 - 2 * (p_alpha * c_1 + p_beta * c_2)
        slope = d_alpha * (c_1 - h_11 * p_alpha - h_12 * p_beta) + d_beta * (c_2 - h_12 * p_alpha - h_22 * p_beta)
        curvature = h_11 * d_alpha**2 + 2 * h_12 * d_alpha * d_beta + h_22 * d_beta**2
        t = np.clip(slope / curvature, low, high)
        on_edge = at_p + t * (t * curvature - 2 * slope)
        better = on_edge < best
        best = np.where(better, on_edge, best)
        best_alpha = np.where(better, p_alpha + t * d_alpha, best_alpha)
        best_beta = np.where(better, p_beta + t * d_beta, best_beta)

    index = np.argmin(best, axis=1)
    rows = np.arange(y.shape[0])
    return best_alpha[rows, index], best_beta[rows, index], usable[index]


def _predict(law: _Law, alpha: np.ndarray, beta: np.ndarray, index: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Each fit's accuracy at scaled labels `x` [Q]: [R, Q], clipped to [0, 1] (pow laws are not
    bounded below at small n)."""
    return np.clip(alpha[:, None] + beta[:, None] * law.shape(x)[index], 0.0, 1.0)


# ---- the forecast ---------------------------------------------------------------------------------


def _validated(points: Sequence[tuple[float, ArrayLike]]) -> list[tuple[float, np.ndarray]]:
    """The points with n > 0, sorted by n, as matrices; StatsError naming the point otherwise."""
    checked: list[tuple[float, np.ndarray]] = []
    items = None
    for index, (n, outcomes) in enumerate(points):
        n = float(n)
        name = f"points[{index}] (n = {n:g})"
        if not math.isfinite(n) or n < 0:
            raise StatsError(f"{name}: expected a label count n >= 0")
        matrix = stats.as_matrix(outcomes, name, unit_interval=True)
        if items is None:
            items = (name, matrix.shape[1])
        elif matrix.shape[1] != items[1]:
            raise StatsError(f"{name} has {matrix.shape[1]} test items and {items[0]} has {items[1]}: "
                             "every point must be scored on the same items in the same column order")
        if n > 0:
            if any(n == seen for seen, _ in checked):
                raise StatsError(f"{name}: n = {n:g} appears twice")
            checked.append((n, matrix))
    return sorted(checked, key=lambda point: point[0])


def _bootstrap(matrices: list[np.ndarray], resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Accuracies [resamples, P]: one resample of the test items shared by every point, and a
    resample of each point's own seed rows."""
    n_items = matrices[0].shape[1]
    item_weights = rng.multinomial(n_items, np.full(n_items, 1 / n_items), size=resamples) / n_items
    columns = []
    for matrix in matrices:
        n_seeds = matrix.shape[0]
        seed_weights = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=resamples) / n_seeds
        columns.append(np.einsum("rs,si,ri->r", seed_weights, matrix, item_weights))
    return np.stack(columns, axis=1)


def _labels_reaching(curves: np.ndarray, labels: np.ndarray, target: float) -> np.ndarray:
    """For each row of non-decreasing `curves` [R, N] on `labels` [N]: the labels where it first
    reaches `target` (log-linear between grid points), inf where it does not within the grid."""
    reached = curves >= target
    first = np.argmax(reached, axis=1)
    log_labels = np.log(labels)
    previous = np.maximum(first - 1, 0)
    rows = np.arange(curves.shape[0])
    low_value, high_value = curves[rows, previous], curves[rows, first]
    rise = np.where(high_value > low_value, high_value - low_value, 1.0)
    fraction = np.where(first > 0, (target - low_value) / rise, 1.0)
    log_needed = log_labels[previous] + fraction * (log_labels[first] - log_labels[previous])
    return np.where(reached.any(axis=1), np.exp(log_needed), np.inf)


def _count(labels: float) -> int | str:
    return NOT_WITHIN if math.isinf(labels) else math.ceil(labels - 1e-9)


@dataclass(frozen=True)
class _Ensemble:
    """Fits of the kept laws to the observed curve (row 0) and its bootstrap resamples (rows 1:)."""

    laws: tuple[FittedLaw, ...]
    kept: list[tuple[_Law, tuple[np.ndarray, ...]]]
    scale: float

    def curves(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ensemble's point curve [len(labels)] and the pooled bootstrap curves [R * laws, len(labels)]."""
        x = labels / self.scale
        predictions = [_predict(law, *fit, x) for law, fit in self.kept]
        point = np.mean([p[0] for p in predictions], axis=0)
        return point, np.concatenate([p[1:] for p in predictions])


def _ensemble(labels: np.ndarray, curves: np.ndarray, noise: np.ndarray) -> tuple[_Ensemble, list[str]]:
    """Fit every law with no more parameters than points to every row of `curves` [R, P] (row 0 the
    observed curve); keep those consistent with the points' `noise` (standard errors [P]). Also
    returns a warning per dropped law."""
    scale = labels[0]
    x = labels / scale
    fits = {law.name: _fit(law, x, curves) for law in LAWS if len(labels) >= law.n_parameters}
    # The misfit of each law's fit to the observed curve, against the points' noise: chi-square on
    # P - k degrees of freedom (at least 1: a law as flexible as the points can still miss them
    # under its constraints).
    misfit = {}
    for law in LAWS:
        if law.name in fits:
            alpha, beta, index = fits[law.name]
            residuals = (curves[0] - _predict(law, alpha[:1], beta[:1], index[:1], x)[0]) / noise
            chi_square = float(np.sum(residuals**2))
            misfit[law.name] = (chi_square, float(scipy_stats.chi2.sf(chi_square, max(len(labels) - law.n_parameters, 1))))
    fitting = [name for name, (_, p) in misfit.items() if p >= DROP_P]
    notes = {law.name: f"not fitted: its {law.n_parameters} parameters need at least {law.n_parameters} points"
             for law in LAWS if law.name not in fits}
    if fitting:  # when every law misses, none is better founded than another: all stay
        notes |= {name: f"dropped: it misses the points far beyond their noise (chi-square {chi_square:.1f}, "
                        f"p = {p:.1g}) while {' and '.join(fitting)} fit{'s' if len(fitting) == 1 else ''} within it"
                  for name, (chi_square, p) in misfit.items() if p < DROP_P}
    kept = [(law, fits[law.name]) for law in LAWS if law.name not in notes]
    laws = tuple(
        FittedLaw(
            name=law.name,
            formula=law.formula,
            parameters=law.parameters(float(fits[law.name][0][0]), float(fits[law.name][1][0]),
                                      int(fits[law.name][2][0]), float(scale)) if law.name in fits else {},
            weight=0.0 if law.name in notes else 1 / len(kept),
            note=notes.get(law.name),
        )
        for law in LAWS
    )
    return _Ensemble(laws, kept, float(scale)), [f"Law {name} {notes[name]}." for name in misfit if name in notes]


def _curve_warnings(labels: np.ndarray, matrices: list[np.ndarray]) -> list[str]:
    """Sentences for an ill-behaved curve: too few points, drops, no rise (paired tests on the shared items)."""
    accuracy = [float(m.mean()) for m in matrices]
    points = ", ".join(f"n = {n:g}" for n in labels)
    warnings = []
    if len(labels) < MIN_RELIABLE_POINTS:
        warnings.append(f"Only {len(labels)} learning-curve points ({points}): a forecast from fewer than "
                        f"{MIN_RELIABLE_POINTS} points is unreliable (laws fitted on little data misestimate the labels "
                        "needed) and cannot be backtested.")
    # Non-monotone: a point significantly below the best earlier point, by the paired test on the shared items.
    for j in range(1, len(labels)):
        i = int(np.argmax(accuracy[:j]))
        if accuracy[j] < accuracy[i]:
            test = stats.paired_accuracy_test(matrices[j], matrices[i], level=TEST_LEVEL, resamples=TEST_RESAMPLES)
            if test.significant:
                warnings.append(
                    f"Not monotone: accuracy falls from {accuracy[i]:.1%} at n = {labels[i]:g} to {accuracy[j]:.1%} at "
                    f"n = {labels[j]:g}, beyond noise (paired test p = {test.p_value:.2g}); a saturating law cannot "
                    "follow a drop, so the forecast is doubtful.")
    if len(labels) >= 2:
        test = stats.paired_accuracy_test(matrices[-1], matrices[0], level=TEST_LEVEL, resamples=TEST_RESAMPLES)
        if not (test.significant and test.difference > 0):
            warnings.append(
                f"Flat: accuracy goes from {accuracy[0]:.1%} at n = {labels[0]:g} to {accuracy[-1]:.1%} at "
                f"n = {labels[-1]:g}, no rise beyond noise (paired test p = {test.p_value:.2g}): more labels of "
                "the same kind are unlikely to help, whatever the laws say.")
    return warnings


def forecast_labels(
    points: Sequence[tuple[float, ArrayLike]],
    target: float | None,
    *,
    level: float = 0.90,
    resamples: int = 200,
    seed: int = 0,
) -> LabelForecast:
    """Forecast fine-tuning accuracy at 2x and 4x the labels in hand, and the labels needed to reach
    `target` (accuracy in [0, 1]; None: not asked), from the learning curve's points.

    points: (n labelled training examples, outcome matrix `[n_seeds, n_items]` of per-item correctness
    in [0, 1]) per curve point, every matrix on the same test items in the same column order. Points
    with n == 0 (zero-shot) are ignored by the fit. level: the band's coverage; resamples: bootstrap
    resamples (each refits every law); seed: the bootstrap's random seed (same inputs, same forecast).

    Never raises on an ill-behaved curve (it warns); raises StatsError on inputs that cannot be read
    as a curve: n < 0, a repeated n, values outside [0, 1], points on different numbers of items.
    """
    stats._check_level(level)
    if target is not None and not 0 <= target <= 1:
        raise StatsError(f"target = {target!r}: expected an accuracy in [0, 1]")
    if resamples < 1:
        raise StatsError(f"resamples = {resamples!r}: expected at least 1")
    curve = _validated(points)
    labels = np.array([n for n, _ in curve])
    matrices = [matrix for _, matrix in curve]
    observed = tuple((float(n), float(m.mean())) for n, m in curve)
    warnings = _curve_warnings(labels, matrices)
    method = (f"Equal-weight ensemble of saturating laws in labels n ({'; '.join(f'{law.name} {law.formula}' for law in LAWS)}), "
              "each a constrained least-squares fit (non-decreasing, asymptote in [0, 1]); a law missing the points "
              f"far beyond their noise is dropped; {100 * level:g}% band: percentiles of {resamples} bootstrap refits "
              "(test items resampled jointly for every point, seed rows within each point) pooled over the laws, "
              "so that their disagreement widens it; points at n = 0 (zero-shot) are not fitted.")
    if len(labels) < 3:
        warnings.append(f"No forecast: {len(labels)} learning-curve point(s) with n > 0; the laws need at least 3.")
        return LabelForecast(observed, (), (), None, None, (), tuple(warnings), level, method)

    rng = np.random.default_rng(seed)
    accuracy = np.array([value for _, value in observed])
    curves = np.vstack([accuracy, _bootstrap(matrices, resamples, rng)])
    # The points' standard errors, floored at half an item so that a constant point keeps some noise.
    noise = np.maximum(curves[1:].std(axis=0), 0.5 / matrices[0].shape[1])
    ensemble, law_warnings = _ensemble(labels, curves, noise)
    tail = 100 * (1 - level) / 2

    def band(at: np.ndarray) -> tuple[Prediction, ...]:
        point, pooled = ensemble.curves(at)
        low, high = np.percentile(pooled, [tail, 100 - tail], axis=0)
        return tuple(Prediction(float(n), float(v), float(lo), float(hi)) for n, v, lo, hi in zip(at, point, low, high))

    largest = labels[-1]
    needed = None
    if target is not None:
        grid = np.geomspace(labels[0], HORIZON * largest, SOLVE_POINTS)
        point, pooled = ensemble.curves(grid)
        value = _labels_reaching(point[None, :], grid, target)[0]
        # Percentiles of the labels needed; inf (not reached) sorts last, so a bound past it reads NOT_WITHIN.
        low, high = np.percentile(_labels_reaching(pooled, grid, target), [tail, 100 - tail], method="inverted_cdf")
        needed = LabelsToTarget(float(target), _count(value), _count(low), _count(high))
        if point[0] >= target:
            warnings.append(f"The fitted curve meets the target {target:.1%} already at the smallest point, n = "
                            f"{labels[0]:g}: the labels needed are at most {labels[0]:g}; how many fewer would do is "
                            "not measured.")

    backtest = None
    if len(labels) >= MIN_RELIABLE_POINTS:
        held_out, _ = _ensemble(labels[:-1], curves[:, :-1], noise[:-1])
        point, pooled = held_out.curves(labels[-1:])
        low, high = np.percentile(pooled[:, 0], [tail, 100 - tail])
        backtest = Backtest(float(largest), float(accuracy[-1]), float(point[0]), float(low), float(high),
                            float(abs(point[0] - accuracy[-1])))

    return LabelForecast(
        observed=observed,
        laws=ensemble.laws,
        predictions=band(np.array([m * largest for m in MULTIPLES], dtype=float)),
        labels_to_target=needed,
        backtest=backtest,
        band=band(np.geomspace(labels[0], MULTIPLES[-1] * largest, BAND_POINTS)),
        warnings=tuple(warnings + law_warnings),
        level=level,
        method=method,
    )
