"""`python -m MODULE ARGS...` for a launcher on a machine without a GPU, with torch's CUDA peer
check answering as torch's CPU build does.

Usage (as torchrun's script): cpu_launch.py MODULE ARGS...

PyPI's torch for Python 3.12 is a CUDA build; without a GPU driver its
`torch.cuda.can_device_access_peer` raises RuntimeError, where the CPU build raises
AssertionError. Axolotl's multi-process check (`check_cuda_p2p_support`, in `load_cfg`) catches
only AssertionError, so on such a machine every multi-process Axolotl run stops before the
plugin's hooks. On a machine with a GPU, or with the CPU build, nothing is changed."""

from __future__ import annotations

import runpy
import sys

import torch


def _no_peer_access(*_args):
    raise AssertionError("Torch has no CUDA device on this machine")


if __name__ == "__main__":
    if not torch.cuda.is_available():
        torch.cuda.can_device_access_peer = _no_peer_access
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
