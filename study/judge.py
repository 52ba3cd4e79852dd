"""A reward model as the judge of the study's answers. It is trained on the pool's pairs (nothing
else trains) by `axolotl train` as a reward model (Axolotl's Bradley-Terry chat-template rows), its
LoRA merged with PEFT into a plain one-logit model that `deft-eval score --scorers reward` loads,
and measured beside "prefer the shorter reply" on the validation pairs (where the spec's `lead`
decides whether its scores are read) and on the measured pairs. Then every run's greedy answers are
scored with it. Each step is skipped when its file is on disk, as the arms are."""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import yaml

from deft_plugin.launch.axolotl_train import cpu_run_keys, run_axolotl_train
from deft_plugin.utils.atomic import atomic_write_text
from deft_study.measure import write_json
from deft_study.spec import Judge, StudySpec
from deft_study.stats import correct, prefer_shorter
from deft_study.training import children_cpu_seconds, code_commit, lora_keys, portable, run_dir

JUDGE_DIR = "judge"
RECORD = "judge.json"  # in the judge's folder: how it was trained and how well it judges
SCORES = "judge_scores.json"  # in each run's folder: the judge's logit for each of its answers
TRAINED = "trained"  # Axolotl's output_dir: the adapter (or the whole model) and the tokenizer


def judge_folder(out: Path) -> Path:
    return out / JUDGE_DIR


def judge_model(out: Path) -> Path:
    return judge_folder(out) / "model"


def training_rows(records: list[dict], tokenizer, sequence_len: int) -> tuple[list[dict], dict[str, list[str]]]:
    """Axolotl's rows of the pairs the judge can learn from, and the ids of the others by reason: a
    pair whose replies read the same teaches nothing, and a pair longer than sequence_len would
    be cut at its end by Axolotl, losing the reply it is about."""
    from deft_eval.reward_models import ONE_TURN, judge_row, reward_text
    from deft_plugin.data.formats.hh_rlhf import to_messages

    rows, dropped = [], {}
    for r in records:
        chosen, rejected = (tokenizer(text=reward_text(tokenizer, ONE_TURN, to_messages(r["prompt"]), r[k]),
                                      add_special_tokens=False)["input_ids"] for k in ("chosen", "rejected"))
        reason = ("identical replies" if chosen == rejected else
                  f"longer than {sequence_len} tokens" if max(len(chosen), len(rejected)) > sequence_len else None)
        if reason:
            dropped.setdefault(reason, []).append(r["id"])
        else:
            rows.append(judge_row(r["prompt"], r["chosen"], r["rejected"]))
    return rows, dropped


START, START_ADAPTER = "start", "start-adapter"  # the judge's seeded starting weights, in its folder


