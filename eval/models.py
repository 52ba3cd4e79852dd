"""Loading the models to evaluate: a local directory (a DEFT run's output_dir or a LoRA
adapter saved there) or a hub id, on the best device, never hanging on the network."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from deft_plugin.utils.usage import looks_like_a_path


def device_and_dtype(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dtype == "auto":
        bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
        return dev, torch.bfloat16 if bf16 else torch.float32
    return dev, getattr(torch, dtype)


def model_problem(name_or_path: str) -> str | None:
    """Why a model cannot be loaded, found without loading it (None: nothing found against it):
    a path that is not there, a folder with no saved model in it, or a hub id that is not
    available, offline because it is not in the cache. A hub id is resolved by transformers'
    own lookup of its config.json, so a cached or reachable one passes."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        if any((local / name).is_file() for name in ("config.json", "adapter_config.json")):
            return None
        return "a folder without config.json (not a saved model)"
    if local.exists():
        return "a file, not a model folder"
    if looks_like_a_path(name_or_path):
        return "no such folder"
    from transformers.utils import cached_file

    try:
        cached_file(name_or_path, "config.json")
    except OSError:  # not on the hub, not reachable, or offline and not cached
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        return f"neither a model directory nor a hub model available {'offline' if offline else 'here'}"
    return None


def load_causal_lm(name_or_path: str, device: str = "auto", dtype: str = "auto"):
    """(model, tokenizer). A missing local path or an unreachable hub id raises an error that
    says how to give a local copy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(name_or_path).expanduser()
    if not local.exists() and name_or_path.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model path {name_or_path} does not exist")
    dev, dt = device_and_dtype(device, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dt)
    except OSError as err:
        raise RuntimeError(f"could not load model {name_or_path!r} ({err}). Without hub access, give the path of "
                           "a local copy: a directory with config.json and the weights (e.g. a DEFT run's "
                           "output_dir, or one made with save_pretrained).") from err
    return model.to(dev).eval(), tokenizer
