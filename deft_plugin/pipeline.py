"""The DEFT filter from preference rows to the kept subset:
encode -> drop degenerate pairs -> discrepancy distribution Q -> score every pair with the
starting model -> keep the top fraction. Shared by the Axolotl plugin, the `deft` command
line and the demo."""

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

from deft_plugin.atomic import atomic_write_text
from deft_plugin.encoding import EncodedPair, encode_pairs
from deft_plugin.qdiff import QDiff
from deft_plugin.registry import score_variants
from deft_plugin.score_cache import ScoreCache
from deft_plugin.scoring import PairScorer
from deft_plugin.selection import select_top


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
    rewards: dict[int, tuple[float, float]]  # row index -> (R chosen, R rejected)
    qdiff: QDiff
    report: dict = field(default_factory=dict)


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rows_fingerprint(rows: list[dict]) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps([row["prompt"], row["chosen"], row["rejected"]], sort_keys=True).encode())
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


def build_qdiff(pairs: list[EncodedPair], tokenizer, norm: str, **meta) -> QDiff:
    vocab = max(len(tokenizer), getattr(tokenizer, "vocab_size", 0))
    return QDiff.build((p.chosen_ids for p in pairs), (p.rejected_ids for p in pairs), vocab,
                       tokenizer.all_special_ids, norm, tokenizer=getattr(tokenizer, "name_or_path", ""),
                       pairs=len(pairs), **meta)


def run_filter(rows: list[dict], tokenizer, load_model: Callable[[], torch.nn.Module], settings: FilterSettings,
               cache_dir: str | Path | None = None, qdiff: QDiff | None = None, progress: bool = True,
               source_report: dict | None = None) -> FilterResult:
    """Filter preference rows (prompt/chosen/rejected, text or chat messages)."""
    if settings.score not in score_variants():
        raise ValueError(f"deft_filter_score: unknown variant {settings.score!r}; known: {sorted(score_variants())}")
    timings = {}
    t0 = time.perf_counter()
    pairs, degenerate = encode_pairs(rows, tokenizer, settings.max_length)
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

    rewards: dict[int, tuple[float, float]] = {}
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
        scores = {i: float(variant(torch.tensor(rc), torch.tensor(rr))) for i, (rc, rr) in rewards.items()}
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
    result = FilterResult(kept, scores, {i: rewards[i] for i in rewards}, qdiff, report)
    if cache_dir and _is_main():
        write_outputs(result, cache_dir)
    _barrier()
    return result


def write_outputs(result: FilterResult, directory: Path) -> None:
    kept = set(result.kept)
    lines = [json.dumps({"index": i, "score": s, "reward_chosen": result.rewards[i][0],
                         "reward_rejected": result.rewards[i][1], "kept": i in kept})
             for i, s in sorted(result.scores.items())]
    atomic_write_text(directory / "scores.jsonl", "".join(line + "\n" for line in lines))
    atomic_write_text(directory / "report.json", json.dumps(result.report, indent=2))
