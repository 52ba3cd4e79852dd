"""MT-Bench judging through FastChat's own judge functions and the real openai client against
a real HTTP OpenAI-compatible server on 127.0.0.1 (tests/judge_server.py): all 80 questions x
2 turns, reference answers routed to math/reasoning/coding, malformed judgments counted."""

from __future__ import annotations

import json

import pytest

from deft_eval.mt_bench import (
    JudgeEndpoint,
    judge_pairwise,
    judge_single,
    load_mt_questions,
    summarise_judgments,
    summarise_pairwise,
)

from builders import SHARED_DATA
from judge_server import JudgeServer

MT_BENCH = SHARED_DATA / "mt_bench"
NEED_REF = {"math", "reasoning", "coding"}


def fake_answers(questions, model="tiny"):
    return {model: {q["question_id"]: {"question_id": q["question_id"], "model_id": model,
                                       "choices": [{"index": 0, "turns": [f"first answer {q['question_id']}",
                                                                           f"second answer {q['question_id']}"]}]}
                    for q in questions}}


@pytest.mark.slow
def test_eighty_questions_two_turns_judged(tmp_path):
    questions = load_mt_questions(MT_BENCH)
    with JudgeServer(malformed_marker="first answer 81") as server:  # both of 81's judgments: no rating
        endpoint = JudgeEndpoint(server.base_url, "local-judge", api_key="sk-test", parallel=8)
        judgments = judge_single(questions, fake_answers(questions), MT_BENCH, endpoint, tmp_path / "judgment.jsonl")
    assert len(judgments) == 160 and len(server.requests) == 160
    assert all(r["path"] == "/v1/chat/completions" and r["model"] == "local-judge" for r in server.requests)
    assert {r["auth"] for r in server.requests} == {"Bearer sk-test"}
    category = {q["question_id"]: q["category"] for q in questions}
    for j in judgments:
        if j["question_id"] == 81:
            assert j["score"] == -1
            continue
        with_ref = category[j["question_id"]] in NEED_REF
        assert ("Reference Answer" in j["user_prompt"]) == with_ref
        assert j["score"] == (4 if with_ref else 6 if j["turn"] == 2 else 8), j
    # the reference answers are GPT-4's, routed to the judge's name
    refs = {json.loads(line)["question_id"]: json.loads(line) for line in
            (MT_BENCH / "reference_answer" / "gpt-4.jsonl").read_text().splitlines()}
    math_q = next(q for q in questions if q["category"] == "math")
    prompt = next(j["user_prompt"] for j in judgments if j["question_id"] == math_q["question_id"] and j["turn"] == 1)
    assert refs[math_q["question_id"]]["choices"][0]["turns"][0] in prompt
    # the judge gets only the system prompt and the judging prompt, no example turns
    assert all([m["role"] for m in r["messages"]] == ["system", "user"] for r in server.requests)

    summary = summarise_judgments(judgments, questions)["tiny"]
    assert summary["unparseable"] == 2 and summary["judged"] == 158
    n_ref = sum(category[q] in NEED_REF for q in category)  # 30
    assert summary["turn"][1] == pytest.approx((4 * n_ref + 8 * (80 - n_ref - 1)) / 79)
    assert summary["turn"][2] == pytest.approx((4 * n_ref + 6 * (80 - n_ref - 1)) / 79)
    assert summary["category"]["math"] == 4 and summary["category"]["writing"] == pytest.approx(7.0)
    assert set(summary["category"]) == set(category.values())
    lines = (tmp_path / "judgment.jsonl").read_text().splitlines()
    assert len(lines) == 160


def test_unreachable_judge_gives_error_judgments_not_a_hang(tmp_path):
    questions = [q for q in load_mt_questions(MT_BENCH) if q["category"] == "writing"][:1]
    endpoint = JudgeEndpoint("http://127.0.0.1:9/v1", "local-judge", timeout_s=2, retries=2, retry_sleep_s=0.01)
    judgments = judge_single(questions, fake_answers(questions), MT_BENCH, endpoint, tmp_path / "j.jsonl")
    assert [j["score"] for j in judgments] == [-1, -1]
    assert all(j["judgment"] == "$ERROR$" for j in judgments)
    assert summarise_judgments(judgments, questions)["tiny"]["unparseable"] == 2


