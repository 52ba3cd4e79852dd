"""Resumable store of what the scoring pass gives per row: the distribution reward of each
reply and, when recorded, each reply's summed reference log-probability (DPO's reference).

Each finished scoring batch is written as one small JSON part file (atomically), so a
killed run loses at most the batch in flight and a restart skips what is done, whatever
the number of processes of either run. Parts written before log-probabilities were recorded
hold rewards only ({row: [rewards]}); a run that needs log-probabilities scores those rows
again and its newer parts take precedence."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from deft_plugin.utils.atomic import atomic_write_text


@dataclass(frozen=True)
class ReplyScores:
    """One row's scores, one value per reply, best first."""

    rewards: tuple[float, ...]  # R(x, y): the distribution reward (special tokens left out)
    logps: tuple[float, ...] | None = None  # sum of log p(token) over every reply token, as DPO sums them


def _read_part(data: dict) -> dict[int, ReplyScores]:
    if "rows" not in data:  # a part of rewards only
        return {int(k): ReplyScores(tuple(map(float, v))) for k, v in data.items()}
    return {int(k): ReplyScores(tuple(map(float, v["rewards"])), tuple(map(float, v["logps"])))
            for k, v in data["rows"].items()}


class ScoreCache:
    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.parts = self.dir / "parts"

    def scores(self) -> dict[int, ReplyScores]:
        """Every cached row; a row scored twice keeps the record that has log-probabilities."""
        results: dict[int, ReplyScores] = {}
        if self.parts.is_dir():
            for part in sorted(self.parts.glob("part-*.json")):
                for index, scores in _read_part(json.loads(part.read_text())).items():
                    if index not in results or results[index].logps is None:
                        results[index] = scores
        return results

    def done(self) -> dict[int, tuple[float, ...]]:
        """Row index -> the rewards of its replies."""
        return {i: s.rewards for i, s in self.scores().items()}

    def write_part(self, results: dict[int, ReplyScores]) -> None:
        if results:
            name = f"part-{os.getpid()}-{uuid.uuid4().hex[:12]}.json"
            rows = {str(k): {"rewards": list(v.rewards), "logps": list(v.logps)} for k, v in results.items()}
            atomic_write_text(self.parts / name, json.dumps({"rows": rows}))
