"""Held-out preference accuracy (filtering/heldout.py), the one the demo and the study share:
the tie rule on every kind of margin, the accuracy and mean margin of a tiny model against a
hand computation from its full logits, and the study's per-pair values against the same
measurement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deft_plugin.data.encoding import EncodedRow, encode_rows
from deft_plugin.data.parsing import parse_rows
from deft_plugin.filtering.heldout import measure_replies, preference_accuracy, preference_correct
from deft_plugin.filtering.pipeline import build_qdiff

from builders import SEQUENCE_LEN, hh_rows, sharpened

PAIRS = 12


@pytest.fixture(scope="module")
def rows(tiny_tokenizer):
    """Real pairs, a ranked list of three replies and a pair whose replies are the same (a tie)."""
    parsed = parse_rows(hh_rows(PAIRS), "hh_rlhf", "chat_template")
    pairs, _ = encode_rows(parsed.rows, tiny_tokenizer, SEQUENCE_LEN)
    first, second = pairs[0], pairs[1]
    ranked = EncodedRow(1000, first.prompt_ids, (*first.completions, second.chosen_ids))
    tie = EncodedRow(1001, second.prompt_ids, (second.chosen_ids, second.chosen_ids))
    return [*pairs, ranked, tie]


@pytest.fixture(scope="module")
def model(tiny_model):
    return sharpened(tiny_model, 20.0).eval()  # mean log-probabilities far apart, so margins are clear


def full_logits_means(model, row: EncodedRow, special: set[int]) -> list[float]:
    """Mean log p of each reply's non-special tokens, from one full forward and log_softmax."""
    means = []
    for reply in row.completions:
        seq = list(row.prompt_ids) + list(reply)
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([seq])).logits[0].double().log_softmax(-1)
        kept = [logp[t - 1, seq[t]] for t in range(len(row.prompt_ids), len(seq)) if seq[t] not in special]
        means.append(float(sum(kept) / max(1, len(kept))))
    return means


def test_a_tie_counts_half_a_win_one_a_loss_nothing():
    assert [preference_correct(m) for m in (0.3, 0.0, -0.2)] == [1.0, 0.5, 0.0]
    assert preference_correct(np.array([0.3, 0.0, -0.2])).tolist() == [1.0, 0.5, 0.0]
    assert preference_correct(torch.tensor([0.3, 0.0, -0.2])).tolist() == [1.0, 0.5, 0.0]


def test_accuracy_and_margin_equal_the_full_logits(rows, model, tiny_tokenizer):
    special = set(tiny_tokenizer.all_special_ids)
    margins = []
    for row in rows:
        means = full_logits_means(model, row, special)
        margins.append(means[0] - max(means[1:]))
    assert margins[-1] == 0.0 and any(m > 0 for m in margins) and any(m < 0 for m in margins)
    want = sum((m > 0) + 0.5 * (m == 0) for m in margins) / len(margins)
    got = preference_accuracy(model, rows, special, tiny_tokenizer.pad_token_id, batch_size=4, progress=False)
    assert got["pairs"] == len(rows)
    assert got["accuracy"] == pytest.approx(want, abs=1e-5)
    assert got["mean_margin"] == pytest.approx(sum(margins) / len(margins), abs=1e-5)


def test_the_study_measures_what_the_heldout_measurement_gives(rows, model, tiny_tokenizer):
    from deft_study.measure import PER_PAIR, measure_pairs

    pairs = [r for r in rows if len(r.completions) == 2]
    qn = build_qdiff(pairs, tiny_tokenizer, "maxabs").qn
    special, pad = tiny_tokenizer.all_special_ids, tiny_tokenizer.pad_token_id
    study = measure_pairs(model, pairs, qn, special, pad, batch_size=3, progress=False)
    replies = measure_replies(model, pairs, special, pad, qn, batch_size=5, progress=False)
    want = {key: [] for key in PER_PAIR}
    for row in pairs:
        chosen, rejected = replies[row.index]
        for key, value in zip(PER_PAIR, (chosen.logp, rejected.logp, chosen.tokens, rejected.tokens,
                                          chosen.reward, rejected.reward)):
            want[key].append(value)
    for key in PER_PAIR:
        assert study[key] == pytest.approx(want[key], rel=1e-6, abs=1e-6), key
    assert all(isinstance(n, float) for n in study["n_chosen"])  # eval.json keeps its counts as floats
    assert any(r != 0 for r in study["r_chosen"])


def test_held_out_rows_not_measured_are_counted_with_their_reasons(tiny_model_dir, capsys):
    """heldout_accuracy on rows where one cannot be parsed and one has identical replies: the
    others are measured, held_out = pairs + the left-out counts, and the demo's summary line says
    how many of how many, and why (it once printed "38 of 40" with no reason)."""
    from deft_plugin.cli.demo import print_summary
    from deft_plugin.filtering.heldout import heldout_accuracy

    raw = hh_rows(6)
    raw[2] = {"chosen": raw[2]["chosen"], "rejected": raw[2]["chosen"]}  # identical replies
    raw[4] = {"chosen": "no transcript here"}  # no rejected reply
    result = heldout_accuracy(tiny_model_dir, raw, 1024, 4, "held-out")
    assert result["held_out"] == 6 and result["pairs"] == 4, result
    assert result["pairs"] + sum(result["left_out"].values()) == 6 and len(result["left_out"]) == 2
    assert any("identical" in reason for reason in result["left_out"])

    pairs = {"sampled": 6, "unparseable": 0, "degenerate": 0, "degenerate_reasons": {}, "scored": 6, "kept": 1,
             "not_kept": 5}
    training = {"loss": [], "deft_term": [], "deft_reward_chosen": [], "deft_reward_rejected": []}
    report = {"method": "dpo", "pairs": pairs, "training": training, "seconds": {"train": 1.0}, "run_dir": "r",
              "plots": {}, "heldout_preference_accuracy": {"before": result, "after": result}}
    print_summary(report)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("held-out preference accuracy"))
    reasons = ", ".join(f"{n} {reason}" for reason, n in result["left_out"].items())
    assert line.startswith(f"held-out preference accuracy (4 of 6 pairs; left out: {reasons}): before ")
