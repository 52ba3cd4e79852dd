"""Exports of every vote, for the organiser: JSONL and CSV, written atomically."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from deft_plugin.utils.atomic import atomic_write_text

FIELDS = ("item_id", "annotator", "verdict", "model_a", "model_b", "left_model", "category", "comment", "created")


def export_votes(votes: list[dict], directory: str | Path) -> tuple[Path, Path]:
    directory = Path(directory)
    jsonl = directory / "votes.jsonl"
    atomic_write_text(jsonl, "".join(json.dumps({k: v[k] for k in FIELDS}, ensure_ascii=False) + "\n" for v in votes))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(votes)
    table = directory / "votes.csv"
    atomic_write_text(table, buffer.getvalue())
    return jsonl, table
