"""DEFT-PRO: the PRO listwise ranking loss with the DEFT term, on Axolotl's causal trainer.

One decoder pass over the flattened (prompt, candidate) sequences and the chunked head pass
over the candidates' reply positions (core/head_pass.py, no full logits) give, per candidate,
the length-normalised log-probability s (PRO's score), the summed NLL of the best
candidate (PRO's SFT term) and the distribution reward R (the DEFT term):

    L = L_rank(s) + mean_batch[w (n-1)^2 NLL(y1)] - lambda * mean_batch[R(y1) - mean_{k>1} R(yk)]
"""

from __future__ import annotations

from collections import defaultdict

import torch
from axolotl.core.trainers.base import AxolotlTrainer

from deft_plugin.core.chunked import next_tokens, without_special
from deft_plugin.core.head_pass import model_head_pass
from deft_plugin.core.losses import deft_pro_objective, mean_of_rest, pro_rank_loss, pro_sft_loss
from deft_plugin.integration.collator import IGNORE_INDEX, PRO_COLUMNS
from deft_plugin.integration.guard import top_token_share
from deft_plugin.integration.trainer_loss import DeftLossMixin


def _by_row(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence values (row by row, candidates best first) -> [batch, n_max], 0 as padding."""
    return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(mask, values)


class DeftPROTrainer(DeftLossMixin, AxolotlTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._deft_metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        # The loss is a batch mean, not a sum over tokens: the Trainer must divide it by the
        # gradient-accumulation steps itself.
        self.model_accepts_loss_kwargs = False

    def _set_signature_columns_if_needed(self):
        # The model's forward signature would drop the listwise columns the collator needs.
        self._signature_columns = list(PRO_COLUMNS)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        settings = self.configured_loss()
        if return_outputs:
            raise RuntimeError("DEFT-PRO computes its loss without the logits; there are no outputs to return")
        labels, sizes = inputs["labels"], inputs["group_sizes"]
        targets = next_tokens(labels.clamp_min(0))
        pred = next_tokens(labels, IGNORE_INDEX) != IGNORE_INDEX
        guarding = self.guarding()
        passed = model_head_pass(self.accelerator.unwrap_model(model),
                                 {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]},
                                 targets, pred, without_special(pred, targets, settings.special_ids), settings.qn,
                                 with_stats=guarding)
        scores = passed.logps / passed.lengths.clamp_min(1)
        mask = torch.arange(int(sizes.max()), device=sizes.device)[None, :] < sizes[:, None]
        first = torch.cumsum(sizes, 0) - sizes
        scores, tau_rewards = _by_row(scores, mask), inputs["rewards"].to(scores.dtype)
        rank_loss = pro_rank_loss(scores, mask, tau_rewards)
        sft_loss = pro_sft_loss(-passed.logps[first], sizes, settings.pro_sft_weight)
        rewards = _by_row(passed.rewards, mask)
        objective = deft_pro_objective(rank_loss, sft_loss, scores, mask, tau_rewards, rewards, settings,
                                       inputs.get("start_rewards"))
        logged = self._log_metrics(rank_loss, sft_loss, objective.term, rewards, mask)
        if guarding:
            self._guard(passed, first, logged)
        return objective.loss

    def _guard(self, passed, first: torch.Tensor, logged: dict[str, float]) -> None:
        """The collapse guard on the best candidates: their mean-token accuracy and top-token share
        (sums over every process's batch) and the rewards just logged."""
        best = torch.zeros(len(passed.logps), dtype=torch.bool, device=first.device).index_fill(0, first, True)
        top = top_token_share(passed.predicted, passed.owner, best)
        sums = torch.tensor([passed.stats[best, 2].sum().item(), passed.lengths[best].sum().item(), *top],
                            device=first.device, dtype=torch.float64)
        sums = self.accelerator.gather(sums).reshape(-1, 4).sum(0).tolist()
        guard = self.guard_step({"mean_token_accuracy": sums[0] / max(sums[1], 1),
                                 "top_token_share": sums[2] / max(sums[3], 1),
                                 "reward_chosen": logged["deft/reward_chosen"],
                                 "reward_rejected": logged["deft/reward_rejected"]})
        self.record_train_metrics(guard)

    def train_metrics(self) -> dict[str, list[float]]:
        return self._deft_metrics["train"]

    def _log_metrics(self, rank_loss, sft_loss, term, rewards, mask) -> dict[str, float]:
        # pro/loss: the plain PRO loss beside the total, to compare with a plain run's loss curve
        values = {"pro/loss": rank_loss + sft_loss, "pro/rank_loss": rank_loss, "pro/sft_loss": sft_loss,
                  "deft/term": term, "deft/reward_chosen": rewards[:, 0],
                  "deft/reward_rejected": mean_of_rest(rewards, mask)}
        mode = "train" if self.model.training else "eval"
        # one scalar per rank: the same shape everywhere, whatever each rank's batch holds
        means = {key: self.accelerator.gather(value.detach().float().mean().reshape(1)).mean().item()
                 for key, value in values.items()}
        for key, value in means.items():
            self._deft_metrics[mode][key].append(value)
        return means

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        # The means over the steps since the last log, evaluation ones prefixed like eval_loss.
        mode = "train" if "loss" in logs else "eval"
        prefix = "" if mode == "train" else "eval_"
        logs.update({prefix + k: sum(v) / len(v) for k, v in self._deft_metrics[mode].items() if v})
        self._deft_metrics[mode].clear()
        return super().log(logs, *args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Only the loss: the flattened candidates' logits are no use as predictions.
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None
