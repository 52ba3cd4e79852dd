"""`axolotl train` in a subprocess, offline, with its log in a file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "AXOLOTL_DO_NOT_TRACK": "1",
               "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}


def deft_run_config(base_model: str, data: str, method: str, output_dir: str, prepared: str, seed: int,
                    **keys) -> dict:
    """The Axolotl config of a DEFT run on the CPU, as the demo and the study write it: the plugin,
    DEFT-DPO (rl: dpo) or DEFT-PRO, one HH-RLHF-format dataset, AdamW, a log line every step, no
    checkpoints, float32; `keys` add the run's own (the recipe, the deft_* keys) or override."""
    return {
        "base_model": base_model,
        "plugins": ["deft_plugin.DEFTPlugin"],
        **({"deft_method": "pro", "sample_packing": False} if method == "pro" else {"rl": "dpo"}),
        "datasets": [{"path": data, "type": "deft.hh_rlhf"}],
        **cpu_run_keys(output_dir, prepared, seed),
        **keys,
    }


def cpu_run_keys(output_dir: str, prepared: str, seed: int) -> dict:
    """What every CPU run of ours sets: AdamW, the seed, a log line every step, no checkpoints,
    float32 (Axolotl would pick fp16, which a CPU matmul refuses)."""
    return {"optimizer": "adamw_torch", "seed": seed, "output_dir": output_dir, "dataset_prepared_path": prepared,
            "logging_steps": 1, "save_strategy": "no", "bf16": False, "device_map": "cpu",
            "dataloader_num_workers": 0}


def run_axolotl_train(config_path: Path, log_path: Path, append: bool = False) -> None:
    """`axolotl train` in a subprocess; the full log goes to a file (added to it with `append`, as
    for a run resumed from its checkpoint), progress to the terminal."""
    env = {**os.environ, **OFFLINE_ENV}
    cmd = [sys.executable, "-m", "axolotl.cli.main", "train", str(config_path.resolve()), "--launcher", "python"]
    shown = ("DEFT", "it/s", "s/it", "{'loss'", "Error", "error:")
    with log_path.open("a" if append else "w") as log, subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=config_path.parent) as proc:
        for line in proc.stdout:
            log.write(line)
            if any(s in line for s in shown):
                print("   " + line.rstrip()[:160], flush=True)
    if proc.returncode != 0:
        tail = log_path.read_text().splitlines()[-30:]
        raise SystemExit(f"axolotl train failed (exit {proc.returncode}); log: {log_path}\n" + "\n".join(tail))
