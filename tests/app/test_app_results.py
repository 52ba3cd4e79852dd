"""The organiser's results computed from votes, checked by hand."""

from __future__ import annotations

import pytest

from deft_app.results import (
    agreement,
    all_results,
    pair_results,
    plot_results,
    position_bias,
    results_by_criterion,
    strengths,
    with_aliases,
)


def vote(item, annotator, verdict, left="dpo", a="dpo", b="deft", category="writing", criterion=None):
    v = {"item_id": item, "annotator": annotator, "verdict": verdict, "left_model": left, "model_a": a,
         "model_b": b, "category": category}
    return v if criterion is None else {**v, "criterion": criterion}


def test_pair_results_count_both_bad_as_a_tie():
    votes = [vote("1", "x", "a"), vote("2", "x", "b"), vote("3", "x", "tie"), vote("4", "x", "both_bad"),
             vote("5", "x", "a")]
    (row,) = pair_results(votes)
    assert (row["win"], row["loss"], row["tie"], row["both_bad"]) == (2, 1, 2, 1)
    assert row["win_rate"] == pytest.approx((2 + 1) / 5)
    lo, hi = row["win_rate_ci"]
    assert 0 <= lo <= row["win_rate"] <= hi <= 1


def test_position_bias_from_the_left_model():
    votes = [vote("1", "x", "a", left="dpo"), vote("2", "x", "a", left="deft"), vote("3", "x", "b", left="deft"),
             vote("4", "x", "tie")]
    # decided: 1 (A on the left won), 2 (A on the right won), 3 (B on the left won) -> 2 of 3 left wins
    assert position_bias(votes) == {"decided": 3, "left_win_rate": pytest.approx(2 / 3)}


def test_agreement_on_overlapping_items():
    votes = [vote("1", "x", "a"), vote("1", "y", "a"), vote("2", "x", "b"), vote("2", "y", "a"),
             vote("3", "x", "tie"), vote("3", "y", "tie"), vote("4", "z", "a")]
    result = agreement(votes)
    # x vs y on 3 items: labels (a,b,tie) vs (a,a,tie): po 2/3, pe = (1*2 + 1*0 + 1*1) / 9 = 1/3 -> kappa 0.5
    assert result["cohen"] == {"x / y": {"items": 3, "kappa": pytest.approx(0.5)}}
    assert result["fleiss"]["items"] == 3 and result["fleiss"]["annotators_per_item"] == 2


def test_strengths_only_from_three_models_and_per_category():
    two = [vote("1", "x", "a")]
    assert strengths(two) is None
    votes = [vote(str(i), "x", "a", a="big", b="mid") for i in range(6)] + \
            [vote(str(i + 10), "x", "a", a="mid", b="small", category="math") for i in range(6)]
    s = strengths(votes)
    assert list(s) == ["big", "mid", "small"] and s["big"]["ci"][0] <= s["big"]["strength"] <= s["big"]["ci"][1]
    results = all_results(votes)
    assert results["votes"] == 12 and set(results["by_category"]) == {"math", "writing"}
    assert results["by_category"]["math"][0]["model_a"] == "mid"


def test_results_per_criterion_are_separate_studies():
    """The paper's two aspects: the same items judged on harmlessness and helpfulness. Each
    criterion gets its own win rates and its own agreement (x and y agree on harmless, not on
    helpful)."""
    votes = []
    for item, (x_h, y_h, x_p, y_p) in enumerate([("a", "a", "a", "b"), ("a", "a", "b", "a"), ("b", "b", "tie", "a")]):
        votes += [vote(str(item), "x", x_h, criterion="harmless"), vote(str(item), "y", y_h, criterion="harmless"),
                  vote(str(item), "x", x_p, criterion="helpful"), vote(str(item), "y", y_p, criterion="helpful")]
    by = results_by_criterion(votes, ["harmless", "helpful", "honest"])
    assert list(by) == ["harmless", "helpful", "honest"]  # the organiser's order; a criterion without votes too
    harmless, helpful = by["harmless"]["pairs"][0], by["helpful"]["pairs"][0]
    assert (harmless["win"], harmless["tie"], harmless["loss"]) == (4, 0, 2)
    assert (helpful["win"], helpful["tie"], helpful["loss"]) == (3, 1, 2)
    assert by["harmless"]["agreement"]["cohen"]["x / y"]["kappa"] == pytest.approx(1.0)
    # helpful: x (a, b, tie) vs y (b, a, a): po 0; pe = (1*2 + 1*1 + 1*0) / 9 -> kappa (0 - 1/3) / (1 - 1/3) = -0.5
    assert by["helpful"]["agreement"]["cohen"]["x / y"]["kappa"] == pytest.approx(-0.5)
    assert by["honest"]["votes"] == 0 and by["honest"]["pairs"] == []
    with pytest.raises(ValueError, match="one criterion"):
        all_results(votes)


def test_votes_from_before_criteria_are_the_overall_criterion():
    by = results_by_criterion([vote("1", "x", "a"), vote("2", "x", "b", criterion="overall")])
    assert list(by) == ["overall"] and by["overall"]["votes"] == 2


def test_aliases_shorten_model_names_for_tables_only():
    votes = [vote("1", "x", "a", left="runs/deft-dpo-5pct/checkpoint-120", a="runs/deft-dpo-5pct/checkpoint-120")]
    short = with_aliases(votes, {"runs/deft-dpo-5pct/checkpoint-120": "DEFT 5%"})
    assert (short[0]["model_a"], short[0]["left_model"], short[0]["model_b"]) == ("DEFT 5%", "DEFT 5%", "deft")
    assert votes[0]["model_a"] == "runs/deft-dpo-5pct/checkpoint-120"  # the votes themselves untouched
    assert pair_results(short)[0]["model_a"] == "DEFT 5%"



@pytest.mark.parametrize("verdict", ["tie", "a"])
@pytest.mark.parametrize("names", [("a", "b"), ("DPO 100% on the whole pool", "DEFT-DPO 5% of the pool, top")])
def test_nothing_in_the_plot_is_cut_at_its_edges(tmp_path, verdict, names):
    """Long model names push the axes right; every label must still be inside the image: its outermost
    rows and columns of pixels are background."""
    import numpy as np
    from PIL import Image

    votes = [{"item_id": f"q{i}", "annotator": "ann", "verdict": verdict, "model_a": names[0], "model_b": names[1],
              "left_model": names[0], "category": "writing", "criterion": c}
             for i in range(3) for c in ("harmless", "helpful")]
    path = plot_results(results_by_criterion(votes, ["harmless", "helpful"]), tmp_path / "results.png")
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"))
    edges = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    assert edges.min() == 255, "something is drawn across the image's edge"
    assert (pixels < 128).sum() > 1000  # and the plot is there
