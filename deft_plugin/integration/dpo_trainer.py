"""DEFT-DPO: Axolotl's DPO trainer with its loss computed by the plugin, from the decoder's
hidden states and the LM head in chunks (core/head_pass.py): per sequence the summed reply
log-probabilities and the distribution reward in one pass, then TRL's DPO loss (the loss types
in core.losses.DPO_LOSS_TYPES) minus lambda times the DEFT term. No [batch, time, vocab] logits
tensor is built, in training, in evaluation or for the reference.

The reference log-probabilities come from the batch when they were precomputed (the scoring
pass, `deft_reference: scoring`; or TRL's precompute) and otherwise from the same head pass on
the reference model (or, for an adapter, the model with the adapter disabled): the public
`compute_ref_log_probs`, which TRL's own precompute calls too.

Axolotl constructs this class itself: the plugin sets `trainer_cls` in `register`, which
Axolotl's RL builder honours with the model arguments DPO needs (a plugin's `get_trainer_cls`
gets none). It must be the class constructed, not swapped in later: TRL precomputes the
reference in its constructor."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from axolotl.core.trainers.dpo.trainer import AxolotlDPOTrainer

from deft_plugin.core.chunked import next_tokens, shift_completion_mask, without_special
from deft_plugin.core.head_pass import SequenceHeadResult, model_head_pass
from deft_plugin.core.losses import deft_dpo_objective
from deft_plugin.integration.guard import top_token_share
from deft_plugin.integration.scoring_reference import (
    REFERENCE_COLUMNS,
    START_REWARD_COLUMNS,
    StartRewardsCollator,
    has_reference,
)
from deft_plugin.integration.trainer_loss import DeftLossMixin

# Batch keys that are not model inputs (TRL's collator adds them beside input_ids / attention_mask).
NON_MODEL_KEYS = {"completion_mask", *REFERENCE_COLUMNS, *START_REWARD_COLUMNS}


class DeftDPOLossMixin(DeftLossMixin):
    def _head_pass(self, model, inputs, q: torch.Tensor | None, with_stats: bool = False) -> SequenceHeadResult:
        """One decoder forward and the chunked head pass over the reply positions of a batch
        (chosen rows, then rejected rows)."""
        model_inputs = {k: v for k, v in inputs.items() if k not in NON_MODEL_KEYS}
        targets = next_tokens(inputs["input_ids"])
        logp_mask = shift_completion_mask(inputs["completion_mask"])  # TRL's: every reply token, special ones too
        reward_mask = None if q is None else without_special(logp_mask, targets, self.configured_loss().special_ids)
        return model_head_pass(self.accelerator.unwrap_model(model), model_inputs, targets, logp_mask, reward_mask, q,
                               with_stats=with_stats)

    def compute_ref_log_probs(self, model, inputs):
        """The reference's summed reply log-probabilities (chosen, rejected) for a batch, by the
        head pass. `model` is the reference model, or (no reference model: an adapter run) the
        model, whose adapter is disabled for the pass, as TRL does."""
        unwrapped = self.accelerator.unwrap_model(model)
        if getattr(self, "ref_model", None) is not None:
            adapter_off = nullcontext()
        elif hasattr(unwrapped, "disable_adapter"):
            adapter_off = unwrapped.disable_adapter()
        else:
            raise RuntimeError("DEFT-DPO: no reference model and no adapter to disable; the reference "
                               "log-probabilities must come precomputed (deft_reference: scoring)")
        with torch.no_grad(), adapter_off:
            return self._head_pass(model, inputs, None).logps.chunk(2)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        settings = self.configured_loss()
        if return_outputs:
            raise RuntimeError("DEFT-DPO computes its loss without the logits; there are no outputs to return")
        policy = self._head_pass(model, inputs, settings.qn, with_stats=True)
        if all(k in inputs for k in REFERENCE_COLUMNS):
            ref_chosen, ref_rejected = (inputs[k].to(policy.logps.dtype) for k in REFERENCE_COLUMNS)
        else:
            reference = self.ref_model if self.ref_model is not None else model
            ref_chosen, ref_rejected = self.compute_ref_log_probs(reference, inputs)
        chosen_logps, rejected_logps = policy.logps.chunk(2)
        chosen_len, rejected_len = policy.lengths.chunk(2)
        chosen_ratio, rejected_ratio = chosen_logps - ref_chosen, rejected_logps - ref_rejected
        args = self.args
        r_chosen, r_rejected = policy.rewards.chunk(2)
        start = tuple(inputs[k] for k in START_REWARD_COLUMNS) if START_REWARD_COLUMNS[0] in inputs else None
        objective = deft_dpo_objective(chosen_ratio, rejected_ratio, r_chosen, r_rejected, settings, args.beta,
                                       args.loss_type, args.loss_weights, chosen_len, rejected_len, start)
        self._log_dpo_metrics(inputs, args.beta, chosen_ratio, rejected_ratio, chosen_logps, rejected_logps)
        guarding = self.guarding()
        top = top_token_share(policy.predicted, policy.owner, torch.arange(len(policy.logps)) < len(chosen_logps)) \
            if guarding else None
        tokens = self._log_token_metrics(policy, top)
        deft = self._log_deft_metrics(objective.preference, r_chosen, r_rejected, objective.term)
        if guarding:
            guard = self.guard_step({"top_token_share": tokens["deft/top_token_share"],
                                     "mean_token_accuracy": tokens["mean_token_accuracy"],
                                     "reward_chosen": deft["deft/reward_chosen"],
                                     "reward_rejected": deft["deft/reward_rejected"]})
            self.record_train_metrics(guard)
        return objective.loss

    def train_metrics(self) -> dict[str, list[float]]:
        return self._metrics["train"]

    def _log_dpo_metrics(self, inputs, beta, chosen_ratio, rejected_ratio, chosen_logps, rejected_logps) -> None:
        """TRL's DPO metric names and definitions (implicit rewards are beta times the log-ratios)."""
        mode = "train" if self.model.training else "eval"
        gather = self.accelerator.gather_for_metrics
        chosen_rewards, rejected_rewards = beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
        values = {"rewards/chosen": chosen_rewards, "rewards/rejected": rejected_rewards,
                  "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
                  "rewards/margins": chosen_rewards - rejected_rewards,
                  "logps/chosen": chosen_logps.detach(), "logps/rejected": rejected_logps.detach()}
        for key, value in values.items():
            self._metrics[mode][key].append(gather(value).mean().item())
        if mode == "train" and hasattr(self, "_total_train_tokens"):
            self._total_train_tokens += gather(inputs["attention_mask"].sum()).sum().item()
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    def _log_token_metrics(self, policy: SequenceHeadResult, top: tuple[int, int] | None = None) -> dict[str, float]:
        """TRL's token-level DPO metrics, from the head pass's per-sequence sums: the mean logit
        of chosen and of rejected reply tokens, the entropy over all reply tokens, and the
        share of chosen reply tokens the model predicts (argmax), each a ratio of sums over
        every process's batch; with `top` (the guard's counts), deft/top_token_share likewise."""
        mode = "train" if self.model.training else "eval"
        stats, lengths = policy.stats, policy.lengths.to(policy.stats.dtype)
        (chosen, rejected), (chosen_len, rejected_len) = stats.chunk(2), lengths.chunk(2)
        sums = torch.stack([chosen[:, 0].sum(), chosen_len.sum(), rejected[:, 0].sum(), rejected_len.sum(),
                            stats[:, 1].sum(), lengths.sum(), chosen[:, 2].sum(),
                            *(stats.new_tensor(float(n)) for n in top or ())])
        sums = self.accelerator.gather(sums).reshape(-1, len(sums)).sum(0).tolist()
        ratio = lambda num, den: num / den if den > 0 else 0.0  # noqa: E731
        values = {"logits/chosen": ratio(sums[0], sums[1]), "logits/rejected": ratio(sums[2], sums[3]),
                  "entropy": ratio(sums[4], sums[5]), "mean_token_accuracy": ratio(sums[6], sums[1])}
        if top is not None:
            values["deft/top_token_share"] = ratio(sums[7], sums[8])
        for key, value in values.items():
            self._metrics[mode][key].append(value)
        return values

    def _log_deft_metrics(self, dpo, r_chosen, r_rejected, term) -> dict[str, float]:
        mode = "train" if self.model.training else "eval"
        gather = self.accelerator.gather_for_metrics
        # the plain DPO loss beside the total, to compare with a plain run's loss curve
        values = {"deft/dpo_loss": dpo.reshape(1), "deft/reward_chosen": r_chosen, "deft/reward_rejected": r_rejected,
                  "deft/term": term.reshape(1)}
        means = {key: gather(value.detach()).mean().item() for key, value in values.items()}
        for key, value in means.items():
            self._metrics[mode][key].append(value)
        return means

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # The loss only: this trainer has no logits to return as predictions.
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


class DeftDPOTrainer(DeftDPOLossMixin, AxolotlDPOTrainer):
    """The DEFT-DPO trainer Axolotl constructs (`trainer_cls`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # the saturating forms read the starting model's rewards from the batch: TRL's collator drops them
        self.data_collator = StartRewardsCollator(self.data_collator)

    def _set_signature_columns_if_needed(self):
        # the Trainer keeps only these columns of the dataset: TRL's, and the starting model's rewards
        super()._set_signature_columns_if_needed()
        self._signature_columns = [*self._signature_columns,
                                   *(c for c in START_REWARD_COLUMNS if c not in self._signature_columns)]

    def _precompute_ref_logps(self, dataset, name, batch_size):
        # TRL's private hook (TRL 1.9 and 1.14 alike; tests pin it): a dataset that already has
        # the reference columns would otherwise be run through the reference again and then
        # fail on the duplicated columns.
        if has_reference(dataset):
            return dataset
        return super()._precompute_ref_logps(dataset, name, batch_size)
