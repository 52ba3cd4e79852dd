"""The identity of a score cache: the data, the model, the tokenizer, the sequence length and
the settings that change the rewards. Any change among them gives another cache directory."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from deft_plugin.data.encoding import completions_of


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rows_fingerprint(rows: list[dict]) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps([row["prompt"], completions_of(row), row.get("rewards")], sort_keys=True).encode())
    return h.hexdigest()[:16]


def model_fingerprint(name_or_path: str, revision: str | None = None) -> dict:
    """Identity of a checkpoint: its config and weight files (names and sizes) when local."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return {"model": name_or_path, "revision": revision}
    files = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.suffix in {".safetensors", ".bin", ".gguf"}}
    config = (path / "config.json").read_text() if (path / "config.json").is_file() else ""
    return {"model": str(path.resolve()), "weights": files, "config": fingerprint(config)}


def tokenizer_fingerprint(tokenizer) -> dict:
    return {"name": getattr(tokenizer, "name_or_path", ""), "size": len(tokenizer),
            "special": sorted(tokenizer.all_special_ids),
            "template": fingerprint(getattr(tokenizer, "chat_template", None))}


def score_cache_key(rows: list[dict], model: str, revision: str | None, tokenizer, sequence_len: int | None,
                    reward_settings: dict) -> str:
    return fingerprint({"data": rows_fingerprint(rows), "model": model_fingerprint(model, revision),
                        "tokenizer": tokenizer_fingerprint(tokenizer), "sequence_len": sequence_len,
                        "deft": reward_settings})
