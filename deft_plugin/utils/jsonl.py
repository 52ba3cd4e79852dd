"""Reading small JSONL files whole, with errors that name the file and the line."""

from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: str | Path, error: type[ValueError] = ValueError) -> list[tuple[int, dict]]:
    """(line number, record) for every non-blank line; `error` for a missing file or a bad line."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such file")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append((n, json.loads(line)))
            except json.JSONDecodeError:
                raise error(f"{path}: line {n} is not valid JSON") from None
    return records
