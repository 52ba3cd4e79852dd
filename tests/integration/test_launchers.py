"""Scoring sharded through the real launchers: `torchrun --nproc_per_node 2` (two CPU processes,
gloo) running `deft filter` and `axolotl train` in plain DDP mode, where no process group exists
when the plugin's datasets hook runs. Each rank scores half of the pairs and every rank ends
with the single-process selection."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from builders import HH_PAIRS, KEPT, RATIO, REPO, SCORED, SEQUENCE_LEN

pytestmark = pytest.mark.slow
TORCHRUN = Path(sys.executable).with_name("torchrun")
CPU_LAUNCH = Path(__file__).with_name("cpu_launch.py")  # Axolotl's peer check as on torch's CPU build
WORLD = 2
# the error torch raises when a model is sent to cuda:LOCAL_RANK on a machine without a GPU:
# the CPU build, and a CUDA build without a driver
NO_DEVICE = {"RuntimeError: Cannot access accelerator device when none is available.",
             "RuntimeError: Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and "
             "installed a driver from http://www.nvidia.com/Download/index.aspx"}
RUN_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], cwd: Path, log: Path, check: bool = True) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", AXOLOTL_DO_NOT_TRACK="1", WANDB_MODE="disabled",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    proc = subprocess.run(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=RUN_TIMEOUT_S)
    log.write_text(proc.stdout)
    assert proc.returncode == 0 or not check, f"{' '.join(args[:4])} failed ({proc.returncode}):\n{proc.stdout[-6000:]}"
    return proc.stdout


def torchrun(*args: str) -> list[str]:
    return [str(TORCHRUN), "--nproc_per_node", str(WORLD), "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), *args]


def cache_parts(cache: Path) -> dict[str, set[int]]:
    """The pairs each writing process scored, by its pid."""
    writers: dict[str, set[int]] = {}
    for part in (cache / "parts").glob("part-*.json"):
        rows = json.loads(part.read_text())["rows"]
        writers.setdefault(part.name.split("-")[1], set()).update(int(k) for k in rows)
    return writers


def rank_lines(out: str) -> dict[int, tuple[int, int]]:
    """rank -> (pairs it scored, pairs it read from the cache), from each rank's one log line."""
    found = {}
    for rank, world, scored, cached in re.findall(
            r"DEFT scoring, rank (\d+) of (\d+): (\d+) pairs scored, (\d+) read from the cache", out):
        assert int(world) == WORLD and int(rank) not in found, out[-3000:]
        found[int(rank)] = (int(scored), int(cached))
    return found


def test_accelerate_reuses_the_group_the_plugin_made(tmp_path):
    """The group made in the datasets hook is the one Axolotl's trainer then runs on: accelerate
    finds it and joins it instead of making another."""
    out = run(torchrun(str(Path(__file__).with_name("accelerate_reuse_worker.py"))), REPO, tmp_path / "reuse.log")
    seen = sorted((json.loads(line) for line in out.splitlines() if line.startswith("{")), key=lambda r: r["ours"])
    assert [r["ours"] for r in seen] == [[0, WORLD], [1, WORLD]]
    for rank, r in enumerate(seen):
        assert r["made"] is True and r["same_group"] is True and r["backend"] == "gloo"
        assert r["accelerate"] == [rank, WORLD] and r["type"] == "DistributedType.MULTI_CPU"