def test_a_rerun_pays_the_judge_only_for_what_is_missing(tmp_path):
    """Judgments already in the file are read back, not judged again; a failed judge call is."""
    from deft_eval.mt_bench import results_markdown

    questions = [q for q in load_mt_questions(MT_BENCH) if q["category"] == "writing"][:3]
    out = tmp_path / "judgment.jsonl"
    unreachable = JudgeEndpoint("http://127.0.0.1:9/v1", "local-judge", timeout_s=2, retries=1, retry_sleep_s=0.01)
    failed = judge_single(questions[:1], fake_answers(questions[:1]), MT_BENCH, unreachable, out)
    assert [j["judgment"] for j in failed] == ["$ERROR$", "$ERROR$"]
    summary = summarise_judgments(failed, questions)
    assert "| tiny | – | – | – | 0 | 2 |" in results_markdown(summary) and "nan" not in results_markdown(summary)
    with JudgeServer() as server:
        endpoint = JudgeEndpoint(server.base_url, "local-judge", parallel=2)
        first = judge_single(questions[:2], fake_answers(questions[:2]), MT_BENCH, endpoint, out)
        assert len(first) == 4 and len(server.requests) == 4  # the two failed calls again, and question 2
        again = judge_single(questions, fake_answers(questions), MT_BENCH, endpoint, out)
        assert len(again) == 6 and len(server.requests) == 6  # only question 3 is new
    assert sorted((j["question_id"], j["turn"]) for j in again) == sorted((q["question_id"], t) for q in questions
                                                                          for t in (1, 2))
    assert all(j["score"] != -1 for j in again)


def mt_bench_fixture(tmp_path, question_ids):
    """An --mt-bench-dir with these questions only, and a baseline answer file for them."""
    import shutil

    data = tmp_path / "mt_bench"
    (data / "reference_answer").mkdir(parents=True)
    picked = [q for q in load_mt_questions(MT_BENCH) if q["question_id"] in question_ids]
    (data / "question.jsonl").write_text("".join(json.dumps(q) + "\n" for q in picked))
    shutil.copy(MT_BENCH / "judge_prompts.jsonl", data)
    shutil.copy(MT_BENCH / "reference_answer" / "gpt-4.jsonl", data / "reference_answer")
    baseline = tmp_path / "gpt-3.5-turbo.jsonl"
    baseline.write_text("".join(json.dumps(a) + "\n"
                                for a in fake_answers(picked, "gpt-3.5-turbo")["gpt-3.5-turbo"].values()))
    return data, baseline


def test_cli_answers_and_judges_a_small_fixture(tiny_model_dir, tmp_path):
    """`deft-eval mt-bench` end to end on a three-question fixture (writing, math, coding)."""
    from deft_eval.cli import main

    data, baseline = mt_bench_fixture(tmp_path, (81, 111, 121))
    out = tmp_path / "out"
    with JudgeServer() as server:
        assert main(["mt-bench", "--model", str(tiny_model_dir), "--name", "tiny", "--mt-bench-dir", str(data),
                     "--out", str(out), "--judge-url", server.base_url, "--judge-model", "local-judge",
                     "--max-new-tokens", "3", "--parallel", "2", "--baseline-answers", str(baseline)]) == 0
    assert len(server.requests) == 6 + 12  # single: 3 x 2 turns; pairwise: 3 x 2 turns x 2 orders
    answers = (out / "model_answer" / "tiny.jsonl").read_text().splitlines()
    assert len(answers) == 3
    pairwise = json.loads((out / "results.json").read_text())["pairwise"]["tiny"]
    assert pairwise["baseline"] == "gpt-3.5-turbo" and pairwise["tie"] == 6  # neither side says GOOD
    assert "| tiny | gpt-3.5-turbo | 0 | 0 | 6 |" in (out / "results.md").read_text()
    results = json.loads((out / "results.json").read_text())["single"]["tiny"]
    assert results["judged"] == 6 and results["unparseable"] == 0
    assert results["category"] == {"writing": 7.0, "math": 4.0, "coding": 4.0}
    assert "| tiny | 5.000 |" in (out / "results.md").read_text()
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    with JudgeServer() as server:  # a rerun on the first question only: nothing new to answer or judge
        assert main(["mt-bench", "--model", str(tiny_model_dir), "--name", "tiny", "--mt-bench-dir", str(data),
                     "--out", str(out), "--judge-url", server.base_url, "--judge-model", "local-judge",
                     "--max-new-tokens", "3", "--question-ids", "81"]) == 0
        assert server.requests == []
    assert json.loads((out / "results.json").read_text())["single"]["tiny"]["judged"] == 2


