"""The DEFT-DPO loss on trainers built by Axolotl itself (load_cfg -> plugin load_datasets ->
setup_model_and_trainer, whose post_trainer_create attaches the DEFT term), against plain
Axolotl/TRL DPO built from the same config without the plugin, on the same collated batch.

The reference DEFT term is computed independently: a separate forward of the policy,
naive_distribution_reward over the positions that predict non-special completion tokens."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from deft_plugin.integration.dpo_trainer import DeftDPOLossMixin, attach_deft_loss

from builders import KEPT, RATIO, SEQUENCE_LEN, sharpened
from reference import naive_distribution_reward

WEIGHT = 0.5
LORA = {"adapter": "lora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "lora_target_linear": True}


@pytest.fixture(scope="module")
def sharp_model_dir(tiny_model, tiny_tokenizer, tmp_path_factory):
    """The tiny model with its LM head scaled up: next-token distributions far from uniform,
    so the DEFT term is of order 0.01-0.1 rather than 1e-4."""
    d = tmp_path_factory.mktemp("sharp-llama-trainer")
    sharpened(tiny_model, 30.0).save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def base_cfg(sharp_model_dir, hh_file, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trainer-cfg")
    return {
        "base_model": str(sharp_model_dir), "plugins": ["deft_plugin.DEFTPlugin"], "rl": "dpo",
        "datasets": [{"path": str(hh_file), "type": "deft.hh_rlhf"}],
        "deft_filter_ratio": RATIO, "deft_reward_weight": WEIGHT,
        "sequence_len": SEQUENCE_LEN, "micro_batch_size": 2, "gradient_accumulation_steps": 1, "num_epochs": 1,
        "learning_rate": 1e-4, "optimizer": "adamw_torch", "lr_scheduler": "constant",
        "output_dir": str(tmp / "out"), "dataset_prepared_path": str(tmp / "prepared"),
        "logging_steps": 1, "save_strategy": "no", "bf16": False, "fp32": True, "device_map": "cpu",
        "special_tokens": {"pad_token": "<pad>"}, "seed": 7,
    }


def without_plugin(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k != "plugins" and not k.startswith("deft_")}


def load(cfg: dict):
    from axolotl.cli.config import load_cfg
    from axolotl.utils.dict import DictDefault

    return load_cfg(DictDefault(copy.deepcopy(cfg)))


def deft_dataset_meta(cfg):
    from axolotl.integrations.base import PluginManager

    meta = PluginManager.get_instance().load_datasets(cfg, preprocess=False)
    assert meta is not None, "the DEFT plugin's load_datasets returned nothing"
    return meta


def build_trainer(cfg, meta):
    from axolotl.train import setup_model_and_trainer

    trainer = setup_model_and_trainer(cfg, meta)[0]
    trainer.model.train()  # metrics go to _metrics["train"]; the tiny Llama has no dropout
    return trainer


def prediction_mask(batch, special_ids) -> torch.Tensor:
    ids, completion = batch["input_ids"], batch["completion_mask"]
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, :-1] = completion[:, 1:].bool() & ~torch.isin(ids[:, 1:], torch.tensor(sorted(special_ids)))
    return mask


def naive_rewards(model, batch, qn, special_ids):
    """(R chosen [B], R rejected [B]) from a separate forward, with autograd."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return naive_distribution_reward(logits.float(), qn, prediction_mask(batch, special_ids)).chunk(2)


@pytest.fixture(scope="module")
def full_ft(base_cfg, tiny_tokenizer):
    cfg = load(base_cfg)
    meta = deft_dataset_meta(cfg)
    deft = build_trainer(cfg, meta)
    plain = build_trainer(load(without_plugin(base_cfg)), meta)
    batch = next(iter(deft.get_train_dataloader()))
    return {"deft": deft, "plain": plain, "batch": batch, "meta": meta, "special": set(tiny_tokenizer.all_special_ids)}


def test_plugin_built_the_deft_trainer(full_ft):
    from axolotl.core.trainers.dpo.trainer import AxolotlDPOTrainer

    deft, plain = full_ft["deft"], full_ft["plain"]
    assert isinstance(deft, DeftDPOLossMixin) and isinstance(deft, AxolotlDPOTrainer)
    assert not isinstance(plain, DeftDPOLossMixin) and isinstance(plain, AxolotlDPOTrainer)
    assert deft.deft_reward_weight == WEIGHT and deft.deft_loss_form == "pair"
    assert deft.ref_model is not None  # full fine-tune: a separate reference model
    assert len(full_ft["meta"].train_dataset) == KEPT and full_ft["meta"].total_num_steps == KEPT // 2
    batch = full_ft["batch"]
    assert batch["input_ids"].shape[0] == 4  # [chosen; rejected] of micro_batch_size 2
    assert set(batch) >= {"input_ids", "attention_mask", "completion_mask"}


