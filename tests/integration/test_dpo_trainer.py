"""DEFT-DPO on trainers built by Axolotl itself (load_cfg -> the plugin's register and
load_datasets -> setup_model_and_trainer), against plain Axolotl/TRL DPO built from the same
config without the plugin (its own reference model), on the same collated batch.

DPO's reference comes from the scoring pass by default: no reference model is loaded or run,
and with deft_reward_weight 0 the loss, the gradients and several optimizer steps equal plain
DPO's. Tolerances: 1e-5 relative on reference log-probabilities (float32 sums of up to ~3,000
in magnitude on this sharpened model, summed by the scoring pass in another order than TRL's
forward), hence 1e-5 absolute on losses (beta 0.1 times a log-ratio rounding of ~1e-4) and 1e-4
relative on gradient norms and on the update of the weights.

The reference DEFT term is computed independently: a separate forward of the policy,
naive_distribution_reward over the positions that predict non-special completion tokens."""

from __future__ import annotations

import contextlib
import copy
import json
import math

import pytest
import torch

from deft_plugin.core.head_pass import decoder_and_head
from deft_plugin.integration.dpo_trainer import DeftDPOLossMixin

from builders import HH_PAIRS, KEPT, RATIO, SEQUENCE_LEN, hh_rows, loss_changed, sharpened, write_jsonl
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
        "deft_filter_ratio": RATIO, "deft_reward_weight": WEIGHT, "deft_loss_form": "pair",
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


class LoadCounter:
    """Counts models loaded from a checkpoint (transformers' from_pretrained) while active."""

    def __init__(self, monkeypatch):
        from transformers import PreTrainedModel

        self.calls = 0
        original = PreTrainedModel.from_pretrained.__func__

        def counting(cls, *args, **kwargs):
            self.calls += 1
            return original(cls, *args, **kwargs)

        monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(counting))


def build_counting_loads(cfg, meta):
    """(trainer, models loaded while building it)."""
    with pytest.MonkeyPatch.context() as mp:
        counter = LoadCounter(mp)
        trainer = build_trainer(cfg, meta)
    return trainer, counter.calls


@pytest.fixture(scope="module")
def full_ft(base_cfg, tiny_tokenizer):
    cfg = load(base_cfg)
    meta = deft_dataset_meta(cfg)
    deft, deft_loads = build_counting_loads(cfg, meta)
    plain, plain_loads = build_counting_loads(load(without_plugin(base_cfg)), meta)
    batch = next(iter(deft.get_train_dataloader()))
    return {"deft": deft, "plain": plain, "batch": batch, "meta": meta, "special": set(tiny_tokenizer.all_special_ids),
            "loads": {"deft": deft_loads, "plain": plain_loads}}


class ForwardCounter:
    """Counts forward passes of a model's decoder (the DEFT trainer runs the decoder and the LM
    head itself; a plain forward runs them through the model's own forward)."""

    def __init__(self, model):
        self.calls = 0
        self.handle = decoder_and_head(model)[0].register_forward_hook(self._count)

    def _count(self, *_):
        self.calls += 1

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.handle.remove()


def test_axolotl_constructs_the_deft_trainer_without_a_reference_model(full_ft):
    from axolotl.core.trainers.dpo.trainer import AxolotlDPOTrainer

    from deft_plugin.integration.dpo_trainer import DeftDPOTrainer

    deft, plain = full_ft["deft"], full_ft["plain"]
    assert type(deft) is DeftDPOTrainer  # the class Axolotl constructed, not swapped in afterwards
    assert not isinstance(plain, DeftDPOLossMixin) and isinstance(plain, AxolotlDPOTrainer)
    assert deft.deft_loss.reward_weight == WEIGHT and deft.deft_loss.form == "pair"
    assert deft.ref_model is None and plain.ref_model is not None  # full fine-tuning: plain DPO loads a second model
    assert full_ft["loads"] == {"deft": 1, "plain": 2}  # the policy only, against policy and reference
    assert deft.args.precompute_ref_log_probs and not plain.args.precompute_ref_log_probs
    assert len(full_ft["meta"].train_dataset) == KEPT and full_ft["meta"].total_num_steps == KEPT // 2
    assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(deft.train_dataset.column_names)
    batch = full_ft["batch"]
    assert batch["input_ids"].shape[0] == 4  # [chosen; rejected] of micro_batch_size 2
    assert set(batch) >= {"input_ids", "attention_mask", "completion_mask", "ref_chosen_logps"}


