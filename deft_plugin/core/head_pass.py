"""Reply log-probabilities and the distribution reward straight from the decoder's hidden
states, without the full logits: the one home of "decoder states, then the LM head on the reply
positions" (model_head_pass), for the trainers, the scorer and held-out measurement alike.

The LM head runs only on the positions that predict reply tokens, a chunk of positions at a
time; each chunk gives, from one [chunk, vocab] block in at least float32,

    log p_t = z_t[target_t] - logsumexp(z_t)        (DPO's and PRO's sequence log-probability)
    r_t     = softmax(z_t) . Qn                      (the distribution reward)

and the chunk is checkpointed: its backward recomputes the block instead of keeping it, so no
[positions, vocab] tensor beyond one chunk exists in the forward or the backward pass, and
any head module works (a bias, tied embeddings, a LoRA-wrapped head, ZeRO-3's gathered weight,
a frozen head under ZeRO-3 through a gathered copy: frozen_partitioned_head).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.utils.checkpoint import checkpoint

from deft_plugin.core.chunked import DEFAULT_CHUNK_ELEMENTS, rows_per_chunk, sum_per_sequence, work_dtype

# Per-position statistics TRL's DPO trainer logs, taken from each chunk's logits on the way.
STATS = ("mean_logit", "entropy", "correct")


def fit_q(q: torch.Tensor, vocab: int, device) -> torch.Tensor:
    """q on `device` in float32 (float64 kept), zero-padded to the LM head's vocabulary."""
    q = q.to(device=device, dtype=q.dtype if q.dtype == torch.float64 else torch.float32)
    if q.numel() == vocab:
        return q
    if q.numel() > vocab:
        raise ValueError(f"discrepancy distribution has {q.numel()} entries but the model's vocabulary is {vocab}")
    return torch.nn.functional.pad(q, (0, vocab - q.numel()))


class HeadRows(NamedTuple):
    """Per position: log p(target) and r (differentiable), and, when asked for, the detached
    STATS columns ([rows, 3]; [rows, 0] otherwise)."""

    logps: torch.Tensor
    rewards: torch.Tensor
    stats: torch.Tensor
    predicted: torch.Tensor  # the most likely token at each position (with stats; [0] otherwise)


