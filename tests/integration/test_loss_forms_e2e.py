"""The saturating loss forms through Axolotl: the scoring pass's starting rewards ride in the
dataset and in every batch (DPO: beside TRL's columns, through the DEFT trainer's collator; PRO:
through the listwise collator), the trainer's loss is the form's, and at the start (policy =
starting model) both forms sit where their formulas put them: margin at DPO's ln 2, anchored at
ln 2 + lambda ln 2."""

from __future__ import annotations

import math

import pytest
import torch

from deft_plugin.core.losses import deft_dpo_objective
from deft_plugin.filtering.pipeline import best_and_rest, gap_spread
from deft_plugin.integration.scoring_reference import START_REWARD_COLUMNS

import test_dpo_trainer
from builders import listwise_rows, loss_changed, write_jsonl
from test_dpo_trainer import WEIGHT, build_trainer, deft_dataset_meta, load

# the DEFT-DPO trainer tests' sharpened tiny model and config, shared
sharp_model_dir, base_cfg = test_dpo_trainer.sharp_model_dir, test_dpo_trainer.base_cfg

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["margin", "anchored"])
def dpo(request, base_cfg):
    cfg = load({**base_cfg, "deft_loss_form": request.param})
    meta = deft_dataset_meta(cfg)
    trainer = build_trainer(cfg, meta)
    batch = next(iter(trainer.get_train_dataloader()))
    return {"form": request.param, "trainer": trainer, "meta": meta, "batch": batch}


def test_dpo_batches_carry_the_starting_rewards(dpo):
    from axolotl.integrations.base import PluginManager

    plugin = next(p for p in PluginManager.get_instance().plugins.values() if hasattr(p, "filter_result"))
    result = plugin.filter_result
    assert set(START_REWARD_COLUMNS) <= set(dpo["meta"].train_dataset.column_names)
    expected = sorted(best_and_rest(result.start_rewards[i]) for i in result.kept)
    found = sorted(zip(*(dpo["meta"].train_dataset[c] for c in START_REWARD_COLUMNS)))
    assert [v for pair in found for v in pair] == pytest.approx([v for pair in expected for v in pair], abs=1e-7)
    batch = dpo["batch"]
    assert batch[START_REWARD_COLUMNS[0]].shape == batch["ref_chosen_logps"].shape
    trainer = dpo["trainer"]
    assert trainer.deft_loss.form == dpo["form"] and trainer.deft_loss.reward_scale == pytest.approx(
        gap_spread(result.rewards))


def test_dpo_loss_at_the_start_is_where_the_form_puts_it(dpo):
    trainer, batch = dpo["trainer"], dpo["batch"]
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch)).item()
    metrics = trainer._metrics["train"]
    assert abs(metrics["deft/reward_chosen"][-1]) > 1e-3  # the rewards are not trivially 0
    if dpo["form"] == "margin":  # the gap has not moved: DPO's own ln 2
        assert loss == pytest.approx(math.log(2), abs=1e-4) and abs(metrics["deft/term"][-1]) < 1e-5
    else:  # -log sigmoid(0) = ln 2 per pair, added with lambda
        assert metrics["deft/term"][-1] == pytest.approx(-math.log(2), abs=1e-4)
        assert loss == pytest.approx(math.log(2) * (1 + WEIGHT), abs=1e-4)


def test_dpo_loss_after_a_step_is_the_forms_formula(dpo):
    """One optimizer step moves the policy; the trainer's loss then equals the form's formula on
    the batch's own rewards, log-ratios and starting rewards."""
    trainer, batch = dpo["trainer"], dict(dpo["batch"])
    trainer.create_optimizer()
    for group in trainer.optimizer.param_groups:
        group["lr"] = 3e-4  # a step that moves the rewards' gap past float noise, short of separating the pairs
    trainer.model.zero_grad()
    trainer.compute_loss(trainer.model, dict(batch)).backward()
    trainer.optimizer.step()
    with torch.no_grad(), loss_changed(trainer, reward_weight=20.0):  # a weight at which the term shows
        loss = trainer.compute_loss(trainer.model, dict(batch))
        policy = trainer._head_pass(trainer.model, batch, trainer.deft_loss.qn)
        settings = trainer.deft_loss
    chosen, rejected = policy.logps.chunk(2)
    rc, rr = policy.rewards.chunk(2)
    expected = deft_dpo_objective(chosen - batch["ref_chosen_logps"], rejected - batch["ref_rejected_logps"], rc, rr,
                                  settings, trainer.args.beta,
                                  start=tuple(batch[c] for c in START_REWARD_COLUMNS))
    assert loss.item() == pytest.approx(expected.loss.item(), abs=1e-6)
    assert abs(expected.term.item()) > 1e-4 and abs(expected.loss.item() - expected.preference.item()) > 5e-4


def test_pro_batches_carry_the_starting_rewards_and_margin_starts_at_pro(sharp_model_dir, tmp_path):
    from axolotl.integrations.base import PluginManager
    from axolotl.train import setup_model_and_trainer

    data = write_jsonl(tmp_path / "ranked.jsonl", listwise_rows(24))
    cfg = load({"base_model": str(sharp_model_dir), "plugins": ["deft_plugin.DEFTPlugin"], "deft_method": "pro",
                "datasets": [{"path": str(data), "type": "deft.listwise"}], "deft_filter_count": 4,
                "deft_loss_form": "margin", "deft_reward_weight": WEIGHT, "sequence_len": 256, "micro_batch_size": 4,
                "num_epochs": 1, "learning_rate": 1e-4, "optimizer": "adamw_torch", "output_dir": str(tmp_path / "o"),
                "dataset_prepared_path": str(tmp_path / "p"), "sample_packing": False, "bf16": False, "fp32": True,
                "device_map": "cpu", "special_tokens": {"pad_token": "<pad>"}, "save_strategy": "no"})
    meta = PluginManager.get_instance().load_datasets(cfg, preprocess=False)
    assert "start_rewards" in meta.train_dataset.column_names
    trainer = setup_model_and_trainer(cfg, meta)[0]
    trainer.model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    sizes = batch["group_sizes"]
    assert batch["start_rewards"].shape == (len(sizes), int(sizes.max()))
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
        with loss_changed(trainer, reward_weight=0.0):
            plain = trainer.compute_loss(trainer.model, dict(batch))
    # at the start the candidates' R has not moved: the gap's move is float noise, the loss PRO's own (its
    # summed-NLL term is in the hundreds, and the CPU's parallel sums differ in their last bits run to run)
    assert abs(trainer._deft_metrics["train"]["deft/term"][-1]) < 1e-6
    assert loss.item() == pytest.approx(plain.item(), rel=1e-5)
