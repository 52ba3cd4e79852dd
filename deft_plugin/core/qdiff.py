"""The discrepancy distribution Q = P+ - P- between chosen and rejected reply tokens.

Built once per training set, before any filtering, from token counts that exclude special
tokens. Saved as a small artifact (tensors + JSON metadata) that can be inspected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch

from deft_plugin.utils.atomic import atomic_write_bytes, atomic_write_text

NORMS = ("maxabs", "l2", "none")


def token_counts(sequences: Iterable[Sequence[int]], vocab_size: int, exclude: Iterable[int] = ()) -> torch.Tensor:
    """Counts of each token id over all sequences, special tokens (exclude) zeroed.
    An id outside [0, vocab_size) is an error (a tokenizer/vocabulary mismatch), never dropped."""
    counts = torch.zeros(vocab_size, dtype=torch.int64)
    for seq in sequences:
        if len(seq):
            ids = torch.as_tensor(seq, dtype=torch.int64)
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= vocab_size:
                bad = hi if hi >= vocab_size else lo
                raise ValueError(f"token id {bad} is outside the vocabulary of size {vocab_size}")
            counts += torch.bincount(ids, minlength=vocab_size)
    excluded = [i for i in exclude if 0 <= i < vocab_size]
    if excluded:
        counts[excluded] = 0
    return counts


def discrepancy(chosen_counts: torch.Tensor, rejected_counts: torch.Tensor,
                norm: str = "maxabs") -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, Qn): Q = P+ - P- in float64, Qn normalised by `norm` in float32."""
    if norm not in NORMS:
        raise ValueError(f"deft_qdiff_norm must be one of {NORMS}, got {norm!r}")
    c_pos, c_neg = chosen_counts.double(), rejected_counts.double()
    if c_pos.sum() == 0 or c_neg.sum() == 0:
        raise ValueError("cannot build the discrepancy distribution: chosen or rejected replies have no tokens")
    q = c_pos / c_pos.sum() - c_neg / c_neg.sum()
    if norm == "maxabs":
        scale = q.abs().max()
    elif norm == "l2":
        scale = q.norm()
    else:
        scale = torch.tensor(1.0, dtype=torch.float64)
    qn = q / scale if scale > 0 else q
    return q, qn.float()


@dataclass
class QDiff:
    """Discrepancy distribution with the counts it came from and its provenance."""

    q: torch.Tensor  # float64 [vocab]
    qn: torch.Tensor  # float32 [vocab]
    chosen_counts: torch.Tensor
    rejected_counts: torch.Tensor
    meta: dict = field(default_factory=dict)

    @classmethod
    def build(cls, chosen: Iterable[Sequence[int]], rejected: Iterable[Sequence[int]], vocab_size: int,
              special_ids: Iterable[int] = (), norm: str = "maxabs", **meta) -> "QDiff":
        special_ids = sorted(set(special_ids))
        cc = token_counts(chosen, vocab_size, special_ids)
        rc = token_counts(rejected, vocab_size, special_ids)
        q, qn = discrepancy(cc, rc, norm)
        meta = {"vocab_size": vocab_size, "norm": norm, "special_ids": special_ids,
                "chosen_tokens": int(cc.sum()), "rejected_tokens": int(rc.sum()), **meta}
        return cls(q, qn, cc, rc, meta)

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save as st_save

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {"q": self.q, "qn": self.qn, "chosen_counts": self.chosen_counts,
                   "rejected_counts": self.rejected_counts}
        atomic_write_bytes(directory / "qdiff.safetensors", st_save({k: v.contiguous() for k, v in tensors.items()}))
        atomic_write_text(directory / "qdiff.json", json.dumps(self.meta, indent=2, sort_keys=True))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "QDiff":
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / "qdiff.safetensors").is_file():
            raise FileNotFoundError(f"no discrepancy distribution in {directory} (expected qdiff.safetensors)")
        t = load_file(directory / "qdiff.safetensors")
        meta = json.loads((directory / "qdiff.json").read_text())
        return cls(t["q"], t["qn"], t["chosen_counts"], t["rejected_counts"], meta)

    def top_tokens(self, k: int = 20, decode=None) -> dict[str, list[dict]]:
        """The k tokens most over-represented in chosen (positive Q) and in rejected replies."""
        sides = {}
        for name, order in (("chosen", torch.argsort(self.q, descending=True, stable=True)),
                            ("rejected", torch.argsort(self.q, stable=True))):
            rows = []
            for i in order[:k].tolist():
                if (self.q[i] > 0) != (name == "chosen") or self.q[i] == 0:
                    break
                rows.append({"id": i, "token": decode(i) if decode else str(i), "q": float(self.q[i]),
                             "qn": float(self.qn[i]), "chosen_count": int(self.chosen_counts[i]),
                             "rejected_count": int(self.rejected_counts[i])})
            sides[name] = rows
        return sides
