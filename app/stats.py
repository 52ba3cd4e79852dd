"""Statistics of pairwise votes, as pure functions.

An outcome is from the first model's side: 1 (it won), 0 (it lost), 0.5 (tie; "both bad"
counts as a tie too)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Sequence

import numpy as np
from scipy.stats import bootstrap
from sklearn.metrics import cohen_kappa_score


def win_tie_loss(outcomes: Sequence[float]) -> dict:
    """Counts and shares of wins, ties and losses, and the win rate counting a tie as half."""
    n = len(outcomes)
    c = Counter(outcomes)
    win, tie, loss = c[1], c[0.5], c[0]
    if win + tie + loss != n:
        raise ValueError(f"outcomes must be 1, 0.5 or 0; got {sorted(set(outcomes) - {0, 0.5, 1})}")
    share = (lambda k: k / n) if n else (lambda k: float("nan"))
    return {"n": n, "win": win, "tie": tie, "loss": loss, "win_share": share(win), "tie_share": share(tie),
            "loss_share": share(loss), "win_rate": share(win + 0.5 * tie)}


def bootstrap_interval(outcomes: Sequence[float], statistic=np.mean, rounds: int = 2000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of statistic(outcomes), resampling votes with replacement
    (scipy.stats.bootstrap)."""
    x = np.asarray(outcomes, dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan")
    if np.all(x == x[0]):  # every resample equals the sample; scipy declines such data
        value = float(statistic(x))
        return value, value
    result = bootstrap((x,), statistic, n_resamples=rounds, confidence_level=level, method="percentile",
                       rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def bradley_terry(comparisons: Sequence[tuple[str, str, float]], iterations: int = 1000,
                  tol: float = 1e-10) -> dict[str, float]:
    """Bradley-Terry strengths p (P(i beats j) = p_i / (p_i + p_j)) by the MM algorithm (Hunter
    2004), ties as half a win for each side, normalised to a geometric mean of 1. A small prior
    (one tie against every other model) keeps strengths finite when a model never loses."""
    models = sorted({m for a, b, _ in comparisons for m in (a, b)})
    index = {m: i for i, m in enumerate(models)}
    k = len(models)
    wins = np.zeros((k, k))
    for a, b, outcome in comparisons:
        wins[index[a], index[b]] += outcome
        wins[index[b], index[a]] += 1 - outcome
    wins += 0.5 * (1 - np.eye(k)) / max(1, k - 1)  # the prior
    games = wins + wins.T
    p = np.ones(k)
    for _ in range(iterations):
        new = wins.sum(1) / (games / (p[:, None] + p[None, :])).sum(1)
        new /= math.exp(np.log(new).mean())
        if np.max(np.abs(new - p)) < tol:
            p = new
            break
        p = new
    return {m: float(p[index[m]]) for m in models}


def bradley_terry_intervals(comparisons: Sequence[tuple[str, str, float]], rounds: int = 200, level: float = 0.95,
                            seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of the Bradley-Terry strengths (votes resampled)."""
    rng = np.random.default_rng(seed)
    samples = defaultdict(list)
    for _ in range(rounds):
        pick = rng.integers(0, len(comparisons), len(comparisons))
        for m, v in bradley_terry([comparisons[i] for i in pick]).items():
            samples[m].append(v)
    alpha = (1 - level) / 2
    return {m: (float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))) for m, v in samples.items()}


def left_win_rate(left_won: Sequence[bool]) -> float:
    """Position bias: the share of decided votes (not ties) won by the answer shown on the left."""
    return sum(left_won) / len(left_won) if left_won else float("nan")


def cohen_kappa(labels_a: Sequence, labels_b: Sequence) -> float:
    """Cohen's kappa of two annotators' labels on the same items (scikit-learn's)."""
    if len(labels_a) != len(labels_b) or not labels_a:
        raise ValueError("Cohen's kappa needs two equally long, non-empty label lists")
    if len(set(labels_a) | set(labels_b)) == 1:  # one label throughout: full agreement, no chance term to remove
        return 1.0
    return float(cohen_kappa_score(labels_a, labels_b))


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa from an items x categories table of how many annotators chose each
    category; every item must have the same number of annotators."""
    table = np.asarray(counts, dtype=float)
    raters = table.sum(1)
    if len(set(raters)) != 1 or raters[0] < 2:
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of annotators on every item")
    r = raters[0]
    p_item = ((table ** 2).sum(1) - r) / (r * (r - 1))
    p_cat = table.sum(0) / table.sum()
    p_bar, p_e = p_item.mean(), (p_cat ** 2).sum()
    return 1.0 if p_e == 1 else float((p_bar - p_e) / (1 - p_e))
