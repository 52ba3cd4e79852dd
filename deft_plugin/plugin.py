"""The Axolotl plugin. Listed in YAML as `plugins: [deft_plugin.DEFTPlugin]`.

Hooks used: get_input_args (the deft_* keys), load_datasets (filtering, before step counts
and TRL tokenisation are fixed; also runs in `axolotl preprocess`), post_trainer_create
(the DEFT loss term), add_callbacks_post_trainer (a JSONL log of the metrics). Every hook
does nothing unless the config lists this plugin, since newer Axolotl versions register
installed plugins on every run."""

from __future__ import annotations

import logging
from pathlib import Path

from axolotl.integrations.base import BasePlugin

LOG = logging.getLogger("axolotl.integrations.deft")
METRICS_LOG = "deft_metrics.jsonl"  # written into output_dir: one JSON record per logging step
PLUGIN_NAMES = {"deft_plugin.DEFTPlugin", "deft_plugin:DEFTPlugin", "deft_plugin.plugin.DEFTPlugin",
                "deft_plugin.plugin:DEFTPlugin"}


def deft_enabled(cfg) -> bool:
    return any(name in PLUGIN_NAMES for name in (cfg.get("plugins") or []))


class DEFTPlugin(BasePlugin):
    def __init__(self):
        super().__init__()
        self.filter_result = None
        self.special_ids: list[int] = []

    def get_input_args(self):
        return "deft_plugin.args.DEFTArgs"

    def load_datasets(self, cfg, preprocess: bool = False):
        if not deft_enabled(cfg):
            return None
        from axolotl.common.datasets import TrainDatasetMeta
        from axolotl.loaders import load_tokenizer

        from deft_plugin.axolotl_data import load_deft_datasets

        tokenizer = load_tokenizer(cfg)
        train, evaluation, steps, self.filter_result = load_deft_datasets(cfg, tokenizer)
        self.special_ids = list(tokenizer.all_special_ids)
        return TrainDatasetMeta(train_dataset=train, eval_dataset=evaluation, total_num_steps=steps)

    def add_callbacks_post_trainer(self, cfg, trainer):
        if not deft_enabled(cfg):
            return []
        from deft_plugin.callbacks import MetricsLogCallback

        return [MetricsLogCallback(Path(cfg.output_dir) / METRICS_LOG)]

    def post_trainer_create(self, cfg, trainer):
        if not deft_enabled(cfg):
            return
        if self.filter_result is None:
            raise RuntimeError("DEFT: no discrepancy distribution; load_datasets did not run for this config")
        from deft_plugin.trainer import attach_deft_loss

        attach_deft_loss(trainer, self.filter_result.qdiff.qn, cfg.deft_reward_weight, cfg.deft_loss_form or "pair",
                         self.special_ids)
        LOG.info("DEFT: loss term attached to %s (weight %s, form %s)", type(trainer).__name__,
                 trainer.deft_reward_weight, trainer.deft_loss_form)
