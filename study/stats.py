"""The study's statistics, as pure functions: per-pair metrics from the measured values, the
mean and 95% interval over seeds, the hierarchical bootstrap of a difference between two arms
over held-out pairs and seeds (seeds paired where the arms share them), its p-values, Holm's
correction over the primary comparisons, and the smallest difference a design can detect."""

from __future__ import annotations

import numpy as np
from scipy import stats

from deft_plugin.filtering.heldout import preference_correct

# 1 win, 0 loss, 0.5 tie (an unchanged model's implicit margin): the plugin's one rule, also the demo's.
correct = preference_correct


def pair_metrics(run: dict, base: dict, beta: float) -> dict[str, np.ndarray]:
    """Per held-out pair: accuracy and margin by mean token log-probability, by DPO's implicit
    reward beta * (log-ratio of chosen - log-ratio of rejected) against the starting model, and
    the distribution reward gap R(y+) - R(y-)."""
    v = {k: np.asarray(run[k], dtype=float) for k in ("lp_chosen", "lp_rejected", "n_chosen", "n_rejected",
                                                      "r_chosen", "r_rejected")}
    mean_margin = v["lp_chosen"] / np.maximum(v["n_chosen"], 1) - v["lp_rejected"] / np.maximum(v["n_rejected"], 1)
    implicit = beta * ((v["lp_chosen"] - np.asarray(base["lp_chosen"])) -
                       (v["lp_rejected"] - np.asarray(base["lp_rejected"])))
    return {"accuracy": correct(mean_margin), "margin": mean_margin,
            "implicit_accuracy": correct(implicit), "implicit_margin": implicit,
            "reward_gap": v["r_chosen"] - v["r_rejected"]}


def mean_interval(values, level: float = 0.95) -> dict:
    """Mean over seeds with a t interval (none from a single seed)."""
    x = np.asarray(values, dtype=float)
    out = {"mean": float(x.mean()), "n": len(x), "low": None, "high": None}
    if len(x) > 1:
        half = stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
        out.update(low=float(x.mean() - half), high=float(x.mean() + half))
    return out


def bootstrap_differences(a: np.ndarray, b: np.ndarray, rounds: int = 2000, seed: int = 0,
                          paired_seeds: bool = False) -> np.ndarray:
    """Bootstrap replicates of mean(A) - mean(B), a and b [seeds, pairs] per-pair values on the same
    held-out pairs, hierarchical: each round resamples the pairs (shared by both arms) and the seeds,
    the same seeds for both arms when they are paired (arms that share their seeds: the same
    adapter initialisation and training order), each arm's own otherwise."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    if paired_seeds and len(a) != len(b):
        raise ValueError(f"paired seeds need as many seeds in both arms, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    n = a.shape[1]
    diffs = np.empty(rounds)
    for i in range(rounds):
        pairs = rng.integers(0, n, n)
        sa = rng.integers(0, len(a), len(a))
        sb = sa if paired_seeds else rng.integers(0, len(b), len(b))
        diffs[i] = a[np.ix_(sa, pairs)].mean() - b[np.ix_(sb, pairs)].mean()
    return diffs


def paired_bootstrap(a: np.ndarray, b: np.ndarray, rounds: int = 2000, level: float = 0.95,
                     seed: int = 0, paired_seeds: bool = False) -> dict:
    """Difference of means between arm A and arm B on the same held-out pairs (bootstrap_differences):
    the observed difference, its percentile interval, whether 0 is inside it, and the replicates'
    standard error."""
    diffs = bootstrap_differences(a, b, rounds, seed, paired_seeds)
    alpha = (1 - level) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return {"difference": float(np.mean(a) - np.mean(b)), "low": float(low), "high": float(high),
            "inside_noise": bool(low <= 0 <= high), "se": float(diffs.std(ddof=1)), "paired_seeds": paired_seeds}


def bootstrap_p_value(diffs: np.ndarray, test: str = "difference", margin: float = 0.0) -> float:
    """The percentile bootstrap's p-value: for `difference` two-sided, of "A equals B" (twice the
    smaller share of replicates on either side of 0); for `non_inferiority` one-sided, of "A is
    worse than B by the margin or more" (the share of replicates at or below -margin)."""
    diffs = np.asarray(diffs, dtype=float)
    if test == "non_inferiority":
        return float(np.mean(diffs <= -margin))
    if test != "difference":
        raise ValueError(f"unknown test {test!r}: difference or non_inferiority")
    return float(min(1.0, 2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0))))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the family-wise error of the primary
    comparisons stays at alpha when each is rejected at adjusted p <= alpha."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def detectable_difference(se: float, alpha: float, power: float = 0.8, sides: int = 2) -> float:
    """The smallest true difference a test at level alpha detects with the given power, for an
    estimate with standard error se (normal approximation): (z_{1 - alpha/sides} + z_power) * se."""
    return float((stats.norm.ppf(1 - alpha / sides) + stats.norm.ppf(power)) * se)


LENGTH_STRATA = ("chosen shorter", "similar length", "chosen longer")
SIMILAR = 0.1  # token counts within 10% of each other are "similar"


def length_strata(n_chosen, n_rejected) -> np.ndarray:
    """Each pair's stratum (an index into LENGTH_STRATA) by its chosen reply's token count against
    the rejected one's: shorter by more than 10%, within 10%, longer by more than 10%."""
    ratio = np.asarray(n_chosen, dtype=float) / np.maximum(np.asarray(n_rejected, dtype=float), 1)
    return np.where(ratio < 1 - SIMILAR, 0, np.where(ratio > 1 + SIMILAR, 2, 1))


def prefer_shorter(n_chosen, n_rejected) -> np.ndarray:
    """Per pair, whether the rule "prefer the shorter reply" (no model) picks the chosen one (a tie
    counts half): the floor a held-out accuracy must beat before it says more than length."""
    return correct(np.asarray(n_rejected, dtype=float) - np.asarray(n_chosen, dtype=float))


def length_residuals(scores, lengths) -> tuple[np.ndarray, float]:
    """(residuals, slope) of scores after a least-squares line on length: what a judge says of an
    answer beyond what its length predicts (a judge that rewards length alone leaves about 0)."""
    y, x = np.asarray(scores, dtype=float), np.asarray(lengths, dtype=float)
    if len(y) < 2 or np.ptp(x) == 0:
        return y - y.mean(), 0.0
    slope, intercept = np.polyfit(x, y, 1)
    return y - (slope * x + intercept), float(slope)
