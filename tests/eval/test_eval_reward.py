"""The reward scorer on tiny random reward models built here, in both formats: the
OpenAssistant GPT-NeoX reward model PRO used (registered by deft_eval) and a standard
one-logit sequence-classification Llama; batched scores equal one-at-a-time forwards on text
written out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from deft_eval.registry import scorers
from deft_eval.reward_models import GPTNeoXRewardModelConfig, load_reward_model
from deft_eval.scorers import reward

RECORDS = [
    {"prompt": "\n\nHuman: How do I bake bread?\n\nAssistant:", "answer": "Mix flour, water and yeast, then bake."},
    {"prompt": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke.\n\nAssistant:", "answer": "No."},
]


@pytest.fixture(scope="module")
def oa_dir(tiny_tokenizer, tmp_path_factory):
    from deft_eval.reward_models import GPTNeoXRewardModel

    torch.manual_seed(0)
    config = GPTNeoXRewardModelConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, intermediate_size=64, max_position_embeddings=2048,
                                      pad_token_id=tiny_tokenizer.pad_token_id)
    d = tmp_path_factory.mktemp("oa-rm")
    model = GPTNeoXRewardModel(config)
    with torch.no_grad():
        model.out_proj.weight.mul_(20)  # logits of order 1, so sigmoid is not flat
    model.save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def standard_dir(tiny_tokenizer, tmp_path_factory):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tiny_tokenizer.pad_token_id, max_position_embeddings=2048)
    d = tmp_path_factory.mktemp("std-rm")
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        model.score.weight.mul_(20)
    model.save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


def one_logit(model, tokenizer, text: str, special: bool = False) -> float:
    ids = torch.tensor([tokenizer(text=text, add_special_tokens=special)["input_ids"][-1024:]])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, 0].item()


@pytest.mark.covers("plugin:deft_eval.scorers.reward", "scorer:reward")
def test_openassistant_format(oa_dir, tiny_tokenizer):
    loaded = load_reward_model(str(oa_dir), device="cpu")
    model, tok, kind = loaded
    assert kind == "openassistant" and type(model).__name__ == "GPTNeoXRewardModel"
    rows = scorers()["reward"].per_record(RECORDS, {"reward": loaded, "batch_size": 2})  # as registered
    eos = tok.eos_token
    texts = [f"<|prompter|>How do I bake bread?{eos}<|assistant|>Mix flour, water and yeast, then bake.{eos}",
             f"<|prompter|>Hi{eos}<|assistant|>Hello!{eos}<|prompter|>Tell me a joke.{eos}<|assistant|>No.{eos}"]
    for text, row in zip(texts, rows):
        z = one_logit(model, tok, text)
        assert row["reward_logit"] == pytest.approx(z, abs=1e-5)
        assert row["reward"] == pytest.approx(100 / (1 + math.exp(-z)), abs=1e-4)
    assert abs(rows[0]["reward_logit"] - rows[1]["reward_logit"]) > 1e-3


def test_standard_sequence_classifier_with_chat_template(standard_dir, tiny_tokenizer):
    loaded = load_reward_model(str(standard_dir), device="cpu")
    model, tok, kind = loaded
    assert kind == "standard"
    rows = reward.per_record(RECORDS, {"reward": loaded, "batch_size": 2})
    turns = [{"role": "user", "content": "How do I bake bread?"},
             {"role": "assistant", "content": "Mix flour, water and yeast, then bake."}]
    text = tok.apply_chat_template(turns, tokenize=False)
    assert text.startswith("<|im_start|>user\nHow do I bake bread?<|im_end|>")
    assert rows[0]["reward_logit"] == pytest.approx(one_logit(model, tok, text), abs=1e-5)


def test_long_dialogues_keep_their_last_1024_tokens(oa_dir):
    loaded = load_reward_model(str(oa_dir), device="cpu")
    model, tok, _ = loaded
    long = {"prompt": "\n\nHuman: " + "bread and butter " * 600 + "\n\nAssistant:", "answer": "Yes."}
    row = reward.per_record([long, RECORDS[0]], {"reward": loaded})[0]
    text = f"<|prompter|>{'bread and butter ' * 600}".rstrip() + f"{tok.eos_token}<|assistant|>Yes.{tok.eos_token}"
    assert len(tok(text=text)["input_ids"]) > 1024
    assert row["reward_logit"] == pytest.approx(one_logit(model, tok, text), abs=1e-5)


def test_missing_or_unsuitable_reward_model(tmp_path, tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    with pytest.raises(ValueError, match="--reward-model"):
        reward.per_record(RECORDS, {})
    with pytest.raises(RuntimeError, match="--reward-model DIR"):
        reward.per_record(RECORDS, {"reward_model": "OpenAssistant/oasst-rm-2-pythia-6.9b-epoch-1"})
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=3)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="one logit"):
        load_reward_model(str(tmp_path), device="cpu")


def test_a_judge_of_the_study_reads_the_dialogue_as_one_user_turn(standard_dir, tmp_path):
    """A folder with reward_form.json (what the study's judge is saved with) is scored in the form
    it was trained in: a system line, the whole dialogue as one user turn, the answer; the same
    model without the file reads the turns one by one."""
    import json
    import shutil

    from deft_eval.reward_models import FORM_FILE, JUDGE_SYSTEM, judge_row, one_turn_form

    judge = tmp_path / "judge"
    shutil.copytree(standard_dir, judge)
    (judge / FORM_FILE).write_text(json.dumps(one_turn_form()))
    loaded = load_reward_model(str(judge), device="cpu")
    model, tok, kind = loaded
    assert kind == "one-turn"
    rows = reward.per_record(RECORDS, {"reward": loaded, "batch_size": 2})
    dialogue = "Human: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke."
    text = (f"<|im_start|>system\n{JUDGE_SYSTEM}<|im_end|>\n<|im_start|>user\n{dialogue}<|im_end|>\n"
            "<|im_start|>assistant\nNo.<|im_end|>\n")
    assert rows[1]["reward_logit"] == pytest.approx(one_logit(model, tok, text), abs=1e-5)
    as_turns = reward.per_record(RECORDS, {"reward": load_reward_model(str(standard_dir), device="cpu")})
    assert abs(as_turns[1]["reward_logit"] - rows[1]["reward_logit"]) > 1e-4
    # the training row of Axolotl's bradley_terry.chat_template type holds the same three parts
    assert judge_row(RECORDS[1]["prompt"], "No.", "Yes.") == {"system": JUDGE_SYSTEM, "input": dialogue,
                                                              "chosen": "No.", "rejected": "Yes."}

    (judge / FORM_FILE).write_text(json.dumps({"dialogue": "turns", "system": JUDGE_SYSTEM}))
    with pytest.raises(ValueError, match=f"{FORM_FILE}: a reward model read in a form"):
        load_reward_model(str(judge), device="cpu")
