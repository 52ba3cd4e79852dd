"""The DEFT filter under a torch.distributed process group: two CPU processes (gloo) run
run_filter on the same rows, each scores its own shard, and every rank ends with exactly
the single-process selection. Also resuming across process counts through the cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from deft_plugin.data.parsing import parse_rows
from deft_plugin.filtering.pipeline import FilterSettings, run_filter

from builders import (
    HH_PAIRS,
    KEPT,
    PROMPT_FILLS_SEQUENCE,
    RATIO,
    REPO,
    SCORED,
    SEQUENCE_LEN,
    hh_rows,
    listwise_rows,
)

WORKER = Path(__file__).with_name("dist_filter_worker.py")
SETTINGS = {"ratio": RATIO, "batch_size": 4, "max_length": SEQUENCE_LEN}
WORLD = 2
DEADLINE_S = 60  # both ranks together, start-up included; the process group itself times out at 45 s


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory):
    rows = parse_rows(hh_rows(HH_PAIRS), "hh_rlhf", "chat_template").rows
    path = tmp_path_factory.mktemp("rows") / "rows.json"
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture(scope="module")
def single(sharp_model_dir, rows_file, tiny_tokenizer):
    """The single-process result (no process group, no cache)."""
    from transformers import AutoModelForCausalLM

    rows = json.loads(rows_file.read_text())
    return run_filter(rows, tiny_tokenizer, lambda: AutoModelForCausalLM.from_pretrained(sharp_model_dir).eval(),
                      FilterSettings(**SETTINGS), progress=False)


def launch(tmp_path: Path, model_dir: Path, rows_file: Path, cache_dir: Path | None, world: int = WORLD,
           die_after: int | None = None, expect_rc: int = 0) -> list[dict]:
    """Start `world` worker processes, wait for all of them (killing them at the deadline),
    check their exit status and return their outputs, rank by rank."""
    run = tmp_path / f"run-{uuid.uuid4().hex[:8]}"
    run.mkdir()
    job = {"world": world, "init_method": (run / "pg-init").as_uri(), "model_dir": str(model_dir),
           "rows": str(rows_file), "settings": SETTINGS, "cache_dir": str(cache_dir) if cache_dir else None,
           "out_dir": str(run / "out"), "die_after": die_after}
    (run / "job.json").write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items()
           if k not in {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    procs, logs = [], []
    for rank in range(world):
        log = open(run / f"rank-{rank}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(run / "job.json"), str(rank)], cwd=REPO,
                                      env=env, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + DEADLINE_S
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        for log in logs:
            log.close()
    for rank, p in enumerate(procs):
        if p.returncode != expect_rc:
            tail = (run / f"rank-{rank}.log").read_text()[-4000:]
            pytest.fail(f"rank {rank} exited with {p.returncode}, expected {expect_rc} "
                        f"(-9 also when killed at the {DEADLINE_S} s deadline):\n{tail}")
    if expect_rc != 0:
        return []
    return [json.loads((run / "out" / f"rank-{rank}.json").read_text()) for rank in range(world)]


def assert_same_selection(out: dict, single) -> None:
    assert out["world"] == WORLD
    assert out["kept"] == single.kept
    assert out["report"] == {"rows": HH_PAIRS, "degenerate": PROMPT_FILLS_SEQUENCE, "scored": SCORED,
                             "kept": KEPT}
    scores = {int(k): v for k, v in out["scores"].items()}
    assert set(scores) == set(single.scores)
    for i, s in single.scores.items():
        assert scores[i] == pytest.approx(s, abs=1e-6)
        rc, rr = out["rewards"][str(i)]
        assert rc == pytest.approx(single.rewards[i][0], abs=1e-6)
        assert rr == pytest.approx(single.rewards[i][1], abs=1e-6)


def scored(out: dict) -> list[int]:
    return [i for batch in out["batches"] for i in batch]


def test_two_ranks_split_the_scoring_and_agree(tmp_path, sharp_model_dir, rows_file, single):
    assert len(single.kept) == KEPT and max(abs(s) for s in single.scores.values()) > 0.01
    cache = tmp_path / "cache"
    outs = launch(tmp_path, sharp_model_dir, rows_file, cache)
    for out in outs:
        assert_same_selection(out, single)
        assert out["model_loads"] == 1
    shards = [scored(out) for out in outs]
    # each rank scored half of the pairs, none twice, together all of them
    assert sorted(len(s) for s in shards) == [SCORED // 2, SCORED // 2]
    assert set(shards[0]).isdisjoint(shards[1])
    assert set(shards[0]) | set(shards[1]) == set(single.scores)

    # the cache holds every pair once, written by both processes; the outputs once, by rank 0
    parts = sorted((cache / "parts").glob("part-*.json"))
    writers = {p.name.split("-")[1] for p in parts}
    assert writers == {str(out["pid"]) for out in outs}
    indices = [int(k) for p in parts for k in json.loads(p.read_text())["rows"]]
    assert sorted(indices) == sorted(single.scores)
    report = json.loads((cache / "report.json").read_text())
    assert (report["rows"], report["scored"], report["kept"]) == (HH_PAIRS, SCORED, KEPT)
    lines = [json.loads(line) for line in (cache / "scores.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in lines if r["kept"]) == single.kept
    assert [p for p in cache.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"] == []

    # a second two-rank run finds everything cached: no model, no scoring, same selection
    again = launch(tmp_path, sharp_model_dir, rows_file, cache)
    for out in again:
        assert_same_selection(out, single)
        assert out["model_loads"] == 0 and out["batches"] == []


def test_two_ranks_resume_a_single_process_run_killed_with_sigkill(tmp_path, sharp_model_dir, rows_file, single):
    """A single-process run is SIGKILLed in its 4th scoring batch (no exception handler,
    no clean-up runs); two ranks then finish the job from its cache, splitting only what
    is missing, and agree with the uninterrupted single-process run."""
    cache = tmp_path / "cache"
    launch(tmp_path, sharp_model_dir, rows_file, cache, world=1, die_after=3, expect_rc=-signal.SIGKILL)
    parts = sorted((cache / "parts").glob("part-*.json"))
    assert len(parts) == 3
    done = {int(k) for p in parts for k in json.loads(p.read_text())["rows"]}
    assert len(done) == 3 * 4  # three batches of four
    assert not (cache / "scores.jsonl").exists() and not (cache / "report.json").exists()
    assert [p for p in cache.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"] == []

    outs = launch(tmp_path, sharp_model_dir, rows_file, cache)
    shards = [scored(out) for out in outs]
    assert sorted(len(s) for s in shards) == [(SCORED - 12) // 2] * 2
    assert set(shards[0]).isdisjoint(shards[1]) and done.isdisjoint(shards[0] + shards[1])
    assert done | set(shards[0]) | set(shards[1]) == set(single.scores)
    for out in outs:
        assert_same_selection(out, single)
        assert out["model_loads"] == 1


def test_two_ranks_on_ranked_lists_match_one_process_and_resume(tmp_path, sharp_model_dir, tiny_tokenizer):
    """Ranked rows (n = 2..4, some with rewards) under the same guarantees: a one-process run
    killed mid-way is finished by two ranks, each scoring a shard, and the selection and every
    reply's reward equal an uninterrupted single-process run."""
    from transformers import AutoModelForCausalLM

    rows = parse_rows(listwise_rows(40), "listwise", "raw").rows
    path = tmp_path / "ranked.json"
    path.write_text(json.dumps(rows))
    single = run_filter(rows, tiny_tokenizer, lambda: AutoModelForCausalLM.from_pretrained(sharp_model_dir).eval(),
                        FilterSettings(**SETTINGS), progress=False)
    assert {len(r) for r in single.rewards.values()} == {2, 3, 4}
    cache = tmp_path / "cache"
    launch(tmp_path, sharp_model_dir, path, cache, world=1, die_after=2, expect_rc=-signal.SIGKILL)
    done_before = {int(k) for p in (cache / "parts").glob("part-*.json") for k in json.loads(p.read_text())["rows"]}
    assert len(done_before) == 2 * SETTINGS["batch_size"]
    outs = launch(tmp_path, sharp_model_dir, path, cache)
    shards = [set(scored(out)) for out in outs]
    assert shards[0].isdisjoint(shards[1]) and not (shards[0] | shards[1]) & done_before
    assert shards[0] | shards[1] | done_before == set(single.scores)
    for out in outs:
        assert out["kept"] == single.kept
        for i, values in single.rewards.items():
            assert out["rewards"][str(i)] == pytest.approx(list(values), abs=1e-6)
