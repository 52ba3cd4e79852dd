"""Scoring with the starting model: R(x, y) for every reply of every row (R(x, y+) and
R(x, y-) for a pair; R(x, y1) ... R(x, yn) for a ranked list).

Rows are batched by length (longest first), the decoder runs once per sequence and the
LM head runs only on the positions that predict reply tokens. Under a torch.distributed
process group each rank scores a shard and the results are gathered on every rank.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from deft_plugin.data.encoding import EncodedRow
from deft_plugin.core.reward import DEFAULT_CHUNK_ELEMENTS, distribution_reward_from_hidden
from deft_plugin.filtering.score_cache import ScoreCache


def batches_by_length(rows: list[EncodedRow], batch_size: int) -> Iterable[list[EncodedRow]]:
    """Rows in batches, longest first (prompt + longest reply), ties by row index."""
    longest = sorted(rows, key=lambda r: (-(len(r.prompt_ids) + max(map(len, r.completions))), r.index))
    for start in range(0, len(longest), batch_size):
        yield longest[start:start + batch_size]


def collate_candidates(batch: list[EncodedRow], special: set[int], pad_id: int, device):
    """One sequence per (row, reply), row by row, replies best first, right padded:
    input ids, attention mask, and the prediction mask of positions whose next token is a
    non-special reply token. Built with tensor operations: a per-token Python loop here
    left a GPU idle for a noticeable share of scoring."""
    seqs, starts = [], []
    for row in batch:
        for reply in row.completions:
            seqs.append(tuple(row.prompt_ids) + tuple(reply))
            starts.append(len(row.prompt_ids))
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + (pad_id,) * (width - len(s)) for s in seqs], dtype=torch.long)
    lengths = torch.tensor([len(s) for s in seqs])
    next_pos = torch.arange(1, width + 1)  # position t predicts the token at t + 1
    attn = (next_pos - 1 < lengths[:, None]).long()
    next_ids = torch.full_like(ids, pad_id)
    next_ids[:, :-1] = ids[:, 1:]
    pred = (next_pos >= torch.tensor(starts).clamp_min(1)[:, None]) & (next_pos < lengths[:, None])
    if special:
        pred &= ~torch.isin(next_ids, torch.tensor(sorted(special), dtype=torch.long))
    if torch.device(device).type == "cuda":
        return tuple(t.pin_memory().to(device, non_blocking=True) for t in (ids, attn, pred))
    return ids.to(device), attn.to(device), pred.to(device)


def per_row(values: list[float], batch: list[EncodedRow]) -> dict[int, tuple[float, ...]]:
    """Split per-sequence values (collate_candidates order) into row index -> one value per reply."""
    out, start = {}, 0
    for row in batch:
        n = len(row.completions)
        out[row.index] = tuple(values[start:start + n])
        start += n
    return out


class PairScorer:
    """Distribution rewards of the replies of preference and ranked rows under one model."""

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
        return per_row((totals / pred.sum(1).clamp_min(1)).tolist(), batch)

    def score(self, pairs: list[EncodedRow], cache: ScoreCache | None = None,
              progress: bool = True) -> dict[int, tuple[float, ...]]:
        """Rewards of every reply of every row (best first): those already in the cache are read, the rest are scored
        (this rank's shard under a process group) and every finished batch is cached."""
        done = cache.done() if cache else {}
        rank, world = _rank_world()
        if world > 1:  # every rank must read the cache before any rank adds to it
            dist.barrier()
        todo = [p for p in pairs if p.index not in done][rank::world]
        results: dict[int, tuple[float, ...]] = {}
        with tqdm(total=len(todo), desc=f"DEFT scoring (rank {rank})" if world > 1 else "DEFT scoring",
                  unit="pair", disable=not progress) as bar:
            for batch in batches_by_length(todo, self.batch_size):
                out = self.score_batch(batch)
                if cache:
                    cache.write_part(out)
                results.update(out)
                bar.update(len(batch))
        if world > 1:
            gathered = [None] * world
            dist.all_gather_object(gathered, results)
            for part in gathered:
                results.update(part)
        wanted = {p.index for p in pairs}
        return {i: v for i, v in {**done, **results}.items() if i in wanted}


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
