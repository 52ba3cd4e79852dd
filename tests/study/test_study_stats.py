"""The study's statistics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from deft_study.stats import (
    bootstrap_differences,
    bootstrap_p_value,
    correct,
    detectable_difference,
    holm,
    mean_interval,
    pair_metrics,
    paired_bootstrap,
)


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


def test_paired_seeds_remove_a_seed_effect_both_arms_share():
    rng = np.random.default_rng(1)
    pairs = rng.random(300)
    seed_effect = np.array([[-0.3], [0.0], [0.3]])  # a seed's initialisation moves both arms alike
    a, b = pairs + 0.02 + seed_effect, pairs + seed_effect
    apart = paired_bootstrap(a, b, paired_seeds=False)
    together = paired_bootstrap(a, b, paired_seeds=True)
    assert together["difference"] == apart["difference"] == pytest.approx(0.02)
    assert together["se"] < apart["se"] / 10 and together["paired_seeds"]
    assert together["low"] > 0 and apart["inside_noise"]
    with pytest.raises(ValueError, match="as many seeds"):
        bootstrap_differences(a, b[:2], paired_seeds=True)


def test_bootstrap_p_values_two_sided_and_non_inferiority():
    diffs = np.array([-0.03, -0.01, 0.01, 0.02, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09])
    assert bootstrap_p_value(diffs) == pytest.approx(2 * 0.2)
    assert bootstrap_p_value(-diffs) == pytest.approx(0.4)
    assert bootstrap_p_value(np.full(10, 0.1)) == 0.0 and bootstrap_p_value(np.zeros(4)) == 1.0
    assert bootstrap_p_value(diffs, "non_inferiority", margin=0.02) == pytest.approx(0.1)  # replicates <= -0.02
    with pytest.raises(ValueError, match="unknown test"):
        bootstrap_p_value(diffs, "superiority")


def test_holm_by_hand():
    # sorted 0.01, 0.02, 0.04 -> 3 x 0.01, max(0.03, 2 x 0.02), max(0.04, 1 x 0.04)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.4]) == pytest.approx([0.8, 0.8])  # step-down keeps the adjusted values monotone
    assert holm([0.9, 0.8, 0.01]) == pytest.approx([1.0, 1.0, 0.03])  # 2 x 0.8 caps at 1


def test_detectable_difference_by_hand():
    # two-sided 5%, power 80%: (1.959964 + 0.841621) x se
    assert detectable_difference(0.01, 0.05) == pytest.approx(0.028016, abs=1e-6)
    assert detectable_difference(0.01, 0.05, sides=1) == pytest.approx((1.644854 + 0.841621) * 0.01, abs=1e-6)


def test_a_finished_run_gets_a_new_generation_statistic_from_its_saved_answers(tmp_path):
    import json

    from deft_study.measure import backfill_generation_stats

    eval_path, answers = tmp_path / "eval.json", tmp_path / "generations.jsonl"
    eval_path.write_text(json.dumps({"generation": {"prompts": 2, "answer_chars": [3, 7]}, "pairs": {}}))
    answers.write_text(json.dumps({"answer": "I I I", "stopped": "cap"}) + "\n"
                       + json.dumps({"answer": "a b c d", "stopped": "eos"}) + "\n")
    result = backfill_generation_stats(eval_path, answers)
    assert result["generation"]["distinct_words"] == [1 / 3, 1.0]
    assert result["generation"]["at_cap"] == [1.0, 0.0] and result["generation"]["empty"] == [0.0, 0.0]
    # distinct-n over all the answers: unigrams I, a, b, c, d of 7; bigrams (I I), (a b), (b c), (c d) of 5
    assert result["generation"]["distinct_1"] == 5 / 7 and result["generation"]["distinct_2"] == 4 / 5
    assert result["generation"]["answer_chars"] == [3, 7]  # present already: kept as measured
    assert json.loads(eval_path.read_text()) == result
    (tmp_path / "none.json").write_text(json.dumps({"generation": None}))
    assert backfill_generation_stats(tmp_path / "none.json", answers) == {"generation": None}


def test_primary_comparisons_are_tested_on_the_endpoint_and_holm_corrected(tmp_path):
    import yaml

    from deft_study.report import compare, render_markdown
    from deft_study.spec import load_spec

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({
        "arms": [{"name": "base", "method": "base"}, {"name": "top", "select": "top", "seeds": [0, 1]},
                 {"name": "random", "select": "random", "seeds": [0, 1]}, {"name": "all", "seeds": [0]}],
        "comparisons": [{"a": "top", "b": "random", "primary": True},
                        {"a": "top", "b": "all", "primary": True, "test": "non_inferiority", "margin": 0.1},
                        {"a": "random", "b": "all"}],
        "statistics": {"endpoint": "accuracy", "rounds": 500}}))
    spec = load_spec(spec_path)
    rng = np.random.default_rng(0)
    wins = lambda p: {"accuracy": rng.permutation(np.r_[np.ones(round(400 * p)), np.zeros(400 - round(400 * p))]),  # noqa: E731
                      "margin": rng.normal(p, 1, 400), "implicit_accuracy": np.full(400, 0.5),
                      "reward_gap": np.zeros(400)}
    per_pair = {"top": {0: wins(0.7), 1: wins(0.7)}, "random": {0: wins(0.5), 1: wins(0.5)}, "all": {0: wins(0.69)}}
    rows = compare(spec, per_pair)
    top_random, top_all, exploratory = rows
    assert top_random["accuracy"]["paired_seeds"] and not top_all["accuracy"]["paired_seeds"]
    e = top_random["endpoint"]
    observed = np.mean([per_pair["top"][s]["accuracy"] for s in (0, 1)]) - np.mean(
        [per_pair["random"][s]["accuracy"] for s in (0, 1)])
    assert e["metric"] == "accuracy" and e["difference"] == pytest.approx(observed) == pytest.approx(0.2)
    assert e["p_value"] < 0.05 and e["rejected"]
    assert e["detectable"] == pytest.approx(detectable_difference(e["se"], 0.05 / 2, 0.8, sides=2)) and e["se"] > 0
    ni = top_all["endpoint"]
    assert ni["p_value"] < 0.05 and ni["rejected"]  # 0.70 against 0.69 with a margin of 0.1: non-inferior
    assert ni["holm_p"] == pytest.approx(max(ni["p_value"], min(1.0, 2 * min(e["p_value"], ni["p_value"]))))
    assert "endpoint" not in exploratory and not exploratory["primary"]
    report = {"spec": spec.to_dict(), "comparisons": rows, "arms": {}, "pending": [], "commits": ["abc"],
              "unclean_runs": [], "environment": {"command": "deft study", "versions": {}, "python": "3"},
              "data": {}}
    text = render_markdown(report)
    assert "| top | all |  | non-inferiority, margin 0.1 |" in text and "| non-inferior |" in text
    assert "(exploratory)" in text and "Code: commit abc; every run from a clean tree." in text


def test_length_strata_and_the_shorter_reply_floor():
    from deft_study.report import by_length, floors
    from deft_study.stats import length_strata, prefer_shorter

    n_chosen, n_rejected = [5, 10, 20, 10, 30], [10, 10, 10, 9, 10]
    strata = length_strata(n_chosen, n_rejected)
    assert strata.tolist() == [0, 1, 2, 2, 2]  # 0.5, 1.0, 2.0, 1.11, 3.0 (10% bands)
    assert prefer_shorter(n_chosen, n_rejected).tolist() == [1.0, 0.5, 0.0, 0.0, 0.0]
    base = {"n_chosen": n_chosen, "n_rejected": n_rejected}
    assert floors(base, strata) == {
        "prefer_shorter": {"all": 0.3, "chosen shorter": 1.0, "similar length": 0.5, "chosen longer": 0.0},
        "pairs_by_length": {"chosen shorter": 1, "similar length": 1, "chosen longer": 3}}
    per_pair = {0: {"accuracy": np.array([1, 0, 1, 1, 0.0]), "implicit_accuracy": np.array([1, 1, 0, 0, 1.0])},
                1: {"accuracy": np.array([0, 0, 1, 1, 1.0]), "implicit_accuracy": np.array([1, 1, 1, 0, 1.0])}}
    table = by_length(per_pair, strata)
    assert table["accuracy"]["chosen longer"]["mean"] == pytest.approx((2 / 3 + 1) / 2)
    implicit = table["implicit_accuracy"]
    assert implicit["chosen shorter"]["mean"] == 1.0 and implicit["chosen longer"]["n"] == 2


def test_length_residuals_remove_what_length_predicts():
    from deft_study.stats import length_residuals

    lengths = [10, 20, 30, 40]
    residuals, slope = length_residuals([3 * x + 2 for x in lengths], lengths)
    assert slope == pytest.approx(3.0) and np.abs(residuals).max() < 1e-9  # all of it was length
    residuals, slope = length_residuals([1.0, 0.0, 1.0, 0.0], lengths)
    assert slope == pytest.approx(-0.02) and residuals.sum() == pytest.approx(0.0)
    assert residuals.tolist() == pytest.approx([0.2, -0.6, 0.6, -0.2])  # about the line 1 - 0.02 x
    residuals, slope = length_residuals([1.0, 3.0], [5, 5])  # no spread in length: only the mean comes off
    assert slope == 0.0 and residuals.tolist() == [-1.0, 1.0]
