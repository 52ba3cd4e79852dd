"""The distribution reward: the expected normalised discrepancy Qn under the model's
next-token distribution, averaged over reply positions.

    r_t = sum_v softmax(z_t)_v * Qn_v          (per position)
    R   = mean over reply positions of r_t     (per sequence)
    dr_t/dz_t,v = p_v * (Qn_v - r_t)

Vocabulary work runs over chunks of positions so that no [positions, vocab] float32 copy
beyond one chunk exists, and the backward pass recomputes the softmax instead of storing it.
"""

from __future__ import annotations

import torch

from deft_plugin.core.chunked import DEFAULT_CHUNK_ELEMENTS, masked_rows, rows_per_chunk, sum_per_sequence, work_dtype


def _expected_q(logits_rows: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """r for a block of rows of logits: softmax in at least float32, then dot with q."""
    dtype = work_dtype(logits_rows.dtype)
    return torch.softmax(logits_rows.to(dtype), dim=-1) @ q.to(dtype)


class _PositionReward(torch.autograd.Function):
    """r_t for the selected rows of a [rows, vocab] logits view, chunked both ways."""

    @staticmethod
    def forward(ctx, flat_logits, rows, q, chunk_rows):
        out = torch.empty(rows.numel(), dtype=work_dtype(flat_logits.dtype), device=flat_logits.device)
        with torch.no_grad():
            for start in range(0, rows.numel(), chunk_rows):
                idx = rows[start : start + chunk_rows]
                out[start : start + idx.numel()] = _expected_q(flat_logits.index_select(0, idx), q)
        ctx.save_for_backward(flat_logits, rows, q, out)
        ctx.chunk_rows = chunk_rows
        return out

    @staticmethod
    def backward(ctx, grad_out):
        flat_logits, rows, q, r = ctx.saved_tensors
        grad_logits = torch.zeros_like(flat_logits)
        for start in range(0, rows.numel(), ctx.chunk_rows):
            idx = rows[start : start + ctx.chunk_rows]
            p = torch.softmax(flat_logits.index_select(0, idx).to(r.dtype), dim=-1)
            block = p.mul_(q.to(r.dtype).unsqueeze(0) - r[start : start + idx.numel()].unsqueeze(1))
            block.mul_(grad_out[start : start + idx.numel()].unsqueeze(1))
            grad_logits.index_copy_(0, idx, block.to(flat_logits.dtype))
        return grad_logits, None, None, None


def distribution_reward(
    logits: torch.Tensor,
    q: torch.Tensor,
    prediction_mask: torch.Tensor,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Per-sequence distribution reward R.

    logits: [batch, time, vocab] as the model returns them (any float dtype).
    q: [vocab] normalised discrepancy (float32; a shorter q, e.g. a tokenizer vocabulary
       smaller than a padded LM head, is zero-padded).
    prediction_mask: [batch, time] true where logits[b, t] predicts a reply token.
    Returns [batch] float32 (float64 for float64 logits); a sequence without reply positions gets 0.
    """
    batch, time, vocab = logits.shape
    flat, rows = masked_rows(logits, prediction_mask)
    per_row = _PositionReward.apply(flat, rows, fit_q(q, vocab, logits.device), rows_per_chunk(vocab, chunk_elements))
    counts = prediction_mask.reshape(batch, time).sum(dim=1).clamp_min(1).to(per_row.dtype)
    return sum_per_sequence(per_row, rows, batch, time) / counts


@torch.no_grad()
def distribution_reward_from_hidden(
    hidden: torch.Tensor,
    lm_head: torch.nn.Module,
    q: torch.Tensor,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """r_t for [rows, hidden] states of reply positions only (scoring, no gradient):
    the LM head runs on those rows, one chunk at a time."""
    return reward_and_logprob_from_hidden(hidden, lm_head, q, None, chunk_elements)[0]


@torch.no_grad()
def reward_and_logprob_from_hidden(
    hidden: torch.Tensor,
    lm_head: torch.nn.Module,
    q: torch.Tensor,
    targets: torch.Tensor | None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(r_t, log p_t(target_t)) for [rows, hidden] states of reply positions, from one LM head
    pass per chunk: the reward and the token's log-probability share the logits, so the
    scoring pass gives DPO its reference log-probabilities at the cost of a logsumexp.
    targets: [rows] token ids, or None for the reward alone."""
    vocab = lm_head.weight.shape[0]
    q = fit_q(q, vocab, hidden.device)
    chunk = rows_per_chunk(vocab, chunk_elements)
    dtype = work_dtype(hidden.dtype)
    reward = torch.empty(hidden.shape[0], dtype=dtype, device=hidden.device)
    logp = None if targets is None else torch.empty_like(reward)
    q = q.to(dtype)
    for start in range(0, hidden.shape[0], chunk):
        logits = lm_head(hidden[start : start + chunk]).to(dtype)
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        if logp is not None:  # before the logits become probabilities in place
            logp[start : start + chunk] = (logits.gather(1, targets[start : start + chunk, None]) - lse).squeeze(1)
        reward[start : start + chunk] = logits.sub_(lse).exp_() @ q  # softmax from the same normaliser
    return reward, logp


def fit_q(q: torch.Tensor, vocab: int, device) -> torch.Tensor:
    """q on `device` in float32 (float64 kept), zero-padded to the LM head's vocabulary."""
    q = q.to(device=device, dtype=q.dtype if q.dtype == torch.float64 else torch.float32)
    if q.numel() == vocab:
        return q
    if q.numel() > vocab:
        raise ValueError(f"discrepancy distribution has {q.numel()} entries but the model's vocabulary is {vocab}")
    return torch.nn.functional.pad(q, (0, vocab - q.numel()))
