"""The judging app's statistics against hand-computed and textbook values."""

from __future__ import annotations

import numpy as np
import pytest

from deft_app.stats import (
    bootstrap_interval,
    bradley_terry,
    bradley_terry_intervals,
    cohen_kappa,
    fleiss_kappa,
    left_win_rate,
    win_tie_loss,
)


def test_win_rate_with_ties_by_hand():
    r = win_tie_loss([1, 1, 0.5, 0, 1, 0.5])
    assert (r["n"], r["win"], r["tie"], r["loss"]) == (6, 3, 2, 1)
    assert r["win_rate"] == pytest.approx((3 + 0.5 * 2) / 6) and r["tie_share"] == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="1, 0.5 or 0"):
        win_tie_loss([1, 2])


def test_bootstrap_interval_covers_the_true_rate_about_95_percent():
    rng = np.random.default_rng(1)
    true_p, covered, trials = 0.6, 0, 200
    for t in range(trials):
        votes = (rng.random(150) < true_p).astype(float)
        lo, hi = bootstrap_interval(votes, rounds=400, seed=t)
        covered += lo <= true_p <= hi
    assert 0.90 <= covered / trials <= 0.99
    lo, hi = bootstrap_interval([1.0] * 10)
    assert lo == hi == 1.0


def test_bradley_terry_recovers_known_strengths():
    rng = np.random.default_rng(0)
    true = {"a": 4.0, "b": 2.0, "c": 1.0}
    comparisons = []
    for x, y in [("a", "b"), ("a", "c"), ("b", "c")] * 1000:
        comparisons.append((x, y, float(rng.random() < true[x] / (true[x] + true[y]))))
    fit = bradley_terry(comparisons)
    assert fit["a"] / fit["c"] == pytest.approx(4.0, rel=0.15) and fit["b"] / fit["c"] == pytest.approx(2.0, rel=0.15)
    assert np.prod(list(fit.values())) == pytest.approx(1.0)
    intervals = bradley_terry_intervals(comparisons[:600], rounds=100)
    assert intervals["a"][0] < fit["a"] * 1.3 and intervals["a"][0] > intervals["c"][1]


def test_bradley_terry_by_hand_for_two_models_and_an_undefeated_one():
    # two models, 3 wins to 1: MM converges to p_a / p_b = (3 + prior) / (1 + prior) with prior 0.5
    fit = bradley_terry([("a", "b", 1.0)] * 3 + [("a", "b", 0.0)])
    assert fit["a"] / fit["b"] == pytest.approx(3.5 / 1.5, rel=1e-6)
    fit = bradley_terry([("a", "b", 1.0)] * 5)  # never lost: still finite
    assert np.isfinite(fit["a"]) and fit["a"] > fit["b"]


def test_position_bias():
    assert left_win_rate([True, True, False, True]) == 0.75
    assert np.isnan(left_win_rate([]))


def test_cohen_kappa_textbook():
    # 50 items: both yes 20, A yes / B no 5, A no / B yes 10, both no 15: po 0.7, pe 0.5, kappa 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(["x", "y"], ["x", "y"]) == 1.0
    with pytest.raises(ValueError):
        cohen_kappa(["x"], [])


def test_fleiss_kappa_textbook():
    # Fleiss (1971) style example: 10 items, 14 raters, 5 categories; kappa = 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert fleiss_kappa(table) == pytest.approx(0.210, abs=0.001)
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa([[1, 1], [2, 1]])
