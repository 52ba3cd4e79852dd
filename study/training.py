"""Running a study's arms: the data split once, then each (arm, seed) through `axolotl train`
with the plugin, in its own folder. A finished run leaves result.json (written last); a rerun
skips it, so a study can be run in pieces and a killed one loses only the run in progress."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import yaml

from deft_plugin.integration.guard import EVENT
from deft_plugin.launch.axolotl_train import deft_run_config, run_axolotl_train
from deft_plugin.launch.outputs import METRICS_LOG, SELECTION_RECORD
from deft_plugin.utils.atomic import atomic_write_text
from deft_study.spec import Arm, StudySpec

SPLITS = ("pool", "validation", "test")


def portable(text: str) -> str:
    """Text to keep in a study folder, with this machine's paths made relative: the working
    directory becomes `.` and the home directory `~`."""
    for root, short in ((Path.cwd().resolve(), "."), (Path.home().resolve(), "~")):
        if str(root) != "/":
            text = text.replace(f"{root}/", f"{short}/")
    return text


CODE = ("deft_plugin", "study", "eval", "app", "pyproject.toml")  # what a run executes (docs and tests aside)


def code_commit() -> str | None:
    """The commit of the code that runs (with "+changes" when its code has uncommitted changes),
    recorded in every run and report; None outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+changes" if dirty else "")


def run_dir(out: Path, arm: Arm, seed: int) -> Path:
    return out / "arms" / arm.name / f"seed-{seed}"


def split_data(spec: StudySpec, out: Path, raw_rows) -> dict[str, Path]:
    """pool / validation / test JSONL files of raw rows, drawn once with the split's seed; a rerun
    with the same split reuses them, a different split in the same folder is an error."""
    sizes = {"pool": spec.split.pool, "validation": spec.split.validation, "test": spec.split.test}
    record_path = out / "data" / "split.json"
    files = {name: out / "data" / f"{name}.jsonl" for name in SPLITS}
    wanted = {"sizes": sizes, "seed": spec.split.seed, "rows": len(raw_rows)}
    if record_path.is_file():
        found = json.loads(record_path.read_text())
        if {k: found[k] for k in wanted} != wanted:
            raise SystemExit(f"{out}: holds a study with another split ({ {k: found[k] for k in wanted} }); "
                             "use another --out")
        for name in SPLITS:  # the split's files are rebuilt from its indices (only the indices are kept)
            if not files[name].is_file():
                atomic_write_text(files[name], "".join(json.dumps(raw_rows[i]) + "\n" for i in found["indices"][name]))
        return files
    try:
        indices = spec.split.indices(len(raw_rows))
    except ValueError as err:
        raise SystemExit(str(err)) from err
    for name in SPLITS:
        atomic_write_text(files[name], "".join(json.dumps(raw_rows[i]) + "\n" for i in indices[name]))
    atomic_write_text(record_path, json.dumps({**wanted, "indices": indices}, indent=1))
    return files


def arm_config(spec: StudySpec, arm: Arm, seed: int, model_dir: Path, pool: Path, out: Path,
               qdiff_dir: Path | None = None) -> dict:
    """The Axolotl config of one run: the shared recipe, the arm's method, selection and weight.
    Every run shares one dataset_prepared_path, so the pool is scored once for all arms. Paths are
    relative to the run's folder, where Axolotl runs, so the config names no machine path."""
    r = replace(spec.recipe, **arm.recipe)
    here = run_dir(out, arm, seed).resolve()

    def local(path: Path) -> str:
        return os.path.relpath(Path(path).resolve(), here)

    cfg = deft_run_config(local(model_dir), local(pool), arm.method, "model", local(out / "prepared"), seed,
                          deft_reward_weight=arm.reward_weight, deft_filter_score=arm.score, deft_qdiff_norm=arm.norm,
                          deft_score_batch_size=r.score_batch_size, sequence_len=r.sequence_len,
                          micro_batch_size=r.micro_batch_size,
                          gradient_accumulation_steps=r.gradient_accumulation_steps, num_epochs=r.num_epochs,
                          learning_rate=r.learning_rate, lr_scheduler=r.lr_scheduler)
    if r.warmup_ratio:  # written only when set, so that earlier runs' configs stay as they were
        cfg["warmup_ratio"] = r.warmup_ratio
    if arm.reward_weight:  # said whenever the term acts, whatever the plugin's default (lambda 0: no term)
        cfg["deft_loss_form"] = arm.loss_form
    if arm.method == "dpo":
        cfg["rl_beta"] = r.rl_beta
        cfg["deft_reference"] = r.reference
    if arm.select == "all":
        cfg["deft_filter"] = False
    else:
        cfg.update({"deft_filter_select": arm.select, "deft_filter_ratio": arm.ratio, "deft_filter_seed": seed})
        if arm.by != "deft":
            cfg["deft_filter_by"] = arm.by
    if arm.guard_answers_every:
        cfg["deft_guard_answers_every"] = arm.guard_answers_every
    cfg.update(CHECKPOINTS)
    if qdiff_dir is not None:  # Q built from part of the pool (the volume question): scored again with it
        cfg["deft_qdiff_path"] = local(qdiff_dir)
    if r.adapter == "lora":
        cfg.update(lora_keys(r.lora_r, r.lora_alpha))
    return cfg


