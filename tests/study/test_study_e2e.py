"""`deft study` at a tiny size, as CI runs it: the tiny Llama, real HH-RLHF pairs, three arms
(the starting model, a random quarter, DEFT's top quarter with the term), one seed, each trained
through `axolotl train`. The report's numbers must come from the runs: one arm's accuracy is
recomputed here from its saved model by another code path, and a rerun trains nothing."""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch
import yaml

from deft_plugin.cli.main import main
from deft_plugin.integration.guard import EVENT
from deft_study.report import render_markdown

from builders import hh_rows, write_jsonl

pytestmark = pytest.mark.slow

SPEC = {
    "split": {"test": 16, "validation": 8, "pool": 48, "seed": 0},
    "recipe": {"sequence_len": 256, "learning_rate": 1e-4, "adapter": "full", "micro_batch_size": 2},
    "measure": {"batch_size": 8, "generate": 2, "max_new_tokens": 8},
    "arms": [{"name": "base", "method": "base"},
             {"name": "dpo-random", "select": "random", "ratio": 0.25},
             {"name": "deft-dpo-top", "select": "top", "ratio": 0.25, "reward_weight": 1.0},
             {"name": "dpo-top-q50", "select": "top", "ratio": 0.25, "q_fraction": 0.5},
             {"name": "dpo-length-top", "select": "top", "by": "length_ratio", "ratio": 0.25}],
    "comparisons": [{"a": "deft-dpo-top", "b": "dpo-random", "question": "top against random"}],
    "judging": {"pairs": [{"a": "deft-dpo-top", "b": "dpo-random"}]},
    "judge": {"learning_rate": 1e-3, "gradient_accumulation_steps": 4, "sequence_len": 300},
    "q_volume": {"fractions": [0.5, 1.0], "draws": 2, "ratio": 0.25},
}


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("study")
    write_jsonl(root / "hh.jsonl", hh_rows(80))
    (root / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    out = root / "out"
    # run from the study's parent folder with relative paths, as from a repository
    argv = ["study", "--spec", "spec.yaml", "--out", "out", "--model", str(tiny_model_dir), "--data", "hh.jsonl"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert main(argv) == 0
    return {"argv": argv, "root": root, "out": out, "report": json.loads((out / "report.json").read_text())}


def test_report_structure(study):
    report, out = study["report"], study["out"]
    assert list(report["arms"]) == ["base", "dpo-random", "deft-dpo-top", "dpo-top-q50", "dpo-length-top"]
    assert report["pending"] == []
    assert report["data"]["split"]["sizes"] == {"pool": 48, "validation": 8, "test": 16}
    assert report["data"]["measured"]["split"] == "test"
    pairs = report["data"]["measured"]["usable"]
    for name, arm in report["arms"].items():
        assert arm["pairs"] == pairs > 0
        for metric in ("accuracy", "implicit_accuracy", "margin", "implicit_margin", "reward_gap", "bleu_char",
                       "sacrebleu", "answer_chars", "distinct_words"):
            assert math.isfinite(arm["metrics"][metric]["mean"]), (name, metric)
        assert (out / "arms" / name / "seed-0" / "result.json").is_file()
    base = report["arms"]["base"]
    assert base["metrics"]["implicit_accuracy"]["mean"] == 0.5  # the starting model against itself: all ties
    for name, arm in report["arms"].items():  # the answers' statistics; 8 new tokens: every answer hits the cap
        assert arm["metrics"]["at_cap"]["mean"] == 1.0 and arm["metrics"]["empty"]["mean"] == 0.0, name
        assert 0 < arm["metrics"]["distinct_2"]["mean"] <= 1
    assert sum(report["floors"]["pairs_by_length"].values()) == pairs
    assert 0 <= report["floors"]["prefer_shorter"]["all"] <= 1
    assert all(m["mean"] == 0.5 for m in base["by_length"]["implicit_accuracy"].values())  # ties in every stratum
    assert "## By length" in (out / "report.md").read_text() and "## Greedy answers" in (out / "report.md").read_text()
    (comparison,) = report["comparisons"]
    for metric in ("accuracy", "implicit_accuracy", "margin", "reward_gap"):
        c = comparison[metric]
        assert c["low"] <= c["difference"] <= c["high"] and c["inside_noise"] == (c["low"] <= 0 <= c["high"])
    assert report["environment"]["versions"]["axolotl"] and "deft study --spec" in report["environment"]["command"]
    volume = report["q_volume"]["summary"]
    assert volume["1.0"]["cosine"]["mean"] == pytest.approx(1.0) and volume["1.0"]["jaccard"]["mean"] == 1.0
    assert 0 < volume["0.5"]["cosine"]["mean"] < 1 and volume["0.5"]["cosine"]["n"] == 2
    assert (out / "report.md").read_text() == render_markdown(report)
    kept = [p for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".yaml", ".log", ".md", ".jsonl")
            and "model" not in p.parts and "prepared" not in p.parts]
    assert [p for p in kept if str(study["root"]) in p.read_text()] == []  # no machine path in what a study keeps
    assert all((out / name).read_bytes()[:4] == b"\x89PNG" for name in report["plots"].values())


def test_arms_train_what_they_declare(study):
    out, report = study["out"], study["report"]
    results = {name: json.loads((out / "arms" / name / "seed-0" / "result.json").read_text())
               for name in ("dpo-random", "deft-dpo-top")}
    random_report = results["dpo-random"]["filter_report"]
    usable_pool = random_report["rows"] - random_report["degenerate"]
    assert results["dpo-random"]["kept"] == results["deft-dpo-top"]["kept"] == math.ceil(0.25 * usable_pool)
    assert report["arms"]["deft-dpo-top"]["kept"] == results["deft-dpo-top"]["kept"]
    for name, result in results.items():  # the guard's event lines, read from the run's own log
        log = (out / "arms" / name / "seed-0" / "train.log").read_text()
        assert len(result["guard_events"]) == log.count(EVENT) == report["arms"][name]["guard_events"], name
    assert report["arms"]["base"]["guard_events"] is None  # nothing trained, nothing to guard
    assert results["dpo-random"]["kept_indices"] != results["deft-dpo-top"]["kept_indices"]
    configs = {name: yaml.safe_load((out / "arms" / name / "seed-0" / "axolotl.yaml").read_text()) for name in results}
    assert configs["dpo-random"]["deft_filter_select"] == "random" and configs["dpo-random"]["deft_reward_weight"] == 0
    assert configs["deft-dpo-top"]["deft_filter_select"] == "top" and configs["deft-dpo-top"]["deft_reward_weight"] == 1
    assert configs["dpo-random"]["deft_reference"] == "scoring"  # the free reference unless the recipe says model
    length = json.loads((out / "arms" / "dpo-length-top" / "seed-0" / "result.json").read_text())
    assert length["kept"] == results["dpo-random"]["kept"]  # a baseline selection at DEFT's count
    assert yaml.safe_load((out / "arms" / "dpo-length-top" / "seed-0" / "axolotl.yaml").read_text())[
        "deft_filter_by"] == "length_ratio"
    ranked = length["filter_report"]["rank_stats"]
    assert ranked["by"] == "length_ratio" and ranked["kept_mean"] >= ranked["threshold"] >= ranked["min"]
    top = results["deft-dpo-top"]["filter_report"]
    assert top["kept"] == math.ceil(0.25 * top["scored"])  # the top arm scored the pool through the plugin
    tokens = {int(k): v for k, v in json.loads((out / "data" / "pool_tokens.json").read_text()).items()}
    assert len(tokens) == usable_pool
    for name, result in results.items():
        assert result["trained"] and result["steps"] == math.ceil(result["kept"] / 2)
        assert report["arms"][name]["train_tokens"]["mean"] == sum(tokens[i] for i in result["kept_indices"]) > 0
        # provenance and cost: the commit, whether the tree was clean, the training process's CPU seconds
        assert result["clean"] == (not result["commit"].endswith("+changes")) and len(result["commit"]) >= 40
        assert 0 < result["cpu_seconds"] and report["arms"][name]["cpu_seconds"]["mean"] == result["cpu_seconds"]
    base = json.loads((out / "arms" / "base" / "seed-0" / "result.json").read_text())
    assert base["cpu_seconds"] == 0.0 and not base["trained"]
    assert report["unclean_runs"] == ([] if base["clean"] else [f"{n}/seed-0" for n in report["arms"]])
    commits = sorted({r["commit"] for r in (base, *results.values())})
    assert set(commits) <= set(report["commits"])  # one commit, unless the code changed between runs
    if report["commits"] == [base["commit"]]:
        assert f"Code: commit {base['commit']}" in (out / "report.md").read_text()


def test_accuracy_recomputed_from_the_saved_model(study, tiny_model_dir):
    """The report's accuracy of the DEFT arm, from its saved weights through the demo's held-out accuracy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deft_plugin.data.encoding import encode_rows
    from deft_plugin.data.parsing import parse_source
    from deft_plugin.filtering.heldout import preference_accuracy

    out = study["out"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(out / "arms" / "deft-dpo-top" / "seed-0" / "model").eval()
    parsed = parse_source(str(out / "data" / "test.jsonl"), "hh_rlhf", "chat_template")
    pairs, _ = encode_rows(parsed.rows, tokenizer, SPEC["recipe"]["sequence_len"])
    again = preference_accuracy(model, pairs, tokenizer.all_special_ids, tokenizer.pad_token_id, progress=False)
    reported = study["report"]["arms"]["deft-dpo-top"]["metrics"]
    assert again["pairs"] == study["report"]["arms"]["deft-dpo-top"]["pairs"]
    assert reported["accuracy"]["mean"] == pytest.approx(again["accuracy"], abs=1e-9)
    assert reported["margin"]["mean"] == pytest.approx(again["mean_margin"], abs=1e-5)


def test_a_rerun_trains_and_measures_nothing(study, monkeypatch):
    out = study["out"]
    finished = sorted(p for p in (out / "arms").rglob("*") if p.name in ("result.json", "eval.json", "train.log",
                                                                          "judge_scores.json"))
    finished += [out / "judge" / "judge.json", out / "judge" / "model" / "model.safetensors"]
    stamps = {p: p.stat().st_mtime_ns for p in finished}
    monkeypatch.chdir(study["root"])
    # a study folder keeps only the split's indices (the data is not copied around): the files come back
    split_files = {p: p.read_bytes() for p in (out / "data").glob("*.jsonl")}
    assert len(split_files) == 3
    for path in split_files:
        path.unlink()
    assert main(study["argv"]) == 0
    assert {p: p.stat().st_mtime_ns for p in finished} == stamps
    assert {p: p.read_bytes() for p in split_files} == split_files
    assert json.loads((out / "report.json").read_text())["arms"] == study["report"]["arms"]


def test_an_arm_selects_with_q_from_part_of_the_pool(study):
    out = study["out"]
    run = out / "arms" / "dpo-top-q50" / "seed-0"
    config = yaml.safe_load((run / "axolotl.yaml").read_text())
    qdiff_dir = (run / config["deft_qdiff_path"]).resolve()
    assert not config["deft_qdiff_path"].startswith("/") and qdiff_dir == (out / "qdiff" / "fraction-0.5-draw-0")
    usable_pool = len(json.loads((out / "data" / "pool_tokens.json").read_text()))
    meta = json.loads((qdiff_dir / "qdiff.json").read_text())
    assert meta["pairs"] == math.ceil(0.5 * usable_pool) and meta["fraction"] == 0.5
    report = json.loads((run / "result.json").read_text())["filter_report"]
    assert report["qdiff"]["pairs"] == meta["pairs"] and report["scored"] == usable_pool  # the whole pool, scored again


def test_the_answers_become_a_judging_set_whose_votes_join_the_report(study, tmp_path):
    """The declared pair's answers are served by deft-app as they are written; votes given in the
    app's database and exported into the set's folder come back in the rebuilt report."""
    from deft_app.cli import main as app_main
    from deft_app.items import items_from_files
    from deft_app.store import Store

    out = study["out"]
    (entry,) = study["report"]["judging"]
    assert (entry["a"], entry["b"], entry["seed"], entry["items"]) == ("deft-dpo-top", "dpo-random", 0, 2)
    for name, file in zip(("deft-dpo-top", "dpo-random"), entry["answers"]):
        rows = [json.loads(line) for line in (out / file).read_text().splitlines()]
        generated = [json.loads(line) for line in
                     (out / "arms" / name / "seed-0" / "generations.jsonl").read_text().splitlines()]
        assert [(r["id"], r["answer"]) for r in rows] == [(g["id"], g["answer"]) for g in generated]
        assert all(r["model"] == name and "chosen" not in r and "rejected" not in r for r in rows)  # no reference
    assert "--criteria harmless,helpful" in entry["serve"]
    items = items_from_files([out / f for f in entry["answers"]])
    assert [(i["model_a"], i["model_b"]) for i in items] == [("deft-dpo-top", "dpo-random")] * 2

    store = Store(tmp_path / "votes.sqlite")
    store.add_items(items)
    store.add_annotator("ann", "a long password")
    store.record_verdicts(items[0]["id"], "ann", {"harmless": "a", "helpful": "tie"}, left_model="dpo-random")
    store.record_verdicts(items[1]["id"], "ann", {"harmless": "a", "helpful": "b"}, left_model="deft-dpo-top")
    assert app_main(["export", "--db", str(tmp_path / "votes.sqlite"), "--out", str(out / entry["folder"])]) == 0
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(study["root"])
        assert main([*study["argv"], "--report-only"]) == 0
    report = json.loads((out / "report.json").read_text())
    results = report["judging"][0]["results"]
    assert results["votes"] == 4
    (harmless,) = results["by_criterion"]["harmless"]["pairs"]
    (helpful,) = results["by_criterion"]["helpful"]["pairs"]
    assert (harmless["win"], harmless["tie"], harmless["loss"], harmless["win_rate"]) == (2, 0, 0, 1.0)
    assert (helpful["win"], helpful["tie"], helpful["loss"], helpful["win_rate"]) == (0, 1, 1, 0.25)
    assert "harmless: deft-dpo-top won 2, lost 0, tied 0 against dpo-random" in (out / "report.md").read_text()
    (out / entry["folder"] / "votes.jsonl").unlink()
    (out / entry["folder"] / "votes.csv").unlink()


def test_a_reward_model_trained_on_the_pool_judges_every_arm(study, tmp_path):
    """Trained by `axolotl train` on the pool only, on exactly the token ids the reward scorer reads;
    measured on validation (the gate) and test beside the length rule; every run's answers judged,
    with the logits `deft-eval score` gives with the saved judge."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from deft_eval.cli import main as eval_main
    from deft_eval.hh_prompts import load_prompts
    from deft_eval.reward_models import ONE_TURN, reward_ids

    out, report = study["out"], study["report"]
    judge, record = report["judge"], json.loads((out / "judge" / "judge.json").read_text())
    pool, _ = load_prompts(str(out / "data" / "pool.jsonl"))
    dropped = {i for d in record["dropped"].values() for i in d["ids"]}
    assert record["pool_pairs"] == len(pool) == judge["pairs"] + sum(judge["dropped"].values())
    assert set(record["dropped"]) == {"longer than 300 tokens"} and 0 < len(dropped) < len(pool)  # counted, named
    assert judge["steps"] == math.ceil(judge["pairs"] / 4)
    config = yaml.safe_load((out / "judge" / "axolotl.yaml").read_text())
    assert config["reward_model"] and config["datasets"][0]["type"] == "bradley_terry.chat_template"
    assert not config["base_model"].startswith("/")

    # what Axolotl tokenised for training is what the scorer builds for an answer
    tokenizer = AutoTokenizer.from_pretrained(out / "judge" / "model")
    (prepared,) = [p for p in (out / "judge" / "prepared").iterdir() if (p / "dataset_info.json").is_file()]
    trained = load_from_disk(str(prepared))
    kept = [r for r in pool if r["id"] not in dropped]
    expected = sorted(reward_ids(tokenizer, ONE_TURN, r["prompt"], r[k]) for r in kept for k in ("chosen", "rejected"))
    assert sorted([list(x) for x in trained["chosen_ids"]] + [list(x) for x in trained["rejected_ids"]]) == expected

    assert list(judge["heldout"]) == ["validation", "test"]
    for name, split in judge["heldout"].items():
        assert split["pairs"] == SPEC["split"][name] and 0 <= split["accuracy"] <= 1
    validation = judge["heldout"]["validation"]
    assert judge["lead"] == 0.05 and judge["read"] == (validation["accuracy"] >= validation["prefer_shorter"] + 0.05)
    residual_means = []
    for name in report["arms"]:
        scored = json.loads((out / "arms" / name / "seed-0" / "judge_scores.json").read_text())["answers"]
        assert len(scored) == SPEC["measure"]["generate"]
        assert judge["arms"][name]["score"]["mean"] == pytest.approx(sum(a["logit"] for a in scored) / len(scored))
        residual_means.append(judge["arms"][name]["length_residual"]["mean"])
    assert sum(residual_means) == pytest.approx(0.0, abs=1e-6)  # residuals of a fitted line average to zero
    assert "## Reward-model judge" in (out / "report.md").read_text()

    answers = out / "arms" / "deft-dpo-top" / "seed-0" / "generations.jsonl"
    assert eval_main(["score", str(answers), "--out", str(tmp_path / "scores"), "--scorers", "reward",
                      "--reward-model", str(out / "judge" / "model")]) == 0
    again = [json.loads(line)["reward_logit"] for line in
             (tmp_path / "scores" / "scores.jsonl").read_text().splitlines()]
    study_logits = [a["logit"] for a in
                    json.loads((out / "arms" / "deft-dpo-top" / "seed-0" / "judge_scores.json").read_text())["answers"]]
    assert again == pytest.approx(study_logits, abs=1e-5)

    # the judge's validation accuracy, again from its chosen and rejected logits through deft-eval
    validation_pairs, _ = load_prompts(str(out / "data" / "validation.jsonl"))
    logits = {}
    for side in ("chosen", "rejected"):
        answers = tmp_path / f"{side}.jsonl"
        answers.write_text("".join(json.dumps({**r, "answer": r[side]}) + "\n" for r in validation_pairs))
        assert eval_main(["score", str(answers), "--out", str(tmp_path / side), "--scorers", "reward",
                          "--reward-model", str(out / "judge" / "model")]) == 0
        logits[side] = [json.loads(line)["reward_logit"] for line in
                        (tmp_path / side / "scores.jsonl").read_text().splitlines()]
    wins = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(logits["chosen"], logits["rejected"])]
    assert validation["accuracy"] == pytest.approx(sum(wins) / len(wins))


