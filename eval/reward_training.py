"""A reward model of one's own, to judge answers with the `reward` scorer: a one-logit
sequence-classification head on a causal LM, trained with TRL's RewardTrainer (Bradley-Terry,
-log sigmoid(r(x, y+) - r(x, y-))) on exactly the token ids the scorer reads
(reward_models.reward_ids), then measured on held-out pairs beside the rule "prefer the shorter
reply": a judge that does not beat that rule says no more about answers than their length."""

from __future__ import annotations

import json
import resource
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from deft_eval.reward_models import load_reward_model, reward_ids, reward_logits

RECORD = "reward_training.json"  # beside the trained model: how it was trained, and how well it judges


@dataclass(frozen=True)
class RewardTraining:
    epochs: float = 1.0
    learning_rate: float = 1e-5
    batch_size: int = 8  # pairs per optimiser step
    seed: int = 0  # the head's initialisation and the order of the pairs: a repeated run is identical
    micro_batch_size: int = 1  # pairs per forward pass; 1 pads nothing (a CPU's best), more suits a GPU
    lora_r: int = 0  # 0: every weight trains; else LoRA of this rank on every linear layer, the head whole

    def __post_init__(self):
        for name in ("epochs", "learning_rate", "batch_size", "micro_batch_size"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be above 0, got {getattr(self, name)}")
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of micro_batch_size "
                             f"{self.micro_batch_size}")
        if self.lora_r < 0:
            raise ValueError(f"lora_r must be 0 (no LoRA) or above, got {self.lora_r}")


def training_pairs(tokenizer, records: list[dict]) -> tuple[list[dict], Counter]:
    """{"chosen_ids", "rejected_ids"} per record {prompt, chosen, rejected}, and the records left
    out by reason: a pair whose two replies read the same to the model teaches nothing."""
    pairs, dropped = [], Counter()
    for r in records:
        chosen, rejected = (reward_ids(tokenizer, "standard", r["prompt"], r[k]) for k in ("chosen", "rejected"))
        if chosen == rejected:
            dropped["identical replies"] += 1
            continue
        pairs.append({"chosen_ids": chosen, "rejected_ids": rejected})
    return pairs, dropped


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def train_reward_model(base: str | Path, records: list[dict], out: str | Path, settings: RewardTraining,
                       heldout: list[dict] | None = None) -> dict:
    """Train on `records`, save the model and its tokenizer to `out` (whole or not at all) with
    RECORD beside them, and measure it on `heldout` pairs when given. Returns the record."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    out = Path(out)
    start, cpu = time.perf_counter(), _cpu_seconds()
    tokenizer = AutoTokenizer.from_pretrained(base)
    pairs, dropped = training_pairs(tokenizer, records)
    if not pairs:
        raise ValueError("no pair to train a reward model on: " + (", ".join(f"{n} {why}" for why, n in dropped.items())
                                                                   or "no records"))
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        config = RewardConfig(output_dir=str(work / "trainer"), num_train_epochs=settings.epochs,
                              learning_rate=settings.learning_rate,
                              per_device_train_batch_size=settings.micro_batch_size,
                              gradient_accumulation_steps=settings.batch_size // settings.micro_batch_size,
                              seed=settings.seed, data_seed=settings.seed, max_length=None,  # reward_ids truncates
                              save_strategy="no", report_to=[], logging_steps=10, bf16=False, fp16=False,
                              disable_tqdm=True, dataloader_pin_memory=torch.cuda.is_available())
        trainer = RewardTrainer(model=str(base), args=config, train_dataset=Dataset.from_list(pairs),
                                processing_class=tokenizer, peft_config=lora_config(settings.lora_r))
        result = trainer.train()
        model = trainer.model.merge_and_unload() if settings.lora_r else trainer.model  # a plain model to load
        model.save_pretrained(work / "model")
        tokenizer.save_pretrained(work / "model")
        record = {"base": str(base), "settings": asdict(settings), "pairs": len(pairs), "dropped": dict(dropped),
                  "steps": result.global_step, "train_loss": result.training_loss,
                  "seconds": round(time.perf_counter() - start, 2), "cpu_seconds": round(_cpu_seconds() - cpu, 2)}
        if heldout is not None:
            model, judge_tokenizer, kind = load_reward_model(str(work / "model"), "auto")
            record["heldout"] = pair_accuracy(model, judge_tokenizer, kind, heldout)
        (work / "model" / RECORD).write_text(json.dumps(record, indent=2))
        if out.exists():
            shutil.rmtree(out)
        (work / "model").rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return record


def lora_config(rank: int):
    """LoRA on every linear layer, or None for none; PEFT trains a sequence classifier's head
    ("score" or "classifier") whole."""
    if not rank:
        return None
    from peft import LoraConfig

    return LoraConfig(task_type="SEQ_CLS", r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear")


def pair_accuracy(model, tokenizer, kind: str, records: list[dict], batch_size: int = 8) -> dict:
    """How often the judge prefers the chosen reply of held-out pairs (a tie counts half), beside
    how often "prefer the shorter reply" (in the judge's tokens) does on the same pairs."""
    if not records:
        raise ValueError("no held-out pairs to measure the reward model on")
    chosen = reward_logits(model, tokenizer, [reward_ids(tokenizer, kind, r["prompt"], r["chosen"]) for r in records],
                           batch_size)
    rejected = reward_logits(model, tokenizer,
                             [reward_ids(tokenizer, kind, r["prompt"], r["rejected"]) for r in records], batch_size)
    length = [len(tokenizer(text=r["rejected"])["input_ids"]) - len(tokenizer(text=r["chosen"])["input_ids"])
              for r in records]
    accuracy = sum(_correct(c - r) for c, r in zip(chosen, rejected)) / len(records)
    shorter = sum(_correct(d) for d in length) / len(records)
    return {"pairs": len(records), "accuracy": accuracy, "prefer_shorter": shorter,
            "beats_length_rule": accuracy > shorter}


def _correct(difference: float) -> float:
    return 1.0 if difference > 0 else 0.5 if difference == 0 else 0.0
