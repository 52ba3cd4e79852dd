"""Loading the models to evaluate: a local directory (a DEFT run's output_dir or a LoRA
adapter saved there) or a hub id, on the best device, never hanging on the network."""

from __future__ import annotations

from pathlib import Path

import torch


def device_and_dtype(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dtype == "auto":
        bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
        return dev, torch.bfloat16 if bf16 else torch.float32
    return dev, getattr(torch, dtype)


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