def test_weight_zero_equals_plain_dpo_exactly(full_ft):
    deft, plain, batch = full_ft["deft"], full_ft["plain"], full_ft["batch"]
    with torch.no_grad():
        plain_loss = plain.compute_loss(plain.model, dict(batch))
        deft.configure_deft(deft.deft_qn, 0.0, "pair", deft.deft_special_ids)
        try:
            deft_loss = deft.compute_loss(deft.model, dict(batch))
        finally:
            deft.configure_deft(deft.deft_qn, WEIGHT, "pair", deft.deft_special_ids)
    assert torch.equal(deft_loss, plain_loss)
    assert plain_loss.item() == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at the start


@pytest.mark.parametrize("form", ["pair", "chosen"])
def test_weighted_loss_is_dpo_minus_weighted_reward_term(full_ft, form):
    deft, plain, batch, special = full_ft["deft"], full_ft["plain"], full_ft["batch"], full_ft["special"]
    deft.configure_deft(deft.deft_qn, WEIGHT, form, deft.deft_special_ids)
    try:
        with torch.no_grad():
            plain_loss = plain.compute_loss(plain.model, dict(batch))
            loss = deft.compute_loss(deft.model, dict(batch))
            r_c, r_r = naive_rewards(deft.model, batch, deft.deft_qn, special)
    finally:
        deft.configure_deft(deft.deft_qn, WEIGHT, "pair", deft.deft_special_ids)
    term = (r_c - r_r).mean() if form == "pair" else r_c.mean()
    assert abs(term.item()) > 1e-3  # the term is not negligible next to the tolerance below
    assert loss.item() == pytest.approx(plain_loss.item() - WEIGHT * term.item(), abs=1e-6)

    metrics = deft._metrics["train"]
    assert metrics["deft/reward_chosen"][-1] == pytest.approx(r_c.mean().item(), abs=1e-6)
    assert metrics["deft/reward_rejected"][-1] == pytest.approx(r_r.mean().item(), abs=1e-6)
    assert metrics["deft/term"][-1] == pytest.approx(term.item(), abs=1e-6)
    assert metrics["deft/dpo_loss"][-1] == pytest.approx(plain_loss.item(), abs=1e-6)  # the plain run's loss
    assert {"rewards/margins", "logps/chosen"} <= set(metrics)  # TRL's own DPO metrics are still there


def test_trainer_rewards_at_start_equal_the_filter_scores(full_ft):
    """At step 0 the policy is theta0, so the rewards of the batch's rows equal the rewards
    the filter computed for those pairs: the filter scored the sequences that are trained on."""
    from axolotl.integrations.base import PluginManager

    plugin = next(p for p in PluginManager.get_instance().plugins.values() if hasattr(p, "filter_result"))
    kept_rewards = [plugin.filter_result.rewards[i] for i in plugin.filter_result.kept]
    deft, batch = full_ft["deft"], full_ft["batch"]
    with torch.no_grad():
        r_c, r_r = naive_rewards(deft.model, batch, deft.deft_qn, full_ft["special"])
    for rc, rr in zip(r_c.tolist(), r_r.tolist()):
        matches = [k for k in kept_rewards if abs(k[0] - rc) < 1e-5 and abs(k[1] - rr) < 1e-5]
        assert len(matches) == 1, (rc, rr, kept_rewards)


def _grads(model, names):
    params = dict(model.named_parameters())
    return {n: params[n].grad.detach().clone() for n in names}


