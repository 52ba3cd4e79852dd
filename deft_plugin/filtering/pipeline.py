"""The DEFT filter from preference or ranked rows to the kept subset:
encode -> drop degenerate rows -> discrepancy distribution Q -> score every reply with the
starting model -> keep the top fraction. Shared by the Axolotl plugin (DPO and PRO), the
`deft` command line and the demo.

A ranked row (replies y1 > ... > yn) enters Q and the filtering score as its best reply
against the rest: y1 counts on the chosen side of Q and y2..yn on the rejected side; the
score variant receives R(x, y1) and the mean of R(x, yk) over k > 1. For a pair these are
exactly R(x, y+) and R(x, y-)."""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from deft_plugin.core.qdiff import QDiff
from deft_plugin.core.selection import (
    DEFAULT_FILTER_RATIO,
    RANKINGS,
    SELECTIONS,
    length_ratio,
    logp_margin,
    select_bottom,
    select_random,
    select_top,
)
from deft_plugin.data.encoding import Dropped, EncodedRow, encode_rows
from deft_plugin.filtering.cache_key import rows_fingerprint
from deft_plugin.filtering.distributed import barrier, is_main_process
from deft_plugin.filtering.score_cache import ReplyScores, ScoreCache
from deft_plugin.filtering.scorer import ReplyScorer, log_rank_share
from deft_plugin.registry import score_variants
from deft_plugin.utils.atomic import atomic_write_text

QDIFF_FILES = ("qdiff.safetensors", "qdiff.json")
REJECTED_FILE = "rejected.jsonl"  # every row left out before scoring, with its place and reason


@dataclass
class FilterSettings:
    filter: bool = True
    ratio: float | None = DEFAULT_FILTER_RATIO
    count: int | None = None
    score: str = "delta"
    norm: str = "maxabs"
    batch_size: int = 8
    max_length: int | None = None
    truncation: str = "keep_start"  # keep_start (cut replies to fit, as TRL) | drop (rows that do not fit)
    select: str = "top"  # top | bottom of the ranking | random
    by: str = "deft"  # what top and bottom rank by: deft (the score) | logp_margin | length_ratio (core/selection)
    seed: int = 0  # of the random subset
    reference: bool = False  # also record DPO's reference log-probabilities of the kept rows
    start_rewards: bool = False  # also record the kept rows' rewards, even unfiltered (saturating loss forms)


@dataclass
class FilterResult:
    kept: list[int]  # indices into the input rows, in dataset order
    scores: dict[int, float]  # row index -> filtering score (degenerate rows absent)
    rewards: dict[int, tuple[float, ...]]  # row index -> R of each reply, best first
    qdiff: QDiff
    report: dict = field(default_factory=dict)
    encoded: dict[int, EncodedRow] = field(default_factory=dict)  # row index -> token ids (usable rows)
    logps: dict[int, tuple[float, ...]] = field(default_factory=dict)  # kept row -> reference log-prob per reply
    start_rewards: dict[int, tuple[float, ...]] = field(default_factory=dict)  # kept row -> R0 per reply, best first
    ranking: dict[int, float] = field(default_factory=dict)  # row index -> the value top/bottom ranked it by
    rejected: list[dict] = field(default_factory=list)  # every unparseable or degenerate row: where, stage, reason


