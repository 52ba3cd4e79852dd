"""deft_plugin.core.answers: the statistics of answers that need no reference, as the collapse
guard, the evaluation and the study read them, and greedy answers in one padded batch."""

from __future__ import annotations

import pytest
import torch

from deft_plugin.core.answers import (
    AnswerSummary,
    distinct_n,
    distinct_word_share,
    eos_ids,
    generate_batch,
    generate_ids,
    repetitive,
    stopped_at_cap,
)


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


def test_distinct_n_counts_n_grams_over_all_answers():
    assert distinct_n(["a b a b", "a b"], 1) == 2 / 6 and distinct_n(["a b a b", "a b"], 2) == 2 / 4
    assert distinct_n(["a", ""], 2) == 0.0 and distinct_n([], 1) == 0.0


def test_generated_ids_stop_at_the_first_end_and_say_whether_the_cap_cut_them(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = tokenizer("Human: hello there Assistant:")["input_ids"]
    free = generate_ids(model, tokenizer, [prompt], max_new_tokens=12)[0]
    eos = eos_ids(model, tokenizer)
    assert eos == {tokenizer.eos_token_id} and len(free) == 12 and stopped_at_cap(free, 12, eos)
    model.generation_config.eos_token_id = free[3]  # the model's fourth token now ends the answer
    ended = generate_ids(model, tokenizer, [prompt], max_new_tokens=12)[0]
    assert ended == free[:4] and not stopped_at_cap(ended, 12, {free[3]})
    assert generate_batch(model, tokenizer, [prompt], 12) == [tokenizer.decode(ended, skip_special_tokens=True)]
