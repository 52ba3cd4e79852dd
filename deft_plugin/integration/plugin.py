"""The Axolotl plugin. Listed in YAML as `plugins: [deft_plugin.DEFTPlugin]` (or any other
path Axolotl can load it by, or a subclass).

Hooks used: get_input_args (the deft_* keys), register (DEFT-DPO: the trainer class Axolotl
constructs, and the reference from the scoring pass), load_datasets (filtering, before step
counts and TRL tokenisation are fixed; also runs in `axolotl preprocess`), post_trainer_create
(the DEFT loss term's settings), add_callbacks_post_trainer (a JSONL log of the metrics), and for
`deft_method: pro` (Axolotl's causal trainer path) get_trainer_cls and
get_collator_cls_and_kwargs. Every hook reads Axolotl's config once, through deft_settings (the
door, settings.py), and does nothing unless the config lists this plugin, since newer Axolotl
versions register installed plugins on every run."""

from __future__ import annotations

import functools
import logging
from dataclasses import replace

from axolotl.integrations.base import BasePlugin

from deft_plugin.integration.config_errors import show_config_errors_briefly
from deft_plugin.integration.listing import deft_enabled, resolve_class
from deft_plugin.integration.settings import DeftSettings, read_settings

LOG = logging.getLogger("axolotl.integrations.deft")


def deft_settings(cfg) -> DeftSettings | None:
    """The door of every hook: DEFT's settings, or None when the config does not list the plugin
    (newer Axolotl versions call every installed plugin's hooks on every run)."""
    return read_settings(cfg) if deft_enabled(cfg) else None


def pro_enabled(cfg) -> bool:
    return (settings := deft_settings(cfg)) is not None and settings.method == "pro"


def uses_scoring_reference(cfg) -> bool:
    return (settings := deft_settings(cfg)) is not None and settings.scoring_reference


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
        show_config_errors_briefly()  # registered before validation: a refused config prints in a few lines
        settings = deft_settings(cfg)
        if settings is None or not settings.dpo_trainer:
            return
        from deft_plugin.integration.scoring_reference import DPO_TRAINER_CLS, skip_reference_model_load

        chosen = cfg.get("trainer_cls")
        if chosen and chosen != DPO_TRAINER_CLS:
            from deft_plugin.integration.dpo_trainer import DeftDPOLossMixin

            cls = resolve_class(str(chosen))
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
        if settings.scoring_reference:
            if cfg.get("precompute_ref_log_probs") is None:  # an explicit false is refused by validation, by name
                cfg["precompute_ref_log_probs"] = True
            skip_reference_model_load(uses_scoring_reference)

    def load_datasets(self, cfg, preprocess: bool = False):
        settings = deft_settings(cfg)
        if settings is None:
            return None
        from axolotl.common.datasets import TrainDatasetMeta
        from axolotl.loaders import load_tokenizer

        from deft_plugin.integration.datasets_hook import load_axolotl_rows, load_deft_datasets

        tokenizer = load_tokenizer(cfg)
        train, evaluation, steps, self.filter_result = load_deft_datasets(
            settings, tokenizer, functools.partial(load_axolotl_rows, cfg))
        self.special_ids = list(tokenizer.all_special_ids)
        DEFTPlugin.latest_datasets = (self.filter_result, self.special_ids)
        return TrainDatasetMeta(train_dataset=train, eval_dataset=evaluation, total_num_steps=steps)

    def pre_lora_load(self, cfg, model):
        # Axolotl seeds the data order and the trainer but not the adapter's initialisation, which
        # then follows whatever the process drew before: seeded here, a run's `seed` fixes both.
        settings = deft_settings(cfg)
        if settings is not None and settings.adapter:
            from transformers import set_seed

            set_seed(settings.seed)

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
        settings = deft_settings(cfg)
        if settings is None:
            return []
        from deft_plugin.integration.callbacks import MetricsLogCallback
        from deft_plugin.launch.outputs import METRICS_LOG

        return [MetricsLogCallback(settings.output_dir / METRICS_LOG)]

    def post_trainer_create(self, cfg, trainer):
        settings = deft_settings(cfg)
        if settings is None:
            return
        # The process's last filtering is the one this trainer's datasets came from (Axolotl builds the
        # trainer right after load_datasets); an instance kept from an earlier config must not use its own.
        if DEFTPlugin.latest_datasets is not None:
            self.filter_result, self.special_ids = DEFTPlugin.latest_datasets
        if self.filter_result is None:
            raise RuntimeError("DEFT: no discrepancy distribution; load_datasets did not run for this config")
        if settings.method == "pro":
            from deft_plugin.integration.pro_trainer import DeftPROTrainer as wanted_cls
        else:
            from deft_plugin.integration.dpo_trainer import DeftDPOLossMixin as wanted_cls
        if not isinstance(trainer, wanted_cls):
            wanted = "the DEFT-PRO trainer" if settings.method == "pro" else "the DEFT DPO trainer"
            raise RuntimeError(f"deft_method: {settings.method} needs {wanted}, but Axolotl built "
                               f"{type(trainer).__name__} (another plugin's get_trainer_cls or trainer_cls took "
                               "precedence)")
        if getattr(trainer, "is_deepspeed_enabled", False):
            check_process_count(trainer.accelerator.num_processes)
        from deft_plugin.filtering.pipeline import gap_spread

        result = self.filter_result
        loss = replace(settings.loss, qn=result.qdiff.qn, special_ids=tuple(self.special_ids),
                       reward_scale=gap_spread(result.rewards or result.start_rewards))
        trainer.configure_deft(loss)
        LOG.info("DEFT: loss term attached to %s (weight %s, form %s)", type(trainer).__name__, loss.reward_weight,
                 loss.form)
        if loss.guard != "off":
            from deft_plugin.integration.callbacks import CollapseGuardStateCallback

            trainer.add_callback(CollapseGuardStateCallback(trainer))
        if settings.guard_answers_every and loss.guard != "off":
            from deft_plugin.integration.callbacks import AnswerGuardCallback
            from deft_plugin.integration.guard import guard_prompts

            prompts, source = guard_prompts(result, settings.guard_answers)
            trainer.add_callback(AnswerGuardCallback(trainer, prompts, settings.guard_answers_every))
            LOG.info("DEFT guard: greedy answers to %d prompts (%s) every %d steps", len(prompts), source,
                     settings.guard_answers_every)


def check_process_count(accelerate_processes: int) -> None:
    """Under DeepSpeed, accelerate and the process group must agree on how many processes there
    are; when they do not, DeepSpeed's batch check fails later with a bare assertion. One line here."""
    from deft_plugin.filtering.distributed import rank_and_world

    world = rank_and_world()[1]
    if world != accelerate_processes:
        raise RuntimeError(
            f"DeepSpeed: accelerate counts {accelerate_processes} process(es) but the process group has {world}: "
            "accelerate did not take the launch's backend (on a machine without a GPU it takes gloo only with "
            "cpu=True, which drops DeepSpeed); launch where every process has a GPU, or leave out `deepspeed:`")
