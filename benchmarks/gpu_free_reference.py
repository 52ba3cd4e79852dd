"""P1 and P2 of free_reference.py for a GPU machine that has torch and transformers only (no
Axolotl, TRL or datasets, no real weights): random weights of the SmolLM2-135M and Llama-3-8B
shapes in bf16, real HH-RLHF token ids from a file written beforehand by
`python benchmarks/scoring_throughput.py --save-encoded pairs.jsonl --pairs 64` (else synthetic
ids with HH-RLHF-like lengths, labelled as such).

P1  the reference pass over the same pairs: the project's scoring pass (ReplyScorer: rewards and
    reference log-probabilities, each prompt once per row) against the forward TRL's reference
    precompute runs (one [prompt, reply] sequence per reply, full logits, log-softmax of the
    reply tokens: TRL's compute_ref_log_probs, written out in torch here).
P2  one DPO training step (forward and backward, [chosen; rejected] of a micro batch, full
    fine-tuning, no optimizer: its step is the same in all modes) on the longest real pairs:
    DEFT-DPO as the plugin runs it (decoder hidden states, the chunked head pass for the reply
    log-probabilities and the distribution reward, the reference log-probabilities given: the
    free reference; weight 1 and weight 0), DPO from the full logits with the reference given
    (what the logits alone cost), and plain DPO (full logits, a separate reference model's
    forward first, as TRL runs it). Peak memory: torch.cuda.max_memory_allocated, reset before
    each mode's step, the reference model's weights counted for plain DPO only.
P2m the same modes on the Llama-3-8B shape at long sequences (--p2m-lengths, --p2m-micro-batches;
    synthetic ids, each sequence exactly that long: half prompt, half reply) with the decoder's
    gradient checkpointing on, as an 8B full fine-tune runs; a mode that runs out of memory is
    reported as such. Target (the chunked loss): DEFT-DPO's peak at most 0.7x plain DPO's, its
    time at most 1.0x.

Tokens/s count real (non-pad) tokens; MFU = FLOPs / (time x the GPU's dense bf16 peak), with 2N
FLOPs per scored token and 6N per trained token (N = parameters). Median of --repeats.

    python benchmarks/gpu_free_reference.py --encoded pairs.jsonl --sections p1,p2   # ~5 minutes on one H200
    python benchmarks/gpu_free_reference.py --sections p2m                           # ~4 minutes
    python benchmarks/gpu_free_reference.py --shapes smollm2-135m --pairs 4 \
        --p2m-shape smollm2-135m --p2m-lengths 64 --p2m-micro-batches 1,2            # a CPU dry run
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scoring_throughput as st  # noqa: E402  (its shapes, model builder and pair loading)

from deft_plugin.core.chunked import next_tokens  # noqa: E402
from deft_plugin.core.head_pass import model_head_pass  # noqa: E402
from deft_plugin.core.losses import dpo_loss  # noqa: E402
from deft_plugin.core.qdiff import QDiff  # noqa: E402
from deft_plugin.data.encoding import EncodedRow  # noqa: E402
from deft_plugin.filtering.batching import batches_by_length, collate_candidates  # noqa: E402
from deft_plugin.filtering.scorer import ReplyScorer  # noqa: E402

PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}  # dense, per GPU
BETA = 0.1


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(run, device, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak(run, device) -> int | None:
    if device.type != "cuda":
        return None
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    run()
    sync(device)
    return torch.cuda.max_memory_allocated()


def measure(run, device, repeats: int) -> tuple[float | None, int | None]:
    """(median seconds, peak bytes), or (None, None) when the mode runs out of device memory."""
    try:
        return timed(run, device, repeats), peak(run, device)
    except torch.OutOfMemoryError:
        gc.collect()
        torch.cuda.empty_cache()
        return None, None


def reply_logps(model, ids, attn, pred):
    """TRL's way: full logits, log-softmax in float32, the reply tokens' log-probabilities summed."""
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1]
    return (torch.gather(logits.float().log_softmax(-1), 2, ids[:, 1:, None]).squeeze(2) * pred[:, :-1]).sum(1)


def reference_forward(model, batch, special, pad, device):
    """TRL's reference precompute for one batch of pairs, in collate_candidates order."""
    return reply_logps(model, *collate_candidates(batch, set(), pad, device))


def step_inputs(batch, pad, device):
    """[chosen; rejected] of a micro batch, as DPO's collator orders them."""
    ids, attn, pred = collate_candidates(batch, set(), pad, device)
    order = [2 * i for i in range(len(batch))] + [2 * i + 1 for i in range(len(batch))]
    return ids[order], attn[order], pred[order]


def dpo_of(logps, ref_logps):
    chosen, rejected = (logps - ref_logps).chunk(2)
    lengths = torch.ones_like(chosen)
    return dpo_loss(chosen, rejected, BETA, ("sigmoid",), None, lengths, lengths)


