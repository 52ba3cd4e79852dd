"""Choosing the pairs to keep (keep_count, select_top) and the DEFT-DPO loss term."""

import math

import pytest
import torch

from deft_plugin.core.selection import keep_count, select_bottom, select_random, select_top

# ----------------------------------------------------------------------------- keep_count


@pytest.mark.parametrize("n, ratio, expected", [
    (100, 0.05, 5),
    (101, 0.05, 6),  # ceil(5.05)
    (2312, 0.05, 116),  # ceil(115.6)
    (10, 0.05, 1),  # ceil(0.5)
    (3, 0.01, 1),  # at least one
    (100, 0.07, 7),  # 0.07 * 100 = 7.000000000000001 in floating point: still 7
    (30, 0.1, 3),  # 0.1 * 30 = 3.0000000000000004
    (7, 1.0, 7),
    (7, 0.5, 4),
    (1, 0.05, 1),
])
def test_keep_count_ratio_is_ceiling(n, ratio, expected):
    assert keep_count(n, ratio=ratio) == expected


def test_keep_count_count_wins_and_is_capped():
    assert keep_count(100, count=7) == 7
    assert keep_count(100, ratio=0.5, count=7) == 7  # an explicit count wins over the ratio
    assert keep_count(5, count=7) == 5
    assert keep_count(5, count=1) == 1


def test_keep_count_empty_dataset():
    assert keep_count(0, ratio=0.05) == 0
    assert keep_count(0, count=3) == 0
    assert select_top([], ratio=0.5) == []


def test_keep_count_errors():
    with pytest.raises(ValueError, match="deft_filter_ratio or deft_filter_count"):
        keep_count(10)
    with pytest.raises(ValueError, match="deft_filter_count"):
        keep_count(10, count=0)
    with pytest.raises(ValueError, match="deft_filter_count"):
        keep_count(10, count=-1)  # would otherwise keep all but one
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="deft_filter_ratio"):
            keep_count(10, ratio=bad)


# ----------------------------------------------------------------------------- select_top


def test_select_top_result_in_dataset_order():
    scores = [0.1, 0.9, -0.3, 0.5, 0.7, 0.2]
    assert select_top(scores, count=3) == [1, 3, 4]  # 0.9, 0.7, 0.5, returned by index
    assert select_top(scores, ratio=0.5) == [1, 3, 4]
    assert select_top(scores, count=1) == [1]
    assert select_top(scores, ratio=1.0) == list(range(6))


def test_select_top_ties_broken_by_dataset_order():
    scores = [0.5, 1.0, 0.5, 0.5, 1.0, -2.0]
    assert select_top(scores, count=1) == [1]
    assert select_top(scores, count=2) == [1, 4]
    assert select_top(scores, count=3) == [0, 1, 4]  # first of the three 0.5s
    assert select_top(scores, count=4) == [0, 1, 2, 4]
    assert select_top([0.0] * 10, count=3) == [0, 1, 2]


def test_select_top_infinities_and_negatives():
    scores = [-1.0, float("-inf"), -0.5, float("inf")]
    assert select_top(scores, count=2) == [2, 3]
    assert select_top(scores, count=3) == [0, 2, 3]


def test_select_top_nan_raises_with_index():
    with pytest.raises(ValueError, match="pair 2 is NaN"):
        select_top([0.1, 0.2, float("nan"), 0.3], count=1)
    with pytest.raises(ValueError, match="NaN"):
        select_top([math.nan], ratio=1.0)


def test_select_top_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    scores = (torch.randint(0, 8, (200,), generator=g).float() / 4).tolist()  # many ties
    for k in (1, 7, 50, 200):
        kept = select_top(scores, count=k)
        assert kept == sorted(kept) and len(kept) == k
        threshold = sorted(scores, reverse=True)[k - 1]
        assert all(scores[i] >= threshold for i in kept)
        assert all(scores[i] <= threshold for i in range(200) if i not in kept)
        # among pairs at the threshold, the earliest are kept
        at = [i for i in range(200) if scores[i] == threshold]
        kept_at = [i for i in kept if scores[i] == threshold]
        assert kept_at == at[: len(kept_at)]


def test_select_bottom_is_the_top_of_the_negated_scores():
    scores = [0.5, -1.0, 0.2, -1.0, 3.0]
    assert select_bottom(scores, count=2) == [1, 3]
    assert select_bottom(scores, count=3) == [1, 2, 3]
    assert select_bottom([1.0, 1.0, 1.0], count=1) == [0]  # ties by dataset order, like the top


def test_select_random_is_a_seeded_uniform_subset():
    picks = [select_random(100, ratio=0.05, seed=s) for s in range(200)]
    assert all(len(p) == 5 and p == sorted(p) and len(set(p)) == 5 and 0 <= p[0] and p[-1] < 100 for p in picks)
    assert select_random(100, ratio=0.05, seed=7) == picks[7]  # the same seed, the same subset
    assert len({tuple(p) for p in picks}) == 200
    counts = [sum(i in p for p in picks) for i in range(100)]  # each index drawn about 200 * 5 / 100 = 10 times
    assert max(counts) < 30 and sum(c == 0 for c in counts) < 5
    assert select_random(10, count=20, seed=0) == list(range(10))

