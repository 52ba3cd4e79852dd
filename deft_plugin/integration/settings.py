"""The door: Axolotl's config becomes DEFT's own settings once.

Axolotl hands each hook its whole config: the raw YAML dict in `register`, the validated config
afterwards. Each hook reads it once (plugin.deft_settings, then read_settings here) into a frozen
DeftSettings (as TRL's trainers read a
DPOConfig): whether DEFT is on and in which mode (DPO or PRO, DPO's reference from the scoring
pass or from a model, DEFT's dataset formats or Axolotl's), the deft_* keys with the defaults of
the DEFTArgs schema alone, and the few Axolotl keys DEFT needs. Past the hooks nothing reads the
config, except the one function that hands it back to Axolotl to load its own datasets
(datasets_hook.load_axolotl_rows)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deft_plugin.core.losses import SATURATING_FORMS, LossSettings, term_form
from deft_plugin.core.selection import DEFAULT_FILTER_RATIO
from deft_plugin.filtering.pipeline import FilterSettings
from deft_plugin.integration.args import DEFTArgs
from deft_plugin.registry import format_name

# The keys that change the rewards, and so name the score cache they live in (by these names:
# a cache written before stays valid). The others choose among cached rewards or act in training.
REWARD_KEYS = ("deft_qdiff_norm", "deft_qdiff_path", "deft_prompt_style", "deft_score_dtype", "deft_score_batch_size",
               "deft_truncation")


@dataclass(frozen=True)
class DatasetSource:
    """One `datasets:` entry as DEFT reads it; `format` is the DEFT format (type: deft.<format>)
    or None for Axolotl's own types."""

    path: str
    format: str | None
    split: str | None = None
    data_files: str | list | None = None
    revision: str | None = None


@dataclass(frozen=True)
class DeftSettings:
    method: str  # dpo (rl: dpo) | pro (Axolotl's causal trainer)
    dpo_trainer: bool  # DEFT-DPO on Axolotl's DPO trainer: method dpo and rl: dpo
    scoring_reference: bool  # DPO's reference log-probabilities come from the scoring pass (no model)
    deft_formats: bool  # the rows come through DEFT's formats; else through Axolotl's own loader
    prompt_style: str
    filter: FilterSettings
    loss: LossSettings  # without Q and the special tokens, which the data gives
    guard_answers_every: int  # the collapse guard's generation check: every N optimizer steps (0: off)
    guard_answers: int  # prompts it answers
    qdiff_path: str | None
    score_dtype: str
    reward_key: dict  # the deft_* keys that name the score cache
    # Axolotl's keys DEFT reads
    base_model: str | None
    revision: str | None
    trust_remote_code: bool
    sequence_len: int | None
    datasets: tuple[DatasetSource, ...]
    val_set_size: float
    seed: int
    adapter: str | None  # lora | qlora | None (full fine-tuning)
    cache_root: Path
    output_dir: Path | None
    batch_size: int  # Axolotl's cfg.batch_size: micro batch x accumulation x world size
    num_epochs: float
    max_steps: int | None = None  # when set, the trainer runs exactly this many steps (epochs or not)


def deft_args(cfg) -> DEFTArgs:
    """The deft_* keys of a config, unset ones at the DEFTArgs schema's defaults (not validated
    again: Axolotl validated them, or will, with the rest of the config)."""
    return DEFTArgs.model_construct(**{k: cfg.get(k) for k in DEFTArgs.model_fields if cfg.get(k) is not None})


def read_settings(cfg) -> DeftSettings:
    """DEFT's settings from the Axolotl config of a run that lists the plugin (plugin.deft_settings
    asks that first)."""
    a = deft_args(cfg)
    rl = cfg.get("rl")
    dpo_trainer = a.deft_method == "dpo" and getattr(rl, "value", rl) == "dpo"
    scoring_reference = dpo_trainer and a.deft_reference == "scoring"
    sources = tuple(_dataset_source(entry) for entry in cfg.get("datasets") or [])
    ratio = a.deft_filter_ratio
    if ratio is None and a.deft_filter_count is None:
        ratio = DEFAULT_FILTER_RATIO  # DEFTArgs: neither key set keeps the paper's 5%
    form = term_form(a.deft_loss_form, a.deft_reward_weight)  # lambda 0: no starting rewards, no scoring pass
    filter_settings = FilterSettings(filter=a.deft_filter, ratio=ratio, count=a.deft_filter_count,
                                     score=a.deft_filter_score, norm=a.deft_qdiff_norm,
                                     batch_size=a.deft_score_batch_size, max_length=cfg.get("sequence_len"),
                                     truncation=a.deft_truncation, select=a.deft_filter_select, by=a.deft_filter_by,
                                     seed=a.deft_filter_seed, reference=scoring_reference,
                                     start_rewards=form in SATURATING_FORMS)
    prepared = cfg.get("dataset_prepared_path") or "last_run_prepared"
    batch_size = cfg.get("batch_size") or (cfg.get("micro_batch_size") or 1) * (cfg.get("gradient_accumulation_steps")
                                                                               or 1)
    return DeftSettings(
        method=a.deft_method, dpo_trainer=dpo_trainer, scoring_reference=scoring_reference,
        deft_formats=_deft_formats(sources), prompt_style=a.deft_prompt_style, filter=filter_settings,
        loss=LossSettings(reward_weight=a.deft_reward_weight, form=form,
                          pro_sft_weight=a.deft_pro_sft_weight, guard=a.deft_guard),
        guard_answers_every=a.deft_guard_answers_every, guard_answers=a.deft_guard_answers,
        qdiff_path=a.deft_qdiff_path, score_dtype=a.deft_score_dtype,
        reward_key={k: getattr(a, k) for k in REWARD_KEYS},
        base_model=cfg.get("base_model"), revision=cfg.get("revision_of_model"),
        trust_remote_code=bool(cfg.get("trust_remote_code")), sequence_len=cfg.get("sequence_len"),
        datasets=sources, val_set_size=cfg.get("val_set_size") or 0, seed=cfg.get("seed") or 42,
        adapter=cfg.get("adapter") or None,
        cache_root=Path(a.deft_cache_dir) if a.deft_cache_dir else Path(prepared) / "deft",
        output_dir=Path(cfg["output_dir"]) if cfg.get("output_dir") else None,
        batch_size=batch_size, num_epochs=cfg.get("num_epochs") or 1, max_steps=cfg.get("max_steps") or None,
    )


def _dataset_source(entry) -> DatasetSource:
    get = entry.get if isinstance(entry, dict) else lambda key: getattr(entry, key, None)
    return DatasetSource(path=get("path"), format=format_name(get("type")), split=get("split"),
                         data_files=get("data_files"), revision=get("revision"))


def _deft_formats(sources: tuple[DatasetSource, ...]) -> bool:
    formats = [s.format is not None for s in sources]
    if any(formats) and not all(formats):
        raise ValueError("datasets: either every entry uses a DEFT format (type: deft.<format>) or none does")
    return any(formats)
