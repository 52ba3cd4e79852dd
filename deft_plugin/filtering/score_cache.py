"""Resumable store of per-row distribution rewards (one per reply, best first).

Each finished scoring batch is written as one small JSON part file (atomically), so a
killed run loses at most the batch in flight and a restart skips what is done, whatever
the number of processes of either run."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from deft_plugin.utils.atomic import atomic_write_text


class ScoreCache:
    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.parts = self.dir / "parts"

    def done(self) -> dict[int, tuple[float, ...]]:
        results: dict[int, tuple[float, ...]] = {}
        if self.parts.is_dir():
            for part in sorted(self.parts.glob("part-*.json")):
                for key, value in json.loads(part.read_text()).items():
                    results[int(key)] = tuple(float(v) for v in value)
        return results

    def write_part(self, results: dict[int, tuple[float, ...]]) -> None:
        if results:
            name = f"part-{os.getpid()}-{uuid.uuid4().hex[:12]}.json"
            atomic_write_text(self.parts / name, json.dumps({str(k): list(v) for k, v in results.items()}))