def test_torchrun_filter_shards_the_scoring_and_matches_one_process(tmp_path, sharp_model_dir, hh_file):
    command = ["-m", "deft_plugin.cli", "filter", "--data", str(hh_file), "--model", str(sharp_model_dir),
               "--ratio", str(RATIO), "--max-length", str(SEQUENCE_LEN), "--batch-size", "4"]
    run([sys.executable, *command, "--out", str(tmp_path / "one")], REPO, tmp_path / "one.log")
    sharded = run(torchrun(*command, "--out", str(tmp_path / "two")), REPO, tmp_path / "two.log")
    assert sharded.count("written to") == 1  # the outputs are written once, by rank 0
    one, two = tmp_path / "one", tmp_path / "two"
    kept_one, kept_two = ([json.loads(line) for line in (d / "kept.jsonl").read_text().splitlines()]
                          for d in (one, two))
    assert len(kept_two) == KEPT
    # the same rows in the same order; the scores equal up to float noise of other batch paddings
    assert [{k: v for k, v in r.items() if not k.startswith("deft_")} for r in kept_two] == \
        [{k: v for k, v in r.items() if not k.startswith("deft_")} for r in kept_one]
    assert [r["deft_score"] for r in kept_two] == pytest.approx([r["deft_score"] for r in kept_one], abs=1e-6)
    report_one, report_two = (json.loads((d / "report.json").read_text()) for d in (one, two))
    for key in ("read", "unparseable", "degenerate", "scored", "kept"):
        assert report_two[key] == report_one[key]
    shards = list(cache_parts(two / "cache").values())
    assert len(shards) == WORLD and sorted(len(s) for s in shards) == [SCORED // 2] * 2
    assert shards[0].isdisjoint(shards[1]) and len(shards[0] | shards[1]) == SCORED
    assert rank_lines(sharded) == {0: (SCORED // 2, 0), 1: (SCORED // 2, 0)}  # one line per rank
    again = run(torchrun(*command, "--out", str(tmp_path / "two")), REPO, tmp_path / "again.log")
    assert rank_lines(again) == {0: (0, SCORED), 1: (0, SCORED)}  # every pair read from the cache


def hook_on_every_rank(out: str, prepared: Path) -> None:
    """Both ranks ran the datasets hook, scored half of the pairs each and kept the same rows
    for the same number of steps."""
    lines = [line for line in out.splitlines() if "DEFT:" in line and " kept -> " in line]
    assert len(lines) == WORLD, out[-4000:]
    summaries = {line[line.index("DEFT:"):line.index("(cache")] for line in lines}
    assert summaries == {f"DEFT: {HH_PAIRS} rows read, 0 unparseable, {HH_PAIRS - SCORED} degenerate, {SCORED} scored, "
                         f"{KEPT} kept -> {-(-KEPT // (2 * WORLD))} steps "}  # micro batch 2 on each of 2 ranks
    cache = next(d for d in (prepared / "deft").iterdir() if d.is_dir())
    shards = list(cache_parts(cache).values())
    assert len(shards) == WORLD and sorted(len(s) for s in shards) == [SCORED // 2] * 2
    assert shards[0].isdisjoint(shards[1])
    assert rank_lines(out) == {0: (SCORED // 2, 0), 1: (SCORED // 2, 0)}


def test_torchrun_axolotl_train_ddp_shards_the_scoring(tmp_path, sharp_model_dir, hh_file):
    """Plain DDP (no DeepSpeed), where Axolotl makes its process group only after the datasets
    hook: the plugin makes it there. On a machine without a GPU the run then stops where
    Axolotl loads the model, because its DDP set-up pins the model to `cuda:LOCAL_RANK`
    (normalize_config sets device_map to {"": LOCAL_RANK}) and this test checks exactly that
    stop; with GPUs training goes on."""
    from test_axolotl_e2e import write_config

    config = write_config(tmp_path, sharp_model_dir, hh_file, deft_score_batch_size=4)
    out = run(torchrun(str(CPU_LAUNCH), "axolotl.cli.train", str(config)), tmp_path, tmp_path / "train.log",
              check=False)
    hook_on_every_rank(out, tmp_path / "prepared")
    selection = json.loads((tmp_path / "out" / "deft_selection.json").read_text())
    assert len(selection["kept"]) == KEPT
    import torch

    if not torch.cuda.is_available():
        errors = {line.split("]: ", 1)[-1] for line in out.splitlines() if "Error:" in line and "[rank" in line}
        assert len(errors) == 1 and errors <= NO_DEVICE, errors
        assert "_load_model_from_pretrained" in out


def test_torchrun_axolotl_preprocess_scores_on_every_rank(tmp_path, sharp_model_dir, hh_file):
    """`axolotl preprocess` under torchrun: the scoring job on all of a node's devices, its
    cache read by a later `axolotl train`."""
    from test_axolotl_e2e import write_config

    config = write_config(tmp_path, sharp_model_dir, hh_file, deft_score_batch_size=4)
    out = run(torchrun(str(CPU_LAUNCH), "axolotl.cli.preprocess", str(config)), tmp_path,
              tmp_path / "preprocess.log")
    hook_on_every_rank(out, tmp_path / "prepared")
