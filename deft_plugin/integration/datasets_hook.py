"""The plugin's `load_datasets`: preference data from Axolotl's `datasets:` entries,
filtered by DEFT, with Axolotl's step count following the kept set. Everything here reads the
run's DeftSettings (settings.py), never Axolotl's config."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Callable

from datasets import Dataset

from deft_plugin.core.qdiff import QDiff
from deft_plugin.data.encoding import EncodedRow, as_ranked, encode_rows, in_one_form, resolve_prompt_style
from deft_plugin.data.parsing import ParsedRows, parse_source
from deft_plugin.filtering.cache_key import score_cache_key
from deft_plugin.filtering.distributed import is_main_process, join_launched_group
from deft_plugin.filtering.pipeline import FilterResult, best_and_rest, rejected_records, run_filter, write_rejected
from deft_plugin.filtering.scoring_model import load_scoring_model
from deft_plugin.integration.scoring_reference import with_reference, with_start_rewards
from deft_plugin.integration.settings import DeftSettings
from deft_plugin.launch.outputs import REJECTED_RECORD, SELECTION_RECORD
from deft_plugin.utils.atomic import atomic_write_text

LOG = logging.getLogger("axolotl.integrations.deft")

WHERE = "deft_source_line"  # a column that never reaches the trainer
EVAL_DEGENERATE = "evaluation_degenerate"  # the stage of an evaluation row left out, apart from training rows
Rows = tuple[Dataset, "Dataset | None", dict, list]  # train, eval, the source's report, its unparseable rows


def load_deft_datasets(settings: DeftSettings, tokenizer, axolotl_rows: Callable[[], Rows]
                       ) -> tuple[Dataset, Dataset | None, int, FilterResult]:
    """(train, eval, total_num_steps, filter result) of a DEFT run; axolotl_rows() loads the rows
    through Axolotl's own loader, for configs whose datasets use no DEFT format."""
    style = resolve_prompt_style(settings.prompt_style, tokenizer)
    train, evaluation, source_report, unparseable = (load_deft_rows(settings, style) if settings.deft_formats
                                                     else axolotl_rows())
    names = train[WHERE] if WHERE in train.column_names else None
    eval_names = None if evaluation is None else (
        evaluation[WHERE] if WHERE in evaluation.column_names
        else [f"evaluation row {n}" for n in range(1, len(evaluation) + 1)])
    if names is not None:
        train = train.remove_columns(WHERE)
        evaluation = evaluation.remove_columns(WHERE) if evaluation is not None else None
    pro = settings.method == "pro"
    rows = [dict(r) for r in train] if pro else [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in train]
    cache_dir = cache_dir_for(settings, rows, tokenizer)
    join_launched_group()  # each rank of a DDP/FSDP launch scores its own shard
    load_model = functools.cache(lambda: load_scoring_model(settings.base_model, settings.score_dtype,
                                                            settings.revision, settings.trust_remote_code))
    result = run_filter(rows, tokenizer, load_model, settings.filter, cache_dir,
                        QDiff.load(settings.qdiff_path) if settings.qdiff_path else None,
                        source_report={**source_report, "prompt_style": style}, row_names=names,
                        source_rejected=unparseable)
    saturating = settings.filter.start_rewards
    eval_rejected = []
    if pro:
        kept = listwise_dataset(result.kept, result.encoded, rows, result.start_rewards if saturating else None)
        if evaluation is not None:
            evaluation, eval_rejected = (
                scored_eval(evaluation, settings, tokenizer, load_model, result.qdiff, eval_names) if saturating
                else encoded_eval(evaluation, tokenizer, settings.sequence_len, settings.filter.truncation, eval_names))
    else:
        kept = train.select(result.kept)
        if settings.scoring_reference:
            kept = with_reference(kept, [result.logps[i] for i in result.kept])
        if saturating:
            kept = with_start_rewards(kept, [best_and_rest(result.start_rewards[i]) for i in result.kept])
        if evaluation is not None and (settings.scoring_reference or saturating):
            evaluation, eval_rejected = scored_eval(evaluation, settings, tokenizer, load_model, result.qdiff,
                                                    eval_names)
    if evaluation is not None:
        result = with_eval_rejected(result, eval_rejected)
    total_num_steps = steps_for(len(kept), settings)
    if settings.output_dir and is_main_process():
        write_selection(settings.output_dir, result, cache_dir)
    LOG.info("DEFT: %d rows read, %d unparseable, %d degenerate, %d scored, %d kept -> %d steps (cache %s)",
             result.report.get("read", len(rows)), result.report.get("unparseable", 0), result.report["degenerate"],
             result.report["scored"], len(kept), total_num_steps, cache_dir)
    return kept, evaluation, total_num_steps, result


