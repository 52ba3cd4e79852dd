"""DPO's reference from the scoring pass: what it costs and what it saves, on real HH-RLHF pairs
and real SmolLM2-135M-Instruct weights (CPU here).

P1  The project's scoring pass (ReplyScorer.score_batch: rewards and reference log-probabilities,
    each prompt once per row) against TRL's own reference precompute on the same pairs: TRL's
    collator and DPOTrainer.compute_ref_log_probs, batch by batch in dataset order as
    _precompute_ref_logps runs it (the TRL installed: 1.9 with Axolotl 0.19; with TRL 1.14 also
    its chunked path, use_liger_kernel). Same pairs, same pairs per batch.
P2  One training step (forward, backward, optimizer step) of DEFT-DPO with the free reference
    (no reference model) against one of plain Axolotl DPO with its own reference model, both
    trainers built by Axolotl from one config (full fine-tuning), on the same batch. Peak memory:
    a fresh subprocess per mode loads, builds and runs three steps; its peak RSS (VmHWM) is
    reported, which includes the models: the reference model plain DPO holds is the point.
P3  End to end, scoring included: DEFT-DPO on 5% against plain DPO on 100% for one epoch,
    extrapolated per pair from P1's and P2's per-pair costs: plain_step_per_pair /
    (scoring_per_pair + 0.05 * deft_step_per_pair).

Timing: modes alternate (order flipping every repeat), median over the repeats.

    python benchmarks/free_reference.py                        # ~10 minutes on 2 CPU cores
    python benchmarks/free_reference.py --pairs 32 --repeats 3 --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


def hh_pairs(tokenizer, path: Path, n: int, max_length: int):
    from deft_plugin.data.encoding import encode_rows, resolve_prompt_style
    from deft_plugin.data.parsing import parse_rows
    from deft_plugin.data.sources import load_rows
    from deft_plugin.data.split import DATA_SPLIT

    raw = [dict(r) for r in DATA_SPLIT.parts(load_rows(str(path)))["pool"]][: 2 * n]  # training: the pool only
    rows = parse_rows(raw, "hh_rlhf", resolve_prompt_style("auto", tokenizer)).rows
    encoded, _ = encode_rows(rows, tokenizer, max_length)
    return raw, rows, encoded[:n]


# --------------------------------------------------------------------------- P1


def trl_reference(model, tokenizer, rows, encoded, batch_size, max_length, chunked: bool):
    """A TRL DPOTrainer over the same pairs (TRL tokenises them as the scoring pass does), and a
    function running its reference precompute."""
    from datasets import Dataset
    from torch.utils.data import DataLoader
    from trl import DPOConfig, DPOTrainer

    data = Dataset.from_list([rows[p.index] for p in encoded])
    extra = {"use_liger_kernel": True} if chunked else {}
    args = DPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch_size, report_to=[],
                     max_length=max_length, precompute_ref_log_probs=False, bf16=False,
                     use_cpu=not torch.cuda.is_available(), **extra)
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    loader = DataLoader(trainer.train_dataset, batch_size=batch_size, collate_fn=trainer.data_collator,
                        shuffle=False)
    batches = list(loader)
    assert sum(len(b["input_ids"]) for b in batches) == 2 * len(encoded)  # TRL kept every pair

    def run():
        with torch.no_grad():
            for batch in batches:
                trainer.compute_ref_log_probs(model, batch)

    return run


def p1(args, model, tokenizer, rows, encoded):
    import trl

    from deft_plugin.core.qdiff import QDiff
    from deft_plugin.filtering.batching import batches_by_length
    from deft_plugin.filtering.scorer import ReplyScorer

    qn = QDiff.build((p.chosen_ids for p in encoded), (p.rejected_ids for p in encoded), len(tokenizer),
                     tokenizer.all_special_ids, "maxabs").qn
    scorer = ReplyScorer(model, qn, tokenizer.all_special_ids, tokenizer.pad_token_id or 0, args.batch_size)
    batches = list(batches_by_length(encoded, args.batch_size))

    def deft():
        for batch in batches:
            scorer.score_batch(batch)

    modes = {"DEFT scoring pass (rewards + reference, shared prompt)": deft,
             f"TRL {trl.__version__} reference precompute": trl_reference(model, tokenizer, rows, encoded,
                                                                           args.batch_size, args.max_length, False)}
    if tuple(int(x) for x in trl.__version__.split(".")[:2]) >= (1, 14):
        modes[f"TRL {trl.__version__} reference precompute, chunked (use_liger_kernel)"] = trl_reference(
            model, tokenizer, rows, encoded, args.batch_size, args.max_length, True)
    return alternate(modes, args.repeats)


def alternate(modes: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each mode over the repeats, the order of modes flipping every repeat."""
    seconds = {name: [] for name in modes}
    names = list(modes)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            modes[name]()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in seconds.items()}


