"""The plugin's YAML keys (flat `deft_*` keys merged into Axolotl's config schema) and
their validation. Every error names the key."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from deft_plugin.core.losses import DEFAULT_LOSS_FORM, DEFAULT_PRO_SFT_WEIGHT, DEFAULT_REWARD_WEIGHT
from deft_plugin.core.qdiff import NORMS
from deft_plugin.data.sources import JSON_SUFFIXES
from deft_plugin.integration.listing import deft_enabled
from deft_plugin.registry import FORMAT_PREFIX, dataset_formats, format_name, score_variants
from deft_plugin.utils.usage import looks_like_a_path

RANKED_ONLY_FORMATS = ("listwise",)


class DEFTArgs(BaseModel):
    """DEFT: distribution-guided filtering and loss guidance."""

    # method
    deft_method: Literal["dpo", "pro"] = Field(
        "dpo", description="dpo: DEFT-DPO on Axolotl's DPO trainer (rl: dpo); pro: DEFT-PRO, the PRO listwise "
                           "ranking loss on Axolotl's causal trainer (no rl:).")
    deft_prompt_style: Literal["auto", "chat_template", "raw"] = Field(
        "auto", description="How DEFT formats present dialogues: chat messages, raw Human/Assistant text, or "
                            "chat messages when the tokenizer has a chat template.")

    # filtering
    deft_filter: bool = Field(True, description="Score every pair with the starting model and keep the top fraction.")
    deft_filter_ratio: float | None = Field(None, description="Fraction of pairs to keep, in (0, 1]; default 0.05.")
    deft_filter_count: int | None = Field(None, description="Number of pairs to keep (instead of a ratio).")
    deft_filter_score: str = Field("delta", description="Filtering score: delta (R(y+) - R(y-)) or chosen (R(y+)).")
    deft_filter_select: Literal["top", "random", "bottom"] = Field(
        "top", description="Which pairs to keep: top by the score (DEFT); random or bottom (controls, same size).")
    deft_filter_by: Literal["deft", "logp_margin", "length_ratio"] = Field(
        "deft", description="What top and bottom rank by: deft (the filtering score); baselines from the literature: "
                            "logp_margin (the starting model's mean-token log-prob of y+ minus y-, from the same "
                            "scoring pass) or length_ratio (tokens of y+ over y-, no model).")
    deft_filter_seed: int = Field(0, description="Seed of deft_filter_select: random.")
    deft_qdiff_norm: str = Field("maxabs", description="Normalisation of Q: maxabs, l2 or none.")
    deft_qdiff_path: str | None = Field(None, description="Directory of a saved discrepancy distribution to use.")
    deft_truncation: Literal["keep_start", "drop"] = Field(
        "keep_start", description="A reply longer than sequence_len leaves: keep_start cuts it to fit (as TRL does), "
                                  "drop leaves the row out (counted in the report).")

    # scoring
    deft_score_batch_size: int = Field(8, description="Pairs per scoring batch.")
    deft_score_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Scoring precision; auto = bfloat16 on a GPU that supports it, else float32.")
    deft_cache_dir: str | None = Field(
        None, description="Where scores are cached (default: under dataset_prepared_path).")

    # reference (DEFT-DPO)
    deft_reference: Literal["scoring", "model"] = Field(
        "scoring", description="Where DPO's reference log-probabilities come from: scoring (the scoring pass records "
                               "them, no reference model is loaded or run) or model (TRL's own reference model).")

    # loss
    deft_reward_weight: float = Field(DEFAULT_REWARD_WEIGHT, description="lambda, the weight of the DEFT loss term.")
    deft_loss_form: Literal["pair", "chosen", "margin", "anchored"] = Field(
        DEFAULT_LOSS_FORM,
        description="DEFT term: pair (R(y+) - R(y-), the paper's reading) or chosen (R(y+)), linear and never fading; "
                    "margin (the gap's move since the start inside DPO's/PRO's own loss) or anchored (-log sigmoid of "
                    "that move over its spread), which fade once a pair is separated.")
    deft_guard: Literal["warn", "stop", "off"] = Field(
        "warn", description="The collapse guard: warn writes one line per event (one token taking over the "
                            "predictions, the chosen replies' accuracy falling, R(y-) rising with R(y+)), naming the "
                            "signal, its value and what to change; stop also ends the run with its checkpoint saved; "
                            "off.")
    deft_guard_answers_every: int = Field(
        0, description="The collapse guard's generation check: every N optimizer steps, greedy answers to "
                       "deft_guard_answers prompts the run does not train on, held against the answers before "
                       "training (distinct-word share, repetition, length); 0 (default) leaves it off.")
    deft_guard_answers: int = Field(8, description="Prompts the generation check answers (64 new tokens each).")
    deft_pro_sft_weight: float = Field(
        DEFAULT_PRO_SFT_WEIGHT,
        description="PRO: weight w of the SFT term, w * (n-1)^2 * summed NLL of the best response.")

    @field_validator("deft_filter_ratio")
    @classmethod
    def check_ratio(cls, v):
        if v is not None and not 0 < v <= 1:
            raise ValueError(f"deft_filter_ratio must be in (0, 1], got {v}")
        return v

    @field_validator("deft_filter_count", "deft_score_batch_size", "deft_guard_answers")
    @classmethod
    def check_positive(cls, v, info: ValidationInfo):
        if v is not None and v < 1:
            raise ValueError(f"{info.field_name} must be at least 1, got {v}")
        return v

    @field_validator("deft_reward_weight", "deft_pro_sft_weight", "deft_guard_answers_every")
    @classmethod
    def check_weight(cls, v, info: ValidationInfo):
        if v < 0:
            raise ValueError(f"{info.field_name} must be >= 0, got {v}")
        return v

    @field_validator("deft_qdiff_norm")
    @classmethod
    def check_norm(cls, v):
        if v not in NORMS:
            raise ValueError(f"deft_qdiff_norm must be one of {', '.join(NORMS)}, got {v!r}")
        return v

    @field_validator("deft_filter_score")
    @classmethod
    def check_score(cls, v):
        if v not in score_variants():
            raise ValueError(f"deft_filter_score must be one of {', '.join(sorted(score_variants()))}, got {v!r}")
        return v

    @model_validator(mode="before")
    @classmethod
    def check_combinations(cls, data):
        if not isinstance(data, dict):
            return data
        if not deft_enabled(data):  # not the plugin's config: Axolotl 0.21 checks every config of a process
            return data             # against every plugin schema it has loaded
        check_known_keys(data, cls.model_fields)
        check_base_model(data.get("base_model"))
        if data.get("deft_filter_ratio") is not None and data.get("deft_filter_count") is not None:
            raise ValueError("set deft_filter_ratio or deft_filter_count, not both")
        if data.get("deft_filter_by", "deft") != "deft" and data.get("deft_filter_select") == "random":
            raise ValueError(f"deft_filter_by: {data['deft_filter_by']} ranks pairs for deft_filter_select top or "
                             "bottom; random draws without a ranking")
        method = data.get("deft_method") or "dpo"
        rl = data.get("rl")
        rl = getattr(rl, "value", rl)
        if method == "pro":
            check_pro(data, rl)
        else:
            check_dpo(data, rl)
        check_dataset_types(data, method)
        check_dataset_paths(data)  # after the types: a dataset the plugin cannot read is named for that first
        return data


def check_base_model(model) -> None:
    """A local folder that is not there would reach transformers, which reads it as a malformed hub id
    ("Repo id must be in the form ..."): name it as what it is. A hub id has one '/' at most."""
    if not isinstance(model, str) or not looks_like_a_path(model):
        return
    if not Path(model).expanduser().is_dir():
        raise ValueError(f"base_model: {model} is not a model directory (a local path must be a folder with the "
                         f"model's config.json; relative paths are read from where axolotl runs, {Path.cwd()})")


LOCAL_DATA_SUFFIXES = (*JSON_SUFFIXES, ".parquet", ".csv", ".arrow")


def check_dataset_paths(data: dict) -> None:
    """A dataset path that can only be a local file or folder and is not there: named here, not 50
    lines into Axolotl's loading. A path that is not there and could be a hub id is left to Axolotl."""
    for i, ds in enumerate(data.get("datasets") or []):
        path = ds.get("path") if isinstance(ds, dict) else getattr(ds, "path", None)
        if not isinstance(path, str) or Path(path).expanduser().exists():
            continue
        if looks_like_a_path(path) or path.endswith(LOCAL_DATA_SUFFIXES):
            raise ValueError(f"datasets[{i}].path: {path} does not exist (relative paths are read from where "
                             f"axolotl runs, {Path.cwd()})")