def test_reference_logprobs_equal_trls_reference_forward(full_ft):
    """The scoring pass's reference log-probabilities of every kept pair equal TRL's own
    reference computation (compute_ref_log_probs, its reference model) on the same batches."""
    deft, plain = full_ft["deft"], full_ft["plain"]
    got, expected = [], []
    for batch in deft.get_train_dataloader():
        with torch.no_grad():
            chosen, rejected = plain.compute_ref_log_probs(plain.ref_model, dict(batch))
        expected += chosen.tolist() + rejected.tolist()
        got += batch["ref_chosen_logps"].tolist() + batch["ref_rejected_logps"].tolist()
    assert len(got) == 2 * KEPT
    assert got == pytest.approx(expected, rel=1e-5)
    assert len({round(v, 3) for v in got}) == len(got)  # distinct sums, not a constant


def test_weight_zero_equals_plain_dpo(full_ft):
    """deft_reward_weight 0: the loss of plain DPO with its own reference model, and at the
    start (policy = reference) exactly ln 2."""
    deft, plain, batch = full_ft["deft"], full_ft["plain"], full_ft["batch"]
    with torch.no_grad():
        plain_loss = plain.compute_loss(plain.model, dict(batch))
        with loss_changed(deft, reward_weight=0.0):
            deft_loss = deft.compute_loss(deft.model, dict(batch))
    assert deft_loss.item() == pytest.approx(plain_loss.item(), abs=1e-5)
    assert deft_loss.item() == pytest.approx(math.log(2), abs=1e-5)


def test_no_reference_forward_runs(full_ft, monkeypatch):
    """A DEFT-DPO loss runs the policy once and nothing else: TRL's reference computation is
    never entered; plain DPO runs its reference model as well."""
    deft, plain, batch = full_ft["deft"], full_ft["plain"], full_ft["batch"]

    def no_reference(*_args, **_kwargs):
        raise AssertionError("a reference forward ran")

    with ForwardCounter(deft.model) as policy, torch.no_grad():
        monkeypatch.setattr(type(deft), "compute_ref_log_probs", no_reference)
        deft.compute_loss(deft.model, dict(batch))
    assert policy.calls == 1
    with ForwardCounter(plain.ref_model) as reference, torch.no_grad():
        plain.compute_loss(plain.model, dict(batch))
    assert reference.calls == 1  # the counter counts: plain DPO does run its reference


@pytest.mark.parametrize("form", ["pair", "chosen"])
def test_weighted_loss_is_dpo_minus_weighted_reward_term(full_ft, form):
    deft, plain, batch, special = full_ft["deft"], full_ft["plain"], full_ft["batch"], full_ft["special"]
    with loss_changed(deft, form=form), torch.no_grad():
        plain_loss = plain.compute_loss(plain.model, dict(batch))
        loss = deft.compute_loss(deft.model, dict(batch))
        r_c, r_r = naive_rewards(deft.model, batch, deft.deft_loss.qn, special)
    term = (r_c - r_r).mean() if form == "pair" else r_c.mean()
    assert abs(term.item()) > 1e-3  # the term is not negligible next to the tolerance below
    assert loss.item() == pytest.approx(plain_loss.item() - WEIGHT * term.item(), abs=1e-5)

    metrics = deft._metrics["train"]
    assert metrics["deft/reward_chosen"][-1] == pytest.approx(r_c.mean().item(), abs=1e-6)
    assert metrics["deft/reward_rejected"][-1] == pytest.approx(r_r.mean().item(), abs=1e-6)
    assert metrics["deft/term"][-1] == pytest.approx(term.item(), abs=1e-6)
    assert metrics["deft/dpo_loss"][-1] == pytest.approx(plain_loss.item(), abs=1e-5)  # the plain run's loss
    assert {"rewards/margins", "logps/chosen"} <= set(metrics)  # TRL's own DPO metrics are still there


