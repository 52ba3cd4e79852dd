"""Study specs: defaults, and errors that name the key."""

from __future__ import annotations

import pytest

from deft_study.spec import load_spec

from builders import REPO


def test_the_default_study_is_the_second_edition_design():
    from deft_plugin.core.losses import DEFAULT_LOSS_FORM, DEFAULT_REWARD_WEIGHT

    spec = load_spec()
    arms = {a.name: a for a in spec.arms}
    assert set(arms) == {"base", "dpo-random-5", "dpo-top-5", "dpo-length-top-5", "dpo-margin-top-5",
                         "deft-dpo-top-5", "dpo-100", "pro-random-5", "deft-pro-top-5", "pro-100"}
    fives = [a for a in spec.arms if a.select != "all" and a.method != "base"]
    assert all(a.seeds == [0, 1, 2, 3, 4] and a.ratio == 0.05 for a in fives)  # equal count, seeds shared
    assert (arms["dpo-length-top-5"].by, arms["dpo-margin-top-5"].by) == ("length_ratio", "logp_margin")
    for name in ("deft-dpo-top-5", "deft-pro-top-5"):  # the term at the plugin's defaults; no other arm has it
        assert (arms[name].reward_weight, arms[name].loss_form) == (DEFAULT_REWARD_WEIGHT, DEFAULT_LOSS_FORM)
    assert sum(a.reward_weight > 0 for a in spec.arms) == 2
    primary = [c for c in spec.comparisons if c.primary]
    assert [(c.a, c.b) for c in primary] == [("dpo-top-5", "dpo-random-5"), ("dpo-top-5", "dpo-length-top-5"),
                                             ("dpo-top-5", "dpo-margin-top-5"), ("deft-dpo-top-5", "dpo-top-5"),
                                             ("deft-dpo-top-5", "dpo-100")]
    assert (primary[-1].test, primary[-1].margin) == ("non_inferiority", 0.05)
    assert all({c.a, c.b} <= set(arms) for c in spec.comparisons)
    assert (spec.recipe.lr_scheduler, spec.recipe.warmup_ratio, spec.recipe.learning_rate) == ("cosine", 0.1, 5e-5)
    assert spec.measure.generate == 64


@pytest.mark.parametrize("text, words", [
    ("splt: {}\n", "unknown key(s) splt"),
    ("measure: {heldout: train}\n", "measure.heldout"),
    ("recipe: {lr: 0.1}\n", "recipe: unknown key(s) lr"),
    ("arms: [{name: base, method: base}, {name: x, method: ppo}]\n", "arms.x.method"),
    ("arms: [{name: base, method: base}, {name: x, select: middle}]\n", "arms.x.select"),
    ("arms: [{name: base, method: base}, {name: x, ratio: 2}]\n", "arms.x.ratio"),
    ("arms: [{name: base, method: base}, {name: x, select: top, by: shortest}]\n", "arms.x.by"),
    ("arms: [{name: base, method: base}, {name: x, select: random, by: length_ratio}]\n", "arms.x.by"),
    ("arms: [{name: x}]\n", "method: base"),
    ("arms: [{name: base, method: base}, {name: x, select: random, q_fraction: 0.5}]\n", "arms.x.q_fraction"),
    ("arms: [{name: base, method: base}, {name: x, recipe: {lr: 1}}]\n", "arms.x.recipe: unknown key(s) lr"),
    ("arms: [{name: base, method: base}, {name: x, guard_answers_every: -1}]\n", "arms.x.guard_answers_every"),
    ("arms: [{name: base, method: base}, {name: base}]\n", "unique"),
    ("arms: [{name: base, method: base}]\ncomparisons: [{a: base, b: base, test: better}]\n", "test: one of"),
    ("arms: [{name: base, method: base}]\ncomparisons: [{a: base, b: base, test: non_inferiority}]\n",
     "margin: a positive margin"),
    ("arms: [{name: base, method: base}]\ncomparisons: [{a: base, b: base, margin: 0.02}]\n", "margin"),
    ("statistics: {endpoint: bleu}\n", "statistics.endpoint"),
    ("statistics: {alpa: 0.1}\n", "statistics: unknown key(s) alpa"),
    ("arms: [{name: base, method: base}]\ncomparisons: [{a: base, b: y}]\n", "does not have"),
    ("arms: [{name: base, method: base}]\njudging: {pairs: [{a: base, b: y}]}\n", "judging pair base vs y"),
    ("arms: [{name: base, method: base}]\njudging: {pairs: [{a: base, b: base}]}\n", "two different arms"),
    ("arms: [{name: base, method: base}]\njudging: {pairs: [{a: base, c: x}]}\n", "unknown key(s) c; known: a, b"),
    ("judging: {criteria: Harmless}\n", "judging.criteria: --criteria: criterion name 'Harmless'"),
    ("judge: {epochs: 2}\n", "judge: unknown key(s) epochs"),
    ("judge: {lora_r: -1}\n", "judge.lora_r"),
    ("judge: {learning_rate: 0}\n", "judge.learning_rate: above 0"),
])
def test_bad_specs_are_named(tmp_path, text, words):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_spec(path)


