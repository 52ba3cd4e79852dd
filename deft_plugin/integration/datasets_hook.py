"""The plugin's `load_datasets`: preference data from Axolotl's `datasets:` entries,
filtered by DEFT, with Axolotl's step count following the kept set."""

from __future__ import annotations

import logging
import math
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from datasets import Dataset

from deft_plugin.integration.args import DEFAULT_FILTER_RATIO, FORMAT_PREFIX
from deft_plugin.data.encoding import EncodedRow, as_ranked, encode_rows
from deft_plugin.data.parsing import ParsedRows, read_source
from deft_plugin.filtering.pipeline import (FilterResult, FilterSettings, fingerprint, model_fingerprint, rows_fingerprint,
                                  run_filter, tokenizer_fingerprint)
from deft_plugin.core.qdiff import QDiff

LOG = logging.getLogger("axolotl.integrations.deft")

# Keys that change the rewards and so the cache they live in. The others (ratio, count,
# score variant, loss weight and form) choose among cached rewards or act in training.
REWARD_KEYS = ("deft_qdiff_norm", "deft_qdiff_path", "deft_prompt_style", "deft_score_dtype", "deft_score_batch_size")


def resolve_prompt_style(style: str | None, tokenizer) -> str:
    if style in (None, "auto"):
        return "chat_template" if getattr(tokenizer, "chat_template", None) else "raw"
    return style


def filter_settings(cfg) -> FilterSettings:
    ratio, count = cfg.deft_filter_ratio, cfg.deft_filter_count
    return FilterSettings(
        filter=cfg.deft_filter if cfg.deft_filter is not None else True,
        ratio=ratio if ratio is not None or count is not None else DEFAULT_FILTER_RATIO,
        count=count,
        score=cfg.deft_filter_score or "delta",
        norm=cfg.deft_qdiff_norm or "maxabs",
        batch_size=cfg.deft_score_batch_size or 8,
        max_length=cfg.sequence_len,
    )


def scoring_device_and_dtype(requested: str | None) -> tuple[torch.device, torch.dtype]:
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        auto = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        device, auto = torch.device("cpu"), torch.float32
    dtype = auto if requested in (None, "auto") else getattr(torch, requested)
    return device, dtype


def load_scoring_model(name_or_path: str, requested_dtype: str | None = None, revision: str | None = None,
                       trust_remote_code: bool = False, **kwargs):
    """The starting model, as a plain (non-DeepSpeed) copy on this rank's device."""
    from transformers import AutoModelForCausalLM

    device, dtype = scoring_device_and_dtype(requested_dtype)
    with _without_zero3_init():
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, revision=revision,
                                                     trust_remote_code=trust_remote_code, **kwargs)
    return model.to(device).eval()


@contextmanager
def _without_zero3_init():
    """Under ZeRO-3, from_pretrained would partition the weights (zero.Init) and a forward
    pass outside the DeepSpeed engine would fail; the scoring copy must be a plain model."""
    from transformers.integrations import deepspeed as hf_ds

    saved = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved


def _deft_format(entry) -> str | None:
    t = entry.get("type") if hasattr(entry, "get") else None
    return t[len(FORMAT_PREFIX):] if isinstance(t, str) and t.startswith(FORMAT_PREFIX) else None


def _load_deft_rows(cfg, style: str) -> tuple[Dataset, Dataset | None, dict]:
    parsed = ParsedRows()
    for entry in cfg.datasets:
        parsed.extend(read_source(entry["path"], _deft_format(entry), style, entry.get("split"),
                                  entry.get("data_files"), entry.get("revision")))
    # PRO may mix pair and list formats: one schema for all (from_list takes the first row's keys)
    train = Dataset.from_list([as_ranked(r) for r in parsed.rows] if cfg.deft_method == "pro" else parsed.rows)
    evaluation = None
    if cfg.val_set_size:
        split = train.train_test_split(test_size=cfg.val_set_size, seed=cfg.seed or 42)
        train, evaluation = split["train"], split["test"]
    return train, evaluation, parsed.report()


