"""What the collapse guard (deft_guard: warn) costs a DEFT-DPO training step, against the same
trainer with the guard off: one trainer built by Axolotl, on one batch of real HH-RLHF pool pairs
with SmolLM2-135M-Instruct on the CPU; the two modes alternate in one process (the order flipping
every repeat), median of the repeats. Target: under 5% of a step.

    python benchmarks/guard_cost.py --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import free_reference as fr  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def guarded_step(trainer, batch, guard: str) -> None:
    loss = trainer.deft_loss
    trainer.configure_deft(replace(loss, guard=guard))
    try:
        fr.one_step(trainer, batch)
    finally:
        trainer.deft_loss = loss


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory (default: SmolLM2-135M-Instruct)")
    p.add_argument("--data", default=str(fr.DATA))
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--max-length", type=int, default=384)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--results", default=None, help="append the figures to this Markdown file")
    args = p.parse_args(argv)
    from deft_plugin.launch.axolotl_train import OFFLINE_ENV

    os.environ.update({k: os.environ.get(k, v) for k, v in OFFLINE_ENV.items()})
    from deft_plugin.cli.smollm2 import ensure_smollm2
    from deft_plugin.data.sources import load_rows
    from deft_plugin.data.split import DATA_SPLIT

    work = Path(tempfile.mkdtemp())
    model = args.model or str(ensure_smollm2())
    data_file = work / "pairs.jsonl"
    raw = [dict(r) for r in DATA_SPLIT.parts(load_rows(args.data))["pool"]][: 4 * args.micro_batch]  # the pool only
    data_file.write_text("".join(json.dumps(r) + "\n" for r in raw))
    trainer = fr.build_trainers(model, data_file, work, args.micro_batch, args.max_length, which=("deft",))["deft"]
    trainer.model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    modes = {"guard warn": lambda: guarded_step(trainer, batch, "warn"),
             "guard off": lambda: guarded_step(trainer, batch, "off")}
    for run in modes.values():  # warm-up: first-call allocations, optimizer state
        run()
    seconds = fr.alternate(modes, args.repeats)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    ratio = seconds["guard warn"] / seconds["guard off"]
    lines = [f"## guard_cost.py, {time.strftime('%Y-%m-%d %H:%M')} (commit {commit})", "",
             f"SmolLM2-135M-Instruct, {platform.machine()} CPU ({os.cpu_count()} cores), fp32, LoRA off (full "
             f"fine-tuning), DEFT-DPO, micro batch {args.micro_batch} pairs of real HH-RLHF pool rows, sequence "
             f"{args.max_length} ({int(batch['attention_mask'].sum())} tokens); median of {args.repeats} repeats, "
             "modes alternating on one trainer and batch.", "",
             "| mode | step seconds |", "|---|---|",
             *(f"| {name} | {value:.3f} |" for name, value in seconds.items()), "",
             f"Guard on / off: **{ratio:.3f}x** a step (target < 1.05x).", ""]
    fr.append_results(args.results, "\n".join(lines))


if __name__ == "__main__":
    main()
