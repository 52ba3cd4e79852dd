"""The distribution reward for scoring: the expected normalised discrepancy Qn under the
model's next-token distribution at reply positions, from hidden states, without gradients.

    r_t = sum_v softmax(z_t)_v * Qn_v          (per position)
    R   = mean over reply positions of r_t     (per sequence)

The LM head runs over chunks of positions so that no [positions, vocab] float32 block beyond
one chunk exists. Training computes the same reward with gradients in core/head_pass.py.
"""

from __future__ import annotations

import torch

from deft_plugin.core.chunked import DEFAULT_CHUNK_ELEMENTS, rows_per_chunk, work_dtype


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
