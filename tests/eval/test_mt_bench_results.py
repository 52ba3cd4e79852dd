"""What `deft-eval mt-bench` writes for people to read: results.md (a Markdown table) and
results.png (the scores per category). Judgments come from FastChat's own single-answer
grading against the local judge server (tests/judge_server.py); model "broken" gets no
parseable rating at all, as happens when the judge never answers with "[[n]]"."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from deft_eval.mt_bench import (
    JudgeEndpoint,
    judge_single,
    load_mt_questions,
    plot_results,
    results_markdown,
    summarise_judgments,
)

from builders import SHARED_DATA
from judge_server import JudgeServer

MT_BENCH = SHARED_DATA / "mt_bench"
NO_RATING = "NO RATING PLEASE"  # in every answer of "broken": the judge gives it no verdict


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """One writing and one math question, judged for "tiny" and "broken" (2 x 2 x 2 judgments)."""
    questions = [q for q in load_mt_questions(MT_BENCH) if q["question_id"] in (81, 111)]
    answers = {model: {q["question_id"]: {"question_id": q["question_id"], "model_id": model,
                                          "choices": [{"index": 0, "turns": [f"{prefix}first answer",
                                                                              f"{prefix}second answer"]}]}
                       for q in questions}
               for model, prefix in (("tiny", ""), ("broken", NO_RATING + " "))}
    with JudgeServer(malformed_marker=NO_RATING) as server:
        endpoint = JudgeEndpoint(server.base_url, "local-judge", parallel=2)
        judgments = judge_single(questions, answers, MT_BENCH, endpoint,
                                 tmp_path_factory.mktemp("mt") / "judgment.jsonl")
    assert len(judgments) == 8
    return {name: summarise_judgments([j for j in judgments if j["model"] in models], questions)
            for name, models in (("scored", {"tiny"}), ("mixed", {"tiny", "broken"}), ("unscored", {"broken"}))}


def table_rows(markdown: str) -> list[dict]:
    """The rows of the table the text starts with, by header; fails unless it is a valid table:
    every line a row between pipes, a separator of dashes, the same number of cells throughout."""
    lines = markdown.split("\n\n")[0].splitlines()
    assert all(line.startswith("|") and line.endswith("|") for line in lines), lines
    cells = [[c.strip() for c in line[1:-1].split("|")] for line in lines]
    header, separator, *rows = cells
    assert all(header) and all(re.fullmatch(r":?-{3,}:?", c) for c in separator), lines[:2]
    assert [len(r) for r in cells] == [len(header)] * len(cells), lines
    return [dict(zip(header, row)) for row in rows]


TINY = {"model": "tiny", "score": "5.500", "turn 1": "6.000", "turn 2": "5.000", "judged": "4",
        "unparseable": "0", "math": "4.00", "writing": "7.00"}  # writing: [[8]], two turns [[6]]; math [[4]]
BROKEN = {"model": "broken", "score": "–", "turn 1": "–", "turn 2": "–", "judged": "0", "unparseable": "4"}


@pytest.mark.parametrize("case, expected", [("scored", [TINY]),
                                            ("mixed", [{**BROKEN, "math": "–", "writing": "–"}, TINY]),
                                            ("unscored", [BROKEN])])
def test_results_md_is_a_valid_table(judged, case, expected):
    text = results_markdown(judged[case])
    assert table_rows(text) == expected
    assert "nan" not in text.lower()
    assert ("(–: no parseable judgment)" in text) == (case != "scored")  # a dash is said in words


def test_pairwise_table_says_when_no_verdict_was_parseable():
    from deft_eval.mt_bench import pairwise_markdown  # the table cli.py appends to results.md

    pairwise = {"tiny": {"baseline": "gpt-3.5-turbo", "win": 2, "loss": 1, "tie": 1, "inconsistent": 1,
                         "unparseable": 0, "win_rate": 0.5, "win_rate_ties_half": 0.625},
                "broken": {"baseline": "gpt-3.5-turbo", "win": 0, "loss": 0, "tie": 0, "inconsistent": 0,
                           "unparseable": 4, "win_rate": None, "win_rate_ties_half": None}}
    text = pairwise_markdown(pairwise)
    assert [(r["model"], r["win"], r["unparseable"], r["win rate"]) for r in table_rows(text)] == [
        ("broken", "0", "4", "–"), ("tiny", "2", "0", "0.500")]
    assert "nan" not in text.lower() and "(–: no parseable judgment)" in text


@pytest.mark.parametrize("case, legend", [("scored", ["tiny (5.50)"]),
                                          ("mixed", ["broken (no parseable judgment)", "tiny (5.50)"]),
                                          ("unscored", ["broken (no parseable judgment)"])])
def test_results_png_shows_the_scores(judged, case, legend, tmp_path, monkeypatch):
    from deft_plugin.utils import plots

    texts = {}
    save_figure = plots.save_figure

    def keep_texts(fig, path):  # what the figure says, read before it is saved and closed
        ax = fig.axes[0]
        texts["legend"] = [t.get_text() for t in ax.get_legend().get_texts()]
        texts["axes"] = [t.get_text() for t in ax.texts]
        return save_figure(fig, path)

    monkeypatch.setattr(plots, "save_figure", keep_texts)
    path = plot_results(judged[case], tmp_path / "results.png")
    assert texts["legend"] == legend
    assert ("no parseable judgment" in " ".join(texts["axes"])) == (case != "scored")
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    # not blank: the middle of the plot holds bars or the words for the missing scores
    height, width, _ = pixels.shape
    middle = pixels[int(0.3 * height):int(0.7 * height), int(0.3 * width):int(0.7 * width)]
    assert (middle < 250).any(axis=-1).mean() > 0.005
