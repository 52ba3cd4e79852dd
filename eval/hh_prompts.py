"""HH-RLHF test prompts with their references: one record per parseable row, tagged with
its subset (harmless-base, helpful-base, helpful-online, helpful-rejection-sampled)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from deft_plugin.data.formats.hh_rlhf import split_transcript
from deft_plugin.data.sources import JSON_SUFFIXES, load_rows
from deft_plugin.hookspecs import RowError

SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
HUB_ID = "Anthropic/hh-rlhf"


def subset_of(path: Path) -> str:
    """The subset a local file belongs to, from its own name or its folder's."""
    for part in (path.name, path.parent.name):
        for subset in SUBSETS:
            if part.startswith(subset):
                return subset
    return path.name.split(".")[0]


def _sources(data: str | None) -> list[tuple[str, str, dict]]:
    """(subset, path, load_rows kwargs) for a file, a directory of files, or the hub subsets."""
    if data is None:
        return [(s, HUB_ID, {"data_files": f"{s}/test.jsonl.gz", "split": "train"}) for s in SUBSETS]
    local = Path(data).expanduser()
    if local.is_dir():
        files = sorted(p for p in local.rglob("*") if p.name.endswith(JSON_SUFFIXES))
        if not files:
            raise ValueError(f"{data}: no .jsonl/.jsonl.gz/.json files in this directory")
        return [(subset_of(p), str(p), {}) for p in files]
    return [(subset_of(local), data, {})]


def load_prompts(data: str | None = None, sample: int | None = None, seed: int = 0) -> tuple[list[dict], Counter]:
    """Records {id, subset, prompt (raw "Human:/Assistant:" text), chosen, rejected} and the
    rows that could not be used, counted by reason. `sample` draws that many per subset."""
    records, skipped = [], Counter()
    for subset, path, kwargs in _sources(data):
        rows = []
        for i, row in enumerate(load_rows(path, **kwargs)):
            try:
                prompt, chosen = split_transcript(row["chosen"])
                _, rejected = split_transcript(row["rejected"])
            except (RowError, KeyError, TypeError) as err:
                skipped[f"{subset}: {err}"] += 1
                continue
            rows.append({"id": f"{subset}/{i}", "subset": subset, "prompt": prompt, "chosen": chosen,
                         "rejected": rejected})
        if sample is not None and sample < len(rows):
            rows = sorted(random.Random(seed).sample(rows, sample), key=lambda r: int(r["id"].rsplit("/", 1)[1]))
        records += rows
    return records, skipped
