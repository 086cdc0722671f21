"""The label forecast (tuneorprompt.forecast): its band covers the truth on synthetic curves from known
saturating laws, its backtest and labels-to-target agree with a known curve, ill-behaved curves are
named in warnings, and inputs that are not a curve are refused with the point named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tuneorprompt.forecast import NOT_WITHIN, forecast_labels
from tuneorprompt.stats import StatsError

LABELS = (25, 50, 100, 200, 400)


def nested(accuracy: float, items: int = 1000, first: int = 0) -> np.ndarray:
    """One seed's outcomes with exactly this accuracy, the items from `first` on right (wrapping
    round): a curve of such points with first = 0 has no noise (an item once learnt stays learnt)."""
    return np.roll(np.arange(items) < round(accuracy * items), first).astype(float)[None, :]


def pow3(n: float) -> float:
    return 0.9 - 0.6 * (n / 25) ** -0.5


# ---- coverage on synthetic curves -----------------------------------------------------------------


def true_curve(rng: np.random.Generator, family: int):
    """A saturating law from ~0.25-0.4 at n = 25 towards 0.6-0.9: pow3, pow4 or MMF by `family`."""
    top, start = rng.uniform(0.6, 0.9), rng.uniform(0.25, 0.4)
    if family == 0:
        c = rng.uniform(0.3, 1.0)
        return lambda n: top - (top - start) * (n / 25) ** -c
    if family == 1:
        c, d = rng.uniform(0.3, 1.0), rng.uniform(0, 100)
        return lambda n: top - (top - start) * ((n + d) / (25 + d)) ** -c
    half, d = np.exp(rng.uniform(np.log(50), np.log(400))), rng.uniform(0.7, 2.0)

    def saturating_share(n):
        return 1 / (1 + (half / n) ** d)

    a = (start - top * saturating_share(25)) / (1 - saturating_share(25))
    return lambda n: a + (top - a) * saturating_share(n)


def coverage_at_4x(draws: int, seed: int) -> float:
    """Share of `draws` synthetic curves (5 points, binomial noise on 200 test items, one seed) whose
    90% band at 4x the largest n covers the law's true accuracy there."""
    rng = np.random.default_rng(seed)
    covered = 0
    for draw in range(draws):
        law = true_curve(rng, draw % 3)
        points = [(n, (rng.random((1, 200)) < law(n)).astype(float)) for n in LABELS]
        at_4x = forecast_labels(points, None).predictions[-1]
        assert at_4x.labels == 1600
        covered += at_4x.low <= law(at_4x.labels) <= at_4x.high
    return covered / draws


def test_band_covers_the_true_accuracy_at_4x_the_labels():
    # A quick look (40 draws): at 90% nominal, 30 or fewer covered has probability < 0.1%.
    assert coverage_at_4x(40, seed=11) >= 0.75


@pytest.mark.slow
def test_band_covers_the_true_accuracy_at_4x_the_labels_in_500_draws():
    assert coverage_at_4x(500, seed=2026) >= 0.85


# ---- backtest and labels to target on a known curve -----------------------------------------------


def test_backtest_predicts_the_last_point_of_a_known_curve():
    labels = (25, 50, 100, 200, 400, 800)
    forecast = forecast_labels([(n, nested(pow3(n))) for n in labels], None)
    backtest = forecast.backtest
    assert backtest.labels == 800
    assert backtest.observed == pytest.approx(pow3(800), abs=1e-3)
    assert backtest.error == pytest.approx(abs(backtest.predicted - backtest.observed))
    assert backtest.error < 0.015
    assert backtest.low <= backtest.observed <= backtest.high


def test_no_backtest_with_three_points():
    forecast = forecast_labels([(n, nested(pow3(n))) for n in (25, 50, 100)], None)
    assert forecast.backtest is None
    assert forecast.predictions  # still a forecast, flagged unreliable


@pytest.mark.parametrize(
    "law",
    [
        lambda n: 0.95 - 0.65 * (n / 25) ** -0.3,  # pow3
        lambda n: 0.9 - 0.6 * ((n + 50) / 75) ** -0.6,  # pow4
        lambda n: 0.2 + 0.7 / (1 + (200 / n) ** 1.0),  # MMF
    ],
    ids=["pow3", "pow4", "mmf"],
)
def test_labels_to_a_target_the_law_reaches_by_3x(law):
    # Where a curve flattens, a point of accuracy is a doubling of labels: the ensemble, whose laws
    # disagree by a few points at 3x, finds the labels to within half as many again, and its band
    # holds the true count. (Near saturation it does worse: on pow3 0.9 - 0.6 (n/25)^-0.5 it says
    # 2410 for 1200, the band 861 to beyond 10x.)
    target = law(3 * 400)
    forecast = forecast_labels([(n, nested(law(n))) for n in LABELS], target)
    needed = forecast.labels_to_target
    assert needed.target == target
    assert 1200 / 1.5 <= needed.value <= 1200 * 1.5
    assert needed.low <= 1200 and (needed.high == NOT_WITHIN or needed.high >= 1200)


def test_a_target_above_the_asymptote_is_not_within_10x():
    forecast = forecast_labels([(n, nested(pow3(n))) for n in LABELS], 0.95)
    needed = forecast.labels_to_target
    assert needed.value == NOT_WITHIN == "not within 10x"
    assert needed.high == NOT_WITHIN
    assert forecast.to_dict()["labels_to_target"]["value"] == "not within 10x"


