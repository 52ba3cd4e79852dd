"""Batches of encoded rows for a forward pass: rows grouped by length, one sequence per
(row, reply), and the values of those sequences split back per row."""

from __future__ import annotations

from typing import Iterable

import torch

from deft_plugin.core.chunked import next_tokens, without_special
from deft_plugin.data.encoding import EncodedRow


def batches_by_length(rows: list[EncodedRow], batch_size: int) -> Iterable[list[EncodedRow]]:
    """Rows in batches, longest first (prompt + longest reply), ties by row index."""
    longest = sorted(rows, key=lambda r: (-(len(r.prompt_ids) + max(map(len, r.completions))), r.index))
    for start in range(0, len(longest), batch_size):
        yield longest[start:start + batch_size]


def collate_candidates(batch: list[EncodedRow], special: set[int], pad_id: int, device):
    """One sequence per (row, reply), row by row, replies best first, right padded:
    input ids, attention mask, and the prediction mask of positions whose next token is a
    reply token outside `special` (an empty `special` keeps every reply token, as DPO counts
    them). Built with tensor operations: a per-token Python loop here
    left a GPU idle for a noticeable share of scoring."""
    seqs, starts = [], []
    for row in batch:
        for reply in row.completions:
            seqs.append(tuple(row.prompt_ids) + tuple(reply))
            starts.append(len(row.prompt_ids))
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + (pad_id,) * (width - len(s)) for s in seqs], dtype=torch.long)
    lengths = torch.tensor([len(s) for s in seqs])
    next_pos = torch.arange(1, width + 1)  # position t predicts the token at t + 1
    attn = (next_pos - 1 < lengths[:, None]).long()
    pred = (next_pos >= torch.tensor(starts).clamp_min(1)[:, None]) & (next_pos < lengths[:, None])
    pred = without_special(pred, next_tokens(ids, pad_id), special)
    if torch.device(device).type == "cuda":
        return tuple(t.pin_memory().to(device, non_blocking=True) for t in (ids, attn, pred))
    return ids.to(device), attn.to(device), pred.to(device)


def values_per_row(values: list[float], batch: list[EncodedRow]) -> dict[int, tuple[float, ...]]:
    """Split per-sequence values (collate_candidates order) into row index -> one value per reply."""
    out, start = {}, 0
    for row in batch:
        n = len(row.completions)
        out[row.index] = tuple(values[start:start + n])
        start += n
    return out
