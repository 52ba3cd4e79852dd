"""The few torch.distributed facts the filter needs; each is a no-op without a process group."""

from __future__ import annotations

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
