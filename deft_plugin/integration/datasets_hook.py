"""The plugin's `load_datasets`: preference data from Axolotl's `datasets:` entries,
filtered by DEFT, with Axolotl's step count following the kept set."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
from pathlib import Path

from datasets import Dataset

from deft_plugin.core.qdiff import QDiff
from deft_plugin.core.selection import DEFAULT_FILTER_RATIO
from deft_plugin.data.encoding import EncodedRow, as_ranked, encode_rows, resolve_prompt_style
from deft_plugin.data.parsing import ParsedRows, parse_source
from deft_plugin.filtering.cache_key import score_cache_key
from deft_plugin.filtering.distributed import is_main_process, join_launched_group
from deft_plugin.filtering.pipeline import FilterResult, FilterSettings, run_filter
from deft_plugin.filtering.scoring_model import load_scoring_model
from deft_plugin.integration.scoring_reference import scoring_reference, with_reference
from deft_plugin.launch.outputs import SELECTION_RECORD
from deft_plugin.registry import format_name
from deft_plugin.utils.atomic import atomic_write_text

LOG = logging.getLogger("axolotl.integrations.deft")

# Keys that change the rewards and so the cache they live in. The others (ratio, count,
# score variant, loss weight and form) choose among cached rewards or act in training.
WHERE = "deft_source_line"  # a column that never reaches the trainer
REWARD_KEYS = ("deft_qdiff_norm", "deft_qdiff_path", "deft_prompt_style", "deft_score_dtype", "deft_score_batch_size",
               "deft_truncation")


def load_deft_datasets(cfg, tokenizer=None) -> tuple[Dataset, Dataset | None, int, FilterResult]:
    """(train, eval, total_num_steps, filter result) for a DEFT-enabled config."""
    if tokenizer is None:
        from axolotl.loaders import load_tokenizer

        tokenizer = load_tokenizer(cfg)
    style = resolve_prompt_style(cfg.deft_prompt_style, tokenizer)
    train, evaluation, source_report = load_rows(cfg, style)
    names = train[WHERE] if WHERE in train.column_names else None
    if names is not None:
        train = train.remove_columns(WHERE)
        evaluation = evaluation.remove_columns(WHERE) if evaluation is not None else None
    pro = cfg.deft_method == "pro"
    rows = [dict(r) for r in train] if pro else [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in train]
    cache_dir = cache_dir_for(cfg, rows, tokenizer)
    join_launched_group()  # each rank of a DDP/FSDP launch scores its own shard
    load_model = functools.cache(lambda: load_scoring_model(cfg.base_model, cfg.deft_score_dtype,
                                                            cfg.revision_of_model, bool(cfg.trust_remote_code)))
    settings = filter_settings(cfg)
    result = run_filter(rows, tokenizer, load_model, settings, cache_dir,
                        QDiff.load(cfg.deft_qdiff_path) if cfg.deft_qdiff_path else None,
                        source_report={**source_report, "prompt_style": style}, row_names=names)
    if pro:
        kept = listwise_dataset(result.kept, result.encoded, rows)
        evaluation = (encoded_eval(evaluation, tokenizer, cfg.sequence_len, cfg.deft_truncation or "keep_start")
                      if evaluation is not None else None)
    else:
        kept = train.select(result.kept)
        if settings.reference:
            kept = with_reference(kept, [result.logps[i] for i in result.kept])
            if evaluation is not None:
                evaluation = eval_with_reference(evaluation, cfg, tokenizer, load_model, result.qdiff)
    total_num_steps = steps_for(len(kept), cfg)
    if cfg.output_dir and is_main_process():
        write_selection(Path(cfg.output_dir), result, cache_dir)
    LOG.info("DEFT: %d rows read, %d unparseable, %d degenerate, %d scored, %d kept -> %d steps (cache %s)",
             result.report.get("read", len(rows)), result.report.get("unparseable", 0), result.report["degenerate"],
             result.report["scored"], len(kept), total_num_steps, cache_dir)
    return kept, evaluation, total_num_steps, result


def eval_with_reference(evaluation: Dataset, cfg, tokenizer, load_model, qdiff: QDiff) -> Dataset:
    """The DPO eval split with its reference log-probabilities from the scoring pass (cached apart
    from the training rows'); rows that cannot be scored are left out, counted and reported."""
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in evaluation]
    settings = dataclasses.replace(filter_settings(cfg), filter=False, reference=True)
    result = run_filter(rows, tokenizer, load_model, settings, cache_dir_for(cfg, rows, tokenizer), qdiff,
                        progress=False)
    if len(result.kept) < len(rows):
        LOG.warning("DEFT: %d of %d evaluation rows are degenerate and not evaluated: %s", len(rows) - len(result.kept),
                    len(rows), result.report["degenerate_reasons"])
    return with_reference(evaluation.select(result.kept), [result.logps[i] for i in result.kept])


