"""Held-out preference accuracy: the share of pairs where the model gives the chosen reply a
higher mean token log-probability than the rejected one (for a ranked list: than every
other reply)."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from deft_plugin.core.chunked import next_tokens
from deft_plugin.data.encoding import EncodedRow, encode_rows, resolve_prompt_style
from deft_plugin.data.parsing import parse_rows
from deft_plugin.filtering.batching import batches_by_length, collate_candidates, values_per_row


@torch.inference_mode()
def mean_logprobs(model, pairs: list[EncodedRow], special_ids, pad_id: int, batch_size: int = 8,
                  progress: bool = True, desc: str = "held-out") -> dict[int, tuple[float, ...]]:
    """row index -> mean log p of the reply tokens of each reply (best first); special tokens excluded."""
    device = next(model.parameters()).device
    special = set(special_ids)
    out: dict[int, tuple[float, ...]] = {}
    with tqdm(total=len(pairs), desc=desc, unit="pair", disable=not progress) as bar:
        for batch in batches_by_length(pairs, batch_size):
            ids, attn, pred = collate_candidates(batch, special, pad_id, device)
            logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
            logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, next_tokens(ids).unsqueeze(-1)).squeeze(-1)
            out.update(values_per_row(((logp * pred).sum(1) / pred.sum(1).clamp_min(1)).tolist(), batch))
            bar.update(len(batch))
    return out


def preference_accuracy(model, pairs: list[EncodedRow], special_ids, pad_id: int, batch_size: int = 8,
                        progress: bool = True, desc: str = "held-out") -> dict:
    """{pairs, accuracy, mean_margin}: margin = mean log p of the best reply minus the best of the others."""
    lp = mean_logprobs(model, pairs, special_ids, pad_id, batch_size, progress, desc)
    margins = [v[0] - max(v[1:]) for v in lp.values()]
    return {"pairs": len(margins), "accuracy": sum(m > 0 for m in margins) / max(1, len(margins)),
            "mean_margin": sum(margins) / max(1, len(margins))}


def heldout_accuracy(model_dir: Path, raw_rows: list[dict], max_length: int | None, batch_size: int,
                     desc: str, format_name: str = "hh_rlhf") -> dict:
    """Preference accuracy of the model saved in `model_dir` on raw rows of a dataset format."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    parsed = parse_rows(raw_rows, format_name, resolve_prompt_style("auto", tokenizer), source="held-out")
    pairs, _ = encode_rows(parsed.rows, tokenizer, max_length)
    return preference_accuracy(model, pairs, tokenizer.all_special_ids, tokenizer.pad_token_id or 0, batch_size,
                               desc=desc)
