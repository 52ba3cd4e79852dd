"""The listwise (ranked) row format, the collator that flattens ranked rows for PRO, and
encode_rows on ranked rows."""

import math
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from deft_plugin import registry
from deft_plugin.data.encoding import encode_rows
from deft_plugin.data.formats import listwise
from deft_plugin.data.formats.listwise import parse
from deft_plugin.hookspecs import RowError
from deft_plugin.integration.collator import IGNORE_INDEX, ListwiseCollator

NAN = float("nan")


def _msg(role, text):
    return [{"role": role, "content": text}]


# ----------------------------------------------------------------------------- parse: valid rows


@pytest.mark.covers("plugin:deft_plugin.data.formats.listwise", "format:listwise")
def test_listwise_as_registered():
    assert registry.plugin_manager().get_plugin("listwise") is listwise
    fmt = registry.get_format("listwise")
    row = {"prompt": "Q?", "responses": ["best", "worst"], "rewards": [1, 0]}
    assert fmt.parse(row, "raw") == {"prompt": "Q?", "responses": ["best", "worst"], "rewards": [1.0, 0.0]}
    with pytest.raises(RowError, match="fewer than 2 responses"):
        fmt.parse({"prompt": "Q?", "responses": ["only"]}, "raw")


def test_parse_text_row_without_rewards():
    row = {"prompt": "Q?", "responses": ["best", "mid", "worst"], "extra": 1}
    out = parse(row, "raw")
    assert out == {"prompt": "Q?", "responses": ["best", "mid", "worst"], "rewards": None}
    assert out["responses"] is not row["responses"]  # a copy, not the caller's list


def test_parse_text_row_with_rewards_as_floats():
    out = parse({"prompt": "Q?", "responses": ["a", "b", "c", "d"], "rewards": [3, 2.5, 2.5, -1]}, "raw")
    assert out["rewards"] == [3.0, 2.5, 2.5, -1.0]
    assert all(type(r) is float for r in out["rewards"])
    assert parse({"prompt": "Q", "responses": ["a", "b"], "rewards": None}, "raw")["rewards"] is None


def test_parse_chat_message_row():
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    responses = [_msg("assistant", "4"), _msg("assistant", "5"), _msg("assistant", "22")]
    out = parse({"prompt": prompt, "responses": responses, "rewards": [1.0, 0.0, -1.0]}, "chat_template")
    assert out["prompt"] == prompt and out["responses"] == responses and out["rewards"] == [1.0, 0.0, -1.0]


# ----------------------------------------------------------------------------- parse: errors


@pytest.mark.parametrize("row,style,words", [
    ({"responses": ["a", "b"]}, "raw", ["'prompt'"]),
    ({"prompt": 3, "responses": ["a", "b"]}, "raw", ["'prompt'"]),
    ({"prompt": "Q"}, "raw", ["'responses'", "not a list"]),
    ({"prompt": "Q", "responses": "a b"}, "raw", ["'responses'", "not a list"]),
    ({"prompt": "Q", "responses": ["only"]}, "raw", ["fewer than 2", "(1)"]),
    ({"prompt": "Q", "responses": []}, "raw", ["fewer than 2", "(0)"]),
    ({"prompt": "Q", "responses": ["a", 7]}, "raw", ["response", "neither text nor chat"]),
    ({"prompt": "Q", "responses": ["a", [{"role": "assistant"}]]}, "raw", ["response", "neither text nor chat"]),
    ({"prompt": "Q", "responses": ["a", _msg("assistant", "b")]}, "chat_template", ["mix text and chat"]),
    ({"prompt": _msg("user", "Q"), "responses": ["a", "b"]}, "chat_template", ["mix text and chat"]),
    ({"prompt": _msg("user", "Q"), "responses": [_msg("assistant", "a"), _msg("assistant", "b")]}, "raw",
     ["chat-message rows", "chat_template"]),
    ({"prompt": "Q", "responses": ["a", "b", "c"], "rewards": [1.0, 0.0]}, "raw",
     ["'rewards'", "one number per", "(3)"]),
    ({"prompt": "Q", "responses": ["a", "b"], "rewards": 1.0}, "raw", ["'rewards'", "(2)"]),
    ({"prompt": "Q", "responses": ["a", "b"], "rewards": [1.0, NAN]}, "raw", ["'rewards'", "not a finite number"]),
    ({"prompt": "Q", "responses": ["a", "b"], "rewards": [math.inf, 0.0]}, "raw", ["not a finite number"]),
    ({"prompt": "Q", "responses": ["a", "b"], "rewards": [1.0, "0.5"]}, "raw", ["not a finite number"]),
    ({"prompt": "Q", "responses": ["a", "b"], "rewards": [True, False]}, "raw", ["not a finite number"]),
    ({"prompt": "Q", "responses": ["a", "b"], "rewards": [1.0, None]}, "raw", ["not a finite number"]),
    ({"prompt": "Q", "responses": ["a", "b", "c"], "rewards": [2.0, 1.0, 1.5]}, "raw", ["rise", "best first"]),
    ({"prompt": "Q", "responses": ["a", "b"], "rewards": [0.0, 0.1]}, "raw", ["rise", "best first"]),
])
def test_parse_errors_name_the_problem(row, style, words):
    with pytest.raises(RowError) as err:
        parse(row, style)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


