"""DPO's reference from the scoring pass (`deft_reference: scoring`, the default for DEFT-DPO).

The scoring pass runs the starting model, which is DPO's reference, over every pair: it records
each reply's summed log-probability over exactly the tokens TRL's DPO loss sums. The rows given
to TRL carry them as TRL's precomputed columns, `precompute_ref_log_probs` is on, and so:
- TRL's own precompute finds the columns and is skipped (DeftDPOTrainer._precompute_ref_logps);
- TRL reads them from each batch and never runs a reference forward (full fine-tuning: no
  reference model; LoRA: no adapter-disabled forward);
- Axolotl does not load a reference model: `axolotl.train.setup_reference_model` loads one for
  full fine-tuning even with precomputed log-probabilities, and has no setting to stop it, so the
  plugin wraps that function (the only Axolotl internal the plugin replaces; a test pins the call
  it relies on).

The same pass also gives the starting model's rewards, which the saturating loss forms need: they
ride as two more columns (START_REWARD_COLUMNS) through the DEFT trainer's collator."""

from __future__ import annotations

import functools
import logging
from typing import Callable

import torch
from datasets import Dataset

LOG = logging.getLogger("axolotl.integrations.deft")

DPO_TRAINER_CLS = "deft_plugin.integration.dpo_trainer.DeftDPOTrainer"
REFERENCE_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")  # TRL's names for precomputed reference log-probs
# The starting model's rewards R0(y+), R0(y-), which the scoring pass also records: the saturating
# loss forms measure the reward gap against them. TRL does not know them: the DEFT trainer keeps
# the columns and its collator passes them on.
START_REWARD_COLUMNS = ("start_chosen_reward", "start_rejected_reward")


def with_reference(dataset: Dataset, logps: list[tuple[float, ...]]) -> Dataset:
    """The rows with TRL's reference columns: logps[k] = (chosen, rejected) of row k."""
    return (dataset.add_column(REFERENCE_COLUMNS[0], [float(lp[0]) for lp in logps])
                   .add_column(REFERENCE_COLUMNS[1], [float(lp[1]) for lp in logps]))


def with_start_rewards(dataset: Dataset, rewards: list[tuple[float, ...]]) -> Dataset:
    """The rows with the starting model's rewards: rewards[k] = (R0 chosen, R0 rejected) of row k."""
    return (dataset.add_column(START_REWARD_COLUMNS[0], [float(r[0]) for r in rewards])
                   .add_column(START_REWARD_COLUMNS[1], [float(r[1]) for r in rewards]))


class StartRewardsCollator:
    """TRL's preference collator, plus the starting rewards of the batch's rows when they have them."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.collator(examples)
        if examples and START_REWARD_COLUMNS[0] in examples[0]:
            for key in START_REWARD_COLUMNS:
                batch[key] = torch.tensor([float(e[key]) for e in examples], dtype=torch.float32)
        return batch


def has_reference(dataset) -> bool:
    return all(c in (getattr(dataset, "column_names", None) or ()) for c in REFERENCE_COLUMNS)


def skip_reference_model_load(uses_scoring_reference: Callable[[object], bool]) -> None:
    """Make Axolotl load no reference model for configs whose reference comes from the scoring
    pass (`uses_scoring_reference(cfg)`, the plugin's reading of each config Axolotl passes);
    other configs load theirs as before. Installing it twice changes nothing."""
    import axolotl.train as axolotl_train

    original = axolotl_train.setup_reference_model
    if getattr(original, "deft_wrapped", False):
        return

    @functools.wraps(original)
    def setup_reference_model(cfg, *args, **kwargs):
        if uses_scoring_reference(cfg):
            LOG.info("DEFT: DPO's reference log-probabilities come from the scoring pass; no reference model loaded")
            return None
        return original(cfg, *args, **kwargs)

    setup_reference_model.deft_wrapped = True
    axolotl_train.setup_reference_model = setup_reference_model