def test_predictions_at_2x_and_4x_follow_a_known_curve():
    forecast = forecast_labels([(n, nested(pow3(n))) for n in LABELS], None)
    assert [p.labels for p in forecast.predictions] == [800, 1600]
    for prediction in forecast.predictions:
        # The laws part a little beyond the points (MMF saturates earlier than pow3): 2 points at 4x.
        assert prediction.value == pytest.approx(pow3(prediction.labels), abs=0.03)
        assert prediction.low <= pow3(prediction.labels) <= prediction.high
    assert forecast.band[0].labels == 25 and forecast.band[-1].labels == pytest.approx(1600)
    assert forecast.warnings == ()


def test_a_target_met_at_the_first_point_is_an_upper_bound():
    forecast = forecast_labels([(n, nested(pow3(n))) for n in LABELS], 0.25)
    assert forecast.labels_to_target.value == 25
    (met,) = [w for w in forecast.warnings if "already at the smallest point" in w]
    assert "at most 25" in met


# ---- warnings -------------------------------------------------------------------------------------


def test_a_drop_beyond_noise_is_named_as_not_monotone():
    accuracies = (0.4, 0.55, 0.7, 0.5, 0.72)  # n = 200 is 20 points below n = 100 on 1000 items
    forecast = forecast_labels([(n, nested(a)) for n, a in zip(LABELS, accuracies)], None)
    drops = [w for w in forecast.warnings if w.startswith("Not monotone")]
    assert len(drops) == 1
    assert "n = 100" in drops[0] and "n = 200" in drops[0]


def test_a_drop_within_noise_is_not_a_warning():
    # n = 200 is 1 point below n = 100 and gets other items right: 90 items gained, 100 lost.
    points = [(n, nested(a)) for n, a in zip(LABELS, (0.4, 0.55, 0.7, 0.69, 0.75))]
    points[3] = (200, nested(0.69, first=100))
    forecast = forecast_labels(points, None)
    assert forecast.warnings == ()


def test_a_flat_curve_is_named():
    rng = np.random.default_rng(0)
    points = [(n, (rng.random((3, 200)) < 0.5).astype(float)) for n in LABELS]
    forecast = forecast_labels(points, 0.8)
    flat = [w for w in forecast.warnings if w.startswith("Flat")]
    assert len(flat) == 1 and "n = 25" in flat[0] and "n = 400" in flat[0]
    assert forecast.labels_to_target.value == NOT_WITHIN


def test_three_points_are_named_unreliable():
    forecast = forecast_labels([(n, nested(pow3(n))) for n in (25, 50, 100)], None)
    (few,) = [w for w in forecast.warnings if w.startswith("Only 3")]
    assert "n = 25, n = 50, n = 100" in few and "unreliable" in few


def test_a_law_that_cannot_follow_the_curve_is_dropped():
    # An S-shaped curve in log n (slow start, then a rise that saturates): pow3 is concave in log n
    # from its first point and misses it far beyond 1000 items' noise; pow4 and MMF follow it.
    def s_curve(n):
        return 0.3 + 0.5 / (1 + (150 / n) ** 1.5)

    forecast = forecast_labels([(n, nested(s_curve(n))) for n in LABELS], None)
    weights = {law.name: law.weight for law in forecast.laws}
    assert weights == {"pow3": 0.0, "pow4": 0.5, "mmf4": 0.5}
    (pow3_law,) = [law for law in forecast.laws if law.name == "pow3"]
    assert pow3_law.note.startswith("dropped")
    assert any(w.startswith("Law pow3 dropped") for w in forecast.warnings)
    assert forecast.predictions[-1].value == pytest.approx(s_curve(1600), abs=0.03)


# ---- inputs ---------------------------------------------------------------------------------------


def test_zero_shot_points_are_ignored_by_the_fit():
    points = [(n, nested(pow3(n))) for n in LABELS]
    with_zero_shot = forecast_labels([(0, nested(0.1)), *points], 0.8)
    assert with_zero_shot == forecast_labels(points, 0.8)
    assert [n for n, _ in with_zero_shot.observed] == list(LABELS)


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ([(25, nested(0.3)), (-50, nested(0.4))], r"points\[1\] \(n = -50\): expected a label count"),
        ([(25, nested(0.3)), (50, nested(0.4)), (25.0, nested(0.5))], r"points\[2\] \(n = 25\): n = 25 appears twice"),
        ([(25, nested(0.3)), (50, nested(0.4, items=999))], r"points\[1\] \(n = 50\) has 999 test items"),
        ([(25, nested(0.3)), (50, 2 * nested(0.4))], r"points\[1\] \(n = 50\)\[seed row 0, item 0\] = 2.0"),
    ],
)
def test_inputs_that_are_not_a_curve_name_the_point(points, message):
    with pytest.raises(StatsError, match=message):
        forecast_labels(points, None)


def test_too_few_points_give_a_warning_not_an_error():
    forecast = forecast_labels([(25, nested(0.3)), (50, nested(0.4))], 0.5)
    assert forecast.predictions == () and forecast.labels_to_target is None
    assert any(w.startswith("No forecast") for w in forecast.warnings)


def test_to_dict_is_plain_json():
    forecast = forecast_labels([(n, nested(pow3(n))) for n in LABELS], 0.8)
    result = forecast.to_dict()
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    assert set(result) >= {"observed", "laws", "predictions", "labels_to_target", "backtest", "band", "warnings",
                           "method"}
    assert result["observed"][0] == [25.0, pytest.approx(0.3)]
    assert "90% band" in result["method"]
