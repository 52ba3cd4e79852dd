"""The DEFT-PRO trainer built by Axolotl itself (load_cfg -> plugin load_datasets ->
setup_model_and_trainer on the causal path) against an independent reference: every
candidate run through the model on its own (no batching, no padding), PRO's loss written out
rank by rank, and naive_distribution_reward for the DEFT term. Loss and gradients must match
on a ragged batch of ranked lists with and without reward scores."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from builders import listwise_rows, loss_changed, sharpened, write_jsonl
from reference import naive_distribution_reward

WEIGHT = 0.5
SFT = 0.05


@pytest.fixture(scope="module")
def trainer(tiny_model, tiny_tokenizer, tmp_path_factory):
    from axolotl.cli.config import load_cfg
    from axolotl.integrations.base import PluginManager
    from axolotl.train import setup_model_and_trainer
    from axolotl.utils.dict import DictDefault

    tmp = tmp_path_factory.mktemp("pro-trainer")
    model_dir = tmp / "sharp"
    sharpened(tiny_model, 30.0).save_pretrained(model_dir)  # rewards of order 0.01, not 1e-4
    tiny_tokenizer.save_pretrained(model_dir)
    data = write_jsonl(tmp / "ranked.jsonl", listwise_rows(48))
    cfg = load_cfg(DictDefault(copy.deepcopy({
        "base_model": str(model_dir), "plugins": ["deft_plugin.DEFTPlugin"], "deft_method": "pro",
        "datasets": [{"path": str(data), "type": "deft.listwise"}], "deft_filter_count": 8,
        "deft_reward_weight": WEIGHT, "deft_loss_form": "pair", "sequence_len": 256, "micro_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "num_epochs": 1, "learning_rate": 1e-4, "optimizer": "adamw_torch", "lr_scheduler": "constant",
        "output_dir": str(tmp / "out"), "dataset_prepared_path": str(tmp / "prepared"), "sample_packing": False,
        "logging_steps": 1, "save_strategy": "no", "bf16": False, "fp32": True, "device_map": "cpu",
        "special_tokens": {"pad_token": "<pad>"}, "seed": 3})))
    meta = PluginManager.get_instance().load_datasets(cfg, preprocess=False)
    trainer = setup_model_and_trainer(cfg, meta)[0]
    trainer.model.train()
    return trainer


def batches(trainer):
    """Batches of 4 rows in which n differs and some rows carry rewards and some do not."""
    out = []
    for batch in trainer.get_train_dataloader():
        sizes, has_rewards = batch["group_sizes"], ~torch.isnan(batch["rewards"][:, 0])
        if len(set(sizes.tolist())) > 1 and has_rewards.any() and not has_rewards.all():
            out.append(batch)
    assert out, "no ragged batch mixing rows with and without rewards"
    return out


def reference_loss(model, batch, qn, special, weight, sft_weight):
    """PRO + SFT - weight * DEFT term, one candidate sequence at a time."""
    ids, labels, sizes, rewards = batch["input_ids"], batch["labels"], batch["group_sizes"].tolist(), batch["rewards"]
    seqs = []
    for row in range(ids.shape[0]):
        keep = batch["attention_mask"][row].bool()
        seq, lab = ids[row][keep], labels[row][keep]
        logits = model(input_ids=seq[None], use_cache=False).logits[0].float()
        reply = lab[1:] != -100  # positions t predicting reply token t + 1
        logp = torch.log_softmax(logits[:-1], -1).gather(-1, seq[1:, None])[:, 0][reply]
        pred = torch.zeros(len(seq), dtype=torch.bool)
        pred[:-1] = reply & ~torch.isin(seq[1:], torch.tensor(sorted(special)))
        r = naive_distribution_reward(logits[None], qn, pred[None])[0]
        seqs.append((logp.mean(), logp.sum(), r))
    rank_terms: dict[int, list] = {}
    sft, deft, start = [], [], 0
    for b, n in enumerate(sizes):
        s = [seqs[start + i][0] for i in range(n)]
        r_scores = rewards[b, :n].tolist()
        for k in range(n - 1):
            if math.isnan(r_scores[0]):
                taus = [1.0] * (n - k)
            else:
                gaps = [r_scores[k] - r_scores[i] for i in range(k + 1, n)]
                taus = [max(gaps)] + gaps
            z = torch.stack([s[k + j] * taus[j] for j in range(n - k)])
            rank_terms.setdefault(k, []).append(torch.logsumexp(z, 0) - z[0])
        sft.append(sft_weight * (n - 1) ** 2 * -seqs[start][1])
        rs = [seqs[start + i][2] for i in range(n)]
        deft.append(rs[0] - sum(rs[1:]) / (n - 1))
        start += n
    rank = sum(torch.stack(v).mean() for v in rank_terms.values())
    return rank + torch.stack(sft).mean() - weight * torch.stack(deft).mean(), torch.stack(deft).mean()


@pytest.mark.parametrize("weight,sft_weight", [(WEIGHT, SFT), (0.0, SFT), (WEIGHT, 0.0)])
def test_loss_and_gradients_match_the_reference(trainer, tiny_tokenizer, weight, sft_weight):
    from deft_plugin.integration.pro_trainer import DeftPROTrainer

    assert isinstance(trainer, DeftPROTrainer) and trainer.deft_loss.pro_sft_weight == SFT
    special = set(tiny_tokenizer.all_special_ids)
    model = trainer.model
    head = model.get_output_embeddings().weight
    try:
        for batch in batches(trainer)[:2]:
            model.zero_grad()
            with loss_changed(trainer, reward_weight=weight, pro_sft_weight=sft_weight):
                loss = trainer.compute_loss(model, dict(batch))
            loss.backward()
            grad = head.grad.clone()
            model.zero_grad()
            ref, term = reference_loss(model, batch, trainer.deft_loss.qn, special, weight, sft_weight)
            ref.backward()
            assert abs(term.item()) > 1e-3  # the DEFT term is not negligible next to the tolerance
            assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
            torch.testing.assert_close(grad, head.grad, rtol=1e-4, atol=1e-6)
    finally:
        model.zero_grad()


def test_metrics_are_logged_per_mode(trainer):
    batch = batches(trainer)[0]
    trainer._deft_metrics["train"].clear()
    with torch.no_grad():
        trainer.compute_loss(trainer.model, dict(batch))
    logs = {"loss": 1.0}
    captured = {}
    trainer.callback_handler.on_log = lambda args, state, control, logs: captured.update(logs) or control
    trainer.log(logs)
    assert {"pro/loss", "pro/rank_loss", "pro/sft_loss", "deft/term", "deft/reward_chosen",
            "deft/reward_rejected"} <= set(captured)
    assert captured["pro/loss"] == pytest.approx(captured["pro/rank_loss"] + captured["pro/sft_loss"])
    assert captured["deft/term"] == pytest.approx(captured["deft/reward_chosen"] - captured["deft/reward_rejected"])
    assert not trainer._deft_metrics["train"]  # emptied once logged
