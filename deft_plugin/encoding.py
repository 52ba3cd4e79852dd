"""Tokenising preference rows the way TRL's DPO trainer does, so that the pairs scored
here are the sequences trained on: the prompt alone (with the generation prompt for chat
messages), then prompt + reply, the reply being the tail. Text replies get EOS appended.
Sequences longer than max_length are cut at the end (TRL's keep_start)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class EncodedPair:
    index: int  # position of the row in the input
    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]


def _ids(tokenizer, value, **kwargs) -> list[int]:
    if isinstance(value, list):
        out = tokenizer.apply_chat_template(value, tokenize=True, return_dict=True, **kwargs)
    else:
        out = tokenizer(text=value)
    return list(out["input_ids"])


def encode_completion(tokenizer, prompt, completion, prompt_ids: list[int] | None = None) -> tuple[list[int], list[int]]:
    """(prompt_ids, completion_ids) for one prompt/completion in TRL's manner."""
    if prompt_ids is None:
        prompt_ids = _ids(tokenizer, prompt, add_generation_prompt=isinstance(prompt, list))
    if isinstance(prompt, list):
        full = _ids(tokenizer, prompt + completion)
    else:
        eos = tokenizer.eos_token or ""
        full = _ids(tokenizer, prompt + (completion if completion.endswith(eos) else completion + eos))
    return prompt_ids, full[len(prompt_ids):]


def _truncate(prompt_ids: list[int], completion_ids: list[int], max_length: int | None) -> list[int]:
    if max_length is None:
        return completion_ids
    return completion_ids[: max(0, max_length - len(prompt_ids))]


def _has_text(tokenizer, ids) -> bool:
    """Whether the reply says anything: an empty reply still carries template tokens such as
    a newline after the end-of-turn marker, so look at the decoded text."""
    return bool(tokenizer.decode(list(ids), skip_special_tokens=True).strip())


def encode_pairs(rows, tokenizer, max_length: int | None = None) -> tuple[list[EncodedPair], Counter]:
    """Encode rows (dicts with prompt/chosen/rejected). Returns the usable pairs and the
    degenerate ones counted by reason (empty reply, identical replies)."""
    pairs, dropped = [], Counter()
    for i, row in enumerate(rows):
        prompt_ids, chosen = encode_completion(tokenizer, row["prompt"], row["chosen"])
        _, rejected = encode_completion(tokenizer, row["prompt"], row["rejected"], prompt_ids)
        if not _has_text(tokenizer, chosen):
            dropped["empty chosen reply"] += 1
            continue
        if not _has_text(tokenizer, rejected):
            dropped["empty rejected reply"] += 1
            continue
        chosen, rejected = _truncate(prompt_ids, chosen, max_length), _truncate(prompt_ids, rejected, max_length)
        if not (_has_text(tokenizer, chosen) and _has_text(tokenizer, rejected)):
            dropped["reply cut off: prompt fills sequence_len"] += 1
        elif chosen == rejected:
            dropped["chosen and rejected identical"] += 1
        else:
            pairs.append(EncodedPair(i, tuple(prompt_ids), tuple(chosen), tuple(rejected)))
    return pairs, dropped
