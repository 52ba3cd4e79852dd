"""P2m: one DEFT-DPO training step with the loss from the chunked head pass (no full logits)
against one plain Axolotl DPO step (TRL's full-logits loss, its own reference), both trainers
built by Axolotl from one config, on the same batch of real HH-RLHF pairs with real
SmolLM2-135M-Instruct weights (CPU here).

Time: modes alternate in one process (order flipping every repeat), median of the repeats.
Memory: a fresh process per mode builds its trainer, then resets the kernel's peak-RSS mark
(/proc/self/clear_refs) and runs three steps: the step's peak above the built trainer is what
the loss's tensors (logits, activations, gradients, optimizer state on the first step) cost;
the total peak (VmHWM, models included) is reported beside it. With full fine-tuning plain DPO
holds a reference copy of the model; with LoRA neither holds one, so the LoRA figures isolate
what the full logits cost.

With --large-vocab the model is a random one with SmolLM2's tokenizer and vocabulary (49,152)
on a short hidden size (64, 2 layers): the logits are then most of a step's memory, which is
where the chunked pass is meant to pay off (this stands in for a peak-memory test: RSS deltas
in a test process are not stable enough to assert a ratio on). --gradient-checkpointing turns
on Axolotl's `gradient_checkpointing`, as long-sequence runs of large models do, so the decoder's
activations shrink and the logits weigh more.

    python benchmarks/chunked_loss.py --adapter lora --results benchmarks/RESULTS.md
    python benchmarks/chunked_loss.py --adapter full --gradient-checkpointing --micro-batch 4
    python benchmarks/chunked_loss.py --adapter full --large-vocab --micro-batch 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import free_reference as fr  # noqa: E402

LORA = {"adapter": "lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "lora_target_linear": True}


def extra_keys(args) -> dict:
    return {**(LORA if args.adapter == "lora" else {}),
            **({"gradient_checkpointing": True} if args.gradient_checkpointing else {})}


def large_vocab_model(out: Path) -> Path:
    """A random model with SmolLM2's tokenizer and vocabulary on a short hidden size."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from deft_plugin.cli.smollm2 import ensure_smollm2

    source = ensure_smollm2()
    config = AutoConfig.from_pretrained(source)
    config.update({"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "num_key_value_heads": 1, "head_dim": 16})
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


def step_memory_child(args) -> None:
    """In a fresh process: one mode's trainer, then three steps; prints the peaks in bytes."""
    trainer = fr.build_trainers(args.model, Path(args.data_file), Path(tempfile.mkdtemp()), args.micro_batch,
                                args.max_length, which=(args.child,), extra=extra_keys(args))[args.child]
    batch = next(iter(trainer.get_train_dataloader()))
    built = fr.status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS from here on
    for _ in range(3):
        fr.one_step(trainer, batch)
    peak = fr.status_kib("VmHWM")
    print(json.dumps({"step_peak": (peak - built) * 1024, "total_peak": peak * 1024}))


def memory(args, data_file: Path) -> dict[str, dict[str, int]]:
    peaks = {}
    for mode in ("deft", "plain"):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--data-file", str(data_file),
                              "--model", args.model, "--micro-batch", str(args.micro_batch),
                              "--max-length", str(args.max_length), "--adapter", args.adapter]
                             + (["--gradient-checkpointing"] if args.gradient_checkpointing else []),
                             capture_output=True, text=True, check=True)
        peaks[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    return peaks


def step_times(args, data_file: Path) -> tuple[dict[str, float], int, int]:
    """(median step seconds per mode, tokens in the batch, reply tokens in the batch)."""
    trainers = fr.build_trainers(args.model, data_file, Path(tempfile.mkdtemp()), args.micro_batch,
                                 args.max_length, extra=extra_keys(args))
    batch = next(iter(trainers["deft"].get_train_dataloader()))
    modes = {"deft": lambda: fr.one_step(trainers["deft"], batch),
             "deft, weight 0": lambda: fr.weightless_step(trainers["deft"], batch),
             "plain": lambda: fr.one_step(trainers["plain"], batch)}
    for run in modes.values():  # warm-up: first-call allocations, optimizer state
        run()
    return fr.alternate(modes, args.repeats), int(batch["attention_mask"].sum()), int(batch["completion_mask"].sum())


def report(args, seconds, peaks, tokens, reply_tokens) -> str:
    import transformers
    import trl

    mib = 2**20
    checkpointing = ", gradient checkpointing" if args.gradient_checkpointing else ""
    model = ("a random model with SmolLM2's tokenizer (vocabulary 49,152, hidden 64, 2 layers)" if args.large_vocab
             else "SmolLM2-135M-Instruct (vocabulary 49,152)")
    lines = [f"## chunked_loss.py (P2m), {time.strftime('%Y-%m-%d %H:%M')}", "",
             f"{model}, {platform.machine()} CPU ({os.cpu_count()} cores), fp32, "
             f"TRL {trl.__version__}, transformers {transformers.__version__}; {args.adapter} "
             f"fine-tuning{checkpointing}, micro "
             f"batch {args.micro_batch} pairs of real HH-RLHF harmless-base rows, sequence {args.max_length} "
             f"({tokens} tokens in the batch, {reply_tokens} of them reply tokens); median of {args.repeats} "
             "repeats, modes alternating; memory in a fresh process per mode.", "",
             "| mode | step seconds | step peak above the built trainer | total peak RSS |", "|---|---|---|---|",
             f"| DEFT-DPO (weight 1), chunked head pass, reference from the scoring pass | {seconds['deft']:.2f} | "
             f"{peaks['deft']['step_peak'] / mib:,.0f} MiB | {peaks['deft']['total_peak'] / mib:,.0f} MiB |",
             f"| DEFT-DPO at weight 0 | {seconds['deft, weight 0']:.2f} | | |",
             f"| plain Axolotl DPO (full logits, own reference) | {seconds['plain']:.2f} | "
             f"{peaks['plain']['step_peak'] / mib:,.0f} MiB | {peaks['plain']['total_peak'] / mib:,.0f} MiB |", "",
             f"DEFT step / plain step: **{seconds['deft'] / seconds['plain']:.2f}x** time (target <= 1.0x), "
             f"{seconds['deft, weight 0'] / seconds['plain']:.2f}x at weight 0; step peak "
             f"**{peaks['deft']['step_peak'] / peaks['plain']['step_peak']:.2f}x**, total peak "
             f"**{peaks['deft']['total_peak'] / peaks['plain']['total_peak']:.2f}x** (target <= 0.7x).", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory (default: SmolLM2-135M-Instruct)")
    p.add_argument("--data", default=str(fr.DATA))
    p.add_argument("--adapter", choices=("full", "lora"), default="lora")
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--max-length", type=int, default=384)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--large-vocab", action="store_true", help="a random short-hidden model with SmolLM2's vocabulary")
    p.add_argument("--gradient-checkpointing", action="store_true", help="Axolotl's gradient_checkpointing: true")
    p.add_argument("--results", default=None, help="append the figures to this Markdown file")
    p.add_argument("--child", choices=("deft", "plain"), help=argparse.SUPPRESS)
    p.add_argument("--data-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from deft_plugin.launch.axolotl_train import OFFLINE_ENV

    os.environ.update({k: os.environ.get(k, v) for k, v in OFFLINE_ENV.items()})
    if args.child:
        return step_memory_child(args)
    from deft_plugin.cli.smollm2 import ensure_smollm2
    from deft_plugin.data.sources import load_rows
    from deft_plugin.data.split import DATA_SPLIT

    work = Path(tempfile.mkdtemp())
    args.model = args.model or str(large_vocab_model(work / "model") if args.large_vocab else ensure_smollm2())
    data_file = work / "pairs.jsonl"
    raw = [dict(r) for r in DATA_SPLIT.parts(load_rows(args.data))["pool"]][: 4 * args.micro_batch]  # the pool only
    data_file.write_text("".join(json.dumps(r) + "\n" for r in raw))
    print("P2m: step time", flush=True)
    seconds, tokens, reply_tokens = step_times(args, data_file)
    print("P2m: peak memory", flush=True)
    peaks = memory(args, data_file)
    fr.append_results(args.results, report(args, seconds, peaks, tokens, reply_tokens))


if __name__ == "__main__":
    main()
