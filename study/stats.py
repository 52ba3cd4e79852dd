"""The study's statistics, as pure functions: per-pair metrics from the measured values, the
mean and 95% interval over seeds, and the paired bootstrap of a difference between two arms
over held-out pairs and seeds."""

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


def paired_bootstrap(a: np.ndarray, b: np.ndarray, rounds: int = 2000, level: float = 0.95,
                     seed: int = 0) -> dict:
    """Difference of means between arm A and arm B, a and b [seeds, pairs] per-pair values on the
    same held-out pairs: each round resamples the pairs (shared by both arms) and, independently,
    each arm's seeds. Returns the observed difference, its interval and whether 0 is inside it."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    rng = np.random.default_rng(seed)
    n = a.shape[1]
    diffs = np.empty(rounds)
    for i in range(rounds):
        pairs = rng.integers(0, n, n)
        sa, sb = rng.integers(0, len(a), len(a)), rng.integers(0, len(b), len(b))
        diffs[i] = a[np.ix_(sa, pairs)].mean() - b[np.ix_(sb, pairs)].mean()
    alpha = (1 - level) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return {"difference": float(a.mean() - b.mean()), "low": float(low), "high": float(high),
            "inside_noise": bool(low <= 0 <= high)}
