"""Tiny local models, tokenizers and data files for tests (nothing from the hub)."""

from __future__ import annotations

import contextlib
import gzip
import json
import math
from dataclasses import replace
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SHARED_DATA = REPO.parent / "shared" / "data"
HH_TEST = SHARED_DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"

# The fixture the filter tests share: the first HH_PAIRS real HH-RLHF pairs, the tiny tokenizer
# (build_tokenizer), sequence_len SEQUENCE_LEN and a keep ratio RATIO. The prompts of
# PROMPT_FILLS_SEQUENCE of them are SEQUENCE_LEN tokens or longer, which leaves their replies no
# room (tests/filtering/test_scoring.py derives that count from the token ids).
HH_PAIRS = 64
SEQUENCE_LEN = 256
RATIO = 0.25
PROMPT_FILLS_SEQUENCE = 18
SCORED = HH_PAIRS - PROMPT_FILLS_SEQUENCE
KEPT = math.ceil(RATIO * SCORED)

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]


def hh_rows(n: int | None = None) -> list[dict]:
    rows = []
    with gzip.open(HH_TEST, "rt") as f:
        for line in f:
            rows.append(json.loads(line))
            if n is not None and len(rows) >= n:
                break
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def build_tokenizer(directory: Path, vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on real HH-RLHF text, with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [r["chosen"] + r["rejected"] for r in hh_rows(400)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|endoftext|>",
                                   pad_token="<pad>", unk_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.chat_template = CHATML
    fast.save_pretrained(directory)
    return fast


def build_llama(directory: Path, tokenizer, hidden: int = 32, layers: int = 2, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model


def sharpened(model, scale: float):
    """A copy of a tiny random model with its LM head scaled: next-token distributions far
    from uniform, so distribution rewards are of order 0.01-0.1 instead of 1e-4 and
    comparisons at 1e-6 are meaningful."""
    import copy

    import torch

    model = copy.deepcopy(model)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(scale)
    return model


def listwise_rows(n: int, with_rewards_every: int = 2) -> list[dict]:
    """Ranked rows built from real HH-RLHF pairs: the prompt text, then chosen, rejected and
    (for rows i % 4 != 0) the rejected reply of the next dialogue as the worst, and (for
    rows i % 4 == 3) a fourth, the chosen reply of the one after; so n is 2, 3 or 4.
    Every `with_rewards_every`-th row carries falling reward scores."""
    from deft_plugin.data.formats.hh_rlhf import split_transcript

    pairs = hh_rows(n + 2)
    out = []
    for i in range(n):
        prompt, chosen = split_transcript(pairs[i]["chosen"])
        _, rejected = split_transcript(pairs[i]["rejected"])
        responses = [" " + chosen, " " + rejected]
        if i % 4:
            responses.append(" " + split_transcript(pairs[i + 1]["rejected"])[1])
        if i % 4 == 3:
            responses.append(" " + split_transcript(pairs[i + 2]["chosen"])[1])
        row = {"prompt": prompt, "responses": responses}
        if with_rewards_every and i % with_rewards_every == 0:
            row["rewards"] = [2.0 - k for k in range(len(responses))]
        out.append(row)
    return out


def judging_files(directory: Path, prompts: int, models=("dpo", "deft")) -> tuple[list[str], str]:
    """(deft-eval answer files, one per model, each answering `prompts` HH-RLHF prompts; an
    annotators file with one annotator "ann") for `deft-app serve`."""
    answers = [str(write_jsonl(directory / f"{model}.jsonl",
                               [{"id": f"h/{i}", "model": model, "answer": f"{model} {i}",
                                 "prompt": "\n\nHuman: hi\n\nAssistant:"} for i in range(prompts)]))
               for model in models]
    annotators = write_jsonl(directory / "annotators.jsonl", [{"name": "ann", "password": "long password"}])
    return answers, str(annotators)


@contextlib.contextmanager
def loss_changed(trainer, **changes):
    """A DEFT trainer configured with its loss settings changed by `changes` (dataclasses.replace)
    for the block; its own settings are back afterwards."""
    saved = trainer.deft_loss
    trainer.configure_deft(replace(saved, **changes))
    try:
        yield trainer.deft_loss
    finally:
        trainer.deft_loss = saved
