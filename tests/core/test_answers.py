"""deft_plugin.core.answers: the statistics of answers that need no reference, as the collapse
guard, the evaluation and the study read them, and greedy answers in one padded batch."""

from __future__ import annotations

import pytest
import torch

from deft_plugin.core.answers import AnswerSummary, distinct_word_share, generate_batch, repetitive


def test_distinct_word_share_sees_repetition():
    assert distinct_word_share("I I I I") == 0.25
    assert distinct_word_share("the cat sat on the mat") == 5 / 6
    assert distinct_word_share("") == 0.0


def test_a_looping_answer_is_repetitive_and_prose_is_not():
    assert repetitive("I'm sorry I'm sorry I'm sorry I'm sorry")
    assert repetitive("the the the the the") and not repetitive("the the the the")
    assert not repetitive("Paris is the capital of France, and Lyon is its second city by most measures.")
    assert not repetitive("")


def test_a_summary_is_the_mean_of_each_statistic():
    summary = AnswerSummary.of(["the cat sat on the mat", "no no no no no", ""])
    assert summary.distinct_words == pytest.approx((5 / 6 + 1 / 5 + 0) / 3)
    assert summary.repetitive == pytest.approx(1 / 3)
    assert summary.chars == pytest.approx((22 + 14 + 0) / 3) and summary.answers == 3
    with pytest.raises(ValueError, match="no answers"):
        AnswerSummary.of([])


def test_a_batch_of_greedy_answers_equals_each_prompt_answered_alone(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [tokenizer("Human: hello there Assistant:")["input_ids"], tokenizer("Human: hi Assistant:")["input_ids"]]
    together = generate_batch(model, tokenizer, prompts, max_new_tokens=6)
    alone = [generate_batch(model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert together == alone and all(isinstance(a, str) for a in together)
    assert torch.is_inference_mode_enabled() is False