def _chunk_rows(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, q: torch.Tensor | None,
                with_stats: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    logits = head(hidden)
    logits = logits.to(work_dtype(logits.dtype))
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    logp = (logits.gather(1, targets[:, None]) - lse).squeeze(1)
    probs = torch.exp(logits - lse) if q is not None or with_stats else None
    reward = torch.zeros_like(logp) if q is None else probs @ fit_q(q, logits.shape[-1], logits.device).to(probs.dtype)
    if not with_stats:
        return logp, reward, logp.new_zeros(logp.shape[0], 0).detach(), targets[:0]
    with torch.no_grad():
        entropy = lse.squeeze(1) - (probs * logits).sum(-1)
        predicted = logits.argmax(-1)
        stats = torch.stack([logits.mean(-1), entropy, (predicted == targets).to(logits.dtype)], dim=1)
    return logp, reward, stats, predicted


def head_logps_and_rewards(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
                           q: torch.Tensor | None, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                           with_stats: bool = False) -> HeadRows:
    """(log p_t(target_t), r_t, stats) for [rows, hidden] states of the positions that predict
    reply tokens; targets: [rows] token ids; q: the normalised discrepancy [vocab], or None
    (r = 0). logps and rewards are [rows] in float32 (float64 for a float64 head), differentiable."""
    q = None if q is None else q.detach()  # Q is data, never trained
    # out_features, not weight.shape: under ZeRO-3 the weight outside a forward is an empty shard
    vocab = getattr(head, "out_features", None) or (q.numel() if q is not None else 1)
    chunk = rows_per_chunk(vocab, chunk_elements)
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    head = frozen_partitioned_head(head) if needs_grad else head
    parts = []
    for start in range(0, hidden.shape[0], chunk):
        args = (hidden[start : start + chunk], head, targets[start : start + chunk], q, with_stats)
        parts.append(checkpoint(_chunk_rows, *args, use_reentrant=False) if needs_grad else _chunk_rows(*args))
    if not parts:  # still on the graph, so a backward gives zero gradients rather than an error
        empty = hidden[:0, 0].to(work_dtype(hidden.dtype))
        return HeadRows(empty, empty, empty.detach().new_zeros(0, len(STATS) if with_stats else 0), targets[:0])
    return HeadRows(*(torch.cat(column) for column in zip(*parts)))


def frozen_partitioned_head(head: torch.nn.Module):
    """The head itself, unless it is frozen (LoRA) and ZeRO-3 partitions its weight: then the
    linear map with a gathered copy of the weight. ZeRO-3 gathers a module's weight around its
    forward and, for a trained module, around its backward; a frozen head's weight is an empty
    shard again when a chunk's backward recomputes the chunk, so the chunk computes with the copy
    (no gradient flows into a frozen head). The copy lives until the step's backward is done."""
    weight = getattr(head, "weight", None)
    if weight is None or not hasattr(weight, "ds_id") or any(p.requires_grad for p in head.parameters()):
        return head
    import deepspeed  # present: the weight is ZeRO-3's (deepspeed.zero is an attribute, not a module)

    with deepspeed.zero.GatheredParameters(list(head.parameters())):
        weight = head.weight.detach().clone()
        bias = head.bias.detach().clone() if getattr(head, "bias", None) is not None else None
    return functools.partial(torch.nn.functional.linear, weight=weight, bias=bias)


@dataclass
class SequenceHeadResult:
    """Per sequence: summed reply log-probabilities (DPO's and PRO's), the mean distribution
    reward over the reward's positions, the number of positions summed, and (when asked for)
    the STATS summed over those positions."""

    logps: torch.Tensor  # [batch]
    rewards: torch.Tensor  # [batch]
    lengths: torch.Tensor  # [batch]
    stats: torch.Tensor | None = None  # [batch, len(STATS)], detached
    predicted: torch.Tensor | None = None  # with stats: [positions] the most likely token at each summed position
    owner: torch.Tensor | None = None  # with stats: [positions] the sequence each of those positions belongs to


def sequence_head_pass(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
                       logp_mask: torch.Tensor, reward_mask: torch.Tensor | None, q: torch.Tensor | None,
                       chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, with_stats: bool = False,
                       sequence_ids: torch.Tensor | None = None, sequences: int | None = None) -> SequenceHeadResult:
    """hidden: [batch, time, hidden] decoder states; targets: [batch, time] the token each
    position predicts; logp_mask: [batch, time] the positions whose log-probabilities are summed;
    reward_mask: the positions the reward averages over (a subset of logp_mask: the reward skips
    special tokens, DPO's sum does not), or None with q None. One sequence per row, unless
    sequence_ids ([batch, time] long, read at logp_mask's positions) says which of `sequences`
    each position belongs to: a packed row holds several, so the sums are per segment."""
    batch, time = logp_mask.shape
    if (sequence_ids is None) != (sequences is None):
        raise ValueError("sequence_ids and sequences go together")
    count = batch if sequences is None else sequences
    rows = logp_mask.reshape(-1).bool().nonzero().squeeze(1)
    owner = rows // time if sequence_ids is None else sequence_ids.reshape(-1).index_select(0, rows)
    logp, reward, stats, predicted = head_logps_and_rewards(hidden.reshape(batch * time, -1).index_select(0, rows),
                                                            head, targets.reshape(-1).index_select(0, rows), q,
                                                            chunk_elements, with_stats)
    logps = sum_per_sequence(logp, owner, count)
    lengths = sum_per_sequence(torch.ones_like(owner), owner, count)
    stats = sum_per_sequence(stats, owner, count) if with_stats else None
    positions = {"predicted": predicted, "owner": owner} if with_stats else {}
    if reward_mask is None or q is None:
        return SequenceHeadResult(logps, torch.zeros_like(logps), lengths, stats, **positions)
    if (reward_mask.bool() & ~logp_mask.bool()).any():
        raise ValueError("the reward's positions must be a subset of the log-probabilities' positions")
    counted = reward_mask.reshape(-1).index_select(0, rows).to(reward.dtype)
    sums = sum_per_sequence(reward * counted, owner, count)
    counts = sum_per_sequence(counted, owner, count).clamp_min(1)
    return SequenceHeadResult(logps, sums / counts, lengths, stats, **positions)


def decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The decoder (hidden states, no LM head) and the LM head of a causal LM, through a PEFT
    wrapper if there is one (its adapter layers sit inside both)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.base_model, inner.get_output_embeddings()


def model_head_pass(model: torch.nn.Module, model_inputs: dict, targets: torch.Tensor, logp_mask: torch.Tensor,
                    reward_mask: torch.Tensor | None = None, q: torch.Tensor | None = None,
                    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, with_stats: bool = False,
                    sequence_ids: torch.Tensor | None = None, sequences: int | None = None,
                    hidden_index: torch.Tensor | None = None) -> SequenceHeadResult:
    """One decoder forward of a causal LM (`model_inputs`: input_ids, attention_mask, ...) and the
    chunked head pass over the positions of logp_mask (see sequence_head_pass). hidden_index
    ([rows, time'] long, flat indices batch * time + position into the decoder's output) lays the
    states out as targets and the masks are, when they are not the inputs' layout: one state may
    serve several sequences (a shared prompt's last position predicts every reply's first token)."""
    decoder, head = decoder_and_head(model)
    hidden = decoder(**model_inputs, use_cache=False).last_hidden_state
    if hidden_index is not None:
        hidden = hidden.reshape(-1, hidden.shape[-1])[hidden_index]
    return sequence_head_pass(hidden, head, targets, logp_mask, reward_mask, q, chunk_elements, with_stats,
                              sequence_ids, sequences)