def test_a_baseline_arm_reaches_its_axolotl_config(tmp_path):
    from deft_study.training import arm_config

    path = tmp_path / "spec.yaml"
    path.write_text("arms: [{name: base, method: base}, {name: longest, select: top, by: length_ratio, ratio: 0.05}]\n")
    spec = load_spec(path)
    cfg = arm_config(spec, spec.arms[1], 3, tmp_path / "model", tmp_path / "pool.jsonl", tmp_path / "out")
    assert (cfg["deft_filter_by"], cfg["deft_filter_select"], cfg["deft_filter_seed"]) == ("length_ratio", "top", 3)
    assert "deft_guard_answers_every" not in cfg  # the generation check only where an arm asks for it


def test_an_arm_asks_for_the_guards_generation_check(tmp_path):
    from deft_plugin.integration.args import DEFTArgs
    from deft_study.training import arm_config

    path = tmp_path / "spec.yaml"
    path.write_text("arms: [{name: base, method: base}, {name: all, reward_weight: 1, guard_answers_every: 100}]\n")
    spec = load_spec(path)
    cfg = arm_config(spec, spec.arms[1], 0, tmp_path / "model", tmp_path / "pool.jsonl", tmp_path / "out")
    assert cfg["deft_guard_answers_every"] == 100 and cfg["deft_filter"] is False
    keys = {k: v for k, v in cfg.items() if k.startswith("deft_") or k in ("rl", "plugins")}
    assert DEFTArgs(**keys).deft_guard_answers_every == 100  # a key the plugin reads


def test_the_judge_is_declared_by_its_section(tmp_path):
    from deft_study.judge import judge_config

    path = tmp_path / "spec.yaml"
    path.write_text("arms: [{name: base, method: base}]\n")
    assert load_spec(path).judge is None  # no section, no judge
    path.write_text("arms: [{name: base, method: base}]\njudge: {lora_r: 0, lead: 0.1}\n")
    judge = load_spec(path).judge
    assert (judge.lora_r, judge.lead, judge.micro_batch_size) == (0, 0.1, 1)
    cfg = judge_config(judge)
    assert cfg["reward_model"] and not cfg["pad_to_sequence_len"] and cfg["base_model"] == "start"
    assert "adapter" not in cfg and "lora_model_dir" not in cfg  # lora_r 0: every weight trains
    assert cfg["bf16"] is False and cfg["seed"] == judge.seed


@pytest.fixture
def no_study_runs(monkeypatch):
    """The study's runs replaced by a recorder: a bad spec must be refused before any of them."""
    from deft_study import pipeline

    calls = []
    monkeypatch.setattr(pipeline, "run_study", lambda *a, **k: calls.append(a))
    return calls


