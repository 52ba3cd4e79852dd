"""cpu_launch.py for DeepSpeed runs on a machine without a GPU: `python -m MODULE ARGS...` under a
launcher, with accelerate told which backend DeepSpeed's process group uses there.

Usage (as torchrun's or accelerate launch's script): deepspeed_cpu_launch.py MODULE ARGS...

DeepSpeed runs on CPU (DS_ACCELERATOR=cpu picks gloo), but accelerate's PartialState takes gloo
only with cpu=True, and cpu=True drops the DeepSpeed plugin; without a GPU it ends with no backend,
believes it is one process, and DeepSpeed's batch check then fails (train_batch_size 2 != 2 * 1 *
2). Here it answers gloo in exactly that case: no GPU, LOCAL_RANK set, DeepSpeed on. On a machine
with a GPU nothing is changed. Axolotl pins device_map to the local rank under a multi-process
launch, a cuda device: without a GPU the model loads on the CPU instead."""

from __future__ import annotations

import os
import runpy
import sys

import cpu_launch
import torch
from accelerate.state import PartialState
from accelerate.utils import DistributedType


def _deepspeed_backend_on_cpu(original):
    def prepare(self, cpu: bool = False, sagemaker_dp=False, backend: str | None = None):
        backend, kind = original(self, cpu, sagemaker_dp, backend)
        if (backend is None and not cpu and int(os.environ.get("LOCAL_RANK", -1)) != -1
                and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"):
            return "gloo", DistributedType.MULTI_CPU
        return backend, kind
    return prepare


def _model_on_cpu(original):
    def normalize(cfg):
        original(cfg)
        if cfg.deepspeed and isinstance(cfg.device_map, dict):  # {"": LOCAL_RANK}: a cuda device
            cfg.device_map = "cpu"
    return normalize


if __name__ == "__main__":
    if not torch.cuda.is_available():
        import axolotl.utils.config  # before the CLI imports normalize_config by name

        torch.cuda.can_device_access_peer = cpu_launch._no_peer_access
        PartialState._prepare_backend = _deepspeed_backend_on_cpu(PartialState._prepare_backend)
        axolotl.utils.config.normalize_config = _model_on_cpu(axolotl.utils.config.normalize_config)
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
