"""The DEFT loss term (pure tensor functions)."""

from __future__ import annotations

import torch

LOSS_FORMS = ("pair", "chosen")


def deft_dpo_term(r_chosen: torch.Tensor, r_rejected: torch.Tensor, form: str = "pair") -> torch.Tensor:
    """mean_batch[R(y+) - R(y-)] (pair) or mean_batch[R(y+)] (chosen). The training loss is
    L_DPO - lambda * term."""
    if form == "pair":
        return (r_chosen - r_rejected).mean()
    if form == "chosen":
        return r_chosen.mean()
    raise ValueError(f"deft_loss_form must be one of {LOSS_FORMS}, got {form!r}")
