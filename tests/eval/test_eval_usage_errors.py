"""`deft-eval`: every mistake in what a command was given is one line on stderr naming the flag
and its value, with exit code 2, found before a model is loaded (DEFT_DEBUG=1: the traceback)."""

from __future__ import annotations

import json

import pytest

from deft_eval.cli import main

from builders import SHARED_DATA, hh_rows, write_jsonl


@pytest.fixture
def no_model_loads(monkeypatch):
    """Every model loader of deft-eval replaced by one that records the call: a mistake must be
    found before any of them runs."""
    from deft_eval import models, reward_models
    from deft_eval.scorers import bartscore

    calls = []
    for module, name in ((models, "load_causal_lm"), (reward_models, "load_reward_model"),
                         (bartscore, "load_bart")):
        monkeypatch.setattr(module, name, lambda *a, _name=name, **k: calls.append(_name))
    return calls


def one_line_error(capsys, argv, words):
    """The command exits with 2 and one line on stderr that holds `words`, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "Traceback" not in err, err
    return err


@pytest.fixture
def hh_data(tmp_path):
    return write_jsonl(tmp_path / "harmless-base" / "test.jsonl", hh_rows(3))


def test_generate_names_a_missing_data_file_or_model(tmp_path, tiny_model_dir, hh_data, no_model_loads, capsys):
    out = str(tmp_path / "answers.jsonl")
    missing = tmp_path / "missing.jsonl"
    one_line_error(capsys, ["generate", "--model", str(tiny_model_dir), "--data", str(missing), "--out", out],
                   f"--data {missing}: ")
    no_model = tmp_path / "no-model"
    one_line_error(capsys, ["generate", "--model", str(no_model), "--data", str(hh_data), "--out", out],
                   f"--model {no_model}: no such folder")
    one_line_error(capsys, ["generate", "--model", str(hh_data.parent), "--data", str(hh_data), "--out", out],
                   f"--model {hh_data.parent}: a folder without config.json")
    one_line_error(capsys, ["generate", "--model", "nobody/no-such-model", "--data", str(hh_data), "--out", out],
                   "--model nobody/no-such-model: neither a model directory nor a hub model available offline")
    one_line_error(capsys, ["generate", "--model", str(tiny_model_dir), "--data", str(hh_data), "--out", out,
                            "--batch-size", "0"], "--batch-size must be at least 1, got 0")
    assert no_model_loads == []


def test_score_names_a_missing_reward_or_bart_model(tmp_path, no_model_loads, capsys):
    answers = write_jsonl(tmp_path / "answers.jsonl", [
        {"id": "harmless-base/0", "subset": "harmless-base", "prompt": "\n\nHuman: a\n\nAssistant:",
         "answer": "b", "chosen": "b", "rejected": "c"}])
    out = str(tmp_path / "scored")
    for flag in ("--reward-model", "--bart-model"):
        missing = tmp_path / f"no{flag}"
        one_line_error(capsys, ["score", str(answers), "--out", out, flag, str(missing)],
                       f"{flag} {missing}: no such folder")
    one_line_error(capsys, ["score", str(answers), "--out", out, "--scorers", "reward"],
                   "--scorers reward: give --reward-model")
    one_line_error(capsys, ["score", str(answers), "--out", out, "--scorers", "bleu,nope"],
                   "--scorers bleu,nope: unknown scorer(s) nope")
    one_line_error(capsys, ["score", str(tmp_path / "none.jsonl"), "--out", out], "none.jsonl: no such file")
    assert no_model_loads == []
    assert not (tmp_path / "scored").exists()  # nothing written for a refused run


def test_compare_names_a_missing_or_empty_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"single": {"m": {"score": 5.0, "turn": {}, "category": {}}}}))
    missing, empty = tmp_path / "missing", tmp_path / "empty"
    empty.mkdir()
    out = str(tmp_path / "cmp")
    one_line_error(capsys, ["compare", str(run), str(missing), "--out", out], f"run_b {missing}: no such folder")
    one_line_error(capsys, ["compare", str(empty), str(run), "--out", out],
                   f"run_a {empty}: neither report.json (deft-eval score) nor results.json (deft-eval mt-bench)")
    assert not (tmp_path / "cmp").exists()


def test_mt_bench_names_what_it_cannot_use_before_answering(tmp_path, tiny_model_dir, no_model_loads, capsys):
    mt_bench = SHARED_DATA / "mt_bench"
    run = ["mt-bench", "--out", str(tmp_path / "mt")]
    no_model = tmp_path / "no-model"
    one_line_error(capsys, run + ["--model", str(no_model), "--mt-bench-dir", str(mt_bench)],
                   f"--model {no_model}: no such folder")
    run += ["--model", str(tiny_model_dir)]
    one_line_error(capsys, run + ["--mt-bench-dir", str(tmp_path)], f"--mt-bench-dir {tmp_path}: no question.jsonl")
    run += ["--mt-bench-dir", str(mt_bench)]
    one_line_error(capsys, run + ["--question-ids", "81,9999"], "--question-ids 81,9999: no question 9999")
    missing = tmp_path / "gpt-3.5-turbo.jsonl"
    one_line_error(capsys, run + ["--baseline-answers", str(missing)], f"--baseline-answers {missing}: no such file")
    assert no_model_loads == []


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    from deft_plugin.utils.usage import UsageError

    missing = tmp_path / "missing"
    monkeypatch.setenv("DEFT_DEBUG", "1")
    with pytest.raises(UsageError, match="no such folder"):
        main(["compare", str(missing), str(missing), "--out", str(tmp_path / "cmp")])
    monkeypatch.delenv("DEFT_DEBUG")
    with pytest.raises(UsageError, match="no such folder"):
        main(["--debug", "compare", str(missing), str(missing), "--out", str(tmp_path / "cmp")])


def test_generate_refuses_to_resume_another_models_answers(tmp_path, tiny_model_dir, hh_data, capsys):
    out = tmp_path / "answers.jsonl"
    argv = ["generate", "--model", str(tiny_model_dir), "--data", str(hh_data), "--out", str(out),
            "--max-new-tokens", "2"]
    assert main([*argv, "--name", "first"]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    one_line_error(capsys, [*argv, "--name", "second"], f"--out {out} holds 3 answers of model 'first'")
    assert out.read_bytes() == before


def test_judge_server_names_a_missing_model_or_bad_port_before_starting(tmp_path, tiny_model_dir, monkeypatch,
                                                                         capsys):
    from deft_eval import judge_server

    monkeypatch.setattr(judge_server, "LocalJudge", lambda *a, **k: pytest.fail("started after a mistake"))
    no_model = tmp_path / "nonexistent"
    one_line_error(capsys, ["judge-server", "--model", str(no_model)], f"--model {no_model}: no such folder")
    one_line_error(capsys, ["judge-server", "--model", str(tmp_path)], f"--model {tmp_path}: a folder without "
                                                                       "config.json")
    run = ["judge-server", "--model", str(tiny_model_dir)]
    one_line_error(capsys, run + ["--port", "99999"], "--port 99999: a port number is between 1 and 65535")
    one_line_error(capsys, run + ["--start-timeout", "0"], "--start-timeout must be positive, got 0.0")
    assert not (tmp_path / "judge-server-logs").exists()
