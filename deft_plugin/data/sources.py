"""Reading raw rows: a local .jsonl / .jsonl.gz / .json file, a directory of them (or a
saved `datasets` directory), or a hub dataset id."""

from __future__ import annotations

from pathlib import Path

import datasets

JSON_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")


def _json_files(directory: Path, split: str | None) -> list[str]:
    files = sorted(str(p) for p in directory.rglob("*") if p.name.endswith(JSON_SUFFIXES))
    if split:
        matching = [f for f in files if Path(f).name.startswith(split)]
        files = matching or files
    return files


def load_rows(path: str, split: str | None = None, data_files=None, revision: str | None = None) -> datasets.Dataset:
    """Load raw rows as a `datasets.Dataset` (never a dict of splits)."""
    local = Path(path).expanduser()
    if local.is_file():
        if not local.name.endswith(JSON_SUFFIXES):
            raise ValueError(f"{path}: expected a .jsonl, .jsonl.gz or .json file")
        return datasets.load_dataset("json", data_files=str(local), split="train")
    if local.is_dir():
        if (local / "dataset_info.json").is_file() or (local / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(local))
            return loaded[split or "train"] if isinstance(loaded, datasets.DatasetDict) else loaded
        files = [str(local / f) for f in data_files] if data_files else _json_files(local, split)
        if not files:
            raise ValueError(f"{path}: no .jsonl/.jsonl.gz/.json files in this directory")
        return datasets.load_dataset("json", data_files=files, split="train")
    if path.startswith((".", "/", "~")) or path.endswith(JSON_SUFFIXES):
        raise FileNotFoundError(f"dataset path {path} does not exist")
    try:
        return datasets.load_dataset(path, data_files=data_files, split=split or "train", revision=revision)
    except Exception as err:  # offline or unknown id: say how to give a local copy
        raise RuntimeError(
            f"could not load dataset {path!r} from the hub ({type(err).__name__}: {err}). "
            "Offline, give a local path instead: a .jsonl/.jsonl.gz file or a directory of them."
        ) from err