# ----------------------------------------------------------------------------- collator


def _tok(pad=0, eos=99):
    return SimpleNamespace(pad_token_id=pad, eos_token_id=eos)


FEATURES = [
    {"prompt_ids": [1, 2, 3], "completion_ids": [[10, 11], [20], [30, 31, 32]], "rewards": [2.0, 1.0, -0.5]},
    {"prompt_ids": [4], "completion_ids": [[40, 41, 42, 43], [50]], "rewards": []},
]
P = IGNORE_INDEX


def test_collator_flattens_row_by_row_best_first():
    out = ListwiseCollator(_tok(pad=0))(FEATURES)
    assert out["input_ids"].tolist() == [
        [1, 2, 3, 10, 11, 0],
        [1, 2, 3, 20, 0, 0],
        [1, 2, 3, 30, 31, 32],
        [4, 40, 41, 42, 43, 0],
        [4, 50, 0, 0, 0, 0],
    ]
    assert out["labels"].tolist() == [
        [P, P, P, 10, 11, P],
        [P, P, P, 20, P, P],
        [P, P, P, 30, 31, 32],
        [P, 40, 41, 42, 43, P],
        [P, 50, P, P, P, P],
    ]
    assert out["attention_mask"].tolist() == [
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 0, 0, 0, 0],
    ]
    assert out["group_sizes"].tolist() == [3, 2]
    assert out["input_ids"].dtype == torch.long and out["labels"].dtype == torch.long


def test_collator_rewards_nan_where_absent_and_as_padding():
    rewards = ListwiseCollator(_tok())(FEATURES)["rewards"]
    assert rewards.shape == (2, 3) and rewards.dtype == torch.float32
    assert rewards[0].tolist() == [2.0, 1.0, -0.5]
    assert torch.isnan(rewards[1]).all()
    # a shorter row with rewards: NaN as padding after its own
    feats = [FEATURES[1] | {"rewards": [0.5, 0.25]}, FEATURES[0]]
    rewards = ListwiseCollator(_tok())(feats)["rewards"]
    assert rewards[0, :2].tolist() == [0.5, 0.25] and math.isnan(rewards[0, 2].item())
    assert rewards[1].tolist() == [2.0, 1.0, -0.5]
    assert ListwiseCollator(_tok())(feats)["group_sizes"].tolist() == [2, 3]


def test_collator_pad_to_multiple_of():
    out = ListwiseCollator(_tok(pad=7), pad_to_multiple_of=4, padding="longest", return_tensors="pt")(FEATURES)
    assert out["input_ids"].shape == (5, 8)
    assert out["input_ids"][2].tolist() == [1, 2, 3, 30, 31, 32, 7, 7]
    assert out["labels"][2].tolist() == [P, P, P, 30, 31, 32, P, P]
    assert out["attention_mask"].sum(1).tolist() == [5, 4, 6, 5, 2]
    # already a multiple: unchanged width
    assert ListwiseCollator(_tok(), pad_to_multiple_of=3)(FEATURES)["input_ids"].shape == (5, 6)


