"""The Axolotl plugin. Listed in YAML as `plugins: [deft_plugin.DEFTPlugin]` (or any other
path Axolotl can load it by, or a subclass).

Hooks used: get_input_args (the deft_* keys), register (DEFT-DPO: the trainer class Axolotl
constructs, and the reference from the scoring pass), load_datasets (filtering, before step
counts and TRL tokenisation are fixed; also runs in `axolotl preprocess`), post_trainer_create
(the DEFT loss term's settings), add_callbacks_post_trainer (a JSONL log of the metrics), and for
`deft_method: pro` (Axolotl's causal trainer path) get_trainer_cls and
get_collator_cls_and_kwargs. Every hook does nothing unless the config lists this plugin,
since newer Axolotl versions register installed plugins on every run."""

from __future__ import annotations

import functools
import importlib
import logging
from pathlib import Path

from axolotl.integrations.base import BasePlugin

LOG = logging.getLogger("axolotl.integrations.deft")


@functools.lru_cache(maxsize=None)
def _resolve_plugin(name: str) -> type | None:
    """The class a `plugins:` entry names (`module.Class` or `module:Class`, as Axolotl reads
    it), or None when it does not import: Axolotl reports that itself."""
    module, sep, attr = name.replace(":", ".").rpartition(".")
    if not sep:
        return None
    try:
        found = getattr(importlib.import_module(module), attr, None)
    except ImportError:
        return None
    return found if isinstance(found, type) else None


def deft_enabled(cfg) -> bool:
    """Whether the config lists DEFTPlugin (or a subclass), by whatever path it names it."""
    return any((cls := _resolve_plugin(str(name))) is not None and issubclass(cls, DEFTPlugin)
               for name in (cfg.get("plugins") or []))


def pro_enabled(cfg) -> bool:
    return deft_enabled(cfg) and cfg.get("deft_method") == "pro"


class DEFTPlugin(BasePlugin):
    # The last filter result of this process: Axolotl registers a fresh plugin instance each time a
    # config is loaded, so the instance whose post_trainer_create runs may not be the one whose
    # load_datasets ran (several configs loaded in one process).
    latest_datasets: tuple | None = None  # (filter result, special token ids)

    def __init__(self):
        super().__init__()
        self.filter_result = None
        self.special_ids: list[int] = []

    def get_input_args(self):
        return "deft_plugin.integration.args.DEFTArgs"

    def register(self, cfg):
        """DEFT-DPO: Axolotl constructs the DEFT trainer itself (`trainer_cls`, which keeps the
        model arguments), so that TRL's constructor already runs the DEFT class, whose chunked loss
        also stands in for `dpo_use_liger_kernel`; with the scoring
        pass as DPO's reference, TRL takes precomputed reference log-probabilities and Axolotl
        loads no reference model."""
        rl = cfg.get("rl")
        if not deft_enabled(cfg) or (cfg.get("deft_method") or "dpo") != "dpo" or getattr(rl, "value", rl) != "dpo":
            return
        from deft_plugin.integration.scoring_reference import (
            DPO_TRAINER_CLS,
            scoring_reference,
            skip_reference_model_load,
        )

        chosen = cfg.get("trainer_cls")
        if chosen and chosen != DPO_TRAINER_CLS:
            from deft_plugin.integration.dpo_trainer import DeftDPOLossMixin

            cls = _resolve_plugin(str(chosen))
            if cls is None or not issubclass(cls, DeftDPOLossMixin):
                raise ValueError(f"trainer_cls: {chosen} is not a DEFT-DPO trainer; the plugin needs "
                                 f"{DPO_TRAINER_CLS} (or a subclass of it): remove trainer_cls or subclass it")
        else:
            cfg["trainer_cls"] = DPO_TRAINER_CLS
        if cfg.get("dpo_use_liger_kernel"):
            # TRL's fused Liger loss would replace the loss the DEFT trainer computes; the trainer's own
            # chunked pass already avoids the full logits.
            LOG.info("DEFT: dpo_use_liger_kernel: the DEFT-DPO trainer's chunked loss takes the place of the Liger "
                     "DPO loss (no full logits either way)")
            cfg["dpo_use_liger_kernel"] = False
        if scoring_reference(cfg):
            if cfg.get("precompute_ref_log_probs") is None:  # an explicit false is refused by validation, by name
                cfg["precompute_ref_log_probs"] = True
            skip_reference_model_load()

    def load_datasets(self, cfg, preprocess: bool = False):
        if not deft_enabled(cfg):
            return None
        from axolotl.common.datasets import TrainDatasetMeta
        from axolotl.loaders import load_tokenizer

        from deft_plugin.integration.datasets_hook import load_deft_datasets

        tokenizer = load_tokenizer(cfg)
        train, evaluation, steps, self.filter_result = load_deft_datasets(cfg, tokenizer)
        self.special_ids = list(tokenizer.all_special_ids)
        DEFTPlugin.latest_datasets = (self.filter_result, self.special_ids)
        return TrainDatasetMeta(train_dataset=train, eval_dataset=evaluation, total_num_steps=steps)

    def get_trainer_cls(self, cfg):
        if not pro_enabled(cfg):
            return None
        from deft_plugin.integration.pro_trainer import DeftPROTrainer

        return DeftPROTrainer

    def get_collator_cls_and_kwargs(self, cfg, is_eval=False):
        if not pro_enabled(cfg):
            return None
        from deft_plugin.integration.collator import ListwiseCollator

        return ListwiseCollator, {}

    def add_callbacks_post_trainer(self, cfg, trainer):
        if not deft_enabled(cfg):
            return []
        from deft_plugin.integration.callbacks import MetricsLogCallback
        from deft_plugin.launch.outputs import METRICS_LOG

        return [MetricsLogCallback(Path(cfg.output_dir) / METRICS_LOG)]

    def post_trainer_create(self, cfg, trainer):
        if not deft_enabled(cfg):
            return
        if self.filter_result is None and DEFTPlugin.latest_datasets is not None:
            self.filter_result, self.special_ids = DEFTPlugin.latest_datasets
        if self.filter_result is None:
            raise RuntimeError("DEFT: no discrepancy distribution; load_datasets did not run for this config")
        qn, weight, form = self.filter_result.qdiff.qn, cfg.deft_reward_weight, cfg.deft_loss_form or "pair"
        if pro_enabled(cfg):
            from deft_plugin.core.losses import DEFAULT_PRO_SFT_WEIGHT
            from deft_plugin.integration.pro_trainer import DeftPROTrainer

            if not isinstance(trainer, DeftPROTrainer):
                raise RuntimeError("deft_method: pro needs the DEFT-PRO trainer, but Axolotl built "
                                   f"{type(trainer).__name__} "
                                   "(another plugin's get_trainer_cls or trainer_cls took precedence)")
            sft = cfg.deft_pro_sft_weight if cfg.deft_pro_sft_weight is not None else DEFAULT_PRO_SFT_WEIGHT
            trainer.configure_deft(qn, weight, form, self.special_ids, sft)
        else:
            from deft_plugin.integration.dpo_trainer import DeftDPOLossMixin

            if not isinstance(trainer, DeftDPOLossMixin):
                raise RuntimeError("DEFT-DPO needs the DEFT DPO trainer, but Axolotl built "
                                   f"{type(trainer).__name__} (another plugin's get_trainer_cls took precedence "
                                   "over trainer_cls)")
            trainer.configure_deft(qn, weight, form, self.special_ids)
        LOG.info("DEFT: loss term attached to %s (weight %s, form %s)", type(trainer).__name__,
                 trainer.deft_reward_weight, trainer.deft_loss_form)