def _load_axolotl_rows(cfg) -> tuple[Dataset, Dataset | None, dict]:
    from axolotl.common.datasets import load_preference_datasets

    meta = load_preference_datasets(cfg=cfg)
    return meta.train_dataset, meta.eval_dataset, {"read": len(meta.train_dataset), "unparseable": 0}


def cache_dir_for(cfg, rows: list[dict], tokenizer) -> Path:
    root = Path(cfg.deft_cache_dir) if cfg.deft_cache_dir else Path(cfg.dataset_prepared_path or "last_run_prepared") / "deft"
    key = fingerprint({"data": rows_fingerprint(rows), "model": model_fingerprint(cfg.base_model, cfg.revision_of_model),
                       "tokenizer": tokenizer_fingerprint(tokenizer), "sequence_len": cfg.sequence_len,
                       "deft": {k: cfg.get(k) for k in REWARD_KEYS}})
    return root / key


def listwise_dataset(indices: list[int], encoded: dict[int, EncodedRow], rows: list[dict]) -> Dataset:
    """The PRO trainer's dataset: token ids of each kept row's prompt and candidates (best
    first, as scored) and its reward scores (empty when the data has none)."""
    return Dataset.from_list([{"prompt_ids": list(encoded[i].prompt_ids),
                               "completion_ids": [list(c) for c in encoded[i].completions],
                               "rewards": list(rows[i].get("rewards") or [])} for i in indices])


def _encoded_eval(evaluation: Dataset, tokenizer, max_length: int | None) -> Dataset:
    rows = [dict(r) for r in evaluation]
    encoded, degenerate = encode_rows(rows, tokenizer, max_length)
    if degenerate:
        LOG.warning("DEFT: %d of %d evaluation rows are degenerate and not evaluated: %s", sum(degenerate.values()),
                    len(rows), dict(degenerate))
    return listwise_dataset([e.index for e in encoded], {e.index: e for e in encoded}, rows)


def load_deft_datasets(cfg, tokenizer=None) -> tuple[Dataset, Dataset | None, int, FilterResult]:
    """(train, eval, total_num_steps, filter result) for a DEFT-enabled config."""
    if tokenizer is None:
        from axolotl.loaders import load_tokenizer

        tokenizer = load_tokenizer(cfg)
    formats = [_deft_format(entry) for entry in cfg.datasets]
    if any(formats) and not all(formats):
        raise ValueError("datasets: either every entry uses a DEFT format (type: deft.<format>) or none does")
    style = resolve_prompt_style(cfg.deft_prompt_style, tokenizer)
    train, evaluation, source_report = _load_deft_rows(cfg, style) if any(formats) else _load_axolotl_rows(cfg)
    pro = cfg.deft_method == "pro"
    rows = [dict(r) for r in train] if pro else [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in train]
    cache_dir = cache_dir_for(cfg, rows, tokenizer)
    qdiff = QDiff.load(cfg.deft_qdiff_path) if cfg.deft_qdiff_path else None
    result = run_filter(
        rows, tokenizer,
        lambda: load_scoring_model(cfg.base_model, cfg.deft_score_dtype, cfg.revision_of_model,
                                   bool(cfg.trust_remote_code)),
        filter_settings(cfg), cache_dir, qdiff, source_report={**source_report, "prompt_style": style})
    if pro:
        kept = listwise_dataset(result.kept, result.encoded, rows)
        evaluation = _encoded_eval(evaluation, tokenizer, cfg.sequence_len) if evaluation is not None else None
    else:
        kept = train.select(result.kept)
    batch_size = cfg.batch_size or (cfg.micro_batch_size or 1) * (cfg.gradient_accumulation_steps or 1)
    total_num_steps = int(math.ceil(len(kept) * (cfg.num_epochs or 1) / batch_size))
    LOG.info("DEFT: %d rows read, %d unparseable, %d degenerate, %d scored, %d kept -> %d steps (cache %s)",
             result.report.get("read", len(rows)), result.report.get("unparseable", 0), result.report["degenerate"],
             result.report["scored"], len(kept), total_num_steps, cache_dir)
    return kept, evaluation, total_num_steps, result
