"""Scoring with the starting model: R(x, y) for every reply of every row (R(x, y+) and
R(x, y-) for a pair; R(x, y1) ... R(x, yn) for a ranked list).

Rows are batched by length (longest first), the decoder runs once per sequence and the
LM head runs only on the positions that predict reply tokens. Under a torch.distributed
process group each rank scores a shard and the results are gathered on every rank.
"""

from __future__ import annotations

from typing import Iterable

import torch
from tqdm.auto import tqdm

from deft_plugin.core.chunked import DEFAULT_CHUNK_ELEMENTS, rows_per_chunk
from deft_plugin.core.reward import distribution_reward_from_hidden
from deft_plugin.data.encoding import EncodedRow
from deft_plugin.filtering.batching import batches_by_length, collate_candidates, values_per_row
from deft_plugin.filtering.distributed import barrier, merge_from_all_ranks, rank_and_world
from deft_plugin.filtering.score_cache import ScoreCache


class ReplyScorer:
    """Distribution rewards of every reply of preference pairs and ranked lists under one model."""

    def __init__(self, model, qn: torch.Tensor, special_ids: Iterable[int], pad_id: int = 0,
                 batch_size: int = 8, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS):
        self.model = model.eval()
        self.decoder = model.get_decoder()
        self.lm_head = model.get_output_embeddings()
        if self.decoder is None or self.lm_head is None:
            raise TypeError(f"{type(model).__name__} exposes no decoder / output embeddings to score with")
        self.device = next(model.parameters()).device
        self.qn = qn.to(self.device)
        self.special = set(special_ids)
        self.pad_id = pad_id
        self.batch_size = batch_size
        self.chunk_elements = chunk_elements

    @torch.inference_mode()
    def score_batch(self, batch: list[EncodedRow]) -> dict[int, tuple[float, ...]]:
        ids, attn, pred = collate_candidates(batch, self.special, self.pad_id, self.device)
        hidden = self.decoder(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state
        rows = pred.nonzero()
        r = distribution_reward_from_hidden(hidden[rows[:, 0], rows[:, 1]], self.lm_head, self.qn, self.chunk_elements)
        totals = torch.zeros(ids.shape[0], dtype=r.dtype, device=r.device).index_add(0, rows[:, 0], r)
        return values_per_row((totals / pred.sum(1).clamp_min(1)).tolist(), batch)

    def score(self, rows: list[EncodedRow], cache: ScoreCache | None = None,
              progress: bool = True) -> dict[int, tuple[float, ...]]:
        """Rewards of every reply of every row (best first): those already in the cache are read, the rest are scored
        (this rank's shard under a process group) and every finished batch is cached."""
        done = cache.done() if cache else {}
        rank, world = rank_and_world()
        barrier()  # every rank must read the cache before any rank adds to it
        todo = [r for r in rows if r.index not in done][rank::world]
        results: dict[int, tuple[float, ...]] = {}
        with tqdm(total=len(todo), desc=f"DEFT scoring (rank {rank})" if world > 1 else "DEFT scoring",
                  unit="pair", disable=not progress) as bar:
            for batch in batches_by_length(todo, self.batch_size):
                out = self.score_batch(batch)
                if cache:
                    cache.write_part(out)
                results.update(out)
                bar.update(len(batch))
        results = merge_from_all_ranks(results)
        wanted = {r.index for r in rows}
        return {i: v for i, v in {**done, **results}.items() if i in wanted}


@torch.inference_mode()
def mean_distributions(model, rows: list[EncodedRow], special_ids: Iterable[int], pad_id: int = 0,
                       batch_size: int = 8, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                       progress: bool = True) -> dict[int, torch.Tensor]:
    """row index -> [replies, vocab] float32: each reply's next-token distribution averaged over the
    positions that predict its tokens. R(x, y) under any Q is then mean_distribution @ Qn, so one
    pass serves every Q (Q built from less data, another norm) without scoring again."""
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    device = next(model.parameters()).device
    vocab = head.weight.shape[0]
    chunk = rows_per_chunk(vocab, chunk_elements)
    out: dict[int, torch.Tensor] = {}
    with tqdm(total=len(rows), desc="next-token distributions", unit="pair", disable=not progress) as bar:
        for batch in batches_by_length(rows, batch_size):
            ids, attn, pred = collate_candidates(batch, set(special_ids), pad_id, device)
            hidden = decoder(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state
            where = pred.nonzero()
            sums = torch.zeros(ids.shape[0], vocab, dtype=torch.float32, device=device)
            for start in range(0, len(where), chunk):
                part = where[start:start + chunk]
                probs = head(hidden[part[:, 0], part[:, 1]]).float().softmax(-1)
                sums.index_add_(0, part[:, 0], probs)
            means = (sums / pred.sum(1, keepdim=True).clamp_min(1)).cpu()
            first = 0
            for row in batch:
                out[row.index] = means[first:first + len(row.completions)].clone()
                first += len(row.completions)
            bar.update(len(batch))
    return out
