"""Scoring with the starting model: R(x, y) for every reply of every row (R(x, y+) and
R(x, y-) for a pair; R(x, y1) ... R(x, yn) for a ranked list), and each reply's summed
log-probability, which is DPO's reference log-probability (the starting model is DPO's reference).

Rows are batched by length (longest first), the decoder sees each prompt once per row and the
LM head runs only on the positions that predict reply tokens. Under a torch.distributed
process group each rank scores a shard and the results are gathered on every rank.
"""

from __future__ import annotations

import logging
from typing import Iterable

import torch
from tqdm.auto import tqdm

from deft_plugin.core.chunked import DEFAULT_CHUNK_ELEMENTS, next_tokens, rows_per_chunk, without_special
from deft_plugin.core.head_pass import SequenceHeadResult, decoder_and_head, model_head_pass
from deft_plugin.data.encoding import EncodedRow
from deft_plugin.filtering.batching import batches_by_length, collate_candidates, values_per_row
from deft_plugin.filtering.distributed import barrier, merge_from_all_ranks, rank_and_world
from deft_plugin.filtering.score_cache import ReplyScores, ScoreCache
from deft_plugin.filtering.shared_prompt import additive_mask, pack_shared

LOG = logging.getLogger("axolotl.integrations.deft")

# Attention backends that read a 4D additive mask as given (flash attention takes none).
BLOCK_MASK_BACKENDS = ("eager", "sdpa")


class ReplyScorer:
    """Distribution rewards and reference log-probabilities of every reply of preference pairs and
    ranked lists under one model.

    Each row's prompt runs once (shared_prompt.py: [prompt, reply 1, ..., reply n] under a block
    mask) where the model's attention backend takes a 4D mask; otherwise, or with share_prompt
    False, once per reply."""

    def __init__(self, model, qn: torch.Tensor, special_ids: Iterable[int], pad_id: int = 0,
                 batch_size: int = 8, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, share_prompt: bool = True):
        self.model = model.eval()
        decoder, lm_head = decoder_and_head(model)
        if decoder is model or lm_head is None:
            raise TypeError(f"{type(model).__name__} exposes no decoder / output embeddings to score with")
        self.dtype = next(decoder.parameters()).dtype  # the block mask's
        self.device = next(model.parameters()).device
        self.qn = qn.to(self.device)
        self.special = tuple(sorted(set(special_ids)))
        self.pad_id = pad_id
        self.batch_size = batch_size
        self.chunk_elements = chunk_elements
        backend = getattr(model.config, "_attn_implementation", None)
        self.share_prompt = share_prompt and backend in BLOCK_MASK_BACKENDS
        if share_prompt and not self.share_prompt:
            LOG.info("DEFT scoring: attention backend %r takes no block mask; each prompt runs once per reply",
                     backend)

    def _head_pass(self, inputs: dict, targets: torch.Tensor, logp_mask: torch.Tensor,
                   **packing) -> SequenceHeadResult:
        """Every reply token's log-probability summed (DPO counts special tokens), the reward
        averaged over the non-special ones."""
        reward_mask = without_special(logp_mask, targets, self.special)
        return model_head_pass(self.model, inputs, targets, logp_mask, reward_mask, self.qn, self.chunk_elements,
                               **packing)

    def _shared_pass(self, batch: list[EncodedRow]) -> SequenceHeadResult:
        """The packed rows' states, read at every reply-predicting position (a prompt's last one
        once per reply) as one row of segments, one per reply."""
        ids, positions, allowed, where, targets, sequence = pack_shared(batch, self.pad_id)
        inputs = {"input_ids": ids.to(self.device), "position_ids": positions.to(self.device),
                  "attention_mask": additive_mask(allowed, self.dtype).to(self.device)}
        index = (where[:, 0] * ids.shape[1] + where[:, 1]).to(self.device)[None]
        targets = targets.to(self.device)[None]
        return self._head_pass(inputs, targets, torch.ones_like(targets, dtype=torch.bool),
                               sequence_ids=sequence.to(self.device)[None],
                               sequences=sum(len(row.completions) for row in batch), hidden_index=index)

    def _unshared_pass(self, batch: list[EncodedRow]) -> SequenceHeadResult:
        ids, attn, pred = collate_candidates(batch, set(), self.pad_id, self.device)
        return self._head_pass({"input_ids": ids, "attention_mask": attn}, next_tokens(ids), pred)

    @torch.inference_mode()
    def score_batch(self, batch: list[EncodedRow]) -> dict[int, ReplyScores]:
        passed = (self._shared_pass if self.share_prompt else self._unshared_pass)(batch)
        per_row_rewards = values_per_row(passed.rewards.tolist(), batch)
        per_row_logps = values_per_row(passed.logps.tolist(), batch)
        return {i: ReplyScores(per_row_rewards[i], per_row_logps[i]) for i in per_row_rewards}

    def score(self, rows: list[EncodedRow], cache: ScoreCache | None = None, progress: bool = True,
              need_logps: bool = False) -> dict[int, ReplyScores]:
        """Scores of every reply of every row: those already in the cache are read (with need_logps,
        only those that have log-probabilities), the rest are scored (this rank's shard under a
        process group) and every finished batch is cached."""
        done = cache.scores() if cache else {}
        if need_logps:
            done = {i: s for i, s in done.items() if s.logps is not None}
        rank, world = rank_and_world()
        barrier()  # every rank must read the cache before any rank adds to it
        todo = [r for r in rows if r.index not in done][rank::world]
        results: dict[int, ReplyScores] = {}
        with tqdm(total=len(todo), desc=f"DEFT scoring (rank {rank})" if world > 1 else "DEFT scoring",
                  unit="pair", disable=not progress) as bar:
            for batch in batches_by_length(todo, self.batch_size):
                out = self.score_batch(batch)
                if cache:
                    cache.write_part(out)
                results.update(out)
                bar.update(len(batch))
        wanted = {r.index for r in rows}
        log_rank_share(len(todo), len(wanted & done.keys()))
        results = merge_from_all_ranks(results)
        return {i: v for i, v in {**done, **results}.items() if i in wanted}


def log_rank_share(scored: int, cached: int) -> None:
    """Under a launch, each rank's one line of its share (its progress bar interleaves with the others')."""
    rank, world = rank_and_world()
    if world > 1:
        LOG.info("DEFT scoring, rank %d of %d: %d pairs scored, %d read from the cache", rank, world, scored, cached)


@torch.inference_mode()
def mean_distributions(model, rows: list[EncodedRow], special_ids: Iterable[int], pad_id: int = 0,
                       batch_size: int = 8, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                       progress: bool = True) -> dict[int, torch.Tensor]:
    """row index -> [replies, vocab] float32: each reply's next-token distribution averaged over the
    positions that predict its tokens. R(x, y) under any Q is then mean_distribution @ Qn, so one
    pass serves every Q (Q built from less data, another norm) without scoring again."""
    decoder, head = decoder_and_head(model)
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
