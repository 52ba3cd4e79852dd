"""End to end through Axolotl's own command line: `axolotl train` / `axolotl preprocess`
on the tiny Llama and 64 real HH-RLHF pairs, full fine-tune and LoRA, each run a separate
process (about 25 s each on two CPU cores)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from builders import HH_PAIRS, KEPT, RATIO, SCORED, SEQUENCE_LEN

pytestmark = pytest.mark.slow

AXOLOTL = Path(sys.executable).with_name("axolotl")
MICRO_BATCH = 2
RUN_TIMEOUT_S = 300


def write_config(tmp_path: Path, model_dir: Path, hh_file: Path, **extra) -> Path:
    cfg = {
        "base_model": str(model_dir),
        "plugins": ["deft_plugin.DEFTPlugin"],
        "rl": "dpo",
        "datasets": [{"path": str(hh_file), "type": "deft.hh_rlhf"}],
        "deft_filter_ratio": RATIO,
        "deft_reward_weight": 0.5,
        "deft_loss_form": "pair",  # the linear term, whose arithmetic the logs are checked against
        "sequence_len": SEQUENCE_LEN,
        "micro_batch_size": MICRO_BATCH,
        "gradient_accumulation_steps": 1,
        "num_epochs": 1,
        "learning_rate": 0.0001,
        "optimizer": "adamw_torch",
        "lr_scheduler": "constant",
        "output_dir": str(tmp_path / "out"),
        "dataset_prepared_path": str(tmp_path / "prepared"),
        "logging_steps": 1,
        # "steps" with a large interval: one checkpoint (with trainer_state.json) at the end
        "save_strategy": "steps",
        "save_steps": 1000,
        "bf16": False,
        "fp32": True,
        "device_map": "cpu",
        "special_tokens": {"pad_token": "<pad>"},
        **extra,
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def axolotl(command: str, config: Path) -> str:
    """Run `axolotl <command> cfg.yaml` in the config's directory; return its output."""
    args = [str(AXOLOTL), command, str(config)] + (["--launcher", "python"] if command == "train" else [])
    env = {k: v for k, v in os.environ.items()
           if k not in {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", AXOLOTL_DO_NOT_TRACK="1", WANDB_MODE="disabled",
               TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(args, cwd=config.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=RUN_TIMEOUT_S)
    (config.parent / f"{command}.log").write_text(proc.stdout)
    assert proc.returncode == 0, f"axolotl {command} failed ({proc.returncode}):\n{proc.stdout[-6000:]}"
    return proc.stdout


def deft_cache(tmp_path: Path) -> Path:
    dirs = [d for d in (tmp_path / "prepared" / "deft").iterdir() if d.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def check_report(cache: Path) -> dict:
    report = json.loads((cache / "report.json").read_text())
    assert report["rows"] == report["read"] == HH_PAIRS
    assert report["unparseable"] == 0
    assert report["degenerate"] + report["scored"] == HH_PAIRS
    assert report["degenerate"] == sum(report["degenerate_reasons"].values())
    assert report["truncated"] > 0  # replies cut to fit sequence_len (deft_truncation: keep_start), counted
    named = [n for names in report["degenerate_examples"].values() for n in names]
    assert named and all(n.startswith("/") and ".jsonl.gz:" in n for n in named)  # file and line
    assert report["scored"] == SCORED
    assert report["kept"] == math.ceil(RATIO * report["scored"]) == KEPT
    lines = [json.loads(line) for line in (cache / "scores.jsonl").read_text().splitlines()]
    assert len(lines) == report["scored"] and sum(r["kept"] for r in lines) == report["kept"]
    return report


def check_training(out: Path, kept: int, weight: float = 0.5) -> dict:
    """One checkpoint, at the last step; ceil(kept / micro_batch) steps in one epoch; the
    DEFT metrics logged at every step."""
    steps = math.ceil(kept / MICRO_BATCH)
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    assert checkpoints == [f"checkpoint-{steps}"]
    state = json.loads((out / checkpoints[0] / "trainer_state.json").read_text())
    assert state["global_step"] == state["max_steps"] == steps
    assert state["epoch"] == pytest.approx(1.0)
    logged = [h for h in state["log_history"] if "loss" in h]
    assert [h["step"] for h in logged] == list(range(1, steps + 1))
    for h in logged:
        for key in ("deft/reward_chosen", "deft/reward_rejected", "deft/term"):
            assert math.isfinite(h[key]), (key, h)
        assert h["deft/term"] == pytest.approx(h["deft/reward_chosen"] - h["deft/reward_rejected"], abs=1e-5)
        assert math.isfinite(h["loss"])
        # the logged loss is the plain DPO loss minus the weighted term (Axolotl rounds to 5 decimals)
        assert h["loss"] == pytest.approx(h["deft/dpo_loss"] - weight * h["deft/term"], abs=1e-4)
    return state


def check_log(log: str, scored: bool) -> None:
    assert "deft/reward_chosen" in log and "deft/term" in log
    assert "DEFT: loss term attached" in log
    assert ("DEFT scoring" in log) == scored
    assert "Traceback" not in log


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_train_full_finetune(tmp_path, tiny_model_dir, hh_file):
    start = snapshot(tiny_model_dir)
    config = write_config(tmp_path, tiny_model_dir, hh_file)
    log = axolotl("train", config)
    check_log(log, scored=True)

    cache = deft_cache(tmp_path)
    report = check_report(cache)
    assert {"parts", "qdiff.safetensors", "qdiff.json"} <= {p.name for p in cache.iterdir()}
    check_training(tmp_path / "out", report["kept"])
    # the run's own record of what it trained on, beside the model
    selection = json.loads((tmp_path / "out" / "deft_selection.json").read_text())
    lines = (cache / "scores.jsonl").read_text().splitlines()
    kept_in_cache = [r["index"] for r in map(json.loads, lines) if r["kept"]]
    assert selection["kept"] == kept_in_cache and selection["report"]["kept"] == KEPT
    # every row left out before scoring, named by file and line beside the run's record
    assert selection["report"]["rejected_file"] == "deft_rejected.jsonl"
    rejected = [json.loads(line) for line in (tmp_path / "out" / "deft_rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == report["degenerate"] == selection["report"]["rejected"]
    assert [r["where"] for r in rejected] == sorted((r["where"] for r in rejected),
                                                    key=lambda w: int(w.rsplit(":", 1)[1]))
    assert all(r["where"].startswith(str(hh_file) + ":") and r["stage"] == "degenerate" for r in rejected)
    assert {r["reason"] for r in rejected} == set(report["degenerate_reasons"])

    # the trained weights moved away from the starting ones, and stayed finite
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(tmp_path / "out" / "model.safetensors")
    assert set(after) == set(before)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert all(torch.isfinite(t).all() for t in after.values())
    assert "lm_head.weight" in changed and len(changed) >= len(before) - 1, sorted(set(before) - set(changed))
    assert max((after[n] - before[n]).abs().max().item() for n in changed) > 1e-5
    assert snapshot(tiny_model_dir) == start  # the starting model is untouched


def test_preprocess_then_train_lora_reuses_the_cache(tmp_path, tiny_model_dir, hh_file):
    config = write_config(tmp_path, tiny_model_dir, hh_file, adapter="lora", lora_r=8, lora_alpha=16,
                          lora_target_linear=True)
    log = axolotl("preprocess", config)
    assert "DEFT scoring" in log and "Traceback" not in log
    cache = deft_cache(tmp_path)
    report = check_report(cache)
    parts = snapshot(cache / "parts")
    assert parts
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()  # preprocess trains nothing

    log = axolotl("train", config)
    check_log(log, scored=False)  # everything was cached: no scoring in the training run
    assert deft_cache(tmp_path) == cache
    assert snapshot(cache / "parts") == parts
    assert check_report(cache)["kept"] == report["kept"]
    check_training(tmp_path / "out", report["kept"])

    adapter = load_file(tmp_path / "out" / "adapter_model.safetensors")
    config_json = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config_json["r"] == 8 and config_json["lora_alpha"] == 16
    b = {n: t for n, t in adapter.items() if "lora_B" in n}
    assert b and all(torch.isfinite(t).all() for t in adapter.values())
    # lora_B starts at zero: training moved every one of them
    assert all(t.abs().max().item() > 0 for t in b.values()), [n for n, t in b.items() if not t.abs().max() > 0]
    targets = {n.split(".lora_B")[0].rsplit(".", 1)[-1] for n in b}
    assert targets >= {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
