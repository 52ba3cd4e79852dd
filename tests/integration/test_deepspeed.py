"""DEFT-DPO trained under DeepSpeed ZeRO-3 and ZeRO-2 through the real command line, on two CPU
processes (gloo): `axolotl train` under torchrun and under `accelerate launch`, through
deepspeed_cpu_launch.py (which only tells accelerate that DeepSpeed's group is gloo where there is
no GPU). The DeepSpeed JSONs are the shipped ones with bf16 off (CPU). Each run is held against a
one-process run without DeepSpeed at the same global batch: the same per-step losses and the same
final weights, within float32 reduction-order noise."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_launchers import WORLD, cache_parts, free_port, run, torchrun

from builders import KEPT, REPO, SCORED
from test_axolotl_e2e import axolotl, write_config

pytestmark = pytest.mark.slow
LAUNCH = Path(__file__).with_name("deepspeed_cpu_launch.py")
ACCELERATE = Path(sys.executable).with_name("accelerate")
SHIPPED = {3: REPO / "configs" / "deepspeed" / "zero3_bf16.json", 2: REPO / "configs" / "deepspeed" / "zero2.json"}
WEIGHT = 0.5  # write_config's deft_reward_weight
STEPS = math.ceil(KEPT / WORLD)  # a global batch of 2: one pair per rank, or two in one process
LOSS_TOLERANCE = 5e-5  # ZeRO-2 measured 1.1e-5 at step 5, ZeRO-3 below 1e-5
WEIGHT_TOLERANCE = 1e-6  # measured 5.6e-7 (ZeRO-3) and 5.4e-7 (ZeRO-2)


def cpu_json(tmp_path: Path, stage: int) -> Path:
    """A shipped DeepSpeed JSON as a CPU run takes it: bf16 off (the YAML's bf16: false)."""
    raw = json.loads(SHIPPED[stage].read_text())
    raw["bf16"]["enabled"] = False
    path = tmp_path / f"zero{stage}_cpu.json"
    path.write_text(json.dumps(raw))
    return path


def train_config(tmp_path: Path, model_dir: Path, hh_file: Path, **extra) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return write_config(tmp_path, model_dir, hh_file, deft_score_batch_size=4, **extra)


def logged(out: Path) -> tuple[dict, list[dict]]:
    checkpoint = next(out.glob("checkpoint-*"))
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return state, [h for h in state["log_history"] if "loss" in h]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, sharp_model_dir, hh_file):
    """The same run in one process without DeepSpeed, two pairs a step."""
    tmp = tmp_path_factory.mktemp("one-process")
    axolotl("train", train_config(tmp, sharp_model_dir, hh_file, micro_batch_size=2))
    return logged(tmp / "out")[1], load_file(tmp / "out" / "model.safetensors")


def launch(launcher: str, config: Path) -> list[str]:
    script = [str(LAUNCH), "axolotl.cli.train", str(config), "--launcher", "python"]
    if launcher == "torchrun":
        return torchrun(*script)
    return [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(WORLD), "--num_machines", "1",
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
            "--dynamo_backend", "no", *script]


# each stage and each launcher once (the four pairs all passed when measured; CI time is kept for the rest)
@pytest.mark.parametrize("stage, launcher", [(3, "torchrun"), (2, "accelerate")])
def test_deepspeed_trains_as_one_process_does(tmp_path, sharp_model_dir, hh_file, one_process, stage, launcher):
    config = train_config(tmp_path, sharp_model_dir, hh_file, micro_batch_size=1,
                          deepspeed=str(cpu_json(tmp_path, stage)))
    out = run(launch(launcher, config), tmp_path, tmp_path / "train.log")
    assert "[RANK:1] DEFT: loss term attached to DeftDPOTrainer" in out
    # the scoring sharded across the two ranks, each scoring half of the pool
    cache = next(d for d in (tmp_path / "prepared" / "deft").iterdir() if d.is_dir())
    shards = list(cache_parts(cache).values())
    assert len(shards) == WORLD and shards[0].isdisjoint(shards[1]) and len(shards[0] | shards[1]) == SCORED
    state, steps = logged(tmp_path / "out")
    assert state["global_step"] == state["max_steps"] == len(steps) == STEPS
    for h in steps:  # the loss identity, as the trainer logged it (Axolotl rounds to 5 decimals)
        assert h["loss"] == pytest.approx(h["deft/dpo_loss"] - WEIGHT * h["deft/term"], abs=2e-5)
    # every rank wrote its own ZeRO state
    checkpoint = next((tmp_path / "out").glob("checkpoint-*"))
    states = sorted(p.name for p in checkpoint.glob("global_step*/*zero_pp_rank_*"))
    kind = "model_states" if stage == 3 else "optim_states"
    assert [name for name in states if kind in name and ("rank_0_" in name or "rank_1_" in name)], states
    assert {name.split("zero_pp_rank_")[1][0] for name in states} == {"0", "1"}
    # the saved model is whole (ZeRO-3 gathers the 16-bit weights on save) and equals one process's
    ref_steps, ref_weights = one_process
    saved = load_file(tmp_path / "out" / "model.safetensors")
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in ref_weights.items()}
    assert [h["loss"] for h in steps] == pytest.approx([h["loss"] for h in ref_steps], abs=LOSS_TOLERANCE)
    worst = max(float((saved[k].float() - ref_weights[k].float()).abs().max()) for k in saved)
    assert worst < WEIGHT_TOLERANCE, worst
    assert yaml.safe_load(config.read_text())["bf16"] is False and torch.float32 in {v.dtype for v in saved.values()}


