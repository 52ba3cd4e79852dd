"""A study from start to end: split the data, build the study's Q from the pool, then for every
(arm, seed) train (runner.py) and measure on the held-out pairs (measure.py), each step skipped
when its result is on disk; then the report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from deft_study.judge import judge_answers, train_judge
from deft_study.measure import (
    backfill_generation_stats,
    generate_and_score,
    load_trained,
    measure_pairs,
    write_json,
)
from deft_study.spec import Arm, StudySpec
from deft_study.training import run_dir, split_data, train_run

if TYPE_CHECKING:
    from deft_plugin.data.encoding import EncodedRow


def encoded_split(path: Path, tokenizer, max_length: int):
    """(usable encoded pairs, parsed rows, counts) of one split file, as the plugin encodes them."""
    from deft_plugin.data.encoding import encode_rows, resolve_prompt_style
    from deft_plugin.data.parsing import parse_source

    parsed = parse_source(str(path), "hh_rlhf", resolve_prompt_style("auto", tokenizer))
    usable, degenerate = encode_rows(parsed.rows, tokenizer, max_length)
    counts = {"rows": parsed.read, "unparseable": sum(parsed.unparseable.values()),
              "degenerate": sum(degenerate.values()), "usable": len(usable)}
    return usable, parsed.rows, counts


def study_qdiff(out: Path, pool: list[EncodedRow], tokenizer):
    """Q of the whole pool (its usable encoded pairs): the yardstick of every arm's held-out
    distribution reward gap."""
    from deft_plugin.core.qdiff import QDiff
    from deft_plugin.filtering.pipeline import build_qdiff

    directory = out / "qdiff"
    if (directory / "qdiff.json").is_file():
        return QDiff.load(directory)
    qdiff = build_qdiff(pool, tokenizer, "maxabs")
    qdiff.save(directory)
    return qdiff


def partial_qdiff(out: Path, pool: list[EncodedRow], tokenizer, spec: StudySpec, fraction: float, draw: int) -> Path:
    """The folder of Q built from a seeded fraction of the pool's usable pairs (as in the volume
    analysis), saved for the plugin's deft_qdiff_path."""
    from deft_plugin.filtering.pipeline import build_qdiff
    from deft_study.qvolume import subset_indices

    directory = out / "qdiff" / f"fraction-{fraction:g}-draw-{draw}"
    if not (directory / "qdiff.json").is_file():
        chosen = subset_indices(len(pool), fraction, draw, spec.split.seed)
        build_qdiff([pool[j] for j in chosen], tokenizer, "maxabs", fraction=fraction, draw=draw).save(directory)
    return directory


def write_pool_tokens(out: Path, pool: list[EncodedRow]) -> None:
    """Tokens one epoch over each usable pool row costs (the prompt once per reply, and the replies),
    by the row indices the plugin's selection records use."""
    path = out / "data" / "pool_tokens.json"
    if not path.is_file():
        tokens = {r.index: sum(len(r.prompt_ids) + len(c) for c in r.completions) for r in pool}
        write_json(path, {str(i): n for i, n in tokens.items()})


def measure_run(spec: StudySpec, arm: Arm, seed: int, out: Path, model_dir: Path, tokenizer, pairs, qn,
                prompts: list[dict], progress: bool) -> dict:
    """eval.json of one (arm, seed) unless it exists: per-pair values and the generation scores."""
    path = run_dir(out, arm, seed) / "eval.json"
    if path.is_file():
        return backfill_generation_stats(path, run_dir(out, arm, seed) / "generations.jsonl")
    import torch
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    model = (AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval() if arm.method == "base"
             else load_trained(run_dir(out, arm, seed) / "model", model_dir))
    m = spec.measure
    values = measure_pairs(model, pairs, qn, tokenizer.all_special_ids, tokenizer.pad_token_id or 0, m.batch_size,
                           progress)
    generation = None
    if m.generate:
        generation = generate_and_score(model, tokenizer, prompts, run_dir(out, arm, seed) / "generations.jsonl",
                                        m.max_new_tokens, m.max_prompt_tokens, m.batch_size, f"{arm.name}/{seed}")
    result = {"arm": arm.name, "seed": seed, "pairs": values, "generation": generation,
              "seconds": round(time.perf_counter() - start, 2)}
    write_json(path, result)
    return result


def runs_now(spec: StudySpec, only: set[str] | None = None, seeds: set[int] | None = None) -> list[tuple[Arm, int]]:
    """The (arm, seed) runs of the spec in its order, of the arms in `only` and the seeds in `seeds`
    where given; the base arm always (every comparison needs it)."""
    return [(arm, seed) for arm in spec.arms for seed in arm.seeds
            if arm.method == "base" or ((not only or arm.name in only) and (seeds is None or seed in seeds))]


def run_study(spec: StudySpec, out: Path, model_dir: Path, rows: list[dict], only: set[str] | None = None,
              progress: bool = True, seeds: set[int] | None = None) -> None:
    """Train and measure every (arm, seed) of the spec (or of the arms named in `only`, the seeds in
    `seeds`) on the data's raw rows; the judge and the Q-volume question only for the whole study."""
    from transformers import AutoTokenizer

    from deft_eval.hh_prompts import load_prompts

    out.mkdir(parents=True, exist_ok=True)
    files = split_data(spec, out, rows)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    measured = files[spec.measure.heldout]
    pairs, _, counts = encoded_split(measured, tokenizer, spec.recipe.sequence_len)
    write_json(out / "data" / "measured_counts.json", {"split": spec.measure.heldout, **counts})
    pool, _, _ = encoded_split(files["pool"], tokenizer, spec.recipe.sequence_len)  # encoded once, for every step
    qdiff = study_qdiff(out, pool, tokenizer)
    write_pool_tokens(out, pool)
    prompts = load_prompts(str(measured))[0][: spec.measure.generate] if spec.measure.generate else []
    for arm, seed in runs_now(spec, only, seeds):
        print(f"== {arm.name} seed {seed}", flush=True)
        train_run(spec, arm, seed, model_dir, files["pool"], out,
                  lambda fraction, draw: partial_qdiff(out, pool, tokenizer, spec, fraction, draw))
        measure_run(spec, arm, seed, out, model_dir, tokenizer, pairs, qdiff.qn, prompts, progress)
    whole = not only and seeds is None
    if spec.judge and whole:
        train_judge(spec, out, model_dir, files)
        judge_answers(spec, out, spec.measure.batch_size)
    if spec.q_volume.fractions and whole:
        measure_q_volume(spec, out, model_dir, tokenizer, pool, progress)


def measure_q_volume(spec: StudySpec, out: Path, model_dir: Path, tokenizer, pool: list[EncodedRow],
                     progress: bool) -> None:
    """qvolume.json unless it exists: Q from parts of the pool (its usable encoded pairs) against Q
    of all of it."""
    path = out / "qvolume.json"
    if path.is_file():
        return
    import torch
    from transformers import AutoModelForCausalLM

    from deft_plugin.filtering.scorer import mean_distributions
    from deft_study.qvolume import q_volume

    print("== Q against data volume", flush=True)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    dists = mean_distributions(model, pool, tokenizer.all_special_ids, tokenizer.pad_token_id or 0,
                               spec.recipe.score_batch_size, progress=progress)
    v = spec.q_volume
    result = q_volume(pool, dists, tokenizer, v.fractions, v.draws, v.ratio, spec.split.seed)
    write_json(path, {**result, "seconds": round(time.perf_counter() - start, 2)})
