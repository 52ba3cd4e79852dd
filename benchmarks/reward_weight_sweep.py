"""Measure the effect of `deft_reward_weight` (lambda) on the SmolLM2 CPU demo.

For each lambda the same DEFT-DPO demo runs (same sample, same filtered pairs, same seed);
after training the held-out pairs are measured twice: preference accuracy / mean log-prob margin
(does the model prefer the chosen reply?) and the mean distribution-reward gap
R(x, y+) - R(x, y-) under the run's own Q (what the DEFT term pushes up). One table is
appended to RESULTS.md. The plugin's defaults come from docs/study/safe-term (chosen on the
validation split); this sweep looks at lambda of the default form on your own model and pool.

    python benchmarks/reward_weight_sweep.py --weights 0 0.1 1 10 --pairs 300 --ratio 0.1 --heldout 100
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deft_plugin.cli.demo import add_demo_args  # noqa: E402


def reward_gap(model_dir: Path, cache_dir: Path, heldout_rows: list[dict], args) -> float:
    """Mean R(x, y+) - R(x, y-) over the held-out pairs under the run's Q."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deft_plugin.core.qdiff import QDiff
    from deft_plugin.data.encoding import encode_rows, resolve_prompt_style
    from deft_plugin.data.parsing import parse_rows
    from deft_plugin.filtering.scorer import ReplyScorer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    parsed = parse_rows(heldout_rows, "hh_rlhf", resolve_prompt_style("auto", tokenizer), source="held-out")
    pairs, _ = encode_rows(parsed.rows, tokenizer, args.sequence_len)
    scorer = ReplyScorer(model, QDiff.load(cache_dir).qn, tokenizer.all_special_ids,
                        tokenizer.pad_token_id or 0, args.score_batch_size)
    scores = scorer.score(pairs, progress=False)
    return statistics.fmean(s.rewards[0] - s.rewards[1] for s in scores.values())


def main() -> None:
    from deft_plugin.cli.demo import axolotl_config, heldout, sample_rows
    from deft_plugin.cli.smollm2 import ensure_smollm2
    from deft_plugin.data.sources import load_rows
    from deft_plugin.launch.axolotl_train import OFFLINE_ENV, run_axolotl_train
    from deft_plugin.launch.defaults import default_data
    from deft_plugin.launch.outputs import METRICS_LOG

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_demo_args(p)
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.1, 1.0, 10.0])
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    p.add_argument("--sweep-dir", default=None, help="default: runs/sweep-<time>")
    args = p.parse_args()
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    sweep_dir = Path(args.sweep_dir or Path("runs") / time.strftime("sweep-%Y%m%d-%H%M%S")).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model) if args.model else ensure_smollm2()
    train_rows, heldout_rows = sample_rows(load_rows(args.data or default_data()), args.pairs, args.heldout, args.seed)
    train_file = sweep_dir / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    before = heldout(model_dir, heldout_rows, args, "held-out (before)")
    rows = []
    for weight in args.weights:
        run_dir = sweep_dir / f"lambda-{weight:g}"
        run_dir.mkdir(exist_ok=True)
        cfg = axolotl_config(argparse.Namespace(**{**vars(args), "reward_weight": weight}), model_dir, train_file,
                             run_dir)
        # lambda does not change the cached rewards
        cfg["dataset_prepared_path"] = str((sweep_dir / "prepared").resolve())
        config_path = run_dir / "axolotl.yaml"
        config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        run_axolotl_train(config_path, run_dir / "train.log")
        cache_dir = next((sweep_dir / "prepared" / "deft").glob("*/report.json")).parent
        if not rows:  # the starting model is the same for every lambda
            before_gap = reward_gap(model_dir, cache_dir, heldout_rows, args)
        after = heldout(run_dir / "model", heldout_rows, args, f"held-out (lambda {weight:g})")
        history = [json.loads(line) for line in (run_dir / "model" / METRICS_LOG).read_text().splitlines()]
        steps = [h for h in history if "loss" in h]
        rows.append({"lambda": weight, "kept": json.loads((cache_dir / "report.json").read_text())["kept"],
                     "steps": len(steps), "acc_before": before["accuracy"], "acc_after": after["accuracy"],
                     "margin_before": before["mean_margin"], "margin_after": after["mean_margin"],
                     "gap_before": before_gap,
                     "gap_after": reward_gap(run_dir / "model", cache_dir, heldout_rows, args),
                     "first_loss": steps[0]["loss"], "last_loss": steps[-1]["loss"],
                     "term_first": steps[0]["deft/term"], "term_last": steps[-1]["deft/term"]})
        print(json.dumps(rows[-1]), flush=True)
    (sweep_dir / "sweep.json").write_text(json.dumps(rows, indent=2))
    table = [f"\n## Reward-weight sweep ({time.strftime('%Y-%m-%d %H:%M')})\n",
             f"SmolLM2-135M-Instruct, CPU fp32, {args.pairs} sampled HH-RLHF harmless-base pairs, ratio {args.ratio}, "
             f"{len(heldout_rows)} held-out pairs, lr {args.learning_rate}, micro batch {args.micro_batch_size}, "
             f"seed {args.seed}.\n",
             "| lambda | kept | steps | held-out acc before -> after | log-prob margin before -> after "
             "| R gap before -> after | loss first -> last | DEFT term first -> last |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['lambda']:g} | {r['kept']} | {r['steps']} | "
                     f"{r['acc_before']:.3f} -> {r['acc_after']:.3f} | "
                     f"{r['margin_before']:.4f} -> {r['margin_after']:.4f} | "
                     f"{r['gap_before']:.5f} -> {r['gap_after']:.5f} | "
                     f"{r['first_loss']:.4f} -> {r['last_loss']:.4f} | {r['term_first']:.5f} -> {r['term_last']:.5f} |")
    text = "\n".join(table) + "\n"
    print(text)
    if args.results:
        with open(args.results, "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