def test_gradient_of_the_deft_term(full_ft):
    """backward through the DEFT loss differs from weight 0 by exactly the gradient of
    -weight * term (computed with autograd through the naive full softmax), in the LM head
    and deep in the decoder."""
    deft, batch, special = full_ft["deft"], full_ft["batch"], full_ft["special"]
    model = deft.model
    names = ["lm_head.weight", "model.layers.0.mlp.down_proj.weight", "model.embed_tokens.weight"]
    grads = {}
    try:
        for weight in (0.0, WEIGHT):
            deft.configure_deft(deft.deft_qn, weight, "pair", deft.deft_special_ids)
            model.zero_grad(set_to_none=True)
            deft.compute_loss(model, dict(batch)).backward()
            grads[weight] = _grads(model, names)
        model.zero_grad(set_to_none=True)
        r_c, r_r = naive_rewards(model, batch, deft.deft_qn, special)
        (-WEIGHT * (r_c - r_r).mean()).backward()
        reference = _grads(model, names)
    finally:
        model.zero_grad(set_to_none=True)
        deft.configure_deft(deft.deft_qn, WEIGHT, "pair", deft.deft_special_ids)
    for n in names:
        delta = grads[WEIGHT][n] - grads[0.0][n]
        assert delta.abs().max() > 1e-4 * grads[0.0][n].abs().max(), n  # the term changes the gradient
        torch.testing.assert_close(delta, reference[n], rtol=1e-3, atol=1e-3 * reference[n].abs().max().item())


def test_attach_to_a_plain_trainer(full_ft):
    """attach_deft_loss on the plain trainer Axolotl built: weight 0 keeps the loss bit for
    bit, a weight subtracts the term; the class keeps its own base."""
    plain, batch, deft = full_ft["plain"], full_ft["batch"], full_ft["deft"]
    original_cls = type(plain)
    with torch.no_grad():
        before = plain.compute_loss(plain.model, dict(batch))
    try:
        attach_deft_loss(plain, deft.deft_qn, 0.0, "pair", deft.deft_special_ids)
        assert isinstance(plain, original_cls) and type(plain).__name__ == "Deft" + original_cls.__name__
        with torch.no_grad():
            assert torch.equal(plain.compute_loss(plain.model, dict(batch)), before)
            attach_deft_loss(plain, deft.deft_qn, WEIGHT, "pair", deft.deft_special_ids)
            assert type(plain).__mro__.count(DeftDPOLossMixin) == 1  # attaching twice does not stack
            after = plain.compute_loss(plain.model, dict(batch))
        term = plain._metrics["train"]["deft/term"][-1]
        assert after.item() == pytest.approx(before.item() - WEIGHT * term, abs=1e-6)
    finally:
        plain.__class__ = original_cls


# --------------------------------------------------------------------------- LoRA


@pytest.fixture(scope="module")
def lora(base_cfg, tiny_tokenizer, full_ft):
    cfg = {**base_cfg, **LORA}
    meta = deft_dataset_meta(load(cfg))  # cached scores: no second scoring
    plain = build_trainer(load(without_plugin(cfg)), meta)
    return {"plain": plain, "batch": next(iter(plain.get_train_dataloader())), "deft": full_ft["deft"],
            "special": set(tiny_tokenizer.all_special_ids)}


def test_lora_deft_loss(lora):
    from peft import PeftModel

    trainer, batch, qn_source = lora["plain"], lora["batch"], lora["deft"]
    assert isinstance(trainer.model, PeftModel) and trainer.ref_model is None  # TRL disables the adapter instead
    with torch.no_grad():
        plain_loss = trainer.compute_loss(trainer.model, dict(batch))
    attach_deft_loss(trainer, qn_source.deft_qn, 0.0, "pair", qn_source.deft_special_ids)
    with torch.no_grad():
        assert torch.equal(trainer.compute_loss(trainer.model, dict(batch)), plain_loss)
    assert math.isfinite(trainer._metrics["train"]["deft/term"][-1])

    trainer.configure_deft(qn_source.deft_qn, WEIGHT, "pair", qn_source.deft_special_ids)
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, dict(batch))
    with torch.no_grad():
        r_c, r_r = naive_rewards(trainer.model, batch, qn_source.deft_qn, lora["special"])
    term = (r_c - r_r).mean().item()
    assert math.isfinite(term) and abs(term) > 1e-3
    assert trainer._metrics["train"]["deft/term"][-1] == pytest.approx(term, abs=1e-6)
    assert loss.item() == pytest.approx(plain_loss.item() - WEIGHT * term, abs=1e-6)
    loss.backward()
    lora_grads = {n: p.grad for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert lora_grads and all("lora_" in n for n in lora_grads)
    assert all(g is not None and torch.isfinite(g).all() for g in lora_grads.values())
    # lora_B starts at zero, so only its gradient is non-zero at step 0 (the DPO part is zero
    # at policy == reference, up to rounding; the DEFT term is not)
    b_grads = [g for n, g in lora_grads.items() if "lora_B" in n]
    assert max(g.abs().max().item() for g in b_grads) > 1e-5
    trainer.model.zero_grad(set_to_none=True)
