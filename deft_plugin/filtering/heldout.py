"""Held-out preference accuracy, one measurement and one tie rule for the demo and the study.

Each reply is measured through the head pass (core/head_pass.py: the decoder once per sequence,
the LM head on the reply positions only, a chunk at a time): its summed token log-probability and
token count, special tokens excluded, and optionally its distribution reward R under a given Qn.
A pair (or a ranked list) is won when its best reply has a higher mean token log-probability than
every other reply; a tie counts half (preference_correct)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from deft_plugin.core.chunked import next_tokens
from deft_plugin.core.head_pass import model_head_pass
from deft_plugin.data.encoding import EncodedRow, encode_rows, resolve_prompt_style
from deft_plugin.data.parsing import parse_rows
from deft_plugin.filtering.batching import batches_by_length, collate_candidates, values_per_row


class ReplyMeasure(NamedTuple):
    """One reply under one model: what accuracy (mean log p = logp / tokens), DPO's implicit
    reward (summed log p) and the reward gap need."""

    logp: float  # log p of the reply's tokens summed, special tokens excluded
    tokens: int  # the tokens in that sum
    reward: float  # R under the given Qn, averaged over the same tokens (0.0 without one)


@torch.inference_mode()
def measure_replies(model, rows: list[EncodedRow], special_ids, pad_id: int, qn: torch.Tensor | None = None,
                    batch_size: int = 8, progress: bool = True,
                    desc: str = "held-out") -> dict[int, tuple[ReplyMeasure, ...]]:
    """row index -> one ReplyMeasure per reply (best first), batched by length."""
    device = next(model.parameters()).device
    special = set(special_ids)
    out: dict[int, tuple[ReplyMeasure, ...]] = {}
    with tqdm(total=len(rows), desc=desc, unit="pair", disable=not progress) as bar:
        for batch in batches_by_length(rows, batch_size):
            ids, attn, pred = collate_candidates(batch, special, pad_id, device)
            passed = model_head_pass(model, {"input_ids": ids, "attention_mask": attn}, next_tokens(ids), pred,
                                     None if qn is None else pred, qn)
            measures = [ReplyMeasure(*v) for v in zip(passed.logps.tolist(), passed.lengths.tolist(),
                                                      passed.rewards.tolist())]
            out.update(values_per_row(measures, batch))
            bar.update(len(batch))
    return out


def preference_margin(replies: tuple[ReplyMeasure, ...]) -> float:
    """Mean token log p of the best reply minus the highest of the others'."""
    means = [r.logp / max(r.tokens, 1) for r in replies]
    return means[0] - max(means[1:])


def preference_correct(margins):
    """1 where the chosen reply wins (margin > 0), 0 where it loses, 0.5 on a tie; for a float,
    a numpy array or a tensor of margins. A tie is no preference either way, so it counts as the
    expected value of a coin flip: chance stays at 0.5, and a model that cannot tell two replies
    apart (an unchanged model's implicit reward margin is exactly 0) is not counted as wrong."""
    return (margins > 0) + 0.5 * (margins == 0)


def preference_accuracy(model, pairs: list[EncodedRow], special_ids, pad_id: int, batch_size: int = 8,
                        progress: bool = True, desc: str = "held-out") -> dict:
    """{pairs, accuracy, mean_margin}: margin = mean log p of the best reply minus the best of the others."""
    measured = measure_replies(model, pairs, special_ids, pad_id, None, batch_size, progress, desc)
    margins = [preference_margin(replies) for replies in measured.values()]
    count = max(1, len(margins))
    return {"pairs": len(margins), "accuracy": sum(preference_correct(m) for m in margins) / count,
            "mean_margin": sum(margins) / count}


def heldout_accuracy(model_dir: Path, raw_rows: list[dict], max_length: int | None, batch_size: int,
                     desc: str, format_name: str = "hh_rlhf") -> dict:
    """Preference accuracy of the model saved in `model_dir` on raw rows of a dataset format."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    parsed = parse_rows(raw_rows, format_name, resolve_prompt_style("auto", tokenizer), source="held-out")
    pairs, degenerate = encode_rows(parsed.rows, tokenizer, max_length)
    measured = preference_accuracy(model, pairs, tokenizer.all_special_ids, tokenizer.pad_token_id or 0, batch_size,
                                   desc=desc)
    # the rows that were not measured, and why: held_out = pairs + the counts here
    return {**measured, "held_out": len(raw_rows), "left_out": dict(parsed.unparseable + degenerate)}