def logits_dpo_step(policy, inputs, ref_logps=None, reference=None):
    """DPO from the full logits; the reference's forward first unless ref_logps is given."""
    if ref_logps is None:
        with torch.no_grad():
            ref_logps = reply_logps(reference, *inputs)
    dpo_of(reply_logps(policy, *inputs), ref_logps).backward()
    policy.zero_grad(set_to_none=True)


def deft_dpo_step(policy, inputs, ref_logps, qn, weight):
    """DEFT-DPO as the plugin computes it: decoder hidden states, then the chunked head pass
    for the reply log-probabilities and (weight > 0) the distribution reward; no full logits."""
    ids, attn, pred = inputs
    heads = model_head_pass(policy, {"input_ids": ids, "attention_mask": attn}, next_tokens(ids), pred,
                            pred if weight else None, qn if weight else None)
    loss = dpo_of(heads.logps, ref_logps)
    if weight:
        r_chosen, r_rejected = heads.rewards.chunk(2)
        loss = loss - weight * (r_chosen - r_rejected).mean()
    loss.backward()
    policy.zero_grad(set_to_none=True)


def step_figures(policy, load_reference, inputs, qn, device, repeats):
    """{mode: (seconds, peak bytes)} of the P2 / P2m modes on one batch; the reference model
    is loaded for plain DPO only, after the other modes, so only its peak counts its weights."""
    with torch.no_grad():
        free_ref = reply_logps(policy, *inputs)  # what the scoring pass gives
    modes = {DEFT: lambda: deft_dpo_step(policy, inputs, free_ref, qn, 1.0),
             "DEFT-DPO, chunked head pass, free reference, weight 0":
             lambda: deft_dpo_step(policy, inputs, free_ref, qn, 0.0),
             "DPO from full logits, reference given": lambda: logits_dpo_step(policy, inputs, free_ref)}
    figures = {mode: measure(run, device, repeats) for mode, run in modes.items()}
    reference = load_reference()
    figures[PLAIN] = measure(lambda: logits_dpo_step(policy, inputs, reference=reference), device, repeats)
    return figures


PLAIN = "plain DPO (full logits, reference model forward)"
DEFT = "DEFT-DPO, chunked head pass, free reference, weight 1"


def step_table(figures, n_params, tokens, peak_flops) -> list[str]:
    plain_s, plain_mem = figures[PLAIN]
    out = ["| mode | seconds | x plain | peak memory | x plain | MFU (6N/token) |", "|---|---|---|---|---|---|"]
    for mode, (s, mem) in figures.items():
        if s is None:
            out.append(f"| {mode} | out of memory | | | | |")
            continue
        mfu = f"{6 * n_params * tokens / s / peak_flops:.1%}" if peak_flops else "n/a"
        memory = f"{mem / 2**30:.1f} GiB" if mem is not None else "n/a (CPU)"
        x_mem = f"{mem / plain_mem:.2f}" if mem is not None and plain_mem else ""
        x_s = f"{s / plain_s:.2f}" if plain_s else ""
        out.append(f"| {mode} | {s:.3f} | {x_s} | {memory} | {x_mem} | {mfu} |")
    return out


def fixed_length_pairs(n: int, length: int, vocab: int, seed: int = 0) -> list[EncodedRow]:
    """n pairs whose two sequences are exactly `length` tokens: half prompt, half reply."""
    g = torch.Generator().manual_seed(seed)
    ids = lambda k: tuple(torch.randint(1, vocab, (k,), generator=g).tolist())  # noqa: E731
    half = length // 2
    return [EncodedRow(i, ids(length - half), (ids(half), ids(half))) for i in range(n)]


def gpu_peak_flops(device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def run_shape(args, shape: str, device, dtype) -> list[str]:
    margs = st.parse_args(["--random-weights", "--shape", shape, "--pairs", str(args.pairs),
                           "--max-length", str(args.max_length)] + (["--encoded", args.encoded] if args.encoded
                                                                     else ["--synthetic"]))
    model, _, name = st.load_model(margs, device, dtype)
    vocab = model.get_output_embeddings().weight.shape[0]
    pairs, special, pad, source = st.load_pairs(margs, None, vocab)
    n_params = sum(p.numel() for p in model.parameters())
    qn = QDiff.build((p.chosen_ids for p in pairs), (p.rejected_ids for p in pairs), vocab, special, "maxabs").qn
    scorer = ReplyScorer(model, qn, special, pad, args.batch_size)
    batches = list(batches_by_length(pairs, args.batch_size))
    peak_flops = gpu_peak_flops(device)
    out = [f"### {name} ({n_params / 1e9:.2f}B parameters), {source}", ""]

    def scoring():
        for b in batches:
            scorer.score_batch(b)

    def trl_forward():
        with torch.no_grad():
            for b in batches:
                reference_forward(model, b, special, pad, device)

    if "p1" in args.sections:
        out += p1_table(scoring, trl_forward, pairs, args, device, n_params, peak_flops)
    if "p2" in args.sections:
        model.train()
        step_batch = sorted(pairs, key=lambda p: -(len(p.prompt_ids) + max(map(len, p.completions))))[
            : args.micro_batch]
        tokens = sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in step_batch)
        figures = step_figures(model, lambda: st.load_model(margs, device, dtype)[0],
                               step_inputs(step_batch, pad, device), qn, device, args.repeats)
        out += ["", f"P2, one step (forward + backward) on the {args.micro_batch} longest pairs ({tokens} tokens):",
                ""] + step_table(figures, n_params, tokens, peak_flops)
    return out + [""]  # the models go with this frame; the next shape's peak() collects them


