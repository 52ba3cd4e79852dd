"""DEFT-DPO: Axolotl's DPO trainer with the distribution-reward term added to the loss.

The public `compute_loss` adds the term: TRL computes the DPO loss and returns the outputs of
the same forward pass, whose logits (chosen rows, then rejected rows) give the distribution
rewards. `_precompute_ref_logps` returns a dataset that already carries the reference
log-probabilities from the scoring pass unchanged (integration/reference.py).

Axolotl constructs this class itself: the plugin sets `trainer_cls` in `register`, which
Axolotl's RL builder honours with the model arguments DPO needs (a plugin's `get_trainer_cls`
gets none). It must be the class constructed, not swapped in later: TRL precomputes the
reference in its constructor."""

from __future__ import annotations

import torch
from axolotl.core.trainers.dpo.trainer import AxolotlDPOTrainer

from deft_plugin.core.chunked import next_tokens, shift_completion_mask, without_special
from deft_plugin.core.losses import deft_dpo_term
from deft_plugin.core.reward import distribution_reward
from deft_plugin.integration.reference import has_reference


class DeftDPOLossMixin:
    deft_qn: torch.Tensor | None = None
    deft_reward_weight: float = 0.0
    deft_loss_form: str = "pair"
    deft_special_ids: tuple[int, ...] = ()

    def configure_deft(self, qn: torch.Tensor, reward_weight: float, loss_form: str, special_ids) -> None:
        self.deft_qn = qn.float()
        self.deft_reward_weight = float(reward_weight)
        self.deft_loss_form = loss_form
        self.deft_special_ids = tuple(special_ids)

    def _deft_prediction_mask(self, inputs) -> torch.Tensor:
        pred = shift_completion_mask(inputs["completion_mask"])
        return without_special(pred, next_tokens(inputs["input_ids"]), self.deft_special_ids)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.deft_qn is None:
            raise RuntimeError("DEFT loss attached without a discrepancy distribution (configure_deft not called)")
        pred = self._deft_prediction_mask(inputs)
        dpo_loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
        loss, weight = dpo_loss, self.deft_reward_weight
        with torch.set_grad_enabled(torch.is_grad_enabled() and weight > 0):
            rewards = distribution_reward(outputs.logits, self.deft_qn, pred)
            r_chosen, r_rejected = rewards.chunk(2)
            term = deft_dpo_term(r_chosen, r_rejected, self.deft_loss_form)
        if weight > 0:
            loss = loss - weight * term.to(loss.dtype)
        mode = "train" if self.model.training else "eval"
        gather = self.accelerator.gather_for_metrics
        # the plain DPO loss beside the total, to compare with a plain run's loss curve
        self._metrics[mode]["deft/dpo_loss"].append(gather(dpo_loss.detach().reshape(1)).mean().item())
        self._metrics[mode]["deft/reward_chosen"].append(gather(r_chosen.detach()).mean().item())
        self._metrics[mode]["deft/reward_rejected"].append(gather(r_rejected.detach()).mean().item())
        self._metrics[mode]["deft/term"].append(gather(term.detach().reshape(1)).mean().item())
        return (loss, outputs) if return_outputs else loss


class DeftDPOTrainer(DeftDPOLossMixin, AxolotlDPOTrainer):
    """The DEFT-DPO trainer Axolotl constructs (`trainer_cls`)."""

    def _precompute_ref_logps(self, dataset, name, batch_size):
        # TRL's private hook (TRL 1.9 and 1.14 alike; tests pin it): a dataset that already has
        # the reference columns would otherwise be run through the reference again and then
        # fail on the duplicated columns.
        if has_reference(dataset):
            return dataset
        return super()._precompute_ref_logps(dataset, name, batch_size)
