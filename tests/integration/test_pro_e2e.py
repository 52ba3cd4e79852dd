"""DEFT-PRO end to end through `axolotl train` (Axolotl's causal trainer path, no `rl:`) on the
tiny Llama: HH-RLHF pairs (n = 2) with a full fine-tune, and ranked lists (n = 3; ragged
n = 2..4 with reward scores, LoRA and an evaluation split)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from builders import HH_PAIRS, KEPT, SCORED, listwise_rows, write_jsonl
from test_axolotl_e2e import MICRO_BATCH, axolotl, deft_cache, snapshot, write_config

pytestmark = pytest.mark.slow


def pro_config(tmp_path, model_dir, data, data_type, **extra):
    config = write_config(tmp_path, model_dir, data, deft_method="pro", sample_packing=False, **extra)
    text = config.read_text().replace("rl: dpo\n", "").replace("type: deft.hh_rlhf", f"type: {data_type}")
    config.write_text(text)
    return config


def logged_steps(out) -> tuple[dict, list[dict]]:
    checkpoint = next(out.glob("checkpoint-*"))
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return state, [h for h in state["log_history"] if "loss" in h]


def check_metrics(steps: list[dict]) -> None:
    for h in steps:
        for key in ("pro/rank_loss", "pro/sft_loss", "deft/reward_chosen", "deft/reward_rejected", "deft/term"):
            assert math.isfinite(h[key]), (key, h)
        # Axolotl rounds its stored metrics to 5 decimals
        assert h["deft/term"] == pytest.approx(h["deft/reward_chosen"] - h["deft/reward_rejected"], abs=2e-5)
        assert h["pro/sft_loss"] > 0
        assert h["pro/loss"] == pytest.approx(h["pro/rank_loss"] + h["pro/sft_loss"], abs=2e-5)


def test_pro_on_hh_rlhf_pairs(tmp_path, tiny_model_dir, hh_file):
    start = snapshot(tiny_model_dir)
    log = axolotl("train", pro_config(tmp_path, tiny_model_dir, hh_file, "deft.hh_rlhf", deft_guard_answers_every=2))
    assert "DEFT scoring" in log and "loss term attached to DeftPROTrainer" in log and "Traceback" not in log
    assert "DEFT guard: greedy answers to 8 prompts (rows the filter left out) every 2 steps" in log

    report = json.loads((deft_cache(tmp_path) / "report.json").read_text())
    assert (report["read"], report["scored"], report["kept"]) == (HH_PAIRS, SCORED, KEPT)  # the DPO run's numbers
    state, steps = logged_steps(tmp_path / "out")
    assert state["global_step"] == state["max_steps"] == math.ceil(KEPT / MICRO_BATCH)
    assert [h["step"] for h in steps] == list(range(1, state["max_steps"] + 1))
    check_metrics(steps)
    checked = [h["step"] for h in steps if "deft/guard_answer_distinct_words" in h]
    assert checked == list(range(2, state["max_steps"] + 1, 2))  # the generation check runs in PRO too
    # n = 2, tau = 1: loss_1 = log(1 + exp(s2 - s1)), near ln 2 for a random model
    assert steps[0]["pro/rank_loss"] == pytest.approx(math.log(2), abs=0.05)
    # PRO's SFT term: 0.05 * (2-1)^2 * summed NLL of the chosen reply, and the total
    for h in steps:
        assert h["loss"] == pytest.approx(h["pro/rank_loss"] + h["pro/sft_loss"] - 0.5 * h["deft/term"], rel=1e-3)

    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(tmp_path / "out" / "model.safetensors")
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert len(changed) >= len(before) - 1 and all(torch.isfinite(t).all() for t in after.values())
    assert snapshot(tiny_model_dir) == start


def test_pro_on_ranked_lists_of_three_starts_near_ln3_plus_ln2(tmp_path, tiny_model_dir):
    rows = [{**r, "responses": r["responses"][:3]} for r in listwise_rows(64, with_rewards_every=0)
            if len(r["responses"]) >= 3]
    data = write_jsonl(tmp_path / "ranked.jsonl", rows)
    axolotl("train", pro_config(tmp_path, tiny_model_dir, data, "deft.listwise", deft_filter_ratio=None,
                                deft_filter_count=8, learning_rate=1e-5))
    report = json.loads((deft_cache(tmp_path) / "report.json").read_text())
    assert report["read"] == 48 and report["kept"] == 8
    state, steps = logged_steps(tmp_path / "out")
    assert state["global_step"] == 4
    check_metrics(steps)
    # tau = 1 and near-equal scores at initialisation: sum_k ln(n - k + 1) = ln 3 + ln 2
    assert steps[0]["pro/rank_loss"] == pytest.approx(math.log(3) + math.log(2), abs=0.05)
    # SFT weight 0.05 * (3-1)^2 = 0.2 on the summed NLL: about 0.2 * ln(vocab) per reply token
    assert steps[0]["pro/sft_loss"] > 0.2 * 5


def test_pro_ragged_lists_with_rewards_lora_and_eval(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "ranked.jsonl", listwise_rows(64) + [{"prompt": "Hi", "responses": ["Hello"]}])
    config = pro_config(tmp_path, tiny_model_dir, data, "deft.listwise", adapter="lora", lora_r=8, lora_alpha=16,
                        lora_target_linear=True, val_set_size=0.125, evals_per_epoch=2,
                        # on the causal path Axolotl turns on its Triton LoRA kernels, which need a GPU
                        lora_mlp_kernel=False, lora_qkv_kernel=False, lora_o_kernel=False,
                        lora_embedding_kernel=False)
    log = axolotl("preprocess", config)
    report = json.loads((deft_cache(tmp_path) / "report.json").read_text())
    # the one-response row is counted (with its reason), never dropped silently
    assert report["read"] == 65 and report["unparseable"] == 1
    assert report["unparseable_reasons"] == {"fewer than 2 responses (1); a ranking needs n >= 2": 1}
    assert "ranked.jsonl:65: " in report["unparseable_examples"][0]  # its file and 1-based line
    log = axolotl("train", config)
    assert "DEFT scoring" not in log  # cached by preprocess
    rejected = [json.loads(line) for line in (tmp_path / "out" / "deft_rejected.jsonl").read_text().splitlines()]
    assert rejected[0] == {"where": f"{data}:65", "stage": "unparseable",
                           "reason": "fewer than 2 responses (1); a ranking needs n >= 2"}
    degenerate = rejected[1:1 + report["degenerate"]]  # the training rows left out, each by its own line of the file
    assert {r["stage"] for r in degenerate} == {"degenerate"}
    assert {r["stage"] for r in rejected[1 + report["degenerate"]:]} <= {"evaluation_degenerate"}  # then eval rows
    assert all(r["where"].startswith(f"{data}:") and r["where"] != f"{data}:65" for r in rejected[1:])
    state, steps = logged_steps(tmp_path / "out")
    check_metrics(steps)
    assert state["global_step"] == math.ceil(report["kept"] / MICRO_BATCH)
    evals = [h for h in state["log_history"] if "eval_loss" in h]
    assert evals and math.isfinite(evals[-1]["eval_loss"])
    for h in evals:  # evaluation at the start, half way and at the end, with the PRO and DEFT metrics
        assert math.isfinite(h["eval_pro/rank_loss"]) and math.isfinite(h["eval_deft/term"])
        assert h["eval_loss"] == pytest.approx(h["eval_pro/rank_loss"] + h["eval_pro/sft_loss"]
                                               - 0.5 * h["eval_deft/term"], rel=1e-4)
    assert len(evals) == 3
    adapter = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert all(t.abs().max() > 0 for n, t in adapter.items() if "lora_B" in n)
