"""The study's statistics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from deft_study.stats import correct, mean_interval, pair_metrics, paired_bootstrap


def test_correct_counts_ties_half():
    assert correct(np.array([0.2, -0.1, 0.0])).tolist() == [1.0, 0.0, 0.5]


def test_pair_metrics_by_hand():
    base = {"lp_chosen": [-10.0, -8.0], "lp_rejected": [-9.0, -8.0]}
    run = {"lp_chosen": [-9.0, -8.5], "lp_rejected": [-9.5, -7.0], "n_chosen": [5, 2], "n_rejected": [5, 4],
           "r_chosen": [0.1, 0.0], "r_rejected": [0.05, 0.2]}
    m = pair_metrics(run, base, beta=0.1)
    assert m["margin"].tolist() == pytest.approx([-9.0 / 5 + 9.5 / 5, -8.5 / 2 + 7.0 / 4])
    assert m["accuracy"].tolist() == [1.0, 0.0]
    # implicit: 0.1 * ((-9 + 10) - (-9.5 + 9)) = 0.15 ; 0.1 * ((-8.5 + 8) - (-7 + 8)) = -0.15
    assert m["implicit_margin"].tolist() == pytest.approx([0.15, -0.15])
    assert m["implicit_accuracy"].tolist() == [1.0, 0.0]
    assert m["reward_gap"].tolist() == pytest.approx([0.05, -0.2])
    assert pair_metrics(base | {k: run[k] for k in ("n_chosen", "n_rejected", "r_chosen", "r_rejected")}, base,
                        0.1)["implicit_accuracy"].tolist() == [0.5, 0.5]  # the starting model: all ties


def test_mean_interval_is_a_t_interval():
    out = mean_interval([0.5, 0.6, 0.7])
    # mean 0.6, sd 0.1, t(0.975, 2) = 4.302653
    assert out["mean"] == pytest.approx(0.6) and out["n"] == 3
    assert out["high"] - out["mean"] == pytest.approx(4.302653 * 0.1 / np.sqrt(3), rel=1e-5)
    assert mean_interval([0.4])["low"] is None


def test_paired_bootstrap_sees_a_real_difference_and_calls_none_noise():
    rng = np.random.default_rng(0)
    base = rng.random((3, 400))
    same = paired_bootstrap(base, base.copy())
    assert same["difference"] == 0 and same["inside_noise"]
    shifted = paired_bootstrap(base + 0.05, base)
    assert shifted["difference"] == pytest.approx(0.05) and not shifted["inside_noise"]
    assert shifted["low"] > 0
    # pairing: a per-pair offset shared by both arms does not widen the interval of their difference
    noisy_pairs = rng.normal(0, 5, 400)
    paired = paired_bootstrap(base + 0.05 + noisy_pairs, base + noisy_pairs)
    assert paired["high"] - paired["low"] < 0.2 and not paired["inside_noise"]


def test_a_finished_run_gets_a_new_generation_statistic_from_its_saved_answers(tmp_path):
    import json

    from deft_study.measure import backfill_generation_stats

    eval_path, answers = tmp_path / "eval.json", tmp_path / "generations.jsonl"
    eval_path.write_text(json.dumps({"generation": {"prompts": 2, "answer_chars": [3, 7]}, "pairs": {}}))
    answers.write_text(json.dumps({"answer": "I I I"}) + "\n" + json.dumps({"answer": "a b c d"}) + "\n")
    result = backfill_generation_stats(eval_path, answers)
    assert result["generation"]["distinct_words"] == [1 / 3, 1.0]
    assert result["generation"]["answer_chars"] == [3, 7]  # present already: kept as measured
    assert json.loads(eval_path.read_text()) == result
    (tmp_path / "none.json").write_text(json.dumps({"generation": None}))
    assert backfill_generation_stats(tmp_path / "none.json", answers) == {"generation": None}
