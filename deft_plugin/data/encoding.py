"""Tokenising preference and ranked rows the way TRL's DPO trainer does, so that the
sequences scored here are the sequences trained on (by TRL's DPO and by the PRO trainer):
the prompt alone (with the generation prompt for chat messages), then prompt + reply, the
reply being the tail. Text replies get EOS appended. Sequences longer than max_length are
cut at the end (TRL's keep_start)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class EncodedRow:
    """One prompt with its candidate replies, best first: a preference pair (chosen,
    rejected) or a ranked list of n >= 2 replies."""

    index: int  # position of the row in the input
    prompt_ids: tuple[int, ...]
    completions: tuple[tuple[int, ...], ...]

    @property
    def chosen_ids(self) -> tuple[int, ...]:
        return self.completions[0]

    @property
    def rejected_ids(self) -> tuple[int, ...]:
        """The second reply: the rejected one of a pair."""
        return self.completions[1]


def resolve_prompt_style(style: str | None, tokenizer) -> str:
    """`auto`: chat messages when the tokenizer has a chat template, raw text otherwise."""
    if style in (None, "auto"):
        return "chat_template" if getattr(tokenizer, "chat_template", None) else "raw"
    return style


def completions_of(row: dict) -> list:
    """The candidate replies of a parsed row, best first: `responses` of a ranked row, or
    `chosen` and `rejected` of a preference row."""
    return list(row["responses"]) if "responses" in row else [row["chosen"], row["rejected"]]


def as_ranked(row: dict) -> dict:
    """Any parsed row as a ranked row, so that rows of different formats share one schema."""
    return {"prompt": row["prompt"], "responses": completions_of(row), "rewards": row.get("rewards")}


def text_as_messages(row: dict) -> dict:
    """A parsed row whose prompt and replies are text, as chat messages: a "\\n\\nHuman: ...\\n\\nAssistant:"
    prompt turn by turn (as the hh_rlhf format reads it), any other text as one user turn; each reply
    one assistant turn."""
    from deft_plugin.data.formats.hh_rlhf import to_messages
    from deft_plugin.hookspecs import RowError

    try:
        prompt = to_messages(row["prompt"])
    except RowError:
        prompt = [{"role": "user", "content": row["prompt"].strip()}]
    replies = [[{"role": "assistant", "content": reply.strip()}] for reply in completions_of(row)]
    named = {"responses": replies} if "responses" in row else {"chosen": replies[0], "rejected": replies[1]}
    return {**row, "prompt": prompt, **named}


def in_one_form(rows: list[dict]) -> tuple[list[dict], int]:
    """Rows of several datasets in one form, so that they can share one table and one template: when some
    are chat messages and some text, the text rows become messages. Returns (rows, rows converted)."""
    chat = [isinstance(row["prompt"], list) for row in rows]
    if all(chat) or not any(chat):
        return rows, 0
    return [row if is_chat else text_as_messages(row) for row, is_chat in zip(rows, chat)], chat.count(False)


def _ids(tokenizer, value, **kwargs) -> list[int]:
    if isinstance(value, list):
        out = tokenizer.apply_chat_template(value, tokenize=True, return_dict=True, **kwargs)
    else:
        out = tokenizer(text=value)
    return list(out["input_ids"])


def encode_completion(tokenizer, prompt, completion,
                      prompt_ids: list[int] | None = None) -> tuple[list[int], list[int]]:
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


def _reply_label(rank: int, n: int) -> str:
    return ("chosen", "rejected")[rank] if n == 2 else f"rank-{rank + 1}"


DUPLICATE = "duplicate"  # the same prompt and replies as an earlier row: the first is kept
IDENTICAL_AFTER_TRUNCATION = "identical_after_truncation"  # replies that differ only past sequence_len


class Dropped(Counter):
    """Degenerate rows counted by reason, the input indices of the rows of each reason, and for a
    duplicate the index of the row it repeats."""

    def __init__(self):
        super().__init__()
        self.rows: dict[str, list[int]] = {}
        self.duplicate_of: dict[int, int] = {}
        self.truncated = 0  # usable rows with a reply cut to fit (keep_start)

    def add(self, reason: str, index: int) -> None:
        self[reason] += 1
        self.rows.setdefault(reason, []).append(index)

    def by_row(self) -> list[tuple[int, str]]:
        """(index, reason) of every dropped row, in input order."""
        return sorted((i, reason) for reason, indices in self.rows.items() for i in indices)


def pair_key(row: dict) -> str:
    """What makes two parsed rows the same example: the prompt and the replies in their order."""
    return json.dumps([row["prompt"], completions_of(row)], sort_keys=True, ensure_ascii=False)


TRUNCATIONS = ("keep_start", "drop")


def encode_rows(rows, tokenizer, max_length: int | None = None,
                truncation: str = "keep_start") -> tuple[list[EncodedRow], Dropped]:
    """Encode parsed rows (preference or ranked). Returns the usable rows and the degenerate
    ones counted by reason (a repeat of an earlier row, an empty reply, identical replies, replies
    that become identical when cut to max_length, a reply cut off by max_length: with truncation
    keep_start, as TRL does, only when the prompt leaves it nothing; with drop, whenever it does not
    fit whole); a degenerate row is dropped whole, never shortened to fewer replies."""
    if truncation not in TRUNCATIONS:
        raise ValueError(f"deft_truncation must be one of {', '.join(TRUNCATIONS)}, got {truncation!r}")
    out, dropped, first_seen = [], Dropped(), {}
    for i, row in enumerate(rows):
        key = pair_key(row)
        if key in first_seen:  # trained on twice, measured twice: keep the first copy only
            dropped.add(DUPLICATE, i)
            dropped.duplicate_of[i] = first_seen[key]
            continue
        first_seen[key] = i
        replies = completions_of(row)
        prompt_ids, first = encode_completion(tokenizer, row["prompt"], replies[0])
        encoded = [first] + [encode_completion(tokenizer, row["prompt"], reply, prompt_ids)[1] for reply in replies[1:]]
        empty = next((k for k, ids in enumerate(encoded) if not _has_text(tokenizer, ids)), None)
        if empty is not None:
            dropped.add(f"empty {_reply_label(empty, len(replies))} reply", i)
            continue
        cut = [tuple(_truncate(prompt_ids, ids, max_length)) for ids in encoded]
        shortened = any(len(c) < len(ids) for c, ids in zip(cut, encoded))
        if not all(_has_text(tokenizer, ids) for ids in cut):
            dropped.add("reply cut off: prompt fills sequence_len", i)
        elif shortened and truncation == "drop":
            dropped.add("reply cut off by sequence_len", i)
        elif len(set(map(tuple, encoded))) < len(encoded):
            dropped.add("chosen and rejected identical" if len(encoded) == 2 else "two replies identical", i)
        elif len(set(cut)) < len(cut):  # DPO learns nothing from a pair it cannot tell apart
            dropped.add(IDENTICAL_AFTER_TRUNCATION, i)
        else:
            encoded = cut
            dropped.truncated += shortened
            out.append(EncodedRow(i, tuple(prompt_ids), tuple(encoded)))
    return out, dropped