def test_collator_falls_back_to_eos_and_fails_without_both():
    out = ListwiseCollator(_tok(pad=None, eos=99))(FEATURES)
    assert out["input_ids"][4].tolist() == [4, 50, 99, 99, 99, 99]
    assert out["labels"][4].tolist() == [P, 50, P, P, P, P]
    with pytest.raises(ValueError, match="neither a pad nor an EOS"):
        ListwiseCollator(_tok(pad=None, eos=None))
    # pad id 0 is a real id, not "missing"
    assert ListwiseCollator(_tok(pad=0, eos=99)).pad_id == 0


# ----------------------------------------------------------------------------- encode_rows on ranked rows


PROMPT = "\n\nHuman: Tell me about bread.\n\nAssistant:"


def test_encode_ranked_text_rows_share_prompt(tiny_tokenizer):
    tok = tiny_tokenizer
    rows = [
        {"prompt": PROMPT, "responses": [" Bread is baked.", " It is food.", " No.", " Go away."], "rewards": None},
        {"prompt": "Plain prompt.", "responses": [" Yes.", " No."], "rewards": [1.0, 0.0]},
    ]
    encoded, dropped = encode_rows(rows, tok)
    assert dropped == Counter()
    assert [e.index for e in encoded] == [0, 1]
    assert [len(e.completions) for e in encoded] == [4, 2]
    for e, row in zip(encoded, rows):
        assert list(e.prompt_ids) == tok(text=row["prompt"])["input_ids"]
        for ids, reply in zip(e.completions, row["responses"]):
            assert ids[-1] == tok.eos_token_id
            assert list(e.prompt_ids + ids) == tok(text=row["prompt"] + reply + tok.eos_token)["input_ids"]
            assert tok.decode(list(ids)) == reply + tok.eos_token
    assert encoded[0].chosen_ids == encoded[0].completions[0]


def test_encode_ranked_message_rows_share_prompt(tiny_tokenizer):
    tok = tiny_tokenizer
    user = _msg("user", "Hi")
    rows = [{"prompt": user, "responses": [_msg("assistant", t) for t in ("Hello", "Hey", "Go away")]}]
    (e,), dropped = encode_rows(rows, tok)
    assert dropped == Counter() and len(e.completions) == 3
    assert tok.decode(list(e.prompt_ids)) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert [tok.decode(list(c)) for c in e.completions] == ["Hello<|im_end|>\n", "Hey<|im_end|>\n",
                                                            "Go away<|im_end|>\n"]


def test_encode_ranked_degenerate_rows_dropped_whole(tiny_tokenizer):
    rows = [
        {"prompt": PROMPT, "responses": [" Yes.", "", " No."]},  # 0 empty rank-2
        {"prompt": PROMPT, "responses": [" Yes.", " No.", " ", " Maybe."]},  # 1 empty rank-3
        {"prompt": PROMPT, "responses": [" Yes.", " No.", " Yes."]},  # 2 two identical (ranks 1 and 3)
        {"prompt": PROMPT, "responses": [" Yes.", ""]},  # 3 n = 2: empty rejected
        {"prompt": PROMPT, "responses": ["", " No."]},  # 4 n = 2: empty chosen
        {"prompt": PROMPT, "responses": [" Same.", " Same."]},  # 5 n = 2: identical
        {"prompt": PROMPT, "responses": [" Yes.", " No.", " Maybe."]},  # 6 kept
        {"prompt": PROMPT, "responses": ["", " No.", ""]},  # 7 empty rank-1 (the first empty one counts)
    ]
    encoded, dropped = encode_rows(rows, tiny_tokenizer)
    assert [e.index for e in encoded] == [6]
    assert len(encoded[0].completions) == 3
    assert dropped == Counter({"empty rank-2 reply": 1, "empty rank-3 reply": 1, "two replies identical": 1,
                               "empty rejected reply": 1, "empty chosen reply": 1,
                               "chosen and rejected identical": 1, "empty rank-1 reply": 1})
    assert sum(dropped.values()) + len(encoded) == len(rows)
