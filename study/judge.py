"""A reward model as a judge of the study's answers: trained once on the pool's pairs
(`deft-eval train-reward`'s code), measured on the measured split's pairs beside "prefer the
shorter reply", then every run's greedy answers scored by it. Each step is skipped when its
file is on disk, as the arms are."""

from __future__ import annotations

import json
from pathlib import Path

from deft_study.measure import write_json
from deft_study.spec import StudySpec
from deft_study.training import run_dir

JUDGE_DIR = "judge"
SCORES = "judge.json"  # in each run's folder: the judge's logit for each of its answers


def judge_dir(out: Path) -> Path:
    return out / JUDGE_DIR / "model"


def train_judge(spec: StudySpec, out: Path, model_dir: Path, files: dict[str, Path]) -> dict:
    """The judge's training record: trained on the pool (nothing else trains), measured on the
    split the study measures."""
    from deft_eval.hh_prompts import load_prompts
    from deft_eval.reward_training import RECORD, RewardTraining, train_reward_model

    record_path = judge_dir(out) / RECORD
    if record_path.is_file():
        return json.loads(record_path.read_text())
    print("== judge: a reward model trained on the pool", flush=True)
    j = spec.judge
    pool, _ = load_prompts(str(files["pool"]))
    measured, _ = load_prompts(str(files[spec.measure.heldout]))
    settings = RewardTraining(j.epochs, j.learning_rate, j.batch_size, j.seed, j.micro_batch_size, j.lora_r)
    return train_reward_model(model_dir, pool, judge_dir(out), settings, measured)


def judge_answers(spec: StudySpec, out: Path, batch_size: int) -> None:
    """judge.json beside every run's answers that lack it: per answer its id, the judge's logit
    and the answer's length in characters."""
    from deft_eval.reward_models import load_reward_model, reward_ids, reward_logits

    loaded = None
    for arm in spec.arms:
        for seed in arm.seeds:
            answers, path = run_dir(out, arm, seed) / "generations.jsonl", run_dir(out, arm, seed) / SCORES
            if path.is_file() or not answers.is_file():
                continue
            loaded = loaded or load_reward_model(str(judge_dir(out)), "auto")
            model, tokenizer, kind = loaded
            records = [json.loads(line) for line in answers.read_text().splitlines() if line.strip()]
            logits = reward_logits(model, tokenizer, [reward_ids(tokenizer, kind, r["prompt"], r["answer"])
                                                      for r in records], batch_size)
            write_json(path, {"answers": [{"id": r["id"], "logit": z, "chars": len(r["answer"])}
                                          for r, z in zip(records, logits)]})
