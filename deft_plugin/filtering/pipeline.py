"""The DEFT filter from preference or ranked rows to the kept subset:
encode -> drop degenerate rows -> discrepancy distribution Q -> score every reply with the
starting model -> keep the top fraction. Shared by the Axolotl plugin (DPO and PRO), the
`deft` command line and the demo.

A ranked row (replies y1 > ... > yn) enters Q and the filtering score as its best reply
against the rest: y1 counts on the chosen side of Q and y2..yn on the rejected side; the
score variant receives R(x, y1) and the mean of R(x, yk) over k > 1. For a pair these are
exactly R(x, y+) and R(x, y-)."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from deft_plugin.utils.atomic import atomic_write_text
from deft_plugin.data.encoding import EncodedRow, completions_of, encode_rows
from deft_plugin.core.qdiff import QDiff
from deft_plugin.registry import score_variants
from deft_plugin.filtering.score_cache import ScoreCache
from deft_plugin.filtering.scorer import PairScorer
from deft_plugin.core.selection import select_top


@dataclass
class FilterSettings:
    filter: bool = True
    ratio: float | None = 0.05
    count: int | None = None
    score: str = "delta"
    norm: str = "maxabs"
    batch_size: int = 8
    max_length: int | None = None


@dataclass
class FilterResult:
    kept: list[int]  # indices into the input rows, in dataset order
    scores: dict[int, float]  # row index -> filtering score (degenerate rows absent)
    rewards: dict[int, tuple[float, ...]]  # row index -> R of each reply, best first
    qdiff: QDiff
    report: dict = field(default_factory=dict)
    encoded: dict[int, EncodedRow] = field(default_factory=dict)  # row index -> token ids (usable rows)


def best_and_rest(rewards: tuple[float, ...]) -> tuple[float, float]:
    """(R of the best reply, mean R of the others): (R chosen, R rejected) for a pair."""
    return rewards[0], sum(rewards[1:]) / len(rewards[1:])


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rows_fingerprint(rows: list[dict]) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps([row["prompt"], completions_of(row), row.get("rewards")], sort_keys=True).encode())
    return h.hexdigest()[:16]


def model_fingerprint(name_or_path: str, revision: str | None = None) -> dict:
    """Identity of a checkpoint: its config and weight files (names and sizes) when local."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return {"model": name_or_path, "revision": revision}
    files = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.suffix in {".safetensors", ".bin", ".gguf"}}
    config = (path / "config.json").read_text() if (path / "config.json").is_file() else ""
    return {"model": str(path.resolve()), "weights": files, "config": fingerprint(config)}


def tokenizer_fingerprint(tokenizer) -> dict:
    return {"name": getattr(tokenizer, "name_or_path", ""), "size": len(tokenizer),
            "special": sorted(tokenizer.all_special_ids), "template": fingerprint(getattr(tokenizer, "chat_template", None))}


def _is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def build_qdiff(pairs: list[EncodedRow], tokenizer, norm: str, **meta) -> QDiff:
    vocab = max(len(tokenizer), getattr(tokenizer, "vocab_size", 0))
    return QDiff.build((p.completions[0] for p in pairs), (c for p in pairs for c in p.completions[1:]), vocab,
                       tokenizer.all_special_ids, norm, tokenizer=getattr(tokenizer, "name_or_path", ""),
                       pairs=len(pairs), **meta)


def run_filter(rows: list[dict], tokenizer, load_model: Callable[[], torch.nn.Module], settings: FilterSettings,
               cache_dir: str | Path | None = None, qdiff: QDiff | None = None, progress: bool = True,
               source_report: dict | None = None) -> FilterResult:
    """Filter parsed rows: preference (prompt/chosen/rejected) or ranked (prompt/responses),
    text or chat messages."""
    if settings.score not in score_variants():
        raise ValueError(f"deft_filter_score: unknown variant {settings.score!r}; known: {sorted(score_variants())}")
    timings = {}
    t0 = time.perf_counter()
    pairs, degenerate = encode_rows(rows, tokenizer, settings.max_length)
    timings["encode_s"] = time.perf_counter() - t0
    if not pairs:
        raise ValueError(f"no usable preference pairs among {len(rows)} rows (degenerate: {dict(degenerate)})")
    cache_dir = Path(cache_dir) if cache_dir else None

    t0 = time.perf_counter()
    # Both files, not just the tensors: QDiff.save writes qdiff.json second, so a run killed
    # between the two (or another rank looking while rank 0 saves) sees only the first one.
    if qdiff is None and cache_dir and all((cache_dir / f).is_file() for f in ("qdiff.safetensors", "qdiff.json")):
        qdiff = QDiff.load(cache_dir)
    if qdiff is None:
        qdiff = build_qdiff(pairs, tokenizer, settings.norm, data=rows_fingerprint(rows))
        if cache_dir and _is_main():
            qdiff.save(cache_dir)
    timings["qdiff_s"] = time.perf_counter() - t0

    rewards: dict[int, tuple[float, ...]] = {}
    scores: dict[int, float] = {}
    kept = [p.index for p in pairs]
    if settings.filter:
        t0 = time.perf_counter()
        cache = ScoreCache(cache_dir) if cache_dir else None
        cached = cache.done() if cache else {}
        if all(p.index in cached for p in pairs):
            rewards = {p.index: cached[p.index] for p in pairs}
        else:
            model = load_model()
            scorer = PairScorer(model, qdiff.qn, tokenizer.all_special_ids, tokenizer.pad_token_id or 0,
                                settings.batch_size)
            rewards = scorer.score(pairs, cache, progress=progress)
            del model, scorer
        timings["score_s"] = time.perf_counter() - t0
        variant = score_variants()[settings.score]
        scores = {i: float(variant(*map(torch.tensor, best_and_rest(r)))) for i, r in rewards.items()}
        order = [p.index for p in pairs]
        chosen = select_top([scores[i] for i in order], settings.ratio, settings.count)
        kept = [order[j] for j in chosen]

    report = {
        **(source_report or {}),
        "rows": len(rows),
        "degenerate": sum(degenerate.values()),
        "degenerate_reasons": dict(degenerate),
        "scored": len(rewards),
        "kept": len(kept),
        "filter": asdict(settings),
        "qdiff": {k: v for k, v in qdiff.meta.items() if k != "special_ids"},
        "timings": timings,
    }
    if scores:
        values = torch.tensor(list(scores.values()))
        report["score_stats"] = {"mean": float(values.mean()), "std": float(values.std()) if len(values) > 1 else 0.0,
                                 "min": float(values.min()), "max": float(values.max()),
                                 "threshold": min(scores[i] for i in kept)}
    result = FilterResult(kept, scores, rewards, qdiff, report, {p.index: p for p in pairs})
    if cache_dir and _is_main():
        write_outputs(result, cache_dir)
    _barrier()
    return result


def write_outputs(result: FilterResult, directory: Path) -> None:
    kept = set(result.kept)
    lines = []
    for i, s in sorted(result.scores.items()):
        best, rest = best_and_rest(result.rewards[i])
        record = {"index": i, "score": s, "reward_chosen": best, "reward_rejected": rest, "kept": i in kept}
        if len(result.rewards[i]) > 2:
            record["rewards"] = list(result.rewards[i])
        lines.append(json.dumps(record))
    atomic_write_text(directory / "scores.jsonl", "".join(line + "\n" for line in lines))
    atomic_write_text(directory / "report.json", json.dumps(result.report, indent=2))