def load_rows(cfg, style: str) -> tuple[Dataset, Dataset | None, dict]:
    """Parsed rows of every `datasets:` entry, through DEFT's formats or else Axolotl's own loader."""
    formats = [format_name(entry.get("type")) for entry in cfg.datasets]
    if any(formats) and not all(formats):
        raise ValueError("datasets: either every entry uses a DEFT format (type: deft.<format>) or none does")
    return load_deft_rows(cfg, style) if any(formats) else load_axolotl_rows(cfg)


def load_deft_rows(cfg, style: str) -> tuple[Dataset, Dataset | None, dict]:
    parsed = ParsedRows()
    for entry in cfg.datasets:
        parsed.extend(parse_source(entry["path"], format_name(entry.get("type")), style, entry.get("split"),
                                   entry.get("data_files"), entry.get("revision")))
    # PRO may mix pair and list formats: one schema for all (from_list takes the first row's keys);
    # where each row came from rides along as a column through the train/eval split
    rows = [as_ranked(r) for r in parsed.rows] if cfg.deft_method == "pro" else parsed.rows
    train = Dataset.from_list([{**r, WHERE: w} for r, w in zip(rows, parsed.where)])
    evaluation = None
    if cfg.val_set_size:
        split = train.train_test_split(test_size=cfg.val_set_size, seed=cfg.seed or 42)
        train, evaluation = split["train"], split["test"]
    return train, evaluation, parsed.report()


def load_axolotl_rows(cfg) -> tuple[Dataset, Dataset | None, dict]:
    from axolotl.common.datasets import load_preference_datasets

    meta = load_preference_datasets(cfg=cfg)
    return meta.train_dataset, meta.eval_dataset, {"read": len(meta.train_dataset), "unparseable": 0}


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
        truncation=cfg.deft_truncation or "keep_start",
        select=cfg.deft_filter_select or "top",
        seed=cfg.deft_filter_seed or 0,
        reference=scoring_reference(cfg),
    )


def cache_dir_for(cfg, rows: list[dict], tokenizer) -> Path:
    root = (Path(cfg.deft_cache_dir) if cfg.deft_cache_dir
            else Path(cfg.dataset_prepared_path or "last_run_prepared") / "deft")
    return root / score_cache_key(rows, cfg.base_model, cfg.revision_of_model, tokenizer, cfg.sequence_len,
                                  {k: cfg.get(k) for k in REWARD_KEYS})


def steps_for(rows: int, cfg) -> int:
    """Axolotl's total_num_steps for this many training rows (cfg.batch_size already counts the world size)."""
    batch_size = cfg.batch_size or (cfg.micro_batch_size or 1) * (cfg.gradient_accumulation_steps or 1)
    return int(math.ceil(rows * (cfg.num_epochs or 1) / batch_size))


def listwise_dataset(indices: list[int], encoded: dict[int, EncodedRow], rows: list[dict]) -> Dataset:
    """The PRO trainer's dataset: token ids of each kept row's prompt and candidates (best
    first, as scored) and its reward scores (empty when the data has none)."""
    return Dataset.from_list([{"prompt_ids": list(encoded[i].prompt_ids),
                               "completion_ids": [list(c) for c in encoded[i].completions],
                               "rewards": list(rows[i].get("rewards") or [])} for i in indices])


def encoded_eval(evaluation: Dataset, tokenizer, max_length: int | None, truncation: str = "keep_start") -> Dataset:
    rows = [dict(r) for r in evaluation]
    encoded, degenerate = encode_rows(rows, tokenizer, max_length, truncation)
    if degenerate:
        LOG.warning("DEFT: %d of %d evaluation rows are degenerate and not evaluated: %s", sum(degenerate.values()),
                    len(rows), dict(degenerate))
    return listwise_dataset([e.index for e in encoded], {e.index: e for e in encoded}, rows)


def write_selection(output_dir: Path, result: FilterResult, cache_dir: Path) -> None:
    """This run's own record of its kept rows (indices into the parsed rows) and filter report:
    the cache directory is shared by every run with the same rewards, this file is not."""
    record = {"kept": result.kept, "report": result.report, "cache_dir": str(cache_dir)}
    atomic_write_text(output_dir / SELECTION_RECORD, json.dumps(record, indent=2))