def zero3(tmp_path, model_dir, hh_file, **extra) -> tuple[Path, str]:
    config = train_config(tmp_path, model_dir, hh_file, micro_batch_size=1, deepspeed=str(cpu_json(tmp_path, 3)),
                          **extra)
    return config, run(launch("torchrun", config), tmp_path, tmp_path / "train.log")


def test_deft_pro_under_zero3(tmp_path, sharp_model_dir, hh_file):
    config = train_config(tmp_path, sharp_model_dir, hh_file, micro_batch_size=1, deepspeed=str(cpu_json(tmp_path, 3)),
                          deft_method="pro", sample_packing=False)
    config.write_text(config.read_text().replace("rl: dpo\n", ""))  # PRO runs on Axolotl's causal trainer
    out = run(launch("torchrun", config), tmp_path, tmp_path / "train.log")
    assert "[RANK:1] DEFT: loss term attached to DeftPROTrainer" in out
    state, steps = logged(tmp_path / "out")
    assert state["global_step"] == len(steps) == STEPS
    for h in steps:
        assert h["loss"] == pytest.approx(h["pro/rank_loss"] + h["pro/sft_loss"] - WEIGHT * h["deft/term"], rel=1e-3)
    saved, start = load_file(tmp_path / "out" / "model.safetensors"), load_file(sharp_model_dir / "model.safetensors")
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in start.items()}  # whole, head included
    assert any(not torch.equal(saved[k], start[k]) for k in saved)


def test_lora_under_zero3(tmp_path, sharp_model_dir, hh_file):
    _, out = zero3(tmp_path, sharp_model_dir, hh_file, adapter="lora", lora_r=8, lora_alpha=16, lora_dropout=0.0,
                   lora_target_linear=True, lora_mlp_kernel=False, lora_qkv_kernel=False, lora_o_kernel=False)
    assert "DEFT: loss term attached" in out
    state, steps = logged(tmp_path / "out")
    assert state["global_step"] == STEPS
    adapter = load_file(tmp_path / "out" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.numel() > 0 for v in adapter.values()) and any(v.abs().sum() > 0 for v in lora_b)


def test_the_model_reference_under_zero3(tmp_path, sharp_model_dir, hh_file, one_process):
    _, out = zero3(tmp_path, sharp_model_dir, hh_file, deft_reference="model")
    assert "no reference model loaded" not in out
    _, steps = logged(tmp_path / "out")
    # TRL's reference model gives the same reference log-probabilities as the scoring pass did
    assert [h["loss"] for h in steps] == pytest.approx([h["loss"] for h in one_process[0]], abs=1e-4)


def test_resuming_from_a_zero3_checkpoint(tmp_path, sharp_model_dir, hh_file, one_process):
    config, _ = zero3(tmp_path, sharp_model_dir, hh_file, save_steps=3)
    assert (tmp_path / "out" / "checkpoint-3").is_dir()
    (tmp_path / "out" / "model.safetensors").unlink()
    for later in (tmp_path / "out").glob("checkpoint-*"):
        if later.name != "checkpoint-3":
            shutil.rmtree(later)
    resumed = config.read_text() + f"resume_from_checkpoint: {tmp_path / 'out' / 'checkpoint-3'}\n"
    config.write_text(resumed)
    out = run(launch("torchrun", config), tmp_path, tmp_path / "resume.log")
    assert "DEFT: loss term attached" in out
    state = json.loads(next((tmp_path / "out").glob(f"checkpoint-{STEPS}")).joinpath("trainer_state.json")
                       .read_text())
    steps = [h for h in state["log_history"] if "loss" in h]
    assert [h["step"] for h in steps] == list(range(1, STEPS + 1))
    assert [h["loss"] for h in steps] == pytest.approx([h["loss"] for h in one_process[0]], abs=LOSS_TOLERANCE)
    saved, reference = load_file(tmp_path / "out" / "model.safetensors"), one_process[1]
    assert max(float((saved[k] - reference[k]).abs().max()) for k in saved) < WEIGHT_TOLERANCE


def test_a_process_count_accelerate_does_not_share_is_named(tmp_path, sharp_model_dir, hh_file):
    """Without the launch-side answer (plain cpu_launch.py), accelerate on a machine without a GPU
    counts one process while DeepSpeed's group has two: one line naming both numbers, before
    DeepSpeed's batch assertion."""
    if torch.cuda.is_available():
        pytest.skip("with a GPU accelerate takes the launch's backend: there is no disagreement to name")
    config = train_config(tmp_path, sharp_model_dir, hh_file, micro_batch_size=1, deepspeed=str(cpu_json(tmp_path, 3)))
    out = run(torchrun(str(Path(__file__).with_name("cpu_launch.py")), "axolotl.cli.train", str(config),
                       "--launcher", "python"), tmp_path, tmp_path / "train.log", check=False)
    assert "DeepSpeed: accelerate counts 1 process(es) but the process group has 2" in out
    assert "Check batch related parameters" not in out  # named before DeepSpeed's own batch assertion
