"""The README's main job, `deft demo`, at a small size on the real SmolLM2-135M-Instruct."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from builders import REPO

STEPS = 3  # the DPO run's --steps: more than one epoch over its 4 kept pairs (2 steps)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpo", "pro"])
def test_demo_small(tmp_path, method):
    """DPO: from the repository with the default model, as `make demo` runs. PRO: from another
    folder with a relative --run-dir (the model given as a path)."""
    run_dir = tmp_path / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    args = ["--pairs", "16", "--heldout", "8", "--ratio", "0.25", "--sequence-len", "256", "--method", method]
    if method == "dpo":  # --steps past one epoch over the kept pairs: the trainer runs them all
        args += ["--run-dir", str(run_dir), "--steps", str(STEPS)]
        cwd = REPO
    else:
        from deft_plugin.cli.smollm2 import ensure_smollm2

        args += ["--run-dir", "demo", "--model", str(ensure_smollm2(REPO / ".cache" / "smollm2-135m-instruct"))]
        cwd = tmp_path
    proc = subprocess.run([sys.executable, "-m", "deft_plugin.cli", "demo", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"DEFT demo summary (DEFT-{method.upper()})" in proc.stdout
    report = json.loads((run_dir / "report.json").read_text())
    pairs = report["pairs"]
    assert pairs["sampled"] == 16
    assert pairs["scored"] + pairs["degenerate"] + pairs["unparseable"] == 16
    assert pairs["kept"] == math.ceil(0.25 * pairs["scored"])
    assert pairs["not_kept"] == pairs["scored"] - pairs["kept"]
    assert sum(pairs["degenerate_reasons"].values()) == pairs["degenerate"]
    # the printed counts are the report's, and the reasons are printed
    reasons = "".join(f"; {n} {reason}" for reason, n in pairs["degenerate_reasons"].items())
    assert (f"pairs: 16 sampled = {pairs['unparseable']} unparseable + {pairs['degenerate']} degenerate{reasons} + "
            f"{pairs['scored']} scored; of the scored, {pairs['kept']} kept and {pairs['not_kept']} not kept"
            in proc.stdout)
    rejected = Path(report["rejected_file"]).read_text().splitlines()
    assert len(rejected) == pairs["unparseable"] + pairs["degenerate"]
    sides = report["kept_vs_dropped"]  # what the filter chose, against the scored pairs it did not keep
    assert sides["kept"]["pairs"] == pairs["kept"] and sides["dropped"]["pairs"] == pairs["not_kept"]
    assert f"not kept: {pairs['not_kept']} pairs" in proc.stdout
    assert sides["kept"]["score"] > sides["dropped"]["score"]
    assert "what DEFT kept, against the scored pairs it did not keep" in proc.stdout
    assert "docs/study/README.md" in proc.stdout
    training = report["training"]
    # the steps announced (the plugin's line in the training log) are the steps run
    announced = re.search(r"kept -> (\d+) steps", (run_dir / "train.log").read_text())
    assert announced and int(announced.group(1)) == training["steps"]
    assert training["steps"] == (STEPS if method == "dpo" else math.ceil(pairs["kept"] / 2))
    assert all(math.isfinite(x) for x in training["loss"] + training["deft_term"])
    config = (run_dir / "axolotl.yaml").read_text()
    if method == "pro":  # PRO on the causal trainer: its own losses logged, no rl key
        assert "deft_method: pro" in config and "rl:" not in config
        assert all(math.isfinite(x) and x > 0 for x in training["pro_rank_loss"] + training["pro_sft_loss"])
        assert "(rank " in proc.stdout
    else:
        assert "rl: dpo" in config and "pro_rank_loss" not in training
    for key in ("heldout_before", "axolotl_train", "heldout_after"):
        assert report["seconds"][key] > 0
    before, after = report["heldout_preference_accuracy"]["before"], report["heldout_preference_accuracy"]["after"]
    assert before["pairs"] == after["pairs"] > 0
    assert before["held_out"] == 8 == before["pairs"] + sum(before["left_out"].values())
    assert f"held-out preference accuracy ({before['pairs']} of 8 pairs" in proc.stdout
    assert 0 <= before["accuracy"] <= 1 and 0 <= after["accuracy"] <= 1
    assert before["mean_margin"] != after["mean_margin"]  # the trained model differs from the start
    for png in report["plots"].values():
        assert Path(png).read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / "model" / "deft_metrics.jsonl").is_file()


def test_the_readme_demo_lines_are_accepted_as_written():
    """The README's `make demo DEMO_ARGS=...` lines: every flag is the demo's, every value passes its
    checks, and the project's split of the default data has room for the pairs asked (the run itself
    is test_demo_small's, at a smaller size)."""
    import argparse
    import shlex

    from deft_plugin.cli.demo import add_demo_args, check_args, sample_rows
    from deft_plugin.data.sources import load_rows
    from deft_plugin.launch.defaults import default_data

    readme = (REPO / "README.md").read_text()
    lines = re.findall(r'^make demo DEMO_ARGS="([^"]*)"', readme, flags=re.M)
    assert len(lines) == 2
    parser = argparse.ArgumentParser()
    add_demo_args(parser)
    raw = list(load_rows(default_data()))
    for line in lines:
        args = parser.parse_args(shlex.split(line))
        check_args(args)
        train, held = sample_rows(raw, args.pairs, args.heldout, args.seed)
        assert (len(train), len(held)) == (args.pairs, args.heldout)
    assert parser.parse_args(shlex.split(lines[1])).method == "pro"
