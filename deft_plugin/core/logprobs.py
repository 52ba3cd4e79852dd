"""Per-sequence sums of target-token log-probabilities, for losses that need them (PRO).

    log p_t = z_t[target_t] - logsumexp(z_t)
    d log p_t / dz_t = onehot(target_t) - softmax(z_t)

Like the distribution reward: only the selected positions are touched, one chunk of
positions at a time in float32, and the backward recomputes the softmax from the logits
the forward pass already holds instead of keeping a [positions, vocab] float32 copy.
"""

from __future__ import annotations

import torch

from deft_plugin.core.chunked import DEFAULT_CHUNK_ELEMENTS, masked_rows, rows_per_chunk, sum_per_sequence, work_dtype


class _TargetLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, flat_logits, rows, targets, chunk_rows):
        dtype = work_dtype(flat_logits.dtype)
        lse = torch.empty(rows.numel(), dtype=dtype, device=flat_logits.device)
        with torch.no_grad():
            for start in range(0, rows.numel(), chunk_rows):
                idx = rows[start : start + chunk_rows]
                lse[start : start + idx.numel()] = torch.logsumexp(flat_logits.index_select(0, idx).to(dtype), dim=-1)
            picked = flat_logits[rows, targets].to(dtype)
        ctx.save_for_backward(flat_logits, rows, targets, lse)
        ctx.chunk_rows = chunk_rows
        return picked - lse

    @staticmethod
    def backward(ctx, grad_out):
        flat_logits, rows, targets, lse = ctx.saved_tensors
        grad_logits = torch.zeros_like(flat_logits)
        for start in range(0, rows.numel(), ctx.chunk_rows):
            stop = start + ctx.chunk_rows
            idx = rows[start:stop]
            g = grad_out[start:stop].unsqueeze(1)
            block = torch.exp(flat_logits.index_select(0, idx).to(lse.dtype) - lse[start:stop].unsqueeze(1)).mul_(-g)
            block.scatter_add_(1, targets[start:stop].unsqueeze(1), g)
            grad_logits.index_copy_(0, idx, block.to(flat_logits.dtype))
        return grad_logits, None, None, None


def sequence_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    prediction_mask: torch.Tensor,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """sum over masked positions t of log p(targets[b, t] | logits[b, t]), per sequence.

    logits: [batch, time, vocab]; targets: [batch, time] token ids (the next token of each
    position; any value where the mask is false); prediction_mask: [batch, time].
    Returns [batch] in float32 (float64 for float64 logits)."""
    batch, time, vocab = logits.shape
    flat, rows = masked_rows(logits, prediction_mask)
    per_row = _TargetLogProb.apply(flat, rows, targets.reshape(-1)[rows], rows_per_chunk(vocab, chunk_elements))
    return sum_per_sequence(per_row, rows, batch, time)