def p1_table(scoring, trl_forward, pairs, args, device, n_params, peak_flops) -> list[str]:
    shared_tokens = sum(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    unshared_tokens = shared_tokens + sum(len(p.prompt_ids) for p in pairs)
    p1 = {"DEFT scoring pass (rewards + reference, shared prompt)": (timed(scoring, device, args.repeats),
                                                                     shared_tokens),
          "TRL's reference precompute forward (full logits)": (timed(trl_forward, device, args.repeats),
                                                               unshared_tokens)}
    base = list(p1.values())[1][0]
    out = [f"P1, {len(pairs)} pairs, {args.batch_size} a batch:", "",
            "| mode | seconds | x TRL | tokens/s | MFU (2N/token) |", "|---|---|---|---|---|"]
    for mode, (s, tokens) in p1.items():
        mfu = f"{2 * n_params * tokens / s / peak_flops:.1%}" if peak_flops else "n/a"
        out.append(f"| {mode} | {s:.3f} | {s / base:.2f} | {tokens / s:,.0f} | {mfu} |")
    return out


def run_p2m(args, device, dtype) -> list[str]:
    """P2m: the step modes at long sequences, decoder gradient checkpointing on."""
    margs = st.parse_args(["--random-weights", "--shape", args.p2m_shape, "--synthetic"])
    model, _, name = st.load_model(margs, device, dtype)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    vocab = model.get_output_embeddings().weight.shape[0]
    n_params = sum(p.numel() for p in model.parameters())
    peak_flops = gpu_peak_flops(device)
    out = [f"### P2m, {name} ({n_params / 1e9:.2f}B parameters, vocabulary {vocab:,}), decoder gradient "
           "checkpointing, synthetic ids (half prompt, half reply)", ""]
    reference = None

    def load_reference():
        nonlocal reference
        if reference is None:
            reference = st.load_model(margs, device, dtype)[0]
        return reference

    for length in map(int, args.p2m_lengths.split(",")):
        for micro in map(int, args.p2m_micro_batches.split(",")):
            print(f"== P2m sequence {length}, micro batch {micro}", flush=True)
            pairs = fixed_length_pairs(micro, length, vocab)
            qn = QDiff.build((p.chosen_ids for p in pairs), (p.rejected_ids for p in pairs), vocab, [0], "maxabs").qn
            if reference is not None:  # off the device while the free modes run
                reference.to("cpu")
            figures = step_figures(model, lambda: load_reference().to(device), step_inputs(pairs, 0, device), qn,
                                   device, args.repeats)
            out += [f"Sequence {length}, micro batch {micro} ({2 * micro * length:,} tokens):", ""]
            out += step_table(figures, n_params, 2 * micro * length, peak_flops) + [""]
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoded", default=None, help="real HH-RLHF token ids (scoring_throughput.py --save-encoded)")
    p.add_argument("--shapes", default="smollm2-135m,llama3-8b")
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8, help="pairs per scoring batch")
    p.add_argument("--micro-batch", type=int, default=4, help="pairs in the training step")
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sections", default="p1,p2,p2m", help="any of p1, p2 (both per --shapes), p2m")
    p.add_argument("--p2m-shape", default="llama3-8b")
    p.add_argument("--p2m-lengths", default="2048,4096", help="sequence lengths of P2m")
    p.add_argument("--p2m-micro-batches", default="1,4", help="pairs per micro batch in P2m")
    p.add_argument("--results", default=None, help="append the figures to this Markdown file")
    args = p.parse_args(argv)
    args.sections = set(args.sections.split(","))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [f"## gpu_free_reference.py, {time.strftime('%Y-%m-%d %H:%M')}, {where}", "",
             f"torch {torch.__version__}, {str(dtype).removeprefix('torch.')}, random weights, median of "
             f"{args.repeats}; peak dense bf16 FLOPs taken as {gpu_peak_flops(device) or 'n/a'}.", ""]
    if args.sections & {"p1", "p2"}:
        for shape in args.shapes.split(","):
            print(f"== {shape}", flush=True)
            lines += run_shape(args, shape, device, dtype)
    if "p2m" in args.sections:
        lines += run_p2m(args, device, dtype)
    text = "\n".join(lines)
    print(text)
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
