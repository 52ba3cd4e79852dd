"""What training a reward-model judge (`deft-eval train-reward`) costs a pair on this machine, by
how it trains: every weight or LoRA, eight pairs per forward pass or one (nothing padded). The
same real HH-RLHF pool pairs and SmolLM2-135M-Instruct for each, one after another in one
process; wall and process CPU seconds per pair, and each against the first. What sizes the
study's judge.

    python benchmarks/reward_training_cost.py --pairs 16 --results benchmarks/RESULTS.md
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import free_reference as fr  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"full, 8 a pass": {"micro_batch_size": 8}, "full, 1 a pass": {"micro_batch_size": 1},
            "LoRA 16, 8 a pass": {"micro_batch_size": 8, "lora_r": 16},
            "LoRA 16, 1 a pass": {"micro_batch_size": 1, "lora_r": 16}}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory (default: SmolLM2-135M-Instruct)")
    p.add_argument("--data", default=str(fr.DATA))
    p.add_argument("--pairs", type=int, default=16, help="pool pairs each setting trains on (one epoch)")
    p.add_argument("--results", default=None, help="append the figures to this Markdown file")
    args = p.parse_args(argv)
    from deft_plugin.launch.axolotl_train import OFFLINE_ENV

    os.environ.update({k: os.environ.get(k, v) for k, v in OFFLINE_ENV.items()})
    from deft_eval.hh_prompts import load_prompts
    from deft_eval.reward_training import RewardTraining, train_reward_model
    from deft_plugin.cli.smollm2 import ensure_smollm2
    from deft_plugin.data.sources import load_rows
    from deft_plugin.data.split import DATA_SPLIT

    work = Path(tempfile.mkdtemp())
    model = args.model or str(ensure_smollm2())
    pool = work / "pool.jsonl"
    rows = [dict(r) for r in DATA_SPLIT.parts(load_rows(args.data))["pool"]][: args.pairs]  # the pool only
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, _ = load_prompts(str(pool))
    figures = {}
    for name, changes in SETTINGS.items():
        record = train_reward_model(model, records, work / "rm", RewardTraining(batch_size=8, **changes))
        figures[name] = (record["seconds"] / len(records), record["cpu_seconds"] / len(records))
        print(f"{name}: {figures[name][0]:.2f} s a pair, {figures[name][1]:.2f} CPU s", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    first = next(iter(figures.values()))
    lines = [f"## reward_training_cost.py, {time.strftime('%Y-%m-%d %H:%M')} (commit {commit})", "",
             f"SmolLM2-135M-Instruct, {platform.machine()} CPU ({os.cpu_count()} cores), fp32, {len(records)} real "
             "HH-RLHF pool pairs, one epoch, 8 pairs an optimiser step, one run each (model loading included).", "",
             "| how | wall s a pair | CPU s a pair | wall against the first |", "|---|---|---|---|",
             *(f"| {name} | {wall:.2f} | {cpu:.2f} | {wall / first[0]:.2f}x |"
               for name, (wall, cpu) in figures.items()),
             ""]
    fr.append_results(args.results, "\n".join(lines))


if __name__ == "__main__":
    main()