def check_known_keys(data: dict, fields: dict) -> None:
    """Axolotl drops unknown keys without a word: a misspelt deft_* key would silently run the default."""
    known = set(fields) | {f.alias for f in fields.values() if f.alias}
    for key in data:
        if isinstance(key, str) and key.startswith("deft_") and key not in known:
            close = difflib.get_close_matches(key, sorted(k for k in known if k.startswith("deft_")), n=1)
            raise ValueError(f"{key}: unknown DEFT key" + (f"; did you mean {close[0]}?" if close else ""))


def _dataset_types(data: dict) -> list:
    return [ds.get("type") if isinstance(ds, dict) else getattr(ds, "type", None) for ds in data.get("datasets") or []]


def check_dataset_types(data: dict, method: str) -> None:
    """Every `type: deft.<name>` names a registered format, and DPO gets no ranked-only format."""
    for i, ds_type in enumerate(_dataset_types(data)):
        name = format_name(ds_type)
        if name is None:
            continue
        if name not in dataset_formats():
            raise ValueError(f"datasets[{i}].type: unknown DEFT dataset format {ds_type!r}; known: "
                             + ", ".join(FORMAT_PREFIX + n for n in sorted(dataset_formats())))
        if method == "dpo" and name in RANKED_ONLY_FORMATS:
            raise ValueError(f"datasets[{i}].type: {ds_type} holds ranked lists, which DPO cannot train on; "
                             "use deft_method: pro")


