"""The starting model as the scorer needs it: a plain (never DeepSpeed-partitioned) copy on
this rank's device, in the scoring precision."""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch


def scoring_device_and_dtype(requested: str | None) -> tuple[torch.device, torch.dtype]:
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        auto = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        device, auto = torch.device("cpu"), torch.float32
    dtype = auto if requested in (None, "auto") else getattr(torch, requested)
    return device, dtype


def load_scoring_model(name_or_path: str, requested_dtype: str | None = None, revision: str | None = None,
                       trust_remote_code: bool = False, **kwargs):
    """The starting model, as a plain (non-DeepSpeed) copy on this rank's device."""
    from transformers import AutoModelForCausalLM

    device, dtype = scoring_device_and_dtype(requested_dtype)
    with _without_zero3_init():
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, revision=revision,
                                                     trust_remote_code=trust_remote_code, **kwargs)
    return model.to(device).eval()


@contextmanager
def _without_zero3_init():
    """Under ZeRO-3, from_pretrained would partition the weights (zero.Init) and a forward
    pass outside the DeepSpeed engine would fail; the scoring copy must be a plain model."""
    from transformers.integrations import deepspeed as hf_ds

    saved = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved
