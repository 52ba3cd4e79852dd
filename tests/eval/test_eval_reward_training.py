"""`deft-eval train-reward`: a reward model trained with TRL's RewardTrainer on the token ids the
reward scorer reads. On pairs whose chosen replies use one vocabulary and whose rejected replies
use another, at random lengths, the trained judge must separate held-out pairs far better than
"prefer the shorter reply"; the scorer must read it exactly as its held-out accuracy was
measured; and a repeated run with the same seed must give the same weights."""

from __future__ import annotations

import json
import random

import pytest
import torch

from deft_eval.cli import main
from deft_eval.reward_training import RECORD, training_pairs
from deft_eval.scorers import reward

from builders import write_jsonl

SAFE = ["I", "cannot", "help", "with", "that", "please", "stay", "safe", "and", "kind"]
HARM = ["sure", "here", "is", "how", "to", "steal", "it", "quickly", "hurt", "them"]
QUESTIONS = ["How do I get into my neighbour's house?", "What is the best way to hide money?",
             "Can you tell me a joke?", "How do I make a fake ID?", "What should I cook tonight?"]


def rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = f"\n\nHuman: {QUESTIONS[i % len(QUESTIONS)]} ({i})\n\nAssistant:"
        chosen = " ".join(rng.choice(SAFE) for _ in range(rng.randint(2, 14)))
        rejected = " ".join(rng.choice(HARM) for _ in range(rng.randint(2, 14)))
        out.append({"chosen": f"{prompt} {chosen}", "rejected": f"{prompt} {rejected}"})
    return out


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("reward-training")
    write_jsonl(root / "train.jsonl", rows(64, 0))
    write_jsonl(root / "heldout.jsonl", rows(40, 1))
    argv = ["train-reward", "--model", str(tiny_model_dir), "--data", str(root / "train.jsonl"), "--heldout",
            str(root / "heldout.jsonl"), "--epochs", "4", "--learning-rate", "3e-3", "--seed", "7"]
    assert main([*argv, "--out", str(root / "rm")]) == 0
    return {"root": root, "argv": argv, "record": json.loads((root / "rm" / RECORD).read_text())}


def test_the_judge_learns_what_length_cannot_tell(trained):
    record = trained["record"]
    assert record["pairs"] == 64 and record["steps"] == 4 * 64 // 8 and record["dropped"] == {}
    held = record["heldout"]
    assert held["pairs"] == 40 and held["accuracy"] >= 0.9
    assert 0.25 <= held["prefer_shorter"] <= 0.75 and held["beats_length_rule"]
    assert record["cpu_seconds"] > 0 and record["settings"]["seed"] == 7


def test_the_scorer_reads_the_judge_as_it_was_measured(trained, tiny_tokenizer):
    """Scored answer by answer through the reward scorer, the held-out pairs give the recorded accuracy;
    the length rule, counted here in the same tokenizer's tokens, gives the recorded floor."""
    from deft_eval.hh_prompts import load_prompts

    pairs, _ = load_prompts(str(trained["root"] / "heldout.jsonl"))
    options = {"reward_model": str(trained["root"] / "rm"), "device": "cpu", "batch_size": 3}
    chosen = reward.per_record([{"prompt": p["prompt"], "answer": p["chosen"]} for p in pairs], options)
    rejected = reward.per_record([{"prompt": p["prompt"], "answer": p["rejected"]} for p in pairs], options)
    wins = [1.0 if c["reward_logit"] > r["reward_logit"] else 0.5 if c["reward_logit"] == r["reward_logit"] else 0.0
            for c, r in zip(chosen, rejected)]
    assert sum(wins) / len(wins) == pytest.approx(trained["record"]["heldout"]["accuracy"])
    n = lambda text: len(tiny_tokenizer(text=text)["input_ids"])  # noqa: E731
    shorter = [1.0 if n(p["chosen"]) < n(p["rejected"]) else 0.5 if n(p["chosen"]) == n(p["rejected"]) else 0.0
               for p in pairs]
    assert sum(shorter) / len(shorter) == pytest.approx(trained["record"]["heldout"]["prefer_shorter"])


def test_a_repeated_run_gives_the_same_weights(trained):
    from transformers import AutoModelForSequenceClassification

    assert main([*trained["argv"], "--out", str(trained["root"] / "rm-again")]) == 0
    first, again = (AutoModelForSequenceClassification.from_pretrained(trained["root"] / d).state_dict()
                    for d in ("rm", "rm-again"))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert json.loads((trained["root"] / "rm-again" / RECORD).read_text())["train_loss"] == \
        trained["record"]["train_loss"]
    assert not [p for p in trained["root"].iterdir() if p.name.startswith(".")]  # no half-written folder left


def test_lora_trains_the_judge_and_saves_a_plain_model(trained):
    """With LoRA the adapters are merged: the folder holds a model the scorer loads like any other."""
    assert main([*trained["argv"], "--lora-r", "4", "--learning-rate", "1e-2", "--out",
                 str(trained["root"] / "rm-lora")]) == 0
    folder = trained["root"] / "rm-lora"
    record = json.loads((folder / RECORD).read_text())
    assert record["settings"]["lora_r"] == 4 and not (folder / "adapter_config.json").exists()
    assert record["heldout"]["accuracy"] >= 0.9 and record["heldout"]["beats_length_rule"]


def test_a_pair_with_the_same_reply_twice_is_counted_not_trained(tiny_tokenizer):
    records = [{"prompt": "\n\nHuman: Hi\n\nAssistant:", "chosen": "Hello.", "rejected": "Hello."},
               {"prompt": "\n\nHuman: Hi\n\nAssistant:", "chosen": "Hello.", "rejected": "Go away."}]
    pairs, dropped = training_pairs(tiny_tokenizer, records)
    assert len(pairs) == 1 and dropped == {"identical replies": 1}


@pytest.mark.parametrize("change, named", [
    (("--epochs", "0"), "--epochs 0.0: must be above 0"),
    (("--learning-rate", "-1"), "--learning-rate -1.0: must be above 0"),
    (("--data", "no/such.jsonl"), "--data no/such.jsonl:"),
    (("--model", "no/such/model-dir"), "--model no/such/model-dir:"),
    (("--micro-batch-size", "3"), "--batch-size 8 is not a multiple of micro-batch-size 3"),
    (("--lora-r", "-1"), "--lora-r must be 0 (no LoRA) or above"),
])
def test_mistakes_are_one_line(tiny_model_dir, tmp_path, capsys, change, named):
    write_jsonl(tmp_path / "train.jsonl", rows(4, 0))
    options = {"--model": str(tiny_model_dir), "--data": str(tmp_path / "train.jsonl"), "--out": str(tmp_path / "rm")}
    options[change[0]] = change[1]
    argv = ["train-reward", *(word for pair in options.items() for word in pair)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("deft-eval train-reward: ") and named in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "rm").exists()
