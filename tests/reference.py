"""Naive reference implementations (full softmax, autograd through it) that the chunked
functions of deft_plugin.core are tested against."""

from __future__ import annotations

import torch

from deft_plugin.core.head_pass import fit_q


def naive_distribution_reward(logits: torch.Tensor, q: torch.Tensor, prediction_mask: torch.Tensor) -> torch.Tensor:
    """R per sequence: mean over masked positions of softmax(logits) @ q."""
    q = fit_q(q, logits.shape[-1], logits.device).to(logits.dtype)
    r = torch.softmax(logits, dim=-1) @ q
    m = prediction_mask.to(r.dtype)
    return (r * m).sum(1) / m.sum(1).clamp_min(1)


def naive_sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor, prediction_mask: torch.Tensor) -> torch.Tensor:
    """Sum over masked positions of log_softmax(logits)[target], per sequence."""
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (logp * prediction_mask.to(logp.dtype)).sum(1)
