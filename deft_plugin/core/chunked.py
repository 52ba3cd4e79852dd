"""What every chunked vocabulary computation shares: how many positions one chunk holds, the
dtype the work runs in, per-sequence sums of per-position values, and the masks of the
positions that predict reply tokens.

A position t of a [batch, time] sequence *predicts* the token at t + 1: the masks here are over
predicting positions, the targets are the next tokens."""

from __future__ import annotations

from typing import Iterable

import torch

# Elements of one float32 [rows, vocab] working block (2**25 floats = 128 MiB).
DEFAULT_CHUNK_ELEMENTS = 1 << 25


def rows_per_chunk(vocab_size: int, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    return max(1, chunk_elements // max(1, vocab_size))


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types; float64 stays float64 (gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


def sum_per_sequence(per_row: torch.Tensor, owner: torch.Tensor, sequences: int) -> torch.Tensor:
    """Per-position values (or rows of values) summed per sequence; owner: the sequence of each row."""
    out = torch.zeros((sequences, *per_row.shape[1:]), dtype=per_row.dtype, device=per_row.device)
    return out.index_add(0, owner, per_row)


def next_tokens(ids: torch.Tensor, fill: int = 0) -> torch.Tensor:
    """[batch, time] targets: the token each position predicts; `fill` at the last position."""
    targets = torch.full_like(ids, fill)
    targets[:, :-1] = ids[:, 1:]
    return targets


def shift_completion_mask(completion_mask: torch.Tensor) -> torch.Tensor:
    """Turn a mask over reply *tokens* into a mask over the positions that predict them."""
    pred = torch.zeros_like(completion_mask, dtype=torch.bool)
    pred[:, :-1] = completion_mask[:, 1:].bool()
    return pred


def without_special(prediction_mask: torch.Tensor, targets: torch.Tensor, special_ids: Iterable[int]) -> torch.Tensor:
    """The prediction mask without the positions whose target is a special token (the
    distribution reward and Q never count special tokens)."""
    special = sorted(set(special_ids))
    if not special:
        return prediction_mask
    return prediction_mask & ~torch.isin(targets, torch.tensor(special, dtype=targets.dtype, device=targets.device))
