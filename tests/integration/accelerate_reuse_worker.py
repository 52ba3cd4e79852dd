"""One rank under torchrun: the plugin's process group, then accelerate's state on top of it.
Prints one JSON line with what each saw; for test_launchers."""

from __future__ import annotations

import json

import torch.distributed as dist

from deft_plugin.filtering.distributed import join_launched_group, rank_and_world

if __name__ == "__main__":
    made = join_launched_group()
    group = dist.group.WORLD
    ours = rank_and_world()
    from accelerate import PartialState

    # on CPU accelerate runs multi-process only when told `cpu`; on GPUs it takes MULTI_GPU, and in
    # both cases it makes a group only when none exists
    state = PartialState(cpu=True)
    print(json.dumps({"made": made, "ours": ours, "accelerate": [state.process_index, state.num_processes],
                      "type": str(state.distributed_type), "same_group": dist.group.WORLD is group,
                      "backend": dist.get_backend()}), flush=True)
    dist.barrier()