def check_dpo(data: dict, rl) -> None:
    if rl != "dpo":
        raise ValueError(f"rl: DEFT-DPO runs with rl: dpo (got rl: {rl!r}); for DEFT-PRO set deft_method: pro "
                         "and leave rl unset")
    check_dpo_loss(data)
    if (data.get("deft_reference") or "scoring") == "scoring":
        check_scoring_reference(data)


def check_dpo_loss(data: dict) -> None:
    """The plugin computes the DPO loss itself, from the hidden states in chunks
    (integration/dpo_trainer.py): the loss types it knows, without TRL's variants that need the
    full logits or a packed batch. dpo_use_liger_kernel is accepted: the plugin's chunked path
    takes its place (plugin.register turns TRL's off)."""
    from deft_plugin.core.losses import DPO_LOSS_TYPES, term_form

    for loss_type in data.get("dpo_loss_type") or []:
        if loss_type not in DPO_LOSS_TYPES:
            raise ValueError(f"dpo_loss_type: {loss_type!r} is not computed by the DEFT-DPO loss; "
                             f"use one of {', '.join(DPO_LOSS_TYPES)}")
        if loss_type == "ipo" and term_form(data.get("deft_loss_form"), data.get("deft_reward_weight")) == "margin":
            named = "" if data.get("deft_loss_form") else " (the default)"
            raise ValueError(f"deft_loss_form: margin{named} puts the reward gap inside DPO's sigmoid or hinge; "
                             "dpo_loss_type ipo has no such margin: set deft_loss_form: anchored (or pair, the "
                             "paper's linear form), or use another dpo_loss_type")
    refused = {"dpo_use_weighting": "weights pairs by a function of the full logits (WPO)",
               "dpo_padding_free": "packs chosen and rejected rows into one sequence",
               "rl_adapter_ref_model": "loads a second adapter as the reference"}
    for key, what in refused.items():
        if data.get(key):
            raise ValueError(f"{key}: {what}, which the DEFT-DPO loss does not support; remove {key}")


# Keys that ask for a reference the scoring pass does not give: a reference model kept and run.
REFERENCE_MODEL_KEYS = {
    "dpo_ld_alpha": "weights the reference log-probabilities by length (LD-DPO)",
    "sync_ref_model": "updates the reference model during training",
}


def check_scoring_reference(data: dict) -> None:
    """deft_reference: scoring (the default) gives TRL fixed, precomputed reference log-probabilities."""
    for key, what in REFERENCE_MODEL_KEYS.items():
        if data.get(key) or (isinstance(data.get("trl"), dict) and data["trl"].get(key)):
            raise ValueError(f"{key}: {what}, which deft_reference: scoring (the default) does not give; "
                             f"set deft_reference: model, or remove {key}")
    if data.get("precompute_ref_log_probs") is False:
        raise ValueError("precompute_ref_log_probs: false asks TRL to run its reference model at every step; "
                         "deft_reference: scoring (the default) supplies the reference log-probabilities "
                         "precomputed. Remove the key, or set deft_reference: model")


def check_pro(data: dict, rl) -> None:
    if rl:
        raise ValueError(f"rl: deft_method: pro runs PRO on Axolotl's causal trainer; remove rl: {rl!r} "
                         "(or use deft_method: dpo)")
    if data.get("sample_packing"):
        raise ValueError("sample_packing: deft_method: pro compares whole candidate sequences of one prompt and "
                         "cannot pack them; set sample_packing: false")
    for i, ds_type in enumerate(_dataset_types(data)):
        if format_name(ds_type) is None:
            raise ValueError(f"datasets[{i}].type: deft_method: pro reads its data through a DEFT format "
                             f"(deft.hh_rlhf, deft.listwise, deft.preference), got {ds_type!r}")
