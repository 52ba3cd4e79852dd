"""deft_study.choice: the choice on validation under the generation guard, and a later spec taking
the chosen recipe with recipe_from."""

from __future__ import annotations

import json

import pytest
import yaml

from deft_study.choice import choose, guard_failures, main
from deft_study.spec import load_spec

from builders import REPO


def metrics(accuracy, distinct=0.6, repetitive_share=0.05, chars=300.0):
    m = {"implicit_accuracy": accuracy, "distinct_words": distinct, "repetitive": repetitive_share,
         "answer_chars": chars}
    return {k: {"mean": v} for k, v in m.items()}


def report(heldout="validation", **arms):
    spec = {"measure": {"heldout": heldout, "generate": 40}, "recipe": {"learning_rate": 1e-4, "warmup_ratio": 0.1},
            "arms": [{"name": name, "recipe": {"learning_rate": float(name.removeprefix("lr-"))}} for name in arms]
            + [{"name": "base", "recipe": {}}]}
    return {"spec": spec, "pending": [],
            "arms": {"base": {"method": "base", "metrics": metrics(0.5)},
                     **{name: {"method": "dpo", "metrics": m} for name, m in arms.items()}}}


def test_the_most_accurate_arm_that_passes_the_guard_is_chosen():
    r = report(**{"lr-5e-5": metrics(0.55), "lr-1e-4": metrics(0.60), "lr-2e-4": metrics(0.70, distinct=0.3)})
    result = choose(r, ["lr-5e-5", "lr-1e-4", "lr-2e-4"])
    assert result["chosen"] == "lr-1e-4"  # lr-2e-4 is more accurate, but its answers repeat themselves
    assert [row["passes"] for row in result["table"]] == [True, True, False]
    assert result["table"][2]["failures"] == ["answers' distinct-word share 0.300 < 0.9 x the start's 0.600"]


def test_a_tie_goes_to_the_arm_listed_first():
    r = report(**{"lr-5e-5": metrics(0.6), "lr-1e-4": metrics(0.6)})
    assert choose(r, ["lr-1e-4", "lr-5e-5"])["chosen"] == "lr-1e-4"


@pytest.mark.parametrize("change, failure", [
    ({"repetitive_share": 0.2}, "repetitive answers 20% > the start's 5% + 10%"),
    ({"chars": 100.0}, "answer length 0.33x the start's, outside 0.5-2.0x"),
    ({"chars": 700.0}, "answer length 2.33x the start's, outside 0.5-2.0x"),
])
def test_each_guard_names_its_failure(change, failure):
    assert guard_failures(metrics(0.6, **change), metrics(0.5), answers=40) == [failure]


def test_nothing_is_chosen_on_test_or_among_unfinished_runs():
    with pytest.raises(ValueError, match="validation split only"):
        choose(report(heldout="test", **{"lr-1e-4": metrics(0.6)}), ["lr-1e-4"])
    with pytest.raises(ValueError, match="lr-2e-4 has no finished run"):
        choose(report(**{"lr-1e-4": metrics(0.6)}), ["lr-1e-4", "lr-2e-4"])


def test_a_later_spec_takes_the_chosen_recipe(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps(report(**{"lr-5e-5": metrics(0.55), "lr-1e-4": metrics(0.6)})))
    out = tmp_path / "choice.json"
    assert main([str(tmp_path / "report.json"), "--arms", "lr-5e-5,lr-1e-4", "--out", str(out)]) == 0
    choice = json.loads((tmp_path / "choice.json").read_text())
    assert choice["chosen"] == "lr-1e-4" and choice["recipe"] == {"learning_rate": 1e-4, "warmup_ratio": 0.1}
    spec = {"recipe_from": "choice.json", "recipe": {"learning_rate": 1.0, "sequence_len": 256},
            "arms": [{"name": "base", "method": "base"}, {"name": "dpo", "select": "random"}], "comparisons": []}
    (tmp_path / "forms.yaml").write_text(yaml.safe_dump(spec))
    loaded = load_spec(tmp_path / "forms.yaml")
    assert (loaded.recipe.learning_rate, loaded.recipe.warmup_ratio, loaded.recipe.sequence_len) == (1e-4, 0.1, 256)
    (tmp_path / "choice.json").unlink()
    with pytest.raises(ValueError, match="recipe_from: .*choice.json does not exist: run the study that chooses"):
        load_spec(tmp_path / "forms.yaml")


def test_a_deft_arm_chosen_gives_its_term(tmp_path):
    forms = report(**{"lr-1e-4": metrics(0.6), "lr-2e-4": metrics(0.62)})
    for arm in forms["spec"]["arms"]:
        arm.update({"reward_weight": 4.0, "loss_form": "margin"} if arm["name"] == "lr-2e-4" else {})
    (tmp_path / "report.json").write_text(json.dumps(forms))
    assert main([str(tmp_path / "report.json"), "--arms", "lr-1e-4,lr-2e-4", "--out", str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["term"] == {"loss_form": "margin", "reward_weight": 4.0}
    assert main([str(tmp_path / "report.json"), "--arms", "lr-1e-4", "--out", str(tmp_path / "c.json")]) == 0
    assert "term" not in json.loads((tmp_path / "c.json").read_text())  # plain DPO chosen: no term to give


def test_the_plugins_defaults_are_the_committed_choice():
    """The plugin's deft_loss_form and deft_reward_weight follow the safe-term experiment's choice."""
    from deft_plugin.core.losses import DEFAULT_LOSS_FORM, DEFAULT_REWARD_WEIGHT

    choice = json.loads((REPO / "docs" / "study" / "safe-term" / "forms" / "choice.json").read_text())
    assert choice["term"] == {"loss_form": DEFAULT_LOSS_FORM, "reward_weight": DEFAULT_REWARD_WEIGHT}