def scored_eval(evaluation: Dataset, settings: DeftSettings, tokenizer, load_model, qdiff: QDiff,
                names: list[str]) -> tuple[Dataset, list[dict]]:
    """The eval split with what the scoring pass gives its rows (cached apart from the training
    rows'): DPO's reference log-probabilities under the scoring reference, the starting rewards for
    the saturating loss forms; and the rejected-rows records of the rows that cannot be scored and
    are left out (names: where each row came from)."""
    pro = settings.method == "pro"
    rows = [dict(r) for r in evaluation] if pro else [{k: r[k] for k in ("prompt", "chosen", "rejected")}
                                                     for r in evaluation]
    filter_settings = dataclasses.replace(settings.filter, filter=False, reference=settings.scoring_reference)
    result = run_filter(rows, tokenizer, load_model, filter_settings, cache_dir_for(settings, rows, tokenizer), qdiff,
                        progress=False, row_names=names)
    if len(result.kept) < len(rows):
        LOG.warning("DEFT: %d of %d evaluation rows are degenerate and not evaluated: %s", len(rows) - len(result.kept),
                    len(rows), result.report["degenerate_reasons"])
    rejected = [{**r, "stage": EVAL_DEGENERATE} for r in result.rejected]
    if pro:
        return listwise_dataset(result.kept, result.encoded, rows, result.start_rewards or None), rejected
    scored = evaluation.select(result.kept)
    if settings.scoring_reference:
        scored = with_reference(scored, [result.logps[i] for i in result.kept])
    if settings.filter.start_rewards:
        scored = with_start_rewards(scored, [best_and_rest(result.start_rewards[i]) for i in result.kept])
    return scored, rejected


def load_deft_rows(settings: DeftSettings, style: str) -> Rows:
    """Parsed rows of every `datasets:` entry through its DEFT format, split into train and eval
    as Axolotl splits (val_set_size, seed)."""
    parsed = ParsedRows()
    for source in settings.datasets:
        parsed.extend(parse_source(source.path, source.format, style, source.split, source.data_files,
                                   source.revision))
    # Datasets may mix chat messages (hh_rlhf under a chat template) and text rows: one form for all,
    # and PRO may mix pair and list formats: one schema for all (from_list takes the first row's keys);
    # where each row came from rides along as a column through the train/eval split
    rows, converted = in_one_form(parsed.rows)
    if converted:
        LOG.info("DEFT: %d text rows presented as chat messages, like the other %d rows of the datasets",
                 converted, len(rows) - converted)
    rows = [as_ranked(r) for r in rows] if settings.method == "pro" else rows
    train = Dataset.from_list([{**r, WHERE: w} for r, w in zip(rows, parsed.where)])
    evaluation = None
    if settings.val_set_size:
        split = train.train_test_split(test_size=settings.val_set_size, seed=settings.seed)
        train, evaluation = split["train"], split["test"]
    return train, evaluation, {**parsed.report(), "text_rows_as_messages": converted,
                               "evaluation": len(evaluation) if evaluation is not None else 0}, parsed.rejected


