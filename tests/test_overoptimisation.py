"""The over-optimisation curve's arithmetic (pipeline/judge/overoptimisation.py): Gao et al.'s two forms fitted by
least squares recover known coefficients, the peak lies where the derivative is zero, and the keep rule."""

import math

import pytest

from pipeline.judge.overoptimisation import better, curve_fits, distance, fit


@pytest.mark.parametrize("form, alpha, beta", [("rl", 0.05, 0.03), ("bon", 0.08, 0.02), ("rl", 0.4, -0.1)])
def test_a_fit_recovers_the_coefficients_that_made_the_points(form, alpha, beta):
    ds = [0.0, 0.3, 0.6, 0.9, 1.2, 1.5, 1.8, 2.4]
    gains = [0.0 if d == 0 else d * (alpha - beta * (math.log(d) if form == "rl" else d)) for d in ds]
    f = fit(ds, gains, form)
    assert f.alpha == pytest.approx(alpha, abs=1e-9) and f.beta == pytest.approx(beta, abs=1e-9)
    assert f.points == 7 and f.rmse == pytest.approx(0.0, abs=1e-12)  # d = 0 carries nothing and is left out


def test_a_noisy_fit_stays_near_the_truth():
    import random

    rng = random.Random(0)
    ds = [0.1 * i for i in range(1, 41)]
    gains = [d * (0.05 - 0.03 * math.log(d)) + rng.gauss(0, 0.002) for d in ds]
    f = fit(ds, gains, "rl")
    assert f.alpha == pytest.approx(0.05, abs=0.003) and f.beta == pytest.approx(0.03, abs=0.003)
    assert 0.001 < f.rmse < 0.003


def test_the_rl_peak_is_where_the_gain_stops_rising():
    f = fit([0.5, 1.0, 2.0, 3.0], [d * (0.05 - 0.03 * math.log(d)) for d in (0.5, 1.0, 2.0, 3.0)], "rl")
    d, top = f.peak()
    assert d == pytest.approx(math.exp(0.05 / 0.03 - 1))  # d(alpha - beta log d)' = alpha - beta(log d + 1) = 0
    assert top == pytest.approx(f.gain(d)) and top > f.gain(d * 0.9) and top > f.gain(d * 1.1)


def test_the_best_of_n_peak_is_at_alpha_over_two_beta():
    f = fit([1.0, 2.0, 3.0], [d * (0.08 - 0.02 * d) for d in (1.0, 2.0, 3.0)], "bon")
    assert f.peak() == pytest.approx((2.0, 0.08))
    assert f.as_dict()["peak_kl"] == pytest.approx(4.0)


def test_a_score_that_keeps_rising_has_no_peak():
    rising = fit([0.5, 1.0, 1.5, 2.0], [0.1 * d * d for d in (0.5, 1.0, 1.5, 2.0)], "bon")
    assert rising.beta < 0 and rising.peak() is None and rising.as_dict()["peak_d"] is None


def test_too_few_points_or_one_distance_give_no_fit():
    assert fit([0.0, 1.0], [0.0, 0.2]) is None
    assert fit([1.0, 1.0, 1.0], [0.1, 0.2, 0.3]) is None
    with pytest.raises(ValueError):
        fit([1.0, 2.0], [0.1, 0.2], "linear")


def test_curve_fits_measure_gains_from_the_first_point_and_skip_a_missing_score():
    points = [{"kl_k1": 0.0, "proxy": 1.0, "gold": 0.1}]
    points += [{"kl_k1": d * d, "proxy": 1.0 + 0.5 * d, "gold": 0.1 + d * (0.05 - 0.03 * math.log(d))}
               for d in (0.5, 1.0, 1.5, 2.0)]
    fits = curve_fits(points)
    assert fits["gold"]["rl"]["alpha"] == pytest.approx(0.05) and fits["gold"]["rl"]["beta"] == pytest.approx(0.03)
    assert fits["proxy"]["bon"]["peak_d"] is None  # a straight rise never turns down
    assert "gold" not in curve_fits([{**p, "gold": None} for p in points])


def test_a_negative_kl_estimate_is_distance_zero():
    assert distance(-0.01) == 0.0 and distance(4.0) == 2.0


def test_the_best_point_is_the_higher_score_and_a_tie_goes_to_the_lower_kl():
    assert better(0.1, 5.0, None, None)
    assert better(0.12, 5.0, 0.1, 1.0) and not better(0.09, 0.0, 0.1, 1.0)
    assert better(0.1, 0.5, 0.1, 1.0) and not better(0.1, 1.5, 0.1, 1.0)
