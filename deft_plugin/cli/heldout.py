"""Held-out ranking accuracy: the share of pairs where the model gives the chosen reply a
higher mean token log-probability than the rejected one (for a ranked list: than every
other reply)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from deft_plugin.data.encoding import EncodedRow
from deft_plugin.filtering.scorer import batches_by_length, collate_candidates, per_row


@torch.inference_mode()
def mean_logprobs(model, pairs: list[EncodedRow], special_ids, pad_id: int, batch_size: int = 8,
                  progress: bool = True, desc: str = "ranking") -> dict[int, tuple[float, ...]]:
    """row index -> mean log p of the reply tokens of each reply (best first); special tokens excluded."""
    device = next(model.parameters()).device
    special = set(special_ids)
    out: dict[int, tuple[float, float]] = {}
    with tqdm(total=len(pairs), desc=desc, unit="pair", disable=not progress) as bar:
        for batch in batches_by_length(pairs, batch_size):
            ids, attn, pred = collate_candidates(batch, special, pad_id, device)
            logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
            targets = torch.zeros_like(ids)
            targets[:, :-1] = ids[:, 1:]
            logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            out.update(per_row(((logp * pred).sum(1) / pred.sum(1).clamp_min(1)).tolist(), batch))
            bar.update(len(batch))
    return out


def ranking_accuracy(model, pairs: list[EncodedRow], special_ids, pad_id: int, batch_size: int = 8,
                     progress: bool = True, desc: str = "ranking") -> dict:
    lp = mean_logprobs(model, pairs, special_ids, pad_id, batch_size, progress, desc)
    margins = [v[0] - max(v[1:]) for v in lp.values()]
    return {"pairs": len(margins), "accuracy": sum(m > 0 for m in margins) / max(1, len(margins)),
            "mean_margin": sum(margins) / max(1, len(margins))}