def load_axolotl_rows(cfg) -> Rows:
    """The rows of configs whose datasets use Axolotl's own types, loaded by Axolotl: the one
    function past the plugin's hooks that reads Axolotl's config (it hands it back to Axolotl)."""
    from axolotl.common.datasets import load_preference_datasets

    meta = load_preference_datasets(cfg=cfg)
    evaluation = len(meta.eval_dataset) if meta.eval_dataset is not None else 0
    return (meta.train_dataset, meta.eval_dataset,
            {"read": len(meta.train_dataset) + evaluation, "unparseable": 0, "evaluation": evaluation}, [])


def cache_dir_for(settings: DeftSettings, rows: list[dict], tokenizer) -> Path:
    return settings.cache_root / score_cache_key(rows, settings.base_model, settings.revision, tokenizer,
                                                 settings.sequence_len, settings.reward_key)


def steps_for(rows: int, settings: DeftSettings) -> int:
    """The steps the trainer will run on this many training rows: max_steps when set (Axolotl hands it to
    the trainer over any epoch count), else Axolotl's total_num_steps for the epochs (its batch size
    already counts the world size)."""
    if settings.max_steps:
        return settings.max_steps
    return int(math.ceil(rows * settings.num_epochs / settings.batch_size))


def listwise_dataset(indices: list[int], encoded: dict[int, EncodedRow], rows: list[dict],
                     start_rewards: dict[int, tuple[float, ...]] | None = None) -> Dataset:
    """The PRO trainer's dataset: token ids of each kept row's prompt and candidates (best
    first, as scored), its reward scores (empty when the data has none) and, for the saturating
    loss forms, the starting model's R of each candidate."""
    return Dataset.from_list([{"prompt_ids": list(encoded[i].prompt_ids),
                               "completion_ids": [list(c) for c in encoded[i].completions],
                               "rewards": list(rows[i].get("rewards") or []),
                               **({"start_rewards": list(start_rewards[i])} if start_rewards else {})}
                              for i in indices])


def encoded_eval(evaluation: Dataset, tokenizer, max_length: int | None, truncation: str,
                 names: list[str]) -> tuple[Dataset, list[dict]]:
    """The PRO eval split as token ids, and the rejected-rows records of its degenerate rows, left out."""
    rows = [dict(r) for r in evaluation]
    encoded, degenerate = encode_rows(rows, tokenizer, max_length, truncation)
    if degenerate:
        LOG.warning("DEFT: %d of %d evaluation rows are degenerate and not evaluated: %s", sum(degenerate.values()),
                    len(rows), dict(degenerate))
    rejected = [{**r, "stage": EVAL_DEGENERATE} for r in rejected_records((), degenerate, names.__getitem__)]
    return listwise_dataset([e.index for e in encoded], {e.index: e for e in encoded}, rows), rejected


def with_eval_rejected(result: FilterResult, rejected: list[dict]) -> FilterResult:
    """The training rows' filter result with the evaluation rows left out added to its rejected rows (the
    run's rejected-rows file) and counted in its report. The counts add up as: read = unparseable +
    evaluation + degenerate + scored (evaluation: every row split off for evaluation; degenerate and scored:
    training rows only, scored once every usable one is), evaluation_degenerate of the evaluation rows were
    left out, and rejected =
    unparseable + degenerate + evaluation_degenerate, one line each in the file. Evaluation rows are checked
    only where they are encoded or scored here; elsewhere they go to the trainer as they are."""
    reasons = Counter(r["reason"] for r in rejected)
    report = {**result.report, "evaluation_degenerate": len(rejected), "evaluation_degenerate_reasons": dict(reasons),
              "rejected": len(result.rejected) + len(rejected)}
    return dataclasses.replace(result, report=report, rejected=result.rejected + rejected)


def write_selection(output_dir: Path, result: FilterResult, cache_dir: Path) -> None:
    """This run's own record of its kept rows (indices into the parsed rows) and filter report:
    the cache directory is shared by every run with the same rewards, this file is not."""
    record = {"kept": result.kept, "report": {**result.report, "rejected_file": REJECTED_RECORD},
              "cache_dir": str(cache_dir)}
    write_rejected(output_dir / REJECTED_RECORD, result.rejected)
    atomic_write_text(output_dir / SELECTION_RECORD, json.dumps(record, indent=2))