def test_trainer_rewards_at_start_equal_the_filter_scores(full_ft):
    """At step 0 the policy is theta0, so the rewards of the batch's rows equal the rewards
    the filter computed for those pairs: the filter scored the sequences that are trained on."""
    from axolotl.integrations.base import PluginManager

    plugin = next(p for p in PluginManager.get_instance().plugins.values() if hasattr(p, "filter_result"))
    kept_rewards = [plugin.filter_result.rewards[i] for i in plugin.filter_result.kept]
    deft, batch = full_ft["deft"], full_ft["batch"]
    with torch.no_grad():
        r_c, r_r = naive_rewards(deft.model, batch, deft.deft_loss.qn, full_ft["special"])
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
            with loss_changed(deft, reward_weight=weight):
                model.zero_grad(set_to_none=True)
                deft.compute_loss(model, dict(batch)).backward()
            grads[weight] = _grads(model, names)
        model.zero_grad(set_to_none=True)
        r_c, r_r = naive_rewards(model, batch, deft.deft_loss.qn, special)
        (-WEIGHT * (r_c - r_r).mean()).backward()
        reference = _grads(model, names)
    finally:
        model.zero_grad(set_to_none=True)
    for n in names:
        delta = grads[WEIGHT][n] - grads[0.0][n]
        assert delta.abs().max() > 1e-4 * grads[0.0][n].abs().max(), n  # the term changes the gradient
        torch.testing.assert_close(delta, reference[n], rtol=1e-3, atol=1e-3 * reference[n].abs().max().item())


@contextlib.contextmanager
def moved_away(first, *others, scale=2e-2, seed=0):
    """The trainable weights of every model set to the first's (LoRA's random A matrices differ
    between two builds) and moved by the same random step, restored after: the policy then differs
    from the reference, so log-ratios, DPO's rewards and its gradient are not those of step 0."""
    models = (first, *others)
    saved = [{n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad} for m in models]
    g = torch.Generator().manual_seed(seed)
    step = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) * scale * p.abs().mean().clamp_min(0.05)
            for n, p in sorted(saved[0].items())}
    with torch.no_grad():
        for model in models:
            for n, p in model.named_parameters():
                if n in step:
                    p.copy_(saved[0][n] + step[n])
    try:
        yield
    finally:
        with torch.no_grad():
            for model, state in zip(models, saved):
                for n, p in model.named_parameters():
                    if n in state:
                        p.copy_(state[n])


DPO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
               "logps/rejected", "logits/chosen", "logits/rejected", "entropy", "mean_token_accuracy")


def loss_metrics_and_grads(trainer, batch):
    """(loss, TRL's DPO metrics of this batch, gradients of the trainable weights)."""
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    metrics = {k: trainer._metrics["train"][k][-1] for k in DPO_METRICS}
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.model.zero_grad(set_to_none=True)
    return loss.item(), metrics, grads


