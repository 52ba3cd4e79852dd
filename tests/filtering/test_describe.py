"""describe_selection: what tells the kept pairs from the dropped ones, by hand."""

from __future__ import annotations

import pytest

from deft_plugin.filtering.describe import describe_selection, reply_text, shorten

ROWS = [
    {"prompt": "Q0", "chosen": "a" * 10, "rejected": "b" * 30},
    {"prompt": [{"role": "user", "content": "Q1"}], "chosen": [{"role": "assistant", "content": "c" * 20}],
     "rejected": [{"role": "assistant", "content": "d" * 40}]},
    {"prompt": "Q2", "chosen": "e" * 100, "rejected": "f" * 10},
    {"prompt": "Q3", "chosen": "g" * 50, "rejected": "h" * 50},
]


def test_lengths_scores_and_examples():
    scores = {0: 0.3, 1: 0.5, 2: -0.2, 3: 0.0}
    out = describe_selection(ROWS, scores, kept=[0, 1], examples=1)
    kept, dropped = out["kept"], out["dropped"]
    assert (kept["pairs"], kept["chosen_chars"], kept["rejected_chars"]) == (2, 15, 35)
    assert kept["score"] == pytest.approx(0.4) and dropped["score"] == pytest.approx(-0.1)
    assert (dropped["chosen_chars"], dropped["rejected_chars"]) == (75, 30)
    assert kept["examples"][0]["index"] == 1 and kept["examples"][0]["prompt"] == "Q1"  # the highest kept
    assert dropped["examples"][0]["index"] == 2  # the lowest dropped
    assert describe_selection(ROWS, {0: 0.1}, kept=[0])["dropped"] == {"pairs": 0}


def test_text_helpers():
    assert reply_text([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]) == "a b"
    assert shorten("x" * 100, 10) == "xxxxxxx..." and shorten(" a \n b ") == "a b"
