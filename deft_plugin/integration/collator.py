"""Batches of ranked rows for the PRO trainer: every (prompt, candidate) becomes one
sequence, row by row, candidates best first; labels mask the prompt and the padding."""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
PRO_COLUMNS = ("prompt_ids", "completion_ids", "rewards", "start_rewards")


class ListwiseCollator:
    """features: dicts with `prompt_ids` (list of ids), `completion_ids` (one id list per
    candidate, best first; rows may differ in the number of candidates) and `rewards` (one
    score per candidate, or empty), and optionally `start_rewards` (the starting model's R of each
    candidate, for the saturating loss forms). Returns input_ids / attention_mask / labels for the
    flattened sequences, `group_sizes` [batch] (candidates per row), `rewards` [batch, n_max]
    (NaN where a row has no rewards, and as padding) and, when given, `start_rewards` alike."""

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None, **_):
        # Axolotl passes padding / return_tensors: padding is always to the longest sequence.
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token to pad PRO batches with")
        self.pad_id = pad
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        seqs, labels, sizes = [], [], []
        for f in features:
            prompt = list(f["prompt_ids"])
            for completion in f["completion_ids"]:
                seqs.append(prompt + list(completion))
                labels.append([IGNORE_INDEX] * len(prompt) + list(completion))
            sizes.append(len(f["completion_ids"]))
        width = max(map(len, seqs))
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n_max = max(sizes)
        batch = {
            "input_ids": torch.tensor([s + [self.pad_id] * (width - len(s)) for s in seqs]),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs]),
            "labels": torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for lab in labels]),
            "group_sizes": torch.tensor(sizes),
            "rewards": per_candidate(features, "rewards", n_max),
        }
        if features and "start_rewards" in features[0]:
            batch["start_rewards"] = per_candidate(features, "start_rewards", n_max)
        return batch


def per_candidate(features: list[dict], key: str, n_max: int) -> torch.Tensor:
    """[batch, n_max] of a per-candidate list, NaN where a row has none and as padding."""
    values = torch.full((len(features), n_max), float("nan"))
    for b, f in enumerate(features):
        if f.get(key):
            values[b, : len(f[key])] = torch.tensor(f[key], dtype=torch.float32)
    return values