def assert_same_dpo(deft, plain, batch, loss_abs=1e-4):
    """At weight 0, the DEFT trainer's loss, metrics and gradients are TRL's on the same batch.
    Tolerances: the two sum float32 log-probabilities of up to ~3,000 in magnitude in different
    orders, so a log-ratio may differ by ~1e-3: 1e-5 relative on log-probabilities, 2e-4 absolute
    on DPO's rewards (beta times a log-ratio), 1e-4 on the loss, 1e-4 relative on gradients."""
    with loss_changed(deft, reward_weight=0.0):
        d_loss, d_metrics, d_grads = loss_metrics_and_grads(deft, batch)
    p_loss, p_metrics, p_grads = loss_metrics_and_grads(plain, batch)
    assert d_loss == pytest.approx(p_loss, abs=loss_abs)
    assert abs(p_metrics["rewards/margins"]) > 1e-3  # moved away from the reference: not the trivial 0
    for key in DPO_METRICS:
        assert d_metrics[key] == pytest.approx(p_metrics[key], rel=1e-5, abs=2e-4 if "rewards" in key else 1e-6), key
    assert 0 < d_metrics["entropy"] and 0 <= d_metrics["mean_token_accuracy"] <= 1
    assert set(d_grads) == set(p_grads) and d_grads
    for n in p_grads:
        torch.testing.assert_close(d_grads[n], p_grads[n], rtol=1e-4, atol=1e-4 * p_grads[n].abs().max().item())
    return d_loss


def test_loss_metrics_and_gradients_equal_trls_away_from_the_start(full_ft):
    """The DEFT trainer computes the DPO loss itself, from the hidden states in chunks; with the
    policy moved away from the reference, its loss, TRL's metrics and every gradient equal plain
    DPO's (TRL's own full-logits computation, its reference model)."""
    deft, plain, batch = full_ft["deft"], full_ft["plain"], full_ft["batch"]
    with moved_away(deft.model, plain.model):
        loss = assert_same_dpo(deft, plain, batch)
    assert loss != pytest.approx(math.log(2), abs=1e-3)


def test_no_full_logits_are_built(full_ft):
    """The LM head sees only the positions that predict reply tokens, two-dimensional chunks of
    them, never a [batch, time, hidden] block: no [batch, time, vocab] logits exist."""
    deft, batch = full_ft["deft"], full_ft["batch"]
    head = deft.model.get_output_embeddings()
    inputs = []
    handle = head.register_forward_hook(lambda _m, args, _out: inputs.append(tuple(args[0].shape)))
    try:
        deft.compute_loss(deft.model, dict(batch)).backward()
    finally:
        handle.remove()
        deft.model.zero_grad(set_to_none=True)
    reply_positions = int(batch["completion_mask"][:, 1:].sum())
    assert inputs and all(len(shape) == 2 for shape in inputs)
    assert reply_positions < batch["input_ids"].numel() / 2  # the prompt is most of the batch
    assert sum(shape[0] for shape in inputs) == 2 * reply_positions  # forward, then the backward's recompute


def test_trls_loss_types_and_weights(base_cfg, tiny_tokenizer):
    """dpo_loss_type / dpo_loss_weights: sigmoid, hinge and ipo combined, as TRL computes them."""
    cfg = {**base_cfg, "dpo_loss_type": ["sigmoid", "hinge", "ipo"], "dpo_loss_weights": [1.0, 0.5, 0.01]}
    loaded = load(cfg)
    meta = deft_dataset_meta(loaded)
    deft = build_trainer(loaded, meta)
    plain = build_trainer(load(without_plugin(cfg)), meta)
    assert list(deft.args.loss_type) == ["sigmoid", "hinge", "ipo"]
    batch = next(iter(deft.get_train_dataloader()))
    with moved_away(deft.model, plain.model):
        assert_same_dpo(deft, plain, batch)


# --------------------------------------------------------------------------- LoRA


@pytest.fixture(scope="module")
def lora(base_cfg, tiny_tokenizer):
    cfg = {**base_cfg, **LORA}
    loaded = load(cfg)
    meta = deft_dataset_meta(loaded)  # cached scores: no second scoring
    deft = build_trainer(loaded, meta)
    plain = build_trainer(load(without_plugin(cfg)), meta)
    return {"plain": plain, "deft": deft, "batch": next(iter(deft.get_train_dataloader())),
            "special": set(tiny_tokenizer.all_special_ids)}


