"""The one split (deft_plugin/data/split.py) and the rule that comes with it: nothing that trains
reads a test pair. The demo (and the lambda sweep, which samples through it), the benchmarks that
train and the study all draw training rows from the pool part only."""

from __future__ import annotations

import ast
import importlib.util
import json

import pytest

from deft_plugin.cli.demo import sample_rows
from deft_plugin.data.sources import load_rows
from deft_plugin.data.split import DATA_SPLIT, Split
from deft_plugin.utils.usage import UsageError
from deft_study.spec import StudySpec

from builders import HH_TEST, REPO


@pytest.fixture(scope="module")
def hh():
    return [dict(r) for r in load_rows(str(HH_TEST))]


def key(row: dict) -> str:
    return json.dumps(row, sort_keys=True)


def test_parts_are_disjoint_and_cover_the_data():
    parts = DATA_SPLIT.indices(2312)
    assert [len(parts[p]) for p in ("test", "validation", "pool")] == [500, 200, 1612]
    assert sorted(parts["test"] + parts["validation"] + parts["pool"]) == list(range(2312))
    assert DATA_SPLIT.indices(2312) == parts  # seeded: the same on every run and machine


def test_a_bigger_pool_or_data_set_never_moves_a_test_or_validation_row():
    small, large = Split(50, 20, 100, seed=3).indices(400), Split(50, 20, None, seed=3).indices(400)
    assert small["test"] == large["test"] and small["validation"] == large["validation"]
    assert set(small["pool"]) < set(large["pool"])


def test_a_split_that_does_not_fit_is_refused_with_its_sizes():
    with pytest.raises(ValueError, match=r"split: test 500 \+ validation 200 \+ pool the rest do not fit the 600"):
        DATA_SPLIT.indices(600)


def test_the_first_study_split_is_reproduced():
    """The split the first study recorded (docs/study/first-edition/data/split.json), from its spec's sizes."""
    record = json.loads((REPO / "docs" / "study" / "first-edition" / "data" / "split.json").read_text())
    split = Split(test=300, validation=100, pool=400, seed=0)
    assert split.indices(record["rows"]) == record["indices"]


def test_the_demo_trains_on_the_pool_and_measures_on_validation(hh):
    parts = {part: {key(r) for r in rows} for part, rows in DATA_SPLIT.parts(hh).items()}
    train, heldout = sample_rows(hh, 200, 40, seed=0)
    assert len(train) == 200 and len(heldout) == 40
    assert {key(r) for r in train} <= parts["pool"] and {key(r) for r in heldout} <= parts["validation"]
    assert not ({key(r) for r in train + heldout} & parts["test"])
    with pytest.raises(UsageError, match="--pairs 2000 / --heldout 40: the split leaves 1612 pool rows"):
        sample_rows(hh, 2000, 40, seed=0)


def test_the_benchmarks_that_train_draw_from_the_pool(hh, tiny_tokenizer):
    spec = importlib.util.spec_from_file_location("free_reference", REPO / "benchmarks" / "free_reference.py")
    free_reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(free_reference)
    raw, _, _ = free_reference.hh_pairs(tiny_tokenizer, HH_TEST, 8, 256)
    assert len(raw) == 16 and {key(r) for r in raw} <= {key(r) for r in DATA_SPLIT.parts(hh)["pool"]}
    # the others read their rows inline: through the split's pool, or (the sweep) the demo's sampling
    for name, needle in (("chunked_loss.py", 'DATA_SPLIT.parts(load_rows(args.data))["pool"]'),
                         ("free_reference.py", 'DATA_SPLIT.parts(load_rows(str(path)))["pool"]'),
                         ("reward_weight_sweep.py", "sample_rows(load_rows(")):
        assert needle in (REPO / "benchmarks" / name).read_text(), name


def test_every_benchmark_that_trains_reads_its_data_through_the_split():
    """A benchmark that trains (it builds trainers or runs `axolotl train`) and reads HH-RLHF rows
    must name the split or the demo's sampling: a new one that does not fails here."""
    for path in sorted((REPO / "benchmarks").glob("*.py")):
        text = path.read_text()
        trains = any(word in text for word in ("run_axolotl_train", "setup_model_and_trainer", "training_step"))
        reads = any(isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", "")) == "load_rows"
                    for n in ast.walk(ast.parse(text)))
        if trains and reads:
            assert "DATA_SPLIT" in text or "sample_rows" in text, path.name


def test_the_study_trains_on_its_pool_file_and_defaults_to_the_split():
    assert StudySpec().split == DATA_SPLIT
    from deft_study.training import arm_config

    spec = StudySpec()
    for arm in spec.arms:
        if arm.method != "base":
            cfg = arm_config(spec, arm, 0, REPO / "model", REPO / "out" / "data" / "pool.jsonl", REPO / "out")
            assert [d["path"] for d in cfg["datasets"]] == ["../../../data/pool.jsonl"]
