"""One rank of a CPU (gloo) process group running the DEFT filter, for test_distributed.

Usage: python dist_filter_worker.py JOB.json RANK
JOB.json: {"world", "init_method", "model_dir", "rows", "settings", "cache_dir", "out_dir",
"die_after"}. With world 1 no process group is made. With die_after = k the process kills
itself (SIGKILL, no clean-up of any kind) when asked for its (k+1)-th scoring batch.
Writes OUT_DIR/rank-RANK.json with the selection, the scores and the pairs this rank scored.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path


def main(job_path: str, rank: int) -> None:
    job = json.loads(Path(job_path).read_text())
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deft_plugin.filtering.pipeline import FilterSettings, run_filter
    from deft_plugin.filtering.scorer import ReplyScorer

    if job["world"] > 1:
        dist.init_process_group("gloo", init_method=job["init_method"], rank=rank, world_size=job["world"],
                                timeout=timedelta(seconds=45))
    batches: list[list[int]] = []
    original = ReplyScorer.score_batch

    def counting(self, batch):
        if job.get("die_after") is not None and len(batches) == job["die_after"]:
            os.kill(os.getpid(), signal.SIGKILL)
        batches.append([p.index for p in batch])
        return original(self, batch)

    ReplyScorer.score_batch = counting
    loads = []

    def load_model():
        loads.append(1)
        return AutoModelForCausalLM.from_pretrained(job["model_dir"]).eval()

    tokenizer = AutoTokenizer.from_pretrained(job["model_dir"])
    rows = json.loads(Path(job["rows"]).read_text())
    result = run_filter(rows, tokenizer, load_model, FilterSettings(**job["settings"]), job.get("cache_dir"),
                        progress=False)
    out = {
        "rank": rank, "world": job["world"], "pid": os.getpid(),
        "kept": result.kept,
        "scores": {str(k): v for k, v in result.scores.items()},
        "rewards": {str(k): list(v) for k, v in result.rewards.items()},
        "report": {k: result.report[k] for k in ("rows", "degenerate", "scored", "kept")},
        "batches": batches, "model_loads": len(loads),
    }
    out_dir = Path(job["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank-{rank}.json").write_text(json.dumps(out))
    if job["world"] > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
