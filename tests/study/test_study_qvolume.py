"""Q against data volume on the tiny tokenizer and real HH-RLHF pairs, with made-up reply
distributions (the analysis is pure given them)."""

from __future__ import annotations

import pytest
import torch

from deft_plugin.data.encoding import encode_rows
from deft_plugin.data.parsing import parse_rows
from deft_study.qvolume import q_volume, top_pairs

from builders import SEQUENCE_LEN, hh_rows


@pytest.fixture(scope="module")
def usable(tiny_tokenizer):
    rows = parse_rows(hh_rows(64), "hh_rlhf", "chat_template").rows
    return encode_rows(rows, tiny_tokenizer, SEQUENCE_LEN)[0]


def test_top_pairs_by_hand():
    dists = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]], [[0.5, 0.5], [0.5, 0.5]]])
    assert top_pairs(dists, torch.tensor([1.0, -1.0]), [10, 11, 12], ratio=0.3) == {10}
    assert top_pairs(dists, torch.tensor([-1.0, 1.0]), [10, 11, 12], ratio=0.3) == {11}


def test_volume_runs_and_the_full_pool_agrees_with_itself(usable, tiny_tokenizer):
    torch.manual_seed(0)
    dists = {r.index: torch.softmax(torch.randn(2, len(tiny_tokenizer)) * 3, -1) for r in usable}
    out = q_volume(usable, dists, tiny_tokenizer, [0.25, 1.0], draws=3, ratio=0.25, seed=0)
    assert len(out["runs"]) == 6 and out["pool_pairs"] == len(usable)
    full = [r for r in out["runs"] if r["fraction"] == 1.0]
    assert all(r["cosine"] == pytest.approx(1.0) and r["jaccard"] == 1.0 and r["kept_from_own_pairs"] == 1.0
               for r in full)
    quarter = [r for r in out["runs"] if r["fraction"] == 0.25]
    assert all(r["pairs"] == -(-len(usable) // 4) and 0 < r["cosine"] < 1 and 0 <= r["jaccard"] <= 1 for r in quarter)
    assert len({r["cosine"] for r in quarter}) == 3  # three different draws
    assert out["summary"]["0.25"]["cosine"]["n"] == 3
    again = q_volume(usable, dists, tiny_tokenizer, [0.25], draws=3, ratio=0.25, seed=0)
    assert again["runs"] == quarter  # seeded
