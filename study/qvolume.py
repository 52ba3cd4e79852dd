"""How the discrepancy distribution depends on the data volume, the paper's open question: Q
built from a fraction of the pool (several seeded draws) against Q of the whole pool. For each:
the cosine of the two Qs, the overlap (Jaccard) of the top pairs each selects from the whole
pool, and the share of the pairs a Q selects that helped build it (a Q that selects its own
pairs far above that share selects partly through itself). Rewards under every Q come from one
pass over the pool (filtering.scorer.mean_distributions)."""

from __future__ import annotations

import math
import random

import torch

from deft_plugin.core.selection import select_top
from deft_plugin.data.encoding import EncodedRow
from deft_plugin.filtering.pipeline import build_qdiff
from deft_study.stats import mean_interval


def top_pairs(dists: torch.Tensor, qn: torch.Tensor, indices: list[int], ratio: float) -> set[int]:
    """The row indices of the top `ratio` by R(y+) - R(y-) under qn; dists [rows, 2, vocab]."""
    rewards = dists @ qn.to(dists.dtype)
    return {indices[j] for j in select_top((rewards[:, 0] - rewards[:, 1]).tolist(), ratio)}


def subset_indices(rows: int, fraction: float, draw: int, seed: int = 0) -> list[int]:
    """The seeded draw of ceil(fraction * rows) row positions a partial Q is built from."""
    size = max(1, math.ceil(fraction * rows))
    return sorted(random.Random(f"{seed}-{fraction}-{draw}").sample(range(rows), size))


def q_volume(usable: list[EncodedRow], dists: dict[int, torch.Tensor], tokenizer, fractions: list[float],
             draws: int, ratio: float, seed: int = 0) -> dict:
    indices = [r.index for r in usable]
    stacked = torch.stack([dists[i] for i in indices])
    full = build_qdiff(usable, tokenizer, "maxabs")
    kept_full = top_pairs(stacked, full.qn, indices, ratio)
    runs = []
    for fraction in fractions:
        for draw in range(draws):
            chosen = subset_indices(len(usable), fraction, draw, seed)
            q = build_qdiff([usable[j] for j in chosen], tokenizer, "maxabs")
            kept = top_pairs(stacked, q.qn, indices, ratio)
            own = {indices[j] for j in chosen}
            runs.append({"fraction": fraction, "draw": draw, "pairs": len(chosen),
                         "cosine": float(torch.nn.functional.cosine_similarity(q.q, full.q, dim=0)),
                         "jaccard": len(kept & kept_full) / len(kept | kept_full),
                         "kept_from_own_pairs": len(kept & own) / len(kept)})
    summary = {}
    for fraction in fractions:
        these = [r for r in runs if r["fraction"] == fraction]
        summary[str(fraction)] = {key: mean_interval([r[key] for r in these])
                                  for key in ("cosine", "jaccard", "kept_from_own_pairs")}
    return {"ratio": ratio, "draws": draws, "pool_pairs": len(usable), "runs": runs, "summary": summary}