def test_results_json_has_null_where_the_judge_gave_no_verdict(tiny_model_dir, tmp_path):
    """A model the judge never rates has no score and no win rate: null in results.json (strict
    JSON, not NaN), and `deft-eval compare` reads the file."""
    from deft_eval.cli import main

    data, baseline = mt_bench_fixture(tmp_path, (81,))
    out = tmp_path / "out"
    with JudgeServer(malformed_marker="Start of Assistant") as server:  # in every judge prompt: no verdict
        assert main(["mt-bench", "--model", str(tiny_model_dir), "--name", "tiny", "--mt-bench-dir", str(data),
                     "--out", str(out), "--judge-url", server.base_url, "--judge-model", "local-judge",
                     "--max-new-tokens", "3", "--baseline-answers", str(baseline)]) == 0

    def not_json(constant):
        raise AssertionError(f"results.json holds {constant}, which is not JSON")

    results = json.loads((out / "results.json").read_text(), parse_constant=not_json)
    assert results["single"]["tiny"]["score"] is None and results["single"]["tiny"]["unparseable"] == 2
    assert results["pairwise"]["tiny"]["win_rate"] is None and results["pairwise"]["tiny"]["unparseable"] == 2
    assert main(["compare", str(out), str(out), "--out", str(tmp_path / "cmp")]) == 0
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text(), parse_constant=not_json)["rows"]
    assert {r["metric"]: (r["a"], r["delta"]) for r in rows} == {
        "mt_bench/score": (None, None), "mt_bench/win_rate_vs_gpt-3.5-turbo": (None, None)}


def test_pairwise_against_a_baseline_judged_in_both_orders(tmp_path):
    """Model "good" says GOOD on writing questions only: it wins those, ties the rest against
    the baseline; question 81's verdicts are malformed and counted apart."""
    questions = [q for q in load_mt_questions(MT_BENCH) if q["category"] in ("writing", "math")]
    good = fake_answers(questions, "good")["good"]
    for q in questions:
        if q["category"] == "writing":
            good[q["question_id"]]["choices"][0]["turns"] = ["GOOD first", "GOOD second"]
    answers = {"good": good, **fake_answers(questions, "base")}
    with JudgeServer(malformed_marker="first answer 81") as server:
        endpoint = JudgeEndpoint(server.base_url, "local-judge", parallel=4)
        judgments = judge_pairwise(questions, answers, "base", MT_BENCH, endpoint, tmp_path / "pair.jsonl")
    assert len(judgments) == 40  # 20 questions x 2 turns, each judged in two orders
    assert len(server.requests) == 80
    summary = summarise_pairwise(judgments)["good"]
    assert summary["baseline"] == "base"
    # 10 writing questions x 2 turns won, less question 81's two; 10 math questions x 2 turns tied
    assert (summary["win"], summary["loss"], summary["tie"], summary["unparseable"]) == (18, 0, 20, 2)
    assert summary["win_rate"] == pytest.approx(18 / 38) and summary["win_rate_ties_half"] == pytest.approx(28 / 38)
    with pytest.raises(ValueError, match="baseline 'gpt-3.5'"):
        judge_pairwise(questions, answers, "gpt-3.5", MT_BENCH, endpoint, tmp_path / "x.jsonl")


def test_pairwise_summary_counts_inconsistent_and_unparseable():
    rows = [{"model_1": "m", "model_2": "b", "g1_winner": "model_1", "g2_winner": "model_1"},
            {"model_1": "m", "model_2": "b", "g1_winner": "model_1", "g2_winner": "model_2"},
            {"model_1": "m", "model_2": "b", "g1_winner": "error", "g2_winner": "model_2"},
            {"model_1": "m", "model_2": "b", "g1_winner": "model_2", "g2_winner": "model_2"}]
    s = summarise_pairwise(rows)["m"]
    assert (s["win"], s["loss"], s["tie"], s["inconsistent"], s["unparseable"]) == (1, 1, 1, 1, 1)
    assert s["win_rate"] == pytest.approx(1 / 3) and s["win_rate_ties_half"] == pytest.approx(0.5)
