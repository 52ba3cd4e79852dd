"""Reward-model score of each answer in its dialogue: sigmoid(logit) x100 (PRO's reported
score, averaged in tables) and the raw logit. Standard one-logit sequence-classification
checkpoints and the OpenAssistant GPT-NeoX reward format are both loaded."""

from __future__ import annotations

import math

from deft_eval.hookspecs import Scorer, hookimpl


def per_record(records: list[dict], options: dict) -> list[dict[str, float]]:
    from deft_eval.reward_models import load_reward_model, reward_ids, reward_logits

    if options.get("reward"):
        model, tokenizer, kind = options["reward"]
    elif options.get("reward_model"):
        model, tokenizer, kind = load_reward_model(options["reward_model"], options.get("device", "auto"))
    else:
        raise ValueError("the reward scorer needs a reward model: give --reward-model DIR_OR_ID")
    ids = [reward_ids(tokenizer, kind, r["prompt"], r["answer"]) for r in records]
    logits = reward_logits(model, tokenizer, ids, int(options.get("batch_size", 8)))
    return [{"reward": 100.0 / (1.0 + math.exp(-z)), "reward_logit": z} for z in logits]


@hookimpl
def deft_eval_scorers():
    return [Scorer("reward", per_record, None, "reward-model score: sigmoid x100 and raw logit",
                   {"reward_model": "reward model directory or hub id (standard or OpenAssistant GPT-NeoX format)"})]