# --------------------------------------------------------------------------- P2


def axolotl_cfg(model_dir: str, data_file: Path, out: Path, plugin: bool, micro_batch: int, max_length: int,
                extra: dict | None = None):
    from axolotl.cli.config import load_cfg
    from axolotl.utils.dict import DictDefault

    raw = {"base_model": model_dir, "rl": "dpo", "datasets": [{"path": str(data_file), "type": "deft.hh_rlhf"}],
           "sequence_len": max_length, "micro_batch_size": micro_batch, "gradient_accumulation_steps": 1,
           "num_epochs": 1, "learning_rate": 1e-5, "optimizer": "adamw_torch", "lr_scheduler": "constant",
           # one prepared path for every mode and process: the scoring pass runs once, in the parent
           "output_dir": str(out), "dataset_prepared_path": str(data_file.parent / "prepared"),
           "save_strategy": "no",
           "bf16": False, "fp32": True, "device_map": "cpu", "seed": 0, "logging_steps": 1,
           "plugins": ["deft_plugin.DEFTPlugin"], "deft_filter": False, "deft_reward_weight": 1.0,
           "deft_loss_form": "pair", **(extra or {})}  # the form its recorded figures ran with
    if not plugin:  # plain DPO reads the same rows through Axolotl's own loader
        raw = {k: v for k, v in raw.items() if k != "plugins" and not k.startswith("deft_")}
    return load_cfg(DictDefault(raw))


def build_trainers(model_dir, data_file, out: Path, micro_batch, max_length, which=("deft", "plain"),
                   extra: dict | None = None):
    """Axolotl-built trainers on the same rows: the plugin's datasets (with the reference columns)
    serve both, so both see the same batches."""
    from axolotl.integrations.base import PluginManager
    from axolotl.train import setup_model_and_trainer

    cfg = axolotl_cfg(model_dir, data_file, out / "deft", True, micro_batch, max_length, extra)
    meta = PluginManager.get_instance().load_datasets(cfg, preprocess=False)
    trainers = {}
    if "deft" in which:
        trainers["deft"] = setup_model_and_trainer(cfg, meta)[0]
    if "plain" in which:
        plain_cfg = axolotl_cfg(model_dir, data_file, out / "plain", False, micro_batch, max_length, extra)
        trainers["plain"] = setup_model_and_trainer(plain_cfg, meta)[0]
    for t in trainers.values():
        t.model.train()
        t.create_optimizer()
        t.current_gradient_accumulation_steps = 1  # set by Trainer's training loop, which is not run here
    return trainers


def one_step(trainer, batch):
    trainer.training_step(trainer.model, dict(batch))
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def weightless_step(trainer, batch):
    """A DEFT-DPO step at deft_reward_weight 0 (selection only): the free reference without the term."""
    loss = trainer.deft_loss
    trainer.configure_deft(replace(loss, reward_weight=0.0))
    try:
        one_step(trainer, batch)
    finally:
        trainer.deft_loss = loss


def p2_time(args, data_file, work: Path) -> dict[str, float]:
    trainers = build_trainers(args.model, data_file, work, args.micro_batch, args.max_length)
    batch = next(iter(trainers["deft"].get_train_dataloader()))
    modes = {f"{name} step": (lambda t=t: one_step(t, batch)) for name, t in trainers.items()}
    modes["deft step, weight 0"] = lambda: weightless_step(trainers["deft"], batch)
    for run in modes.values():  # warm-up: first-call allocations, optimizer state
        run()
    return alternate(modes, args.repeats)


def peak_rss_child(args) -> None:
    """In a fresh process: build one mode's trainer, run three steps, print peak RSS in bytes."""
    work = Path(tempfile.mkdtemp())
    trainer = build_trainers(args.model, Path(args.data_file), work, args.micro_batch, args.max_length,
                             which=(args.child,))[args.child]
    batch = next(iter(trainer.get_train_dataloader()))
    for _ in range(3):
        one_step(trainer, batch)
    print(json.dumps({"peak_rss": status_kib("VmHWM") * 1024}))


def p2_memory(args, data_file: Path) -> dict[str, int]:
    peaks = {}
    for mode in ("deft", "plain"):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--data-file", str(data_file),
                              "--model", args.model, "--micro-batch", str(args.micro_batch),
                              "--max-length", str(args.max_length)],
                             capture_output=True, text=True, check=True)
        peaks[mode] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss"]
    return peaks


# --------------------------------------------------------------------------- report


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM: the peak resident set)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith(field)).split()[1])


