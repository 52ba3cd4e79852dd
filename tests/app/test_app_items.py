"""Items from deft-eval and FastChat MT-Bench answer files, the annotators file, exports."""

from __future__ import annotations

import csv
import json

import pytest

from deft_app.export import export_votes
from deft_app.items import InputError, items_from_files, read_annotators
from deft_app.store import Store

from builders import SHARED_DATA

QUESTIONS = SHARED_DATA / "mt_bench" / "question.jsonl"


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def hh_answers(tmp_path, model, n, answer):
    return write(tmp_path / f"{model}.jsonl", [
        {"id": f"harmless-base/{i}", "subset": "harmless-base", "model": model, "answer": f"{answer} {i}",
         "prompt": f"\n\nHuman: question {i}?\n\nAssistant: hm\n\nHuman: and then?\n\nAssistant:"} for i in range(n)])


def test_items_from_deft_eval_answers_of_three_models(tmp_path):
    files = [hh_answers(tmp_path, "dpo", 4, "plain"), hh_answers(tmp_path, "deft", 3, "filtered"),
             hh_answers(tmp_path, "base", 3, "base")]
    items = items_from_files(files)
    assert len(items) == 3 * 3  # 3 shared prompts x 3 model pairs
    first = items[0]
    assert first["id"] == "harmless-base/0|dpo|deft" and first["category"] == "harmless-base"
    assert first["dialogue"] == [{"role": "user", "content": "question 0?"}, {"role": "assistant", "content": "hm"},
                                 {"role": "user", "content": "and then?"}]
    assert (first["answer_a"], first["answer_b"]) == ("plain 0", "filtered 0")
    assert {(i["model_a"], i["model_b"]) for i in items} == {("dpo", "deft"), ("dpo", "base"), ("deft", "base")}


def test_items_from_fastchat_mt_bench_answers(tmp_path):
    questions = [json.loads(line) for line in QUESTIONS.read_text().splitlines()]
    def answers(model):
        return write(tmp_path / f"{model}.jsonl", [
            {"question_id": q["question_id"], "model_id": model, "choices": [{"index": 0, "turns": [
                f"{model} one", f"{model} two"]}]} for q in questions])
    items = items_from_files([answers("m1"), answers("m2")], QUESTIONS)
    assert len(items) == 80
    q81 = next(i for i in items if i["id"] == "mt_bench/81|m1|m2")
    assert q81["category"] == "writing" and q81["dialogue"] == [{"role": "user", "content": questions[0]["turns"][0]}]
    assert q81["answer_a"].startswith("m1 one") and questions[0]["turns"][1] in q81["answer_a"]
    assert q81["answer_a"].endswith("m1 two")
    with pytest.raises(InputError, match="need the questions"):
        items_from_files([answers("m1"), answers("m2")])
    qid = questions[1]["question_id"]
    for broken in ({"question_id": qid, "model_id": "m3"}, {"question_id": qid, "choices": []},
                   {"question_id": qid, "choices": [{"turns": "one text"}]}):
        rows = [json.loads(line) for line in answers("m3").read_text().splitlines()]
        write(tmp_path / "m3.jsonl", [rows[0], broken, *rows[2:]])
        with pytest.raises(InputError, match="m3.jsonl: line 2: no answer turns"):  # not a KeyError traceback
            items_from_files([answers("m1"), tmp_path / "m3.jsonl"], QUESTIONS)


def test_bad_inputs_are_named(tmp_path):
    good = hh_answers(tmp_path, "dpo", 2, "x")
    with pytest.raises(InputError, match="at least two"):
        items_from_files([good])
    with pytest.raises(InputError, match="missing.jsonl: no such file"):
        items_from_files([good, tmp_path / "missing.jsonl"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "p", "answer": "x"}\n{oops\n')
    with pytest.raises(InputError, match="bad.jsonl: line 2 is not valid JSON"):
        items_from_files([good, bad])
    other = write(tmp_path / "other.jsonl", [{"id": "z", "text": "no answer"}])
    with pytest.raises(InputError, match="other.jsonl: line 1 lacks prompt, answer"):
        items_from_files([good, other])
    with pytest.raises(InputError, match="same model name"):
        items_from_files([good, write(tmp_path / "copy.jsonl",
                                      [json.loads(line) for line in good.read_text().splitlines()])])
    unrelated = write(tmp_path / "unrelated.jsonl", [{"id": "helpful/9", "model": "u",
                                                       "prompt": "\n\nHuman: x\n\nAssistant:",
                                                       "answer": "y"}])
    with pytest.raises(InputError, match="no prompt in common"):
        items_from_files([good, unrelated])


def test_annotators_file(tmp_path):
    ok = write(tmp_path / "ann.jsonl", [{"name": "alice", "password": "correct horse", "role": "admin"},
                                        {"name": "bob", "password": "battery staple"}])
    assert [a["name"] for a in read_annotators(ok)] == ["alice", "bob"]
    for row, message in [({"password": "long enough"}, "missing 'name'"),
                         ({"name": "c", "password": "short"}, "at least 8"),
                         ({"name": "c", "password": "long enough", "role": "root"}, "role must be")]:
        with pytest.raises(InputError, match=message):
            read_annotators(write(tmp_path / "bad.jsonl", [row]))


def test_export_every_vote_as_jsonl_and_csv(tmp_path):
    store = Store(tmp_path / "v.db")
    store.add_items([{"id": "q1", "dialogue": [], "category": "writing", "model_a": "a", "answer_a": "x",
                      "model_b": "b", "answer_b": "<script>alert(1)</script>"}])
    store.add_annotator("ann", "pw")
    store.record_vote("q1", "ann", "tie", "b", 'a "quoted", comma', criterion="helpful")
    jsonl, table = export_votes(store.votes(), tmp_path / "export")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert rows == [{**{k: rows[0][k] for k in ("created",)}, "item_id": "q1", "annotator": "ann",
                     "criterion": "helpful", "verdict": "tie", "model_a": "a", "model_b": "b", "left_model": "b",
                     "category": "writing", "comment": 'a "quoted", comma', "seconds": None}]
    parsed = list(csv.DictReader(table.open()))
    assert parsed[0]["comment"] == 'a "quoted", comma' and parsed[0]["verdict"] == "tie"
