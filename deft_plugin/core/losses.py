"""The losses (pure tensor functions): the DEFT term for pairs and ranked lists, DPO and PRO.

Two families of DEFT term (`deft_loss_form`), with g = R(y+) - R(y-) the policy's reward gap and
g0 the starting model's (the scoring pass records it):
- linear (pair, the paper's reading; chosen): L = L_pref - lambda * term. Its gradient never fades,
  and its maximiser is a point mass on argmax Qn at every reply position: over a long run it can
  collapse a model into one repeated token.
- saturating (margin, anchored): the term is measured against g0 and its gradient fades once a
  pair is separated, as DPO's does. margin puts lambda * (g - g0) inside the preference loss's
  own link (DPO's sigmoid or hinge; PRO's ranking softmax), so the term fades exactly when the
  preference loss does; anchored adds -log sigmoid((g - g0) / s), s the spread of the starting
  gaps, so it fades once a pair's gap has grown a few s beyond its start, whatever DPO does."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

LINEAR_FORMS = ("pair", "chosen")
SATURATING_FORMS = ("margin", "anchored")  # they need the starting model's rewards
LOSS_FORMS = LINEAR_FORMS + SATURATING_FORMS
DEFAULT_PRO_SFT_WEIGHT = 0.05
# The plugin's deft_loss_form and deft_reward_weight, and the study's DEFT arms': chosen on the
# validation split by docs/study/safe-term (forms/choice.json; README, "How the default form and
# lambda were chosen"). pair at lambda 1, the default before it, collapsed a full-epoch model.
DEFAULT_LOSS_FORM = "margin"
DEFAULT_REWARD_WEIGHT = 4.0


def term_form(form: str | None, weight: float | None) -> str:
    """The form the DEFT term of a config gets: its own, else the default; at lambda 0 there is no
    term, so `pair` (which asks for no starting rewards and logs the plain reward gap)."""
    if (DEFAULT_REWARD_WEIGHT if weight is None else weight) == 0:
        return "pair"
    return form or DEFAULT_LOSS_FORM


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
    reward_scale: float = 1.0  # anchored: s, the spread (std) of the starting model's reward gaps
    guard: str = "warn"  # the collapse guard watching the trained model: warn | stop | off


class DeftObjective(NamedTuple):
    loss: torch.Tensor  # what is trained
    preference: torch.Tensor  # the plain DPO (or PRO) loss of the batch, to compare with a plain run
    term: torch.Tensor  # deft/term: loss = preference - lambda * term for every form but margin


def anchored_term(gap: torch.Tensor, start_gap: torch.Tensor, scale: float) -> torch.Tensor:
    """mean_batch[ log sigmoid((g - g0) / s) ]: ln(1/2) where a pair's gap is where it started,
    towards 0 (and its gradient with it) once the gap has grown a few s beyond its start; the
    loss is L_pref - lambda * term."""
    return torch.nn.functional.logsigmoid((gap - start_gap) / scale).mean()


def _minus_term(preference: torch.Tensor, weight: float, term: torch.Tensor) -> DeftObjective:
    """preference - lambda * term (exactly the preference loss at lambda 0)."""
    return DeftObjective(preference - weight * term if weight > 0 else preference, preference, term)


def _need_start(form: str, start) -> None:
    if start is None:
        raise ValueError(f"deft_loss_form: {form} measures the reward gap against the starting model's, "
                         "which this batch does not carry")


def deft_dpo_objective(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, r_chosen: torch.Tensor,
                       r_rejected: torch.Tensor, settings: LossSettings, beta: float,
                       loss_types: list[str] | tuple[str, ...] = ("sigmoid",), loss_weights: list[float] | None = None,
                       chosen_lengths: torch.Tensor | None = None, rejected_lengths: torch.Tensor | None = None,
                       start: tuple[torch.Tensor, torch.Tensor] | None = None) -> DeftObjective:
    """DEFT-DPO's loss in the settings' form. start: (R0(y+), R0(y-)) of the batch's pairs, the
    starting model's rewards, which the saturating forms need.

        pair, chosen   L_DPO - lambda * deft_dpo_term(R(y+), R(y-))
        margin         DPO's loss with beta * d + lambda * (g - g0) as its margin (sigmoid, hinge)
        anchored       L_DPO - lambda * anchored_term(g, g0, s)"""
    lengths = (chosen_lengths, rejected_lengths)
    dpo = dpo_loss(chosen_logratios, rejected_logratios, beta, loss_types, loss_weights, *lengths)
    weight, form = settings.reward_weight, settings.form
    if form in LINEAR_FORMS:
        return _minus_term(dpo, weight, deft_dpo_term(r_chosen, r_rejected, form))
    _need_start(form, start)
    gap, start_gap = r_chosen - r_rejected, (start[0] - start[1]).to(r_chosen.dtype)
    if form == "margin":
        loss = (dpo_loss(chosen_logratios, rejected_logratios, beta, loss_types, loss_weights, *lengths,
                         margin=weight * (gap - start_gap)) if weight > 0 else dpo)
        return DeftObjective(loss, dpo, (gap - start_gap).mean())
    if form == "anchored":
        return _minus_term(dpo, weight, anchored_term(gap, start_gap, settings.reward_scale))
    raise ValueError(f"deft_loss_form must be one of {LOSS_FORMS}, got {form!r}")


def deft_pro_objective(rank_loss: torch.Tensor, sft_loss: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor,
                       tau_rewards: torch.Tensor | None, rewards: torch.Tensor, settings: LossSettings,
                       start: torch.Tensor | None = None) -> DeftObjective:
    """DEFT-PRO's loss in the settings' form, from PRO's plain rank and SFT losses of the batch.
    scores, rewards, start: [batch, n_max] per candidate, best first (start: R0, the starting
    model's rewards); mask: the candidates each row has; gaps are R(y1) - mean_{k>1} R(yk).

        pair, chosen   L_PRO - lambda * deft_ranking_term(R)
        margin         PRO's ranking loss over the scores s_k + lambda * (R_k - R0_k), plus its SFT term
        anchored       L_PRO - lambda * anchored_term(gap, gap0, s)"""
    pro, weight, form = rank_loss + sft_loss, settings.reward_weight, settings.form
    if form in LINEAR_FORMS:
        return _minus_term(pro, weight, deft_ranking_term(rewards, mask, form))
    _need_start(form, start)
    moved = torch.where(mask.bool(), rewards - torch.nan_to_num(start.to(rewards.dtype)), 0)
    gap_change = moved[:, 0] - mean_of_rest(moved, mask)
    if form == "margin":
        loss = pro_rank_loss(scores + weight * moved, mask, tau_rewards) + sft_loss if weight > 0 else pro
        return DeftObjective(loss, pro, gap_change.mean())
    if form == "anchored":
        return _minus_term(pro, weight, anchored_term(gap_change, torch.zeros_like(gap_change), settings.reward_scale))
    raise ValueError(f"deft_loss_form must be one of {LOSS_FORMS}, got {form!r}")


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
             chosen_lengths: torch.Tensor | None = None, rejected_lengths: torch.Tensor | None = None,
             margin: torch.Tensor | None = None) -> torch.Tensor:
    """TRL's DPO loss from the log-ratios log pi(y) - log pi_ref(y) of each pair, the weighted sum
    over loss types of their batch means:

        sigmoid  -log sigmoid(beta * d + m)        d = chosen - rejected log-ratio
        hinge    relu(1 - beta * d - m)
        ipo      (d_len - 1 / (2 beta))^2          d_len: each log-ratio divided by its reply length

    m: a per-pair margin added to beta * d (DEFT's margin form; 0 for plain DPO; ipo takes none).
    The lengths (reply tokens per sequence) are needed for ipo only."""
    weights = loss_weights if loss_weights is not None else [1.0] * len(loss_types)
    delta = chosen_logratios - rejected_logratios
    shifted = beta * delta if margin is None else beta * delta + margin
    total = delta.new_zeros(())
    for loss_type, weight in zip(loss_types, weights, strict=True):
        if loss_type == "sigmoid":  # DPO: Rafailov et al. 2023 (arXiv 2305.18290), TRL's "sigmoid"
            per_pair = -torch.nn.functional.logsigmoid(shifted)
        elif loss_type == "hinge":  # SLiC-HF: Zhao et al. 2023 (arXiv 2305.10425), TRL's "hinge"
            per_pair = torch.relu(1 - shifted)
        elif loss_type == "ipo":
            if chosen_lengths is None or rejected_lengths is None:
                raise ValueError("the ipo loss needs the reply lengths")
            if margin is not None:
                raise ValueError("dpo_loss_type ipo regresses the log-ratio to a target and takes no margin: "
                                 "deft_loss_form margin needs sigmoid or hinge")
            per_token = (chosen_logratios / chosen_lengths.clamp_min(1).to(delta.dtype)
                         - rejected_logratios / rejected_lengths.clamp_min(1).to(delta.dtype))
            # IPO: Azar et al. 2023 (arXiv 2310.12036), on length-averaged log-ratios as TRL's "ipo" computes it
            per_pair = (per_token - 1 / (2 * beta)) ** 2
        else:
            raise ValueError(f"dpo_loss_type: {loss_type!r} is not one of {', '.join(DPO_LOSS_TYPES)}")
        total = total + per_pair.mean() * weight
    return total