def test_lora_free_reference_and_deft_loss(lora):
    from peft import PeftModel

    from deft_plugin.integration.dpo_trainer import DeftDPOTrainer

    deft, plain, batch = lora["deft"], lora["plain"], lora["batch"]
    assert type(deft) is DeftDPOTrainer and isinstance(deft.model, PeftModel) and deft.ref_model is None
    with torch.no_grad():
        with ForwardCounter(plain.model) as plain_forwards:
            plain_loss = plain.compute_loss(plain.model, dict(batch))
        with loss_changed(deft, reward_weight=0.0), ForwardCounter(deft.model) as deft_forwards:
            zero_loss = deft.compute_loss(deft.model, dict(batch))
    assert plain_forwards.calls == 2  # the policy, then the reference with the adapter disabled
    assert deft_forwards.calls == 1  # the policy only: no adapter-disabled forward
    assert zero_loss.item() == pytest.approx(plain_loss.item(), abs=1e-5)
    assert zero_loss.item() == pytest.approx(math.log(2), abs=1e-5)

    assert deft.deft_loss.reward_weight == WEIGHT
    deft.model.zero_grad(set_to_none=True)
    loss = deft.compute_loss(deft.model, dict(batch))
    with torch.no_grad():
        r_c, r_r = naive_rewards(deft.model, batch, deft.deft_loss.qn, lora["special"])
    term = (r_c - r_r).mean().item()
    assert math.isfinite(term) and abs(term) > 1e-3
    assert deft._metrics["train"]["deft/term"][-1] == pytest.approx(term, abs=1e-6)
    assert loss.item() == pytest.approx(plain_loss.item() - WEIGHT * term, abs=1e-5)
    loss.backward()
    lora_grads = {n: p.grad for n, p in deft.model.named_parameters() if p.requires_grad}
    assert lora_grads and all("lora_" in n for n in lora_grads)
    assert all(g is not None and torch.isfinite(g).all() for g in lora_grads.values())
    # lora_B starts at zero, so only its gradient is non-zero at step 0 (the DPO part is zero
    # at policy == reference, up to rounding; the DEFT term is not)
    b_grads = [g for n, g in lora_grads.items() if "lora_B" in n]
    assert max(g.abs().max().item() for g in b_grads) > 1e-5
    deft.model.zero_grad(set_to_none=True)


def test_lora_loss_metrics_and_gradients_equal_trls(lora):
    deft, plain, batch = lora["deft"], lora["plain"], lora["batch"]
    with moved_away(deft.model, plain.model):
        assert_same_dpo(deft, plain, batch)


# --------------------------------------------------------------------------- several steps of training


def trained(cfg: dict, output_dir, meta=None):
    """(per-step log entries, trainable parameters after training, the datasets) of Axolotl's
    trainer for cfg; the datasets from the plugin unless given."""
    from transformers import set_seed

    loaded = load({**cfg, "output_dir": str(output_dir)})
    meta = meta or deft_dataset_meta(loaded)
    set_seed(cfg["seed"])  # the same LoRA initialisation whether or not a scoring pass drew random numbers before
    trainer = build_trainer(loaded, meta)
    trainer.train()
    steps = [e for e in trainer.state.log_history if "loss" in e]
    return steps, {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}, meta