@pytest.mark.parametrize("text, words", [
    (None, "no such file"),
    ("arms: [{name: base\n", "not valid YAML"),
    ("arms: [{name: base, method: base}, {name: x, method: ppo}]\n", "arms.x.method"),
])
def test_deft_study_with_a_bad_spec_gets_one_line(tmp_path, text, words, no_study_runs, capsys):
    from deft_plugin.cli.main import main

    spec = tmp_path / "spec.yaml"
    if text is not None:
        spec.write_text(text)
    model = tmp_path / "model"  # never reached: the spec is read first
    assert main(["study", "--spec", str(spec), "--out", str(tmp_path / "out"), "--model", str(model)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--spec {spec}: {words}" in err and "Traceback" not in err, err
    assert no_study_runs == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["arms", "model", "spec model", "data", "seeds", "seeds of no arm"])
def test_deft_study_with_a_bad_flag_gets_one_line(tmp_path, case, tiny_model_dir, no_study_runs, capsys):
    """--arms naming no arm of the spec (it used to be ignored), a model that is not there (it used
    to reach transformers' "Repo id must be in the form"), data that is not there (a traceback):
    one line naming the flag, or the spec's key, before anything runs."""
    from deft_plugin.cli.main import main

    spec = tmp_path / "spec.yaml"
    spec.write_text("arms: [{name: base, method: base}, {name: dpo-random, select: random}]\n"
                    + (f"model: {tmp_path / 'gone'}\n" if case == "spec model" else ""))
    argv = ["study", "--spec", str(spec), "--out", str(tmp_path / "out")]
    if case != "spec model":
        argv += ["--model", str(tmp_path / "gone" if case == "model" else tiny_model_dir)]
    extra = {"arms": ["--arms", "dpo-random,dpo-top"], "data": ["--data", str(tmp_path / "missing.jsonl")],
             "seeds": ["--seeds", "0,one"], "seeds of no arm": ["--arms", "dpo-random", "--seeds", "0,3"]}
    argv += extra.get(case, [])
    expected = {"arms": "--arms dpo-random,dpo-top: no arm named dpo-top; the spec's arms: base, dpo-random",
                "model": f"--model {tmp_path / 'gone'}: no such folder",
                "spec model": f"--spec {spec}: model: {tmp_path / 'gone'}: no such folder",
                "data": f"--data {tmp_path / 'missing.jsonl'}: ",
                "seeds": "--seeds 0,one: comma-separated integers",
                "seeds of no arm": "--seeds 0,3: no arm run has seed 3; their seeds: 0"}[case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err, err
    assert no_study_runs == [] and not (tmp_path / "out").exists()


def test_a_study_runs_now_the_arms_and_seeds_it_is_given():
    """--arms and --seeds pick runs in the spec's order; the base arm runs whatever they say."""
    from deft_study.pipeline import runs_now

    spec = load_spec(REPO / "docs" / "study" / "second-edition" / "spec.yaml")
    named = lambda runs: [(arm.name, seed) for arm, seed in runs]  # noqa: E731
    assert len(runs_now(spec)) == 1 + 5 * 5 + 2 + 5 + 5 + 1
    assert named(runs_now(spec, {"dpo-top-5", "dpo-100"}, {1})) == [("base", 0), ("dpo-top-5", 1), ("dpo-100", 1)]
    assert named(runs_now(spec, seeds={4})) == [("base", 0)] + [
        (name, 4) for name in ("dpo-random-5", "dpo-top-5", "dpo-length-top-5", "dpo-margin-top-5", "deft-dpo-top-5",
                               "pro-random-5", "deft-pro-top-5")]


def test_the_second_edition_spec_is_the_built_in_study():
    """docs/study/second-edition/spec.yaml writes out the design `deft study` runs without a spec."""
    from dataclasses import asdict

    from deft_study.spec import default_arms, default_comparisons

    spec = load_spec(REPO / "docs" / "study" / "second-edition" / "spec.yaml")
    assert [asdict(a) for a in spec.arms] == [asdict(a) for a in default_arms()]
    assert [asdict(c) for c in spec.comparisons] == [asdict(c) for c in default_comparisons()]
    assert spec.measure.heldout == "test" and spec.judge is not None and spec.judging.pairs
