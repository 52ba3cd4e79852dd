"""The study's reward-model judge trained by this stack's `axolotl train` on real HH-RLHF pairs:
Axolotl tokenises its Bradley-Terry rows into exactly the ids the reward scorer builds for an
answer, and the saved judge (LoRA merged with PEFT) gives the trained adapter's logits."""

from __future__ import annotations

import json

import pytest
import torch

from deft_study.judge import RECORD, TRAINED, judge_model, save_judge, train_judge
from deft_study.spec import Judge, Measure, StudySpec

from builders import hh_rows, write_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def judged(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("judged")
    rows = hh_rows(30)
    files = {"pool": write_jsonl(out / "data" / "pool.jsonl", rows[:22]),
             "validation": write_jsonl(out / "data" / "validation.jsonl", rows[22:])}
    spec = StudySpec(measure=Measure(heldout="validation"),
                     judge=Judge(learning_rate=1e-3, gradient_accumulation_steps=4, sequence_len=300))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(out)
        record = train_judge(spec, out, tiny_model_dir, files)
    return out, record


def test_axolotl_trains_the_judge_on_the_ids_the_scorer_reads(judged):
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from deft_eval.hh_prompts import load_prompts
    from deft_eval.reward_models import ONE_TURN, reward_ids

    out, record = judged
    assert json.loads((out / "judge" / RECORD).read_text()) == record
    pool, _ = load_prompts(str(out / "data" / "pool.jsonl"))
    dropped = {i for d in record["dropped"].values() for i in d["ids"]}
    kept = [r for r in pool if r["id"] not in dropped]
    assert record["pairs"] == len(kept) > 0 and record["steps"] == -(-len(kept) // 4)
    tokenizer = AutoTokenizer.from_pretrained(judge_model(out))
    (prepared,) = [p for p in (out / "judge" / "prepared").iterdir() if (p / "dataset_info.json").is_file()]
    trained = load_from_disk(str(prepared))
    assert sorted(list(x) for x in [*trained["chosen_ids"], *trained["rejected_ids"]]) == sorted(
        reward_ids(tokenizer, ONE_TURN, r["prompt"], r[k]) for r in kept for k in ("chosen", "rejected"))
    assert list(record["heldout"]) == ["validation"] and record["heldout"]["validation"]["pairs"] == 8


def test_the_saved_judge_is_the_trained_adapter_merged_and_a_rerun_is_identical(judged, tiny_model_dir, tmp_path):
    """Trained again from the same seed, keeping the adapter: the merged judge's logits are the
    adapter's on its start (Axolotl's merge-lora would leave the head at its random start), and its
    weights are the first judge's to the bit (Axolotl alone draws the head and the adapter unseeded)."""
    import yaml
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from deft_eval.reward_models import load_reward_model
    from deft_plugin.launch.axolotl_train import run_axolotl_train
    from deft_study.judge import START, write_start

    out, _ = judged
    config = yaml.safe_load((out / "judge" / "axolotl.yaml").read_text())
    judge = Judge(**json.loads((out / "judge" / RECORD).read_text())["settings"])
    write_start(tiny_model_dir, tmp_path, judge)
    config["datasets"][0]["path"] = str(out / "judge" / "pairs.jsonl")
    (tmp_path / "axolotl.yaml").write_text(yaml.safe_dump(config))
    run_axolotl_train(tmp_path / "axolotl.yaml", tmp_path / "train.log")
    save_judge(tmp_path / START, tmp_path / TRAINED, tmp_path / "model", lora=True)
    merged, tokenizer, kind = load_reward_model(str(tmp_path / "model"), "cpu")
    assert kind == "one-turn"
    start = AutoModelForSequenceClassification.from_pretrained(tmp_path / START).eval()
    ids = torch.tensor([tokenizer("Human: may I?\n\nAssistant: yes")["input_ids"]])
    with torch.no_grad():
        before = start(ids).logits.item()
        adapter = PeftModel.from_pretrained(start, tmp_path / TRAINED).eval()
        assert merged(ids).logits.item() == pytest.approx(adapter(ids).logits.item(), abs=1e-5)
    assert merged(ids).logits.item() != pytest.approx(before, abs=1e-6)  # it trained
    first = AutoModelForSequenceClassification.from_pretrained(judge_model(out)).state_dict()
    assert all(torch.equal(first[k], v) for k, v in merged.state_dict().items())


def test_a_judge_without_lora_trains_every_weight(tmp_path, tiny_model_dir):
    """lora_r 0: Axolotl trains the whole classifier from the seeded start, and the saved judge is
    that model, read in the one-turn form."""
    from transformers import AutoModelForSequenceClassification

    from deft_eval.reward_models import load_reward_model

    rows = hh_rows(20)
    files = {"pool": write_jsonl(tmp_path / "data" / "pool.jsonl", rows[:12]),
             "validation": write_jsonl(tmp_path / "data" / "validation.jsonl", rows[12:])}
    spec = StudySpec(measure=Measure(heldout="validation"),
                     judge=Judge(lora_r=0, learning_rate=1e-3, gradient_accumulation_steps=4, sequence_len=300))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        record = train_judge(spec, tmp_path, tiny_model_dir, files)
    assert record["steps"] == -(-record["pairs"] // 4) and record["heldout"]["validation"]["pairs"] == 8
    model, _, kind = load_reward_model(str(judge_model(tmp_path)), "cpu")
    assert kind == "one-turn" and not (tmp_path / "judge" / TRAINED).exists()
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    assert not torch.equal(model.model.layers[0].mlp.down_proj.weight, base.model.layers[0].mlp.down_proj.weight)
