"""Exports of every vote, for the organiser: JSONL and CSV, built in memory; written atomically
by `deft-app export` and served to admins by the app through download links (downloads.py)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from deft_plugin.utils.atomic import atomic_write_text

FIELDS = ("item_id", "annotator", "criterion", "verdict", "model_a", "model_b", "left_model", "category", "comment",
          "created", "seconds")


def votes_jsonl(votes: list[dict]) -> str:
    return "".join(json.dumps({k: v[k] for k in FIELDS}, ensure_ascii=False) + "\n" for v in votes)


def votes_csv(votes: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(votes)
    return buffer.getvalue()


EXPORTS = {"votes.jsonl": (votes_jsonl, "application/jsonl"), "votes.csv": (votes_csv, "text/csv")}


def export_votes(votes: list[dict], directory: str | Path) -> tuple[Path, Path]:
    directory = Path(directory)
    for name, (build, _) in EXPORTS.items():
        atomic_write_text(directory / name, build(votes))
    return directory / "votes.jsonl", directory / "votes.csv"
