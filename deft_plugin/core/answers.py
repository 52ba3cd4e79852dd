"""A model's answers to prompts, and what can be said of answers without a reference: how long
they are, how varied their words, whether they loop. The collapse guard, the evaluation and the
study all read answers through these."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from statistics import fmean

import torch


@torch.inference_mode()
def generate_ids(model, tokenizer, prompts: list[list[int]], max_new_tokens: int,
                 temperature: float = 0.0) -> list[list[int]]:
    """The new token ids of each token-id prompt, left padded into one batch, up to and including
    the first end-of-sequence token (what follows it is padding): greedy at temperature 0 (below
    1e-4, as FastChat decides), sampled otherwise. An answer of max_new_tokens ids that does not end
    in one was cut off by the cap (stopped_at_cap)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    width = max(map(len, prompts))
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + list(ids) for ids in prompts], device=device)
    attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=device)
    sampling = {"do_sample": True, "temperature": temperature} if temperature >= 1e-4 else {"do_sample": False}
    output = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                            pad_token_id=pad_id, **sampling)
    eos = eos_ids(model, tokenizer)
    answers = []
    for row in output[:, width:].tolist():
        end = next((i + 1 for i, token in enumerate(row) if token in eos), len(row))
        answers.append(row[:end])
    return answers


def eos_ids(model, tokenizer) -> set[int]:
    """The tokens that end a generation: the model's generation config's, else the tokenizer's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is None:
        configured = tokenizer.eos_token_id
    return set(configured if isinstance(configured, (list, tuple)) else [configured]) - {None}


def stopped_at_cap(ids: list[int], max_new_tokens: int, eos: set[int]) -> bool:
    return len(ids) >= max_new_tokens and (not ids or ids[-1] not in eos)


def generate_batch(model, tokenizer, prompts: list[list[int]], max_new_tokens: int,
                   temperature: float = 0.0) -> list[str]:
    """The answers of generate_ids as text, special tokens removed."""
    return tokenizer.batch_decode(generate_ids(model, tokenizer, prompts, max_new_tokens, temperature),
                                  skip_special_tokens=True)


def distinct_word_share(text: str) -> float:
    """Distinct words over words of an answer: near 1 for ordinary prose, near 0 for an answer
    that repeats itself (a degenerate model); 0 for an empty answer."""
    words = text.split()
    return len(set(words)) / len(words) if words else 0.0


def repetitive(text: str, n: int = 3, times: int = 3) -> bool:
    """Whether an answer loops: some run of `n` words occurs `times` times or more in it (a
    degenerate model's "I'm sorry, I'm sorry, ..."; ordinary prose seldom repeats a 3-word run thrice)."""
    words = text.split()
    runs = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return bool(runs) and max(runs.values()) >= times


def distinct_n(answers: list[str], n: int) -> float:
    """Distinct-n over a set of answers (Li et al. 2016): distinct word n-grams over all word
    n-grams of all the answers; 0 when they hold none."""
    grams = [tuple(words[i:i + n]) for words in (a.split() for a in answers) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@dataclass(frozen=True)
class AnswerSummary:
    """Means over a set of answers: distinct-word share, the share of repetitive answers, length
    in characters; and how many answers they are."""

    distinct_words: float
    repetitive: float
    chars: float
    answers: int

    @classmethod
    def of(cls, answers: list[str]) -> "AnswerSummary":
        if not answers:
            raise ValueError("no answers to summarise")
        return cls(fmean(map(distinct_word_share, answers)), fmean(float(repetitive(a)) for a in answers),
                   fmean(map(len, answers)), len(answers))
