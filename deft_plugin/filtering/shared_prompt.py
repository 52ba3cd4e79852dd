"""The scoring pass with each prompt run once per row: the decoder sees [prompt, reply 1, ...,
reply n] as one sequence, each reply attending to the prompt and to itself only (a block
attention mask), its position ids restarting where the prompt ends. The logits of a reply's
tokens then equal those of the unshared [prompt, reply] sequence, while the prompt's positions
are computed once instead of n times."""

from __future__ import annotations

import torch

from deft_plugin.data.encoding import EncodedRow


def pack_shared(batch: list[EncodedRow], pad_id: int):
    """(ids [B, T], position ids [B, T], allowed [B, 1, T, T] bool, where, targets, sequence):
    one packed sequence per row; `where` are the (row, position) pairs whose next token is a
    reply token (special tokens included: DPO counts them, the reward leaves them out),
    `targets` those tokens and `sequence` the index of the (row, reply) in collate_candidates'
    order that each belongs to."""
    width = max(len(r.prompt_ids) + sum(map(len, r.completions)) for r in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(batch), width), dtype=torch.long)
    block = torch.full((len(batch), width), -2, dtype=torch.long)  # -1: the prompt, k: reply k, -2: padding
    where, targets, sequence = [], [], []
    seq = 0
    for b, row in enumerate(batch):
        p = len(row.prompt_ids)
        ids[b, :p] = torch.tensor(row.prompt_ids, dtype=torch.long)
        positions[b, :p] = torch.arange(p)
        block[b, :p] = -1
        start = p
        for k, reply in enumerate(row.completions):
            n = len(reply)
            ids[b, start:start + n] = torch.tensor(reply, dtype=torch.long)
            positions[b, start:start + n] = torch.arange(p, p + n)
            block[b, start:start + n] = k
            for t, token in enumerate(reply):
                before = p - 1 if t == 0 else start + t - 1  # the first reply token is predicted by the prompt's end
                if before >= 0:
                    where.append((b, before))
                    targets.append(token)
                    sequence.append(seq)
            start += n
            seq += 1
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same = (block[:, :, None] == block[:, None, :]) | (block[:, None, :] == -1)
    allowed = causal & same & (block[:, None, :] != -2)
    allowed |= torch.eye(width, dtype=torch.bool)  # a padded position sees itself: no row of the mask is empty
    return (ids, positions, allowed[:, None], torch.tensor(where, dtype=torch.long).reshape(-1, 2),
            torch.tensor(targets, dtype=torch.long), torch.tensor(sequence, dtype=torch.long))


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The block mask as transformers takes a 4D mask: 0 where attention is allowed, the dtype's
    lowest value elsewhere (a boolean 4D mask is not read the same way by every attention backend)."""
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
