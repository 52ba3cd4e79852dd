"""MT-Bench answers in FastChat's format on the real 80-question file, read back by FastChat's
own load_model_answers; temperatures per category; resuming."""

from __future__ import annotations

import json

import pytest

from deft_eval.mt_bench import answer_questions, load_mt_questions, temperature_of

from builders import SHARED_DATA

MT_BENCH = SHARED_DATA / "mt_bench"


def test_temperatures_follow_fastchat():
    assert temperature_of({"category": "writing"}) == 0.7 and temperature_of({"category": "math"}) == 0.0
    assert temperature_of({"category": "stem"}) == 0.1 and temperature_of({"category": "new"}) == 0.7


@pytest.mark.slow
def test_eighty_questions_two_turns_in_fastchat_format(tiny_model, tiny_tokenizer, tmp_path):
    from fastchat.llm_judge.common import load_model_answers

    questions = load_mt_questions(MT_BENCH)
    assert len(questions) == 80 and all(len(q["turns"]) == 2 for q in questions)
    answer_dir = tmp_path / "model_answer"
    calls = []
    original = tiny_model.generate

    def recording(*args, **kwargs):
        calls.append((kwargs["input_ids"].shape[0], kwargs.get("temperature"), kwargs["do_sample"]))
        return original(*args, **kwargs)

    tiny_model.generate = recording
    try:
        answers = answer_questions(tiny_model, tiny_tokenizer, questions, answer_dir / "tiny.jsonl", "tiny",
                                   max_new_tokens=3, batch_size=16, progress=False)
    finally:
        del tiny_model.generate
    assert [a["question_id"] for a in answers] == [q["question_id"] for q in questions]
    assert all(len(a["choices"][0]["turns"]) == 2 for a in answers)
    assert sum(n for n, _, _ in calls) == 160  # 80 questions x 2 turns
    assert {t for _, t, sample in calls if sample} == {0.7, 0.1} and any(not sample for _, _, sample in calls)
    loaded = load_model_answers(str(answer_dir))
    assert set(loaded) == {"tiny"} and len(loaded["tiny"]) == 80
    assert loaded["tiny"][81]["choices"][0]["turns"] == answers[0]["choices"][0]["turns"]


def test_second_turn_sees_the_first_and_resume(tiny_model, tiny_tokenizer, tmp_path):
    questions = [q for q in load_mt_questions(MT_BENCH) if q["category"] == "math"][:3]
    out = tmp_path / "a.jsonl"
    seen = []
    original = tiny_model.generate

    def recording(*args, **kwargs):
        seen.append(kwargs["input_ids"].clone())
        return original(*args, **kwargs)

    tiny_model.generate = recording
    try:
        first = answer_questions(tiny_model, tiny_tokenizer, questions[:2], out, "tiny", max_new_tokens=4,
                                 progress=False)
        seen_after_first = len(seen)
        answer_questions(tiny_model, tiny_tokenizer, questions, out, "tiny", max_new_tokens=4, progress=False)
    finally:
        del tiny_model.generate
    assert seen_after_first == 2 and len(seen) == 4  # the rerun answers only the third question
    # the second turn's prompt is the whole dialogue so far, first answer included, in the chat template
    q, a1 = questions[0]["turns"], first[0]["choices"][0]["turns"][0]
    expected = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": q[0]}, {"role": "assistant", "content": a1}, {"role": "user", "content": q[1]}],
        add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    prompt = seen[1][0]
    assert prompt[len(prompt) - len(expected):].tolist() == list(expected)
    assert (prompt[:len(prompt) - len(expected)] == tiny_tokenizer.pad_token_id).all()  # left padding only
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question_id"] for r in lines] == [q["question_id"] for q in questions]


def test_missing_questions_say_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="question.jsonl"):
        load_mt_questions(tmp_path)
