"""The few torch.distributed facts the filter needs; each is a no-op without a process group."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if _active() else (0, 1)


def is_main_process() -> bool:
    return rank_and_world()[0] == 0


def barrier() -> None:
    if _active():
        dist.barrier()


def merge_from_all_ranks(results: dict) -> dict:
    """Every rank's dict merged, on every rank (the dict itself without a process group)."""
    rank, world = rank_and_world()
    if world == 1:
        return results
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    merged: dict = {}
    for part in gathered:
        merged.update(part)
    return merged


def join_launched_group() -> bool:
    """Create the default process group from the launcher's environment (env://) when a
    launcher (torchrun, accelerate launch) started this process as one of WORLD_SIZE > 1 and
    no group exists yet: NCCL on this rank's GPU, gloo on CPU. Axolotl's DDP and FSDP create
    their group only after the datasets hook, so without this every rank would score every
    pair; accelerate reuses an existing default group. True when this call created it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return True


def leave_group() -> None:
    """Tear the default group down (for commands that made it and end here)."""
    if _active():
        dist.destroy_process_group()