@pytest.mark.parametrize("adapter", [{}, LORA], ids=["full", "lora"])
def test_training_at_weight_zero_follows_plain_dpo(base_cfg, tmp_path, adapter):
    """Three optimizer steps of DEFT-DPO (weight 0, reference from the scoring pass) and of
    plain DPO (its own reference model), same data and seed: the same loss and gradient norm
    at every step and the same weights after."""
    cfg = {**base_cfg, **adapter, "deft_reward_weight": 0.0, "max_steps": 3, "learning_rate": 1e-3}
    deft_steps, deft_params, meta = trained(cfg, tmp_path / "deft")
    plain_steps, plain_params, _ = trained(without_plugin(cfg), tmp_path / "plain", meta)
    assert len(deft_steps) == len(plain_steps) == 3
    assert deft_steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    for d, p in zip(deft_steps, plain_steps):
        # after the first update the two sum their log-probabilities in different orders: float32
        # rounding of ~1e-4 on sums of thousands, carried through the optimizer
        assert d["loss"] == pytest.approx(p["loss"], abs=1e-4)
        assert d["grad_norm"] == pytest.approx(p["grad_norm"], rel=1e-4)
    assert deft_steps[-1]["loss"] != pytest.approx(math.log(2), abs=1e-4)  # training moved the policy
    assert set(deft_params) == set(plain_params)
    # Adam turns a gradient coordinate near zero into a full step of either sign, so a rounding
    # difference there moves a single weight by up to the learning rate: compare the whole update
    from transformers import set_seed

    set_seed(cfg["seed"])
    start = {n: p.detach() for n, p in build_trainer(load(without_plugin(cfg)), meta).model.named_parameters()
             if n in deft_params}
    moved = torch.cat([(plain_params[n] - start[n]).flatten() for n in start])
    apart = torch.cat([(deft_params[n] - plain_params[n]).flatten() for n in start])
    assert moved.norm() > 1e-3  # training moved the weights
    assert apart.norm() < 1e-3 * moved.norm()


# --------------------------------------------------------------------------- the reference, other settings


def test_eval_split_gets_the_reference_too(base_cfg, tmp_path):
    """With a DPO eval split, its rows carry the scoring pass's reference as well: evaluation
    runs no reference forward and at the start its DPO loss is ln 2 (the loss less the term)."""
    cfg = {**base_cfg, "val_set_size": 0.25, "output_dir": str(tmp_path / "out")}
    loaded = load(cfg)
    meta = deft_dataset_meta(loaded)
    assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(meta.eval_dataset.column_names)
    assert 0 < len(meta.eval_dataset) <= round(0.25 * HH_PAIRS)  # rows whose prompt fills sequence_len left out
    trainer = build_trainer(loaded, meta)
    assert trainer.ref_model is None
    with ForwardCounter(trainer.model) as policy:
        metrics = trainer.evaluate()
    batches = math.ceil(len(trainer.eval_dataset) / trainer.args.per_device_eval_batch_size)
    assert policy.calls == batches  # one forward per batch: the policy's
    # eval replies reach log-probs of ~-2,600 here: float32 rounding of ~1e-3 there, times beta / 2
    assert metrics["eval_deft/dpo_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert metrics["eval_loss"] == pytest.approx(metrics["eval_deft/dpo_loss"] - WEIGHT * metrics["eval_deft/term"],
                                                 abs=1e-6)


def test_degenerate_eval_rows_are_named_and_counted(base_cfg, tmp_path):
    """Evaluation rows left out as degenerate go to the run's rejected-rows file with their file:line,
    staged apart from the training rows', and the report's counts add up over both splits."""
    rows = hh_rows(HH_PAIRS)
    identical = {n for n in range(1, HH_PAIRS + 1) if n % 4 == 2}  # 1-based lines with chosen == rejected
    for n in identical:
        rows[n - 1] = {**rows[n - 1], "rejected": rows[n - 1]["chosen"]}
    data = write_jsonl(tmp_path / "hh.jsonl", rows)
    cfg = {**base_cfg, "datasets": [{"path": str(data), "type": "deft.hh_rlhf"}], "val_set_size": 0.25,
           "output_dir": str(tmp_path / "out")}
    meta = deft_dataset_meta(load(cfg))
    report = json.loads((tmp_path / "out" / "deft_selection.json").read_text())["report"]
    rejected = [json.loads(line) for line in (tmp_path / "out" / "deft_rejected.jsonl").read_text().splitlines()]
    evaluation = [r for r in rejected if r["stage"] == "evaluation_degenerate"]
    assert evaluation and {r["stage"] for r in rejected} == {"degenerate", "evaluation_degenerate"}
    lines = [int(r["where"].removeprefix(f"{data}:")) for r in rejected]
    assert len(set(lines)) == len(lines) and identical <= set(lines)  # each row left out once, by its own line
    # the evaluation rows left out: identical pairs, each on a line made so, and prompts that fill sequence_len
    assert {r["reason"] for r in evaluation} == {"chosen and rejected identical",
                                                 "reply cut off: prompt fills sequence_len"}
    assert all(int(r["where"].rsplit(":", 1)[1]) in identical for r in evaluation
               if r["reason"] == "chosen and rejected identical")
    assert report["evaluation"] == round(0.25 * HH_PAIRS) == len(meta.eval_dataset) + report["evaluation_degenerate"]
    assert report["evaluation_degenerate"] == len(evaluation) == sum(report["evaluation_degenerate_reasons"].values())
    assert report["read"] == report["unparseable"] + report["evaluation"] + report["degenerate"] + report["scored"]
    assert report["rejected"] == len(rejected) == (report["unparseable"] + report["degenerate"]
                                                   + report["evaluation_degenerate"])