def write_start(base_model: Path, folder: Path, judge: Judge) -> None:
    """The judge's starting point, drawn from its seed: the base model with a one-logit score head
    and, with LoRA, the untrained adapter. Axolotl would draw both from whatever the process drew
    before (it seeds the data order, not the weights it creates), so a repeated run would differ."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(judge.seed)
    model = AutoModelForSequenceClassification.from_pretrained(base_model, num_labels=1, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
        else tokenizer.eos_token_id  # the head reads the last token before the padding
    model.save_pretrained(folder / START)
    tokenizer.save_pretrained(folder / START)
    if judge.lora_r:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(judge.seed)
        lora = LoraConfig(task_type="SEQ_CLS", r=judge.lora_r, lora_alpha=2 * judge.lora_r, lora_dropout=0.0,
                          target_modules="all-linear")  # PEFT trains the score head whole beside it
        get_peft_model(model, lora).save_pretrained(folder / START_ADAPTER)


def judge_config(judge: Judge) -> dict:
    """The Axolotl config, run in the judge's folder: a one-logit sequence classifier (Axolotl sets
    num_labels 1 for reward_model) trained with TRL's RewardTrainer on pairs.jsonl from the seeded
    start (write_start). Sequences are not padded to sequence_len (Axolotl's default for reward
    models): one pair a pass pads nothing."""
    cfg = {"base_model": START, "reward_model": True, "chat_template": "tokenizer_default",
           "datasets": [{"path": "pairs.jsonl", "type": "bradley_terry.chat_template"}], "val_set_size": 0,
           "sequence_len": judge.sequence_len, "pad_to_sequence_len": False,
           "micro_batch_size": judge.micro_batch_size, "gradient_accumulation_steps": judge.gradient_accumulation_steps,
           "num_epochs": judge.num_epochs, "learning_rate": judge.learning_rate, "lr_scheduler": "cosine",
           **cpu_run_keys(TRAINED, "prepared", judge.seed)}
    if judge.lora_r:
        cfg.update(lora_keys(judge.lora_r, 2 * judge.lora_r), lora_model_dir=START_ADAPTER)
    return cfg


def train_judge(spec: StudySpec, out: Path, model_dir: Path, files: dict[str, Path]) -> dict:
    """The judge's record, training and measuring it unless the record is on disk."""
    from transformers import AutoTokenizer

    from deft_eval.hh_prompts import load_prompts
    from deft_eval.reward_models import MAX_TOKENS

    folder, judge = judge_folder(out), spec.judge
    if (folder / RECORD).is_file():
        return json.loads((folder / RECORD).read_text())
    if judge.sequence_len > MAX_TOKENS:
        raise SystemExit(f"judge.sequence_len: at most {MAX_TOKENS} (what the reward scorer reads), "
                         f"got {judge.sequence_len}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not getattr(tokenizer, "chat_template", None):
        raise SystemExit(f"{model_dir}: the judge is trained in the model's chat template, and this tokenizer "
                         "has none")
    print("== judge: a reward model trained on the pool", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    pool, _ = load_prompts(str(files["pool"]))
    rows, dropped = training_rows(pool, tokenizer, judge.sequence_len)
    if not rows:
        reasons = ", ".join(f"{len(v)} {k}" for k, v in dropped.items())
        raise SystemExit(f"no pool pair to train the judge on: {reasons}")
    atomic_write_text(folder / "pairs.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_start(model_dir, folder, judge)
    config = folder / "axolotl.yaml"
    atomic_write_text(config, yaml.safe_dump(judge_config(judge), sort_keys=False))
    start, cpu_start = time.perf_counter(), children_cpu_seconds()
    run_axolotl_train(config, folder / "train.log")
    log = folder / "train.log"
    log.write_text(portable(log.read_text()))
    seconds, cpu = time.perf_counter() - start, children_cpu_seconds() - cpu_start
    save_judge(folder / START, folder / TRAINED, judge_model(out), bool(judge.lora_r))
    for used in (TRAINED, START, START_ADAPTER):  # the merged model is what is read; the rest is in it
        shutil.rmtree(folder / used, ignore_errors=True)
    losses = [float(x) for x in re.findall(r"\{'loss': '([^']+)'", log.read_text())]  # one per step
    commit = code_commit()
    record = {"settings": asdict(judge), "pool_pairs": len(pool), "pairs": len(rows),
              "dropped": {k: {"count": len(v), "ids": v} for k, v in dropped.items()},
              "steps": len(losses), "first_loss": losses[0] if losses else None,
              "last_loss": losses[-1] if losses else None, "train_seconds": round(seconds, 2),
              "cpu_seconds": round(cpu, 2),
              "commit": commit, "clean": commit is not None and not commit.endswith("+changes")}
    measured = {"validation"} | {spec.measure.heldout}
    record["heldout"] = {name: pair_accuracy(judge_model(out), load_prompts(str(files[name]))[0]) for name in
                         sorted(measured, key=["validation", "test"].index)}
    gate = record["heldout"]["validation"]
    record["lead"] = judge.lead
    record["read"] = gate["accuracy"] >= gate["prefer_shorter"] + judge.lead
    write_json(folder / RECORD, record)
    return record


def save_judge(start: Path, trained: Path, dest: Path, lora: bool) -> None:
    """The trained judge as a plain sequence classifier with its tokenizer and the form it reads
    (FORM_FILE), written whole or not at all. Axolotl's merge-lora leaves a reward model's score
    head untrained, so the LoRA is merged with PEFT onto the start it was trained from."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from deft_eval.reward_models import FORM_FILE, one_turn_form

    if lora:
        from peft import PeftModel

        base = AutoModelForSequenceClassification.from_pretrained(start, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, trained).merge_and_unload()
    else:
        model = AutoModelForSequenceClassification.from_pretrained(trained, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(trained)
    work = dest.parent / f".{dest.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    model.save_pretrained(work)
    tokenizer.save_pretrained(work)
    (work / FORM_FILE).write_text(json.dumps(one_turn_form(), indent=1))
    shutil.rmtree(dest, ignore_errors=True)
    work.rename(dest)


def pair_accuracy(model_dir: Path, records: list[dict], batch_size: int = 8) -> dict:
    """How often the judge scores the chosen reply above the rejected one (a tie counts half),
    beside how often "prefer the shorter reply" (in the judge's tokens) picks it, on the same pairs."""
    from deft_eval.reward_models import load_reward_model, reward_ids, reward_logits

    model, tokenizer, kind = load_reward_model(str(model_dir), "cpu")
    logit = {k: np.asarray(reward_logits(model, tokenizer, [reward_ids(tokenizer, kind, r["prompt"], r[k])
                                                             for r in records], batch_size)) for k in
             ("chosen", "rejected")}
    tokens = {k: [len(tokenizer(text=r[k])["input_ids"]) for r in records] for k in ("chosen", "rejected")}
    return {"pairs": len(records), "accuracy": float(correct(logit["chosen"] - logit["rejected"]).mean()),
            "prefer_shorter": float(prefer_shorter(tokens["chosen"], tokens["rejected"]).mean())}


def judge_answers(spec: StudySpec, out: Path, batch_size: int) -> None:
    """SCORES beside every run's answers that lack it: per answer its id, the judge's logit (the
    `reward` scorer of deft-eval) and the answer's length in characters."""
    from deft_eval.registry import scorers
    from deft_eval.reward_models import load_reward_model

    loaded = None
    for arm in spec.arms:
        for seed in arm.seeds:
            answers, path = run_dir(out, arm, seed) / "generations.jsonl", run_dir(out, arm, seed) / SCORES
            if path.is_file() or not answers.is_file():
                continue
            loaded = loaded or load_reward_model(str(judge_model(out)), "cpu")
            records = [json.loads(line) for line in answers.read_text().splitlines() if line.strip()]
            scored = scorers()["reward"].per_record(records, {"reward": loaded, "batch_size": batch_size})
            write_json(path, {"answers": [{"id": r["id"], "logit": s["reward_logit"], "chars": len(r["answer"])}
                                          for r, s in zip(records, scored)]})