def test_a_run_killed_after_a_checkpoint_resumes_into_the_same_model(study, tiny_model_dir, tmp_path, monkeypatch):
    """`axolotl train` killed once a checkpoint is saved, then the study run again: it goes on
    from the checkpoint (its log kept and marked) and ends in the model of the run never killed."""
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    import deft_study.training as training
    from deft_plugin.launch.axolotl_train import OFFLINE_ENV, run_axolotl_train
    from deft_study.spec import load_spec

    spec = load_spec(study["root"] / "spec.yaml")
    arm = next(a for a in spec.arms if a.name == "dpo-random")
    monkeypatch.setitem(training.CHECKPOINTS, "save_steps", 2)
    monkeypatch.setitem(training.CHECKPOINTS, "save_total_limit", None)  # the test names the checkpoint it kept

    def killed_after_a_checkpoint(config_path, log_path, append=False):
        cmd = [sys.executable, "-m", "axolotl.cli.main", "train", str(config_path), "--launcher", "python"]
        guard_state = config_path.parent / "model" / "checkpoint-2" / "deft_guard.json"  # written last
        env = {**os.environ, **OFFLINE_ENV}
        with log_path.open("w") as log, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                         cwd=config_path.parent, env=env) as p:
            while not guard_state.is_file():
                assert p.poll() is None, log_path.read_text()[-3000:]
                time.sleep(0.1)
            p.kill()
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "run_axolotl_train", killed_after_a_checkpoint)
    pool = study["out"] / "data" / "pool.jsonl"
    with pytest.raises(KeyboardInterrupt):
        training.train_run(spec, arm, 0, tiny_model_dir, pool, tmp_path)
    folder = training.run_dir(tmp_path, arm, 0)
    for later in [p for p in (folder / "model").glob("checkpoint-*") if p.name != "checkpoint-2"]:
        shutil.rmtree(later)  # killed between step 2 and its next checkpoint
    assert not (folder / "result.json").exists()
    monkeypatch.setattr(training, "run_axolotl_train", run_axolotl_train)
    result = training.train_run(spec, arm, 0, tiny_model_dir, pool, tmp_path)
    assert result["resumed_from_step"] == 2 and result["steps"] == math.ceil(result["kept"] / 2)
    log = (folder / "train.log").read_text()
    killed, _, second = log.partition("== resumed from its checkpoint at step 2\n")
    assert second and killed.count("{'loss'") >= 2  # the killed piece's log is kept
    assert second.count("{'loss'") == result["steps"] - 2  # the second piece trains the steps after the checkpoint
    assert not list((folder / "model").glob("checkpoint-*"))  # a finished run keeps its model only
    whole = training.train_run(spec, arm, 0, tiny_model_dir, pool, tmp_path / "never-killed")
    never_killed = load_file(training.run_dir(tmp_path / "never-killed", arm, 0) / "model" / "model.safetensors")
    resumed = load_file(folder / "model" / "model.safetensors")
    assert never_killed.keys() == resumed.keys() and all(torch.equal(never_killed[k], resumed[k]) for k in resumed)
    assert result["last_loss"] == whole["last_loss"] and result["kept_indices"] == whole["kept_indices"]
    assert "resumed_from_step" not in whole
