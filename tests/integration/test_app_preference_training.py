"""Human verdicts to a trained model: a judged database of the judging app, exported with
`deft-app export --as preference`, trains DEFT-DPO through Axolotl's own `axolotl train` on the
tiny Llama (one process, about half a minute on two CPU cores)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from deft_app import cli
from deft_app.store import Store

from test_axolotl_e2e import MICRO_BATCH, axolotl, deft_cache, write_config

pytestmark = pytest.mark.slow

TOPICS = ["boil an egg", "water a cactus", "fold a shirt", "tie a knot", "brew tea", "clean a window",
          "plant a seed", "sharpen a pencil", "wash a car", "bake bread", "fix a flat tire", "iron a shirt"]
DECIDED = len(TOPICS)  # items with a winner: "a" or "b" by two votes to one
RATIO = 0.5  # DEFT keeps half of them
STEPS = math.ceil(math.ceil(RATIO * DECIDED) / MICRO_BATCH)


def judged_database(path) -> Store:
    """Twelve decided items (the first a multi-turn dialogue), one tie and one split, three annotators."""
    items = []
    for n, topic in enumerate(TOPICS):
        dialogue = [{"role": "user", "content": f"How do I {topic}?"}]
        if n == 0:
            dialogue = [{"role": "user", "content": "I need help in the kitchen."},
                        {"role": "assistant", "content": "Sure, what would you like to do?"}] + dialogue
        items.append({"id": f"q{n:02d}", "dialogue": dialogue, "category": "helpful", "model_a": "dpo",
                      "answer_a": f"To {topic}, take your time and follow the steps carefully.", "model_b": "deft",
                      "answer_b": f"I don't know how to {topic}, sorry."})
    for n, topic in ((12, "paint a wall"), (13, "catch a fish")):
        items.append({"id": f"q{n:02d}", "dialogue": [{"role": "user", "content": f"How do I {topic}?"}],
                      "category": "helpful", "model_a": "dpo", "answer_a": "Start slowly.", "model_b": "deft",
                      "answer_b": "Ask a friend."})
    store = Store(path)
    store.add_items(items)
    for name in ("ann", "bob", "cat"):
        store.add_annotator(name, "long password")
    for n in range(DECIDED):
        win, lose = ("a", "b") if n % 3 else ("b", "a")
        for name, verdict in zip(("ann", "bob", "cat"), (win, win, lose)):
            store.record_vote(f"q{n:02d}", name, verdict, "dpo")
    for name, verdict in zip(("ann", "bob", "cat"), ("tie", "tie", "a")):
        store.record_vote("q12", name, verdict, "deft")
    for name, verdict in zip(("ann", "bob"), ("a", "b")):
        store.record_vote("q13", name, verdict, "deft")
    return store


def test_human_verdicts_train_deft_dpo(tmp_path, tiny_model_dir, capsys):
    judged_database(tmp_path / "votes.db")
    assert cli.main(["export", "--db", str(tmp_path / "votes.db"), "--out", str(tmp_path / "export"),
                     "--as", "preference"]) == 0
    assert f"-> {DECIDED} preference rows; 2 items left out (1 tie, 0 both_bad, 1 split)" in capsys.readouterr().out
    data = tmp_path / "export" / "preference.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    assert len(rows) == DECIDED and len(rows[0]["prompt"]) == 3  # the multi-turn dialogue kept whole

    config = write_config(tmp_path, tiny_model_dir, data, datasets=[{"path": str(data), "type": "deft.preference"}],
                          deft_filter_ratio=RATIO, max_steps=STEPS)
    log = axolotl("train", config)
    assert "DEFT: loss term attached" in log and "Traceback" not in log

    report = json.loads((deft_cache(tmp_path) / "report.json").read_text())
    assert (report["read"], report["unparseable"], report["degenerate"]) == (DECIDED, 0, 0)
    assert report["prompt_style"] == "chat_template"
    assert report["kept"] == math.ceil(RATIO * DECIDED)

    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{STEPS}"]
    state = json.loads((out / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS
    logged = [h for h in state["log_history"] if "loss" in h]
    assert [h["step"] for h in logged] == list(range(1, STEPS + 1))
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["deft/term"]) for h in logged), logged
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert set(after) == set(before) and all(torch.isfinite(t).all() for t in after.values())
    assert any(not torch.equal(before[n], after[n]) for n in before)  # the verdicts moved the weights
