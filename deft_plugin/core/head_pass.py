"""Reply log-probabilities and the distribution reward straight from the decoder's hidden
states, without the full logits.

The LM head runs only on the positions that predict reply tokens, a chunk of positions at a
time; each chunk gives, from one [chunk, vocab] block in at least float32,

    log p_t = z_t[target_t] - logsumexp(z_t)        (DPO's and PRO's sequence log-probability)
    r_t     = softmax(z_t) . Qn                      (the distribution reward)

and the chunk is checkpointed: its backward recomputes the block instead of keeping it, so no
[positions, vocab] tensor beyond one chunk exists in the forward or the backward pass, and
any head module works (a bias, tied embeddings, a LoRA-wrapped head, ZeRO-3's gathered weight).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from deft_plugin.core.chunked import DEFAULT_CHUNK_ELEMENTS, rows_per_chunk, work_dtype
from deft_plugin.core.reward import fit_q


def _chunk_logp_reward(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
                       q: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(hidden)
    logits = logits.to(work_dtype(logits.dtype))
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    logp = (logits.gather(1, targets[:, None]) - lse).squeeze(1)
    if q is None:
        return logp, torch.zeros_like(logp)
    return logp, torch.exp(logits - lse) @ fit_q(q, logits.shape[-1], logits.device).to(logits.dtype)


def head_logps_and_rewards(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
                           q: torch.Tensor | None, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p_t(target_t), r_t) for [rows, hidden] states of the positions that predict reply
    tokens; targets: [rows] token ids; q: the normalised discrepancy [vocab], or None (r = 0).
    Both outputs are [rows] in float32 (float64 for a float64 head), differentiable."""
    # out_features, not weight.shape: under ZeRO-3 the weight outside a forward is an empty shard
    vocab = getattr(head, "out_features", None) or (q.numel() if q is not None else 1)
    chunk = rows_per_chunk(vocab, chunk_elements)
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    logps, rewards = [], []
    for start in range(0, hidden.shape[0], chunk):
        args = (hidden[start : start + chunk], head, targets[start : start + chunk], q)
        logp, reward = (checkpoint(_chunk_logp_reward, *args, use_reentrant=False) if needs_grad
                        else _chunk_logp_reward(*args))
        logps.append(logp)
        rewards.append(reward)
    if not logps:
        empty = hidden.new_zeros(0, dtype=work_dtype(hidden.dtype))
        return empty, empty
    return torch.cat(logps), torch.cat(rewards)


@dataclass
class SequenceHeadResult:
    """Per sequence: summed reply log-probabilities (DPO's and PRO's), the mean distribution
    reward over the reward's positions, and the number of positions summed."""

    logps: torch.Tensor  # [batch]
    rewards: torch.Tensor  # [batch]
    lengths: torch.Tensor  # [batch]


def sequence_head_pass(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
                       logp_mask: torch.Tensor, reward_mask: torch.Tensor | None, q: torch.Tensor | None,
                       chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> SequenceHeadResult:
    """hidden: [batch, time, hidden] decoder states; targets: [batch, time] the token each
    position predicts; logp_mask: [batch, time] the positions whose log-probabilities are summed;
    reward_mask: the positions the reward averages over (a subset of logp_mask: the reward skips
    special tokens, DPO's sum does not), or None with q None."""
    batch, time = logp_mask.shape
    rows = logp_mask.reshape(-1).bool().nonzero().squeeze(1)
    logp, reward = head_logps_and_rewards(hidden.reshape(batch * time, -1).index_select(0, rows), head,
                                          targets.reshape(-1).index_select(0, rows), q, chunk_elements)
    owner = rows // time
    logps = torch.zeros(batch, dtype=logp.dtype, device=logp.device).index_add(0, owner, logp)
    lengths = logp_mask.reshape(batch, time).sum(1)
    if reward_mask is None or q is None:
        return SequenceHeadResult(logps, torch.zeros_like(logps), lengths)
    if (reward_mask.bool() & ~logp_mask.bool()).any():
        raise ValueError("the reward's positions must be a subset of the log-probabilities' positions")
    counted = reward_mask.reshape(-1).index_select(0, rows).to(reward.dtype)
    sums = torch.zeros_like(logps).index_add(0, owner, reward * counted)
    counts = reward_mask.reshape(batch, time).sum(1).clamp_min(1).to(sums.dtype)
    return SequenceHeadResult(logps, sums / counts, lengths)
