"""`deft-eval score`: per-record scores, tables per subset and in total, corpus BLEU per group,
files written; bad input named."""

from __future__ import annotations

import json

import pytest

from deft_eval.cli import main
from deft_eval.report import TOTAL, markdown, read_answers, summarise
from deft_eval.scorers import bleu


def answers_file(tmp_path):
    records = [
        {"id": "harmless-base/0", "subset": "harmless-base", "prompt": "\n\nHuman: a\n\nAssistant:",
         "answer": "abcdf", "chosen": "abcde", "rejected": "x"},
        {"id": "harmless-base/1", "subset": "harmless-base", "prompt": "\n\nHuman: b\n\nAssistant:",
         "answer": "same text", "chosen": "same text", "rejected": "x"},
        {"id": "helpful-base/0", "subset": "helpful-base", "prompt": "\n\nHuman: c\n\nAssistant:",
         "answer": "abcde", "chosen": "abcdef", "rejected": "x"},
    ]
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path, records


def test_summary_means_per_subset_and_total(tmp_path):
    _, records = answers_file(tmp_path)
    per_record = bleu.per_record(records, {})
    table = summarise(records, per_record, {"bleu": bleu.corpus})
    assert list(table) == ["harmless-base", "helpful-base", TOTAL]
    values = [100 * 0.2 ** 0.25, 100.0, 100 * 0.8187307530779818]
    assert table["harmless-base"]["n"] == 2 and table[TOTAL]["n"] == 3
    assert table["harmless-base"]["bleu_char"] == pytest.approx((values[0] + values[1]) / 2)
    assert table[TOTAL]["bleu_char"] == pytest.approx(sum(values) / 3)
    assert table["helpful-base"]["sacrebleu"] == pytest.approx(bleu.corpus(records[2:], {})["sacrebleu"])
    md = markdown(table, "tiny")
    assert "| harmless-base | 2 |" in md and "| total | 3 |" in md and "sacreBLEU signature" in md


def test_cli_score_writes_the_report(tmp_path, capsys):
    path, records = answers_file(tmp_path)
    out = tmp_path / "scored"
    assert main(["score", str(path), "--out", str(out), "--scorers", "bleu"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["scorers"] == ["bleu"] and report["table"][TOTAL]["n"] == 3
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [s["id"] for s in scores] == [r["id"] for r in records]
    assert scores[1]["bleu_char"] == pytest.approx(100.0)
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert "| total | 3 |" in (out / "report.md").read_text() and "| total | 3 |" in capsys.readouterr().out


def test_bad_input_is_named(tmp_path, capsys):
    path, _ = answers_file(tmp_path)
    assert main(["score", str(path), "--out", str(tmp_path / "o"), "--scorers", "bleu,nope"]) == 2
    assert "unknown scorer(s) nope" in capsys.readouterr().err
    broken = tmp_path / "broken.jsonl"
    broken.write_text(path.read_text() + "{not json\n")
    with pytest.raises(ValueError, match="line 4 is not valid JSON"):
        read_answers(broken)
    other = tmp_path / "other.jsonl"
    other.write_text('{"id": 1, "text": "x"}\n')
    with pytest.raises(ValueError, match="line 1 lacks subset, prompt, answer, chosen"):
        read_answers(other)
    assert not (tmp_path / "o").exists()  # nothing written for a failed run


def test_score_without_models_runs_what_it_can_and_says_what_it_did_not(tmp_path, capsys):
    path, _ = answers_file(tmp_path)
    out = tmp_path / "o"
    assert main(["score", str(path), "--out", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["scorers"] == ["bleu"]
    err = capsys.readouterr().err
    assert "not scored: reward (give --reward-model DIR), bartscore (give --bart-model DIR)" in err