def test_reference_model_when_asked(base_cfg, tmp_path):
    """deft_reference: model keeps TRL's reference model: loaded, run, and no reference columns."""
    from deft_plugin.integration.dpo_trainer import DeftDPOTrainer

    cfg = {**base_cfg, "deft_reference": "model", "output_dir": str(tmp_path / "out")}
    loaded = load(cfg)
    meta = deft_dataset_meta(loaded)
    assert "ref_chosen_logps" not in meta.train_dataset.column_names
    trainer, loads = build_counting_loads(loaded, meta)
    assert type(trainer) is DeftDPOTrainer and trainer.ref_model is not None and loads == 2
    batch = next(iter(trainer.get_train_dataloader()))
    with ForwardCounter(trainer.ref_model) as reference, torch.no_grad():
        with loss_changed(trainer, reward_weight=0.0):
            loss = trainer.compute_loss(trainer.model, dict(batch))
    assert reference.calls == 1 and loss.item() == pytest.approx(math.log(2), abs=1e-6)
    plain = build_trainer(load(without_plugin(cfg)), meta)
    with moved_away(trainer.model, plain.model):
        assert_same_dpo(trainer, plain, batch)


def test_lora_reference_model_by_disabling_the_adapter(base_cfg, tmp_path):
    """deft_reference: model with an adapter: the reference is the model with the adapter disabled,
    run through the head pass, as TRL does."""
    cfg = {**base_cfg, **LORA, "deft_reference": "model", "output_dir": str(tmp_path / "out")}
    loaded = load(cfg)
    meta = deft_dataset_meta(loaded)
    deft = build_trainer(loaded, meta)
    plain = build_trainer(load(without_plugin(cfg)), meta)
    assert deft.ref_model is None
    batch = next(iter(deft.get_train_dataloader()))
    with ForwardCounter(deft.model) as forwards, torch.no_grad():
        deft.compute_loss(deft.model, dict(batch))
    assert forwards.calls == 2  # the policy, then the reference with the adapter disabled
    with moved_away(deft.model, plain.model):
        assert_same_dpo(deft, plain, batch)


def test_the_axolotl_and_trl_internals_relied_on():
    """Pins what the free reference relies on beyond public interfaces, so that an upgrade that
    changes it fails here: Axolotl's trainer set-up looks setup_reference_model up in its module
    (the plugin wraps it there), and TRL's DPO constructor calls _precompute_ref_logps (which the
    DEFT trainer overrides) on the train and eval sets."""
    import inspect

    import axolotl.train as axolotl_train
    from trl import DPOTrainer

    assert "setup_reference_model" in axolotl_train.setup_model_and_trainer.__code__.co_names
    assert getattr(axolotl_train.setup_reference_model, "deft_wrapped", False)  # installed by the plugin above
    init = inspect.getsource(DPOTrainer.__init__)
    assert "self._precompute_ref_logps(" in init
    assert list(inspect.signature(DPOTrainer._precompute_ref_logps).parameters) == [
        "self", "dataset", "name", "batch_size"]