class _Timer:
    """Seconds per named step, for the report."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, step: Callable, *args):
        start = time.perf_counter()
        out = step(*args)
        self.seconds[f"{name}_s"] = time.perf_counter() - start
        return out


def best_and_rest(rewards: tuple[float, ...]) -> tuple[float, float]:
    """(R of the best reply, mean R of the others): (R chosen, R rejected) for a pair."""
    return rewards[0], sum(rewards[1:]) / len(rewards[1:])


def gap_spread(rewards: dict[int, tuple[float, ...]]) -> float:
    """The standard deviation of the reward gaps R(best) - mean R(others) over the rows given: the
    scale of the anchored loss form. 1.0 when it cannot be measured (fewer than two rows, or all equal)."""
    gaps = torch.tensor([best - rest for best, rest in map(best_and_rest, rewards.values())], dtype=torch.float64)
    spread = float(gaps.std()) if len(gaps) > 1 else 0.0
    return spread if spread > 0 else 1.0


def build_qdiff(pairs: list[EncodedRow], tokenizer, norm: str, **meta) -> QDiff:
    vocab = max(len(tokenizer), getattr(tokenizer, "vocab_size", 0))
    return QDiff.build((p.completions[0] for p in pairs), (c for p in pairs for c in p.completions[1:]), vocab,
                       tokenizer.all_special_ids, norm, tokenizer=getattr(tokenizer, "name_or_path", ""),
                       pairs=len(pairs), **meta)


def run_filter(rows: list[dict], tokenizer, load_model: Callable[[], torch.nn.Module], settings: FilterSettings,
               cache_dir: str | Path | None = None, qdiff: QDiff | None = None, progress: bool = True,
               source_report: dict | None = None, row_names: list[str] | None = None,
               source_rejected: list[tuple[str, str]] = ()) -> FilterResult:
    """Filter parsed rows: preference (prompt/chosen/rejected) or ranked (prompt/responses),
    text or chat messages. row_names: where each row came from (file and line), for the report;
    source_rejected: (where, reason) of the rows that could not be parsed, for the rejected-rows file."""
    if settings.score not in score_variants():
        raise ValueError(f"deft_filter_score: unknown variant {settings.score!r}; known: {sorted(score_variants())}")
    if settings.select not in SELECTIONS:
        raise ValueError(f"deft_filter_select: unknown selection {settings.select!r}; known: {', '.join(SELECTIONS)}")
    if settings.by not in RANKINGS:
        raise ValueError(f"deft_filter_by: unknown ranking {settings.by!r}; known: {', '.join(RANKINGS)}")
    if settings.by != "deft" and settings.select == "random":
        raise ValueError(f"deft_filter_by: {settings.by} ranks pairs for deft_filter_select top or bottom; "
                         "random draws without a ranking")
    cache_dir = Path(cache_dir) if cache_dir else None
    timer = _Timer()
    usable, degenerate = timer("encode", encode_usable_rows, rows, tokenizer, settings.max_length,
                               settings.truncation)
    qdiff = timer("qdiff", load_or_build_qdiff, qdiff, usable, rows, tokenizer, settings.norm, cache_dir)
    rewards, scores, kept, logps, ranking = {}, {}, [r.index for r in usable], {}, {}
    by_margin = settings.filter and settings.by == "logp_margin"
    score = functools.partial(score_replies, tokenizer=tokenizer, load_model=load_model, qdiff=qdiff,
                              batch_size=settings.batch_size, cache_dir=cache_dir, progress=progress,
                              need_logps=settings.reference or by_margin)
    kept_rewards = {}
    model_free = settings.filter and (settings.select == "random" or settings.by == "length_ratio")
    if model_free:  # needs no scores: reports them only when cached
        rewards = cached_rewards(usable, cache_dir)
        if settings.select == "random":
            kept = [usable[j].index for j in select_random(len(usable), settings.ratio, settings.count, settings.seed)]
        else:
            ranking = {r.index: length_ratio([len(c) for c in r.completions]) for r in usable}
            kept = keep_by_score(usable, ranking, settings)
        if settings.reference or settings.start_rewards:  # the kept rows only
            chosen = set(kept)
            kept_scored = timer("score", score, [r for r in usable if r.index in chosen])
            logps, kept_rewards = logps_of(kept_scored), {i: s.rewards for i, s in kept_scored.items()}
    elif settings.filter or settings.reference or settings.start_rewards:
        scored = timer("score", score, usable)
        rewards, logps = {i: s.rewards for i, s in scored.items()}, logps_of(scored)
    scores = filtering_scores(rewards, settings.score)
    if settings.filter and not model_free:
        ranking = scores if settings.by == "deft" else {
            r.index: logp_margin(logps[r.index], [len(c) for c in r.completions]) for r in usable}
        kept = keep_by_score(usable, ranking, settings)
    logps = {i: logps[i] for i in kept} if settings.reference else {}
    start_rewards = {i: {**rewards, **kept_rewards}[i] for i in kept} if settings.start_rewards else {}
    report = filter_report(rows, degenerate, rewards, scores, kept, settings, qdiff, timer.seconds, source_report,
                           ranking)
    name = (lambda i: row_names[i]) if row_names else (lambda i: f"row {i + 1}")
    report["degenerate_examples"] = {reason: [name(i) for i in indices[:5]]
                                     for reason, indices in degenerate.rows.items()}
    rejected = rejected_records(source_rejected, degenerate, name)
    report.update(rejected=len(rejected), rejected_file=REJECTED_FILE)
    result = FilterResult(kept, scores, rewards, qdiff, report, {r.index: r for r in usable}, logps, start_rewards,
                          ranking, rejected)
    if cache_dir and is_main_process():
        write_outputs(result, cache_dir)
    barrier()
    return result


def rejected_records(source_rejected, degenerate: Dropped, name: Callable[[int], str]) -> list[dict]:
    """One record per row left out: the unparseable ones as read, then the degenerate ones in row order
    (a duplicate names the row it repeats, which was kept in its place)."""
    records = [{"where": where, "stage": "unparseable", "reason": reason} for where, reason in source_rejected]
    for i, reason in degenerate.by_row():
        record = {"where": name(i), "stage": "degenerate", "reason": reason}
        if i in degenerate.duplicate_of:
            record["duplicate_of"] = name(degenerate.duplicate_of[i])
        records.append(record)
    return records


def write_rejected(path: Path, rejected: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected))


def encode_usable_rows(rows: list[dict], tokenizer, max_length: int | None,
                       truncation: str = "keep_start") -> tuple[list[EncodedRow], Dropped]:
    usable, degenerate = encode_rows(rows, tokenizer, max_length, truncation)
    if not usable:
        raise ValueError(f"no usable preference pairs among {len(rows)} rows (degenerate: {dict(degenerate)})")
    return usable, degenerate


def load_or_build_qdiff(qdiff: QDiff | None, usable: list[EncodedRow], rows: list[dict], tokenizer, norm: str,
                        cache_dir: Path | None) -> QDiff:
    """The given Q, else the cached one, else Q built from the usable rows (and cached)."""
    # Both files, not just the tensors: QDiff.save writes qdiff.json second, so a run killed
    # between the two (or another rank looking while rank 0 saves) sees only the first one.
    if qdiff is None and cache_dir and all((cache_dir / f).is_file() for f in QDIFF_FILES):
        qdiff = QDiff.load(cache_dir)
    if qdiff is None:
        qdiff = build_qdiff(usable, tokenizer, norm, data=rows_fingerprint(rows))
        if cache_dir and is_main_process():
            qdiff.save(cache_dir)
    return qdiff


def cached_rewards(usable: list[EncodedRow], cache_dir: Path | None) -> dict[int, tuple[float, ...]]:
    """R of every reply when the cache holds all of them, else nothing."""
    cached = ScoreCache(cache_dir).done() if cache_dir else {}
    return {r.index: cached[r.index] for r in usable} if all(r.index in cached for r in usable) else {}


def score_replies(usable: list[EncodedRow], tokenizer, load_model: Callable[[], torch.nn.Module], qdiff: QDiff,
                  batch_size: int, cache_dir: Path | None, progress: bool,
                  need_logps: bool = False) -> dict[int, ReplyScores]:
    """The scores of every reply: read from the cache where scored (with need_logps: with the
    reference log-probabilities), the model loaded only when some are not."""
    cache = ScoreCache(cache_dir) if cache_dir else None
    cached = cache.scores() if cache else {}
    if all(r.index in cached and (cached[r.index].logps is not None or not need_logps) for r in usable):
        log_rank_share(0, len(usable))
        return {r.index: cached[r.index] for r in usable}
    scorer = ReplyScorer(load_model(), qdiff.qn, tokenizer.all_special_ids, tokenizer.pad_token_id or 0, batch_size)
    return scorer.score(usable, cache, progress=progress, need_logps=need_logps)


def logps_of(scored: dict[int, ReplyScores]) -> dict[int, tuple[float, ...]]:
    return {i: s.logps for i, s in scored.items() if s.logps is not None}


def filtering_scores(rewards: dict[int, tuple[float, ...]], variant_name: str) -> dict[int, float]:
    variant = score_variants()[variant_name]
    return {i: float(variant(*map(torch.tensor, best_and_rest(r)))) for i, r in rewards.items()}


def keep_by_score(usable: list[EncodedRow], scores: dict[int, float], settings: FilterSettings) -> list[int]:
    """The top (or the bottom) of the usable rows by a ranking value (the filtering score for DEFT)."""
    order = [r.index for r in usable]
    select = select_bottom if settings.select == "bottom" else select_top
    return [order[j] for j in select([scores[i] for i in order], settings.ratio, settings.count)]


def filter_report(rows, degenerate: Dropped, rewards, scores, kept, settings: FilterSettings, qdiff: QDiff,
                  timings: dict, source_report: dict | None, ranking: dict[int, float] | None = None) -> dict:
    report = {
        **(source_report or {}),
        "rows": len(rows),
        "degenerate": sum(degenerate.values()),
        "degenerate_reasons": dict(degenerate),
        "truncated": getattr(degenerate, "truncated", 0),  # usable rows with a reply cut to fit sequence_len
        "scored": len(rewards),
        "kept": len(kept),
        "filter": asdict(settings),
        "qdiff": {k: v for k, v in qdiff.meta.items() if k != "special_ids"},
        "timings": timings,
    }
    if scores:
        report["score_stats"] = value_stats(scores, kept, settings.select if settings.by == "deft" else "random")
    if ranking and settings.by != "deft":
        report["rank_stats"] = {"by": settings.by, **value_stats(ranking, kept, settings.select)}
    return report


def value_stats(values: dict[int, float], kept: list[int], select: str) -> dict:
    """Mean, spread and range of a score over the rows, its mean over the kept ones, and the cut
    (the last kept value) when the selection ranked by it."""
    tensor = torch.tensor(list(values.values()))
    kept_values = [values[i] for i in kept if i in values]
    cut = {"top": min, "bottom": max}.get(select)  # random subsets (or another ranking's) have no cut
    return {"mean": float(tensor.mean()), "std": float(tensor.std()) if len(tensor) > 1 else 0.0,
            "min": float(tensor.min()), "max": float(tensor.max()),
            "threshold": cut(kept_values) if cut and kept_values else None,
            "kept_mean": sum(kept_values) / len(kept_values) if kept_values else None}


def write_outputs(result: FilterResult, directory: Path) -> None:
    kept = set(result.kept)
    by = result.report.get("filter", {}).get("by", "deft")
    lines = []
    for i, s in sorted(result.scores.items()):
        best, rest = best_and_rest(result.rewards[i])
        record = {"index": i, "score": s, "reward_chosen": best, "reward_rejected": rest, "kept": i in kept}
        if by != "deft" and i in result.ranking:
            record[by] = result.ranking[i]
        if len(result.rewards[i]) > 2:
            record["rewards"] = list(result.rewards[i])
        lines.append(json.dumps(record))
    atomic_write_text(directory / "scores.jsonl", "".join(line + "\n" for line in lines))
    write_rejected(directory / REJECTED_FILE, result.rejected)
    atomic_write_text(directory / "report.json", json.dumps(result.report, indent=2))
