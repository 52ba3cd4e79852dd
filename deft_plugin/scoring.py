"""Scoring pairs with the starting model: R(x, y+) and R(x, y-) for every pair.

Pairs are batched by length (longest first), the decoder runs once per sequence and the
LM head runs only on the positions that predict reply tokens. Under a torch.distributed
process group each rank scores a shard and the results are gathered on every rank.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from deft_plugin.encoding import EncodedPair
from deft_plugin.reward import DEFAULT_CHUNK_ELEMENTS, distribution_reward_from_hidden
from deft_plugin.score_cache import ScoreCache


def _batches(pairs: list[EncodedPair], batch_size: int) -> Iterable[list[EncodedPair]]:
    longest = sorted(pairs, key=lambda p: (-(len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids))), p.index))
    for start in range(0, len(longest), batch_size):
        yield longest[start:start + batch_size]


def _collate(batch: list[EncodedPair], special: set[int], pad_id: int, device):
    """Rows: chosen sequences of the batch, then rejected ones. The prediction mask marks
    positions whose next token is a non-special reply token. Built with tensor operations:
    a per-token Python loop here left a GPU idle for a noticeable share of scoring."""
    seqs, starts = [], []
    for side in ("chosen_ids", "rejected_ids"):
        for p in batch:
            seqs.append(tuple(p.prompt_ids) + tuple(getattr(p, side)))
            starts.append(len(p.prompt_ids))
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


class PairScorer:
    """Distribution rewards of chosen and rejected replies under one model."""

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
    def score_batch(self, batch: list[EncodedPair]) -> dict[int, tuple[float, float]]:
        ids, attn, pred = _collate(batch, self.special, self.pad_id, self.device)
        hidden = self.decoder(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state
        rows = pred.nonzero()
        r = distribution_reward_from_hidden(hidden[rows[:, 0], rows[:, 1]], self.lm_head, self.qn, self.chunk_elements)
        totals = torch.zeros(ids.shape[0], dtype=r.dtype, device=r.device).index_add(0, rows[:, 0], r)
        means = (totals / pred.sum(1).clamp_min(1)).tolist()
        n = len(batch)
        return {p.index: (means[i], means[n + i]) for i, p in enumerate(batch)}

    def score(self, pairs: list[EncodedPair], cache: ScoreCache | None = None,
              progress: bool = True) -> dict[int, tuple[float, float]]:
        """Rewards for all pairs: those already in the cache are read, the rest are scored
        (this rank's shard under a process group) and every finished batch is cached."""
        done = cache.done() if cache else {}
        rank, world = _rank_world()
        if world > 1:  # every rank must read the cache before any rank adds to it
            dist.barrier()
        todo = [p for p in pairs if p.index not in done][rank::world]
        results: dict[int, tuple[float, float]] = {}
        with tqdm(total=len(todo), desc=f"DEFT scoring (rank {rank})" if world > 1 else "DEFT scoring",
                  unit="pair", disable=not progress) as bar:
            for batch in _batches(todo, self.batch_size):
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
