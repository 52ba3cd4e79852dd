"""Reading raw rows: a local .jsonl / .jsonl.gz / .json file, a directory of them (or a
saved `datasets` directory), or a hub dataset id.

Local JSON files are read line by line by a reader that keeps going: a line that is not a
JSON object (cut off, a stray quote) is set aside with its reason and its file and line, to be
counted and named in the report, and the rows around it are read. Hub ids and saved `datasets`
directories go through `datasets`. Every row carries where it came from, 1-based."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import datasets

JSON_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")


@dataclass
class RawRows:
    """Rows as read, with where each came from ("file:line N" or "source row N") and the lines
    that were not JSON objects, (where, reason)."""

    rows: list[dict] = field(default_factory=list)
    where: list[str] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return RawRows(self.rows[index], self.where[index], self.bad)
        return self.rows[index]

    def extend(self, other: RawRows) -> None:
        self.rows += other.rows
        self.where += other.where
        self.bad += other.bad


def read_json_lines(path: Path) -> RawRows:
    """Every line of a .jsonl / .jsonl.gz file (a .json file holding one array is read whole)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig") as f:  # a leading byte-order mark is no part of row 1
        text = f.read()
    out = RawRows()
    if path.name.endswith((".json", ".json.gz")) and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            out.bad.append((f"{path}", f"not valid JSON: {err.msg} at line {err.lineno}"))
            return out
        for n, record in enumerate(records, 1):
            _add(out, record, f"{path} item {n}")
        return out
    # "\n" only: splitlines() also breaks at U+2028, U+0085 and the like, which JSON strings may hold raw
    # (text mode has already turned "\r\n" into "\n")
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            out.bad.append((f"{path}:{n}", f"not valid JSON ({err.msg})"))
            continue
        _add(out, record, f"{path}:{n}")
    return out


def _add(out: RawRows, record, where: str) -> None:
    if isinstance(record, dict):
        out.rows.append(record)
        out.where.append(where)
    else:
        out.bad.append((where, f"a JSON {type(record).__name__}, not an object"))


def _json_files(directory: Path, split: str | None) -> list[str]:
    files = sorted(str(p) for p in directory.rglob("*") if p.name.endswith(JSON_SUFFIXES))
    if split:
        matching = [f for f in files if Path(f).name.startswith(split)]
        files = matching or files
    return files


def _from_dataset(dataset: datasets.Dataset, source: str) -> RawRows:
    return RawRows([dict(r) for r in dataset], [f"{source} row {n}" for n in range(1, len(dataset) + 1)])


def load_rows(path: str, split: str | None = None, data_files=None, revision: str | None = None) -> RawRows:
    """Raw rows of a local file, a directory of files, a saved `datasets` directory or a hub id."""
    local = Path(path).expanduser()
    if local.is_file():
        if not local.name.endswith(JSON_SUFFIXES):
            raise ValueError(f"{path}: expected a .jsonl, .jsonl.gz or .json file")
        return read_json_lines(local)
    if local.is_dir():
        if (local / "dataset_info.json").is_file() or (local / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(local))
            return _from_dataset(loaded[split or "train"] if isinstance(loaded, datasets.DatasetDict) else loaded, path)
        files = [str(local / f) for f in data_files] if data_files else _json_files(local, split)
        if not files:
            raise ValueError(f"{path}: no .jsonl/.jsonl.gz/.json files in this directory")
        out = RawRows()
        for file in files:
            out.extend(read_json_lines(Path(file)))
        return out
    if path.startswith((".", "/", "~")) or path.endswith(JSON_SUFFIXES):
        raise FileNotFoundError(f"dataset path {path} does not exist")
    try:
        loaded = datasets.load_dataset(path, data_files=data_files, split=split or "train", revision=revision)
    except Exception as err:  # offline or unknown id: say how to give a local copy
        raise RuntimeError(
            f"could not load dataset {path!r} from the hub ({type(err).__name__}: {err}). "
            "Offline, give a local path instead: a .jsonl/.jsonl.gz file or a directory of them."
        ) from err
    return _from_dataset(loaded, path)
