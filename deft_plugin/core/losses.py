"""The losses (pure tensor functions): the DEFT term for pairs and ranked lists, and PRO."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

LOSS_FORMS = ("pair", "chosen")
DEFAULT_PRO_SFT_WEIGHT = 0.05
# lambda, chosen from benchmarks/reward_weight_sweep.py (README, "lambda"): the largest swept
# weight that left the held-out log-probability margin unchanged.
DEFAULT_REWARD_WEIGHT = 1.0


@dataclass(frozen=True)
class LossSettings:
    """What the DEFT trainers need besides their batches: lambda, the term's form, PRO's SFT
    weight, and from the data, the normalised discrepancy Qn and the special token ids the
    reward leaves out. Both trainers take it through `configure_deft`."""

    reward_weight: float
    form: str
    pro_sft_weight: float
    qn: torch.Tensor | None = field(default=None, compare=False)
    special_ids: tuple[int, ...] = ()


def deft_dpo_term(r_chosen: torch.Tensor, r_rejected: torch.Tensor, form: str = "pair") -> torch.Tensor:
    """mean_batch[R(y+) - R(y-)] (pair) or mean_batch[R(y+)] (chosen). The training loss is
    L_DPO - lambda * term."""
    if form == "pair":
        return (r_chosen - r_rejected).mean()
    if form == "chosen":
        return r_chosen.mean()
    raise ValueError(f"deft_loss_form must be one of {LOSS_FORMS}, got {form!r}")


def deft_ranking_term(rewards: torch.Tensor, mask: torch.Tensor, form: str = "pair") -> torch.Tensor:
    """The DEFT term for ranked candidates: mean_batch[R(y1) - mean_{k>1} R(yk)] (pair) or
    mean_batch[R(y1)] (chosen). rewards, mask: [batch, n_max], best first, mask marking the
    candidates each row has (rows may differ in n). For n = 2 this is deft_dpo_term."""
    return deft_dpo_term(rewards[:, 0], mean_of_rest(rewards, mask), form)


def mean_of_rest(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row, the mean of values[:, 1:] over the candidates the row has (NaN padding safe)."""
    mask = mask.bool()[:, 1:]
    return torch.where(mask, values[:, 1:], 0).sum(1) / mask.sum(1).clamp_min(1)


def pro_rank_loss(scores: torch.Tensor, mask: torch.Tensor, rewards: torch.Tensor | None = None) -> torch.Tensor:
    """PRO's listwise ranking loss, sum over ranks k of the batch mean of

        loss_k = -log( exp(s_k tau_kk) / sum_{i>=k} exp(s_i tau_ki) )

    scores: [batch, n_max] candidate scores, best first; mask: [batch, n_max] the candidates
    each row has (a prefix). rewards: [batch, n_max] or None; a row whose rewards are NaN (or
    no rewards at all) uses tau = 1, otherwise tau_ki = r_k - r_i and tau_kk = max_{i>k} tau_ki.
    A rank k enters the mean only for rows that have a candidate after it."""
    mask = mask.bool()
    if rewards is None:
        rewards = torch.full_like(scores, float("nan"))
    has_rewards = ~torch.isnan(rewards[:, 0])
    rewards = torch.nan_to_num(rewards)  # padding: any finite value, it is masked below
    total = scores.new_zeros(())
    for k in range(scores.shape[1] - 1):
        rows = mask[:, k + 1]  # rows with a candidate after rank k
        if not rows.any():
            break
        s, r, present, tau_on = scores[rows, k:], rewards[rows, k:], mask[rows, k:], has_rewards[rows, None]
        tau = torch.where(tau_on, r[:, :1] - r, torch.ones_like(r))  # tau_ki for i >= k (i = k: placeholder)
        tau_k = tau[:, 1:].masked_fill(~present[:, 1:], float("-inf")).amax(1, keepdim=True)
        tau = torch.cat([torch.where(tau_on, tau_k, torch.ones_like(tau_k)), tau[:, 1:]], dim=1)
        logits = (s * tau).masked_fill(~present, float("-inf"))
        # PRO's ranking loss: Song et al. 2023 (arXiv 2306.17492), as the authors' code (DAMO-ConvAI/PRO) computes it
        total = total + (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()
    return total


def pro_sft_loss(nll_best: torch.Tensor, n: torch.Tensor, weight: float) -> torch.Tensor:
    """PRO's SFT term: mean_batch[ weight * (n - 1)^2 * NLL(y1) ], NLL summed over tokens."""
    # Song et al. 2023 (arXiv 2306.17492): the (n - 1)^2 scale and the summed NLL are its public code's
    return (weight * (n.to(nll_best.dtype) - 1) ** 2 * nll_best).mean()


# TRL's DPO loss types that the plugin's chunked DPO loss computes (dpo_loss_type); others are refused.
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo")


def dpo_loss(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float,
             loss_types: list[str] | tuple[str, ...] = ("sigmoid",), loss_weights: list[float] | None = None,
             chosen_lengths: torch.Tensor | None = None, rejected_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """TRL's DPO loss from the log-ratios log pi(y) - log pi_ref(y) of each pair, the weighted sum
    over loss types of their batch means:

        sigmoid  -log sigmoid(beta * d)            d = chosen - rejected log-ratio
        hinge    relu(1 - beta * d)
        ipo      (d_len - 1 / (2 beta))^2          d_len: each log-ratio divided by its reply length

    The lengths (reply tokens per sequence) are needed for ipo only."""
    weights = loss_weights if loss_weights is not None else [1.0] * len(loss_types)
    delta = chosen_logratios - rejected_logratios
    total = delta.new_zeros(())
    for loss_type, weight in zip(loss_types, weights, strict=True):
        if loss_type == "sigmoid":  # DPO: Rafailov et al. 2023 (arXiv 2305.18290), TRL's "sigmoid"
            per_pair = -torch.nn.functional.logsigmoid(beta * delta)
        elif loss_type == "hinge":  # SLiC-HF: Zhao et al. 2023 (arXiv 2305.10425), TRL's "hinge"
            per_pair = torch.relu(1 - beta * delta)
        elif loss_type == "ipo":
            if chosen_lengths is None or rejected_lengths is None:
                raise ValueError("the ipo loss needs the reply lengths")
            per_token = (chosen_logratios / chosen_lengths.clamp_min(1).to(delta.dtype)
                         - rejected_logratios / rejected_lengths.clamp_min(1).to(delta.dtype))
            # IPO: Azar et al. 2023 (arXiv 2310.12036), on length-averaged log-ratios as TRL's "ipo" computes it
            per_pair = (per_token - 1 / (2 * beta)) ** 2
        else:
            raise ValueError(f"dpo_loss_type: {loss_type!r} is not one of {', '.join(DPO_LOSS_TYPES)}")
        total = total + per_pair.mean() * weight
    return total