# A checkpoint every CHECKPOINT_STEPS steps (the last one kept): a run killed midway resumes from its
# last checkpoint on the next `deft study`, the same run as one that was never stopped.
CHECKPOINT_STEPS = 50
CHECKPOINTS = {"save_strategy": "steps", "save_steps": CHECKPOINT_STEPS, "save_total_limit": 1,
               "auto_resume_from_checkpoints": True}


def last_checkpoint_step(model_dir: Path) -> int | None:
    """The step of the newest checkpoint a killed run left, or None."""
    steps = [p.name.rpartition("-")[2] for p in model_dir.glob("checkpoint-*")]
    return max((int(step) for step in steps if step.isdigit()), default=None)


def lora_keys(rank: int, alpha: int) -> dict:
    """LoRA on every linear layer, without Axolotl's fused kernels (GPU-only)."""
    return {"adapter": "lora", "lora_r": rank, "lora_alpha": alpha, "lora_dropout": 0.0, "lora_target_linear": True,
            "lora_mlp_kernel": False, "lora_qkv_kernel": False, "lora_o_kernel": False}


def train_run(spec: StudySpec, arm: Arm, seed: int, model_dir: Path, pool: Path, out: Path,
              partial_qdiff=None) -> dict:
    """Train one (arm, seed) unless its result.json exists; return the result."""
    directory = run_dir(out, arm, seed)
    result_path = directory / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    directory.mkdir(parents=True, exist_ok=True)
    commit = code_commit()
    provenance = {"commit": commit, "clean": commit is not None and not commit.endswith("+changes")}
    if arm.method == "base":
        result = {"arm": arm.name, "seed": seed, "trained": False, "train_seconds": 0.0, "cpu_seconds": 0.0,
                  "kept": 0, "steps": 0, **provenance}
    else:
        config_path = directory / "axolotl.yaml"
        qdiff_dir = partial_qdiff(arm.q_fraction, seed) if arm.q_fraction is not None else None
        atomic_write_text(config_path, yaml.safe_dump(arm_config(spec, arm, seed, model_dir, pool, out, qdiff_dir),
                                                      sort_keys=False))
        resumed = last_checkpoint_step(directory / "model")
        log = directory / "train.log"
        if resumed is not None:  # the killed piece's log stays, guard events included
            with log.open("a") as f:
                f.write(f"== resumed from its checkpoint at step {resumed}\n")
        start, cpu_start = time.perf_counter(), children_cpu_seconds()
        run_axolotl_train(config_path, log, append=resumed is not None)
        log.write_text(portable(log.read_text()))
        for checkpoint in (directory / "model").glob("checkpoint-*"):
            shutil.rmtree(checkpoint)  # the run is finished: its adapter is in model/
        result = {"arm": arm.name, "seed": seed, "trained": True, **provenance,
                  # resumed: the time and CPU seconds are those of the last piece, from this step on
                  **({"resumed_from_step": resumed} if resumed is not None else {}),
                  "train_seconds": round(time.perf_counter() - start, 2),
                  "cpu_seconds": round(children_cpu_seconds() - cpu_start, 2), **run_record(directory / "model"),
                  "guard_events": guard_events(log)}
    atomic_write_text(result_path, portable(json.dumps(result, indent=2)))
    return result


def children_cpu_seconds() -> float:
    """User and system CPU seconds of this process's finished child processes (the training runs):
    on a shared or throttled machine a steadier cost than wall time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def guard_events(log: Path) -> list[str]:
    """The collapse guard's event lines in a run's log ([]: it stayed silent the whole run)."""
    return [line[line.index(EVENT):] for line in log.read_text().splitlines() if EVENT in line]


def run_record(model_dir: Path) -> dict:
    """What a finished run says of itself: the rows it kept, the filter's timings, its steps."""
    selection = json.loads((model_dir / SELECTION_RECORD).read_text())
    history = [json.loads(line) for line in (model_dir / METRICS_LOG).read_text().splitlines()]
    steps = [h for h in history if "loss" in h]
    timings = selection["report"].get("timings", {})
    return {"kept": len(selection["kept"]), "kept_indices": selection["kept"], "steps": len(steps),
            "scoring_seconds": round(timings.get("score_s", 0.0), 2),
            "first_loss": steps[0]["loss"] if steps else None, "last_loss": steps[-1]["loss"] if steps else None,
            "filter_report": selection["report"]}