def append_results(path: str | None, text: str) -> None:
    """Print the figures, and append them to a Markdown results file when one is given."""
    print(text)
    if path:
        with open(path, "a") as f:
            f.write("\n" + text + "\n")


def report_p1(args, pairs, p1_s, tokens) -> str:
    import transformers
    import trl

    trl_s = list(p1_s.values())[1]
    lines = [f"## free_reference.py, {time.strftime('%Y-%m-%d %H:%M')}", "",
             f"SmolLM2-135M-Instruct, {platform.machine()} CPU ({os.cpu_count()} cores, {torch.get_num_threads()} "
             f"threads), fp32, TRL {trl.__version__}, transformers {transformers.__version__}; {pairs} HH-RLHF "
             f"harmless-base pairs ({tokens} tokens with both replies), sequence {args.max_length}, "
             f"{args.batch_size} pairs a scoring batch, micro batch {args.micro_batch}, median of {args.repeats} "
             "repeats, modes alternating.", "",
             "P1, the reference pass over the same pairs:", "", "| mode | seconds | x TRL |", "|---|---|---|"]
    lines += [f"| {name} | {s:.1f} | {s / trl_s:.2f} |" for name, s in p1_s.items()]
    return "\n".join(lines)


def report(args, pairs, p1_s, p2_s, peaks, tokens) -> str:
    score_pp = list(p1_s.values())[0] / pairs
    deft_pp = p2_s["deft step"] / args.micro_batch
    plain_pp = p2_s["plain step"] / args.micro_batch
    e2e = plain_pp / (score_pp + 0.05 * deft_pp)
    lines = [report_p1(args, pairs, p1_s, tokens)]
    lines += ["", "P2, one training step (forward, backward, AdamW) on the same batch, full fine-tuning:", "",
              "| mode | seconds | peak RSS (models included) |", "|---|---|---|",
              f"| DEFT-DPO (weight 1), reference from the scoring pass | {p2_s['deft step']:.2f} | "
              f"{peaks['deft'] / 2**20:,.0f} MiB |",
              f"| DEFT-DPO at weight 0 (selection only), reference from the scoring pass | "
              f"{p2_s['deft step, weight 0']:.2f} | |",
              f"| plain Axolotl DPO, own reference model | {p2_s['plain step']:.2f} | "
              f"{peaks['plain'] / 2**20:,.0f} MiB |", "",
              f"DEFT step / plain step: **{p2_s['deft step'] / p2_s['plain step']:.2f}x** time at weight 1, "
              f"**{p2_s['deft step, weight 0'] / p2_s['plain step']:.2f}x** at weight 0 (target <= 0.8x); "
              f"**{peaks['deft'] / peaks['plain']:.2f}x** peak memory (target <= 1x).", "",
              f"P3, end to end for one epoch, per pair: scoring {score_pp:.3f} s, DEFT step {deft_pp:.3f} s, plain "
              f"step {plain_pp:.3f} s; plain DPO on 100% / (scoring all + DEFT-DPO on 5%) = **{e2e:.1f}x** "
              "(target >= 12x).", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory (default: SmolLM2-135M-Instruct)")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8, help="pairs per scoring batch (both P1 modes)")
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--max-length", type=int, default=384)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--results", default=None, help="append the figures to this Markdown file")
    p.add_argument("--p1-only", action="store_true", help="the reference pass only (e.g. against another TRL)")
    p.add_argument("--child", choices=("deft", "plain"), help=argparse.SUPPRESS)
    p.add_argument("--data-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from deft_plugin.launch.axolotl_train import OFFLINE_ENV

    os.environ.update({k: os.environ.get(k, v) for k, v in OFFLINE_ENV.items()})
    if args.child:
        return peak_rss_child(args)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deft_plugin.cli.smollm2 import ensure_smollm2

    args.model = args.model or str(ensure_smollm2())
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    raw, rows, encoded = hh_pairs(tokenizer, Path(args.data), args.pairs, args.max_length)
    tokens = sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in encoded)
    print(f"P1: {len(encoded)} pairs", flush=True)
    p1_s = p1(args, model, tokenizer, rows, encoded)
    del model
    if args.p1_only:
        return append_results(args.results, report_p1(args, len(encoded), p1_s, tokens))
    work = Path(tempfile.mkdtemp())
    data_file = work / "pairs.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in raw[: 4 * args.micro_batch]))
    print("P2: step time", flush=True)
    p2_s = p2_time(args, data_file, work)
    print("P2: peak memory", flush=True)
    peaks = p2_memory(args, data_file)
    append_results(args.results, report(args, len(encoded), p1_s, p2_s, peaks, tokens))


if __name__ == "__main__":
    main()
