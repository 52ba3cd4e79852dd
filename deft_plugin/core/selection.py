"""Choosing the pairs to keep: the top of the filtering scores (DEFT), and two controls, the
bottom of the scores and a seeded random subset of the same size."""

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


def select_bottom(scores: Sequence[float], ratio: float | None = None, count: int | None = None) -> list[int]:
    """Indices of the lowest-scoring pairs (a control: what the score ranks last), ties broken
    by dataset order, returned in dataset order."""
    return select_top([-s for s in scores], ratio, count)


def select_random(n: int, ratio: float | None = None, count: int | None = None, seed: int = 0) -> list[int]:
    """keep_count(n) indices drawn uniformly without replacement by a seeded generator (the same
    seed gives the same subset on every machine), returned in dataset order."""
    return sorted(random.Random(seed).sample(range(n), keep_count(n, ratio, count)))
