"""Choosing the pairs to keep: the top of a ranking (DEFT's filtering score, or one of the
literature's baselines), its bottom, or a seeded random subset of the same size.

What pairs are ranked by (`deft_filter_by`):
- deft: DEFT's filtering score (deft_filter_score), from the distribution rewards.
- logp_margin: the starting model's mean-token log-probability of the chosen reply minus the
  rejected one's (for a ranked list: the best reply's minus the mean of the others'), from the
  same scoring pass. The top is the margin-maximisation principle of Deng et al. 2025 ("Less is
  More: Improving LLM Alignment via Preference Data Selection"), the bottom the hard pairs of Qi,
  Xu and Jin 2025 ("Difficulty-Based Preference Data Selection by DPO Implicit Reward Gap"); both
  use a DPO implicit reward gap where, before any training, this is the starting model's own
  (length-normalised) preference.
- length_ratio: the chosen reply's token count over the rejected one's (over the others' mean),
  no model at all: the length heuristic that preference data and reward models are known to
  follow (Singhal et al. 2023, "A Long Way to Go: Investigating Length Correlations in RLHF"; Zhao
  et al. 2024, "Long Is More for Alignment"). Top keeps the pairs whose chosen reply is longest
  against its rival, bottom the shortest."""

from __future__ import annotations

import math
import random
from typing import Sequence

DEFAULT_FILTER_RATIO = 0.05  # the paper's 5%


def keep_count(n: int, ratio: float | None = None, count: int | None = None) -> int:
    """How many of n pairs to keep: `count` if given, else ceil(ratio * n), at least 1 when n > 0."""
    if count is not None and count < 1:
        raise ValueError(f"deft_filter_count must be at least 1, got {count}")
    if count is None and ratio is not None and not 0 < ratio <= 1:
        raise ValueError(f"deft_filter_ratio must be in (0, 1], got {ratio}")
    if count is None and ratio is None:
        raise ValueError("give deft_filter_ratio or deft_filter_count")
    if n == 0:
        return 0
    if count is not None:
        return min(count, n)
    return min(n, max(1, math.ceil(ratio * n - 1e-9)))


def select_top(scores: Sequence[float], ratio: float | None = None, count: int | None = None) -> list[int]:
    """Indices of the highest-scoring pairs, ties broken by dataset order, returned in
    dataset order."""
    for i, s in enumerate(scores):
        if s != s:  # NaN
            raise ValueError(f"filtering score of pair {i} is NaN")
    k = keep_count(len(scores), ratio, count)
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(ranked[:k])


SELECTIONS = ("top", "random", "bottom")
RANKINGS = ("deft", "logp_margin", "length_ratio")


def logp_margin(logps: Sequence[float], lengths: Sequence[int]) -> float:
    """Mean-token log-probability of the best reply minus the mean of the others' (replies best
    first; logps summed over each reply's tokens, lengths its token counts)."""
    means = [lp / max(n, 1) for lp, n in zip(logps, lengths)]
    return means[0] - sum(means[1:]) / len(means[1:])


def length_ratio(lengths: Sequence[int]) -> float:
    """Token count of the best reply over the mean of the others' (replies best first)."""
    rest = sum(lengths[1:]) / len(lengths[1:])
    return lengths[0] / max(rest, 1e-9)


def select_bottom(scores: Sequence[float], ratio: float | None = None, count: int | None = None) -> list[int]:
    """Indices of the lowest-scoring pairs (a control: what the score ranks last), ties broken
    by dataset order, returned in dataset order."""
    return select_top([-s for s in scores], ratio, count)


def select_random(n: int, ratio: float | None = None, count: int | None = None, seed: int = 0) -> list[int]:
    """keep_count(n) indices drawn uniformly without replacement by a seeded generator (the same
    seed gives the same subset on every machine), returned in dataset order."""
    return sorted(random.Random(seed).sample(range(n), keep_count(n, ratio, count)))
