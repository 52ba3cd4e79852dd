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
    fine-tuning, no optimizer: its step is the same in both) with the reference log-probabilities
    given (the free reference; DEFT term at weight 1, and at weight 0) against one that runs a
    separate reference model's forward first (plain DPO). Peak memory: torch.cuda.max_memory_allocated,
    reset before each mode's steps, the reference model's weights counted for plain DPO only.

Tokens/s count real (non-pad) tokens; MFU = FLOPs / (time x the GPU's dense bf16 peak), with 2N
FLOPs per scored token and 6N per trained token (N = parameters). Median of --repeats.

    python benchmarks/gpu_free_reference.py --encoded pairs.jsonl            # ~5 minutes on one H100/H200
    python benchmarks/gpu_free_reference.py --shapes smollm2-135m --pairs 4   # a CPU dry run
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scoring_throughput as st  # noqa: E402  (its shapes, model builder and pair loading)

from deft_plugin.core.qdiff import QDiff  # noqa: E402
from deft_plugin.core.reward import distribution_reward  # noqa: E402
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


def reference_forward(model, batch, special, pad, device):
    """TRL's reference precompute for one batch: full logits, log-softmax of every reply token."""
    ids, attn, pred = collate_candidates(batch, set(), pad, device)
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1]
    logp = torch.gather(logits.float().log_softmax(-1), 2, ids[:, 1:, None]).squeeze(2)
    return (logp * pred[:, :-1]).sum(1)


def dpo_step(policy, reference, batch, qn, weight, pad, device, ref_logps=None):
    """Forward and backward of DPO (+ weight x the DEFT term) on [chosen; rejected]."""
    ids, attn, pred = collate_candidates(batch, set(), pad, device)
    order = [2 * i for i in range(len(batch))] + [2 * i + 1 for i in range(len(batch))]  # chosen rows, then rejected
    ids, attn, pred = ids[order], attn[order], pred[order]
    if ref_logps is None:
        with torch.no_grad():
            logits = reference(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1]
            ref_logps = (torch.gather(logits.float().log_softmax(-1), 2, ids[:, 1:, None]).squeeze(2)
                         * pred[:, :-1]).sum(1)
            del logits
    logits = policy(input_ids=ids, attention_mask=attn, use_cache=False).logits
    logp = (torch.gather(logits[:, :-1].float().log_softmax(-1), 2, ids[:, 1:, None]).squeeze(2) * pred[:, :-1]).sum(1)
    ratio = logp - ref_logps
    chosen, rejected = ratio.chunk(2)
    loss = -F.logsigmoid(BETA * (chosen - rejected)).mean()
    if weight:
        r_c, r_r = distribution_reward(logits, qn, pred).chunk(2)
        loss = loss - weight * (r_c - r_r).mean()
    loss.backward()
    policy.zero_grad(set_to_none=True)


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

    shared_tokens = sum(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    unshared_tokens = shared_tokens + sum(len(p.prompt_ids) for p in pairs)
    p1 = {"DEFT scoring pass (rewards + reference, shared prompt)": (timed(scoring, device, args.repeats),
                                                                     shared_tokens),
          "TRL's reference precompute forward (full logits)": (timed(trl_forward, device, args.repeats),
                                                               unshared_tokens)}
    base = list(p1.values())[1][0]
    out += [f"P1, {len(pairs)} pairs, {args.batch_size} a batch:", "",
            "| mode | seconds | x TRL | tokens/s | MFU (2N/token) |", "|---|---|---|---|---|"]
    for mode, (s, tokens) in p1.items():
        mfu = f"{2 * n_params * tokens / s / peak_flops:.1%}" if peak_flops else "n/a"
        out.append(f"| {mode} | {s:.3f} | {s / base:.2f} | {tokens / s:,.0f} | {mfu} |")

    model.train()
    step_batch = sorted(pairs, key=lambda p: -(len(p.prompt_ids) + max(map(len, p.completions))))[: args.micro_batch]
    with torch.no_grad():  # the reference log-probs the scoring pass would give, in [chosen; rejected] order
        order = [2 * i for i in range(len(step_batch))] + [2 * i + 1 for i in range(len(step_batch))]
        free_ref = reference_forward(model, step_batch, special, pad, device)[order]
    trained_tokens = sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in step_batch)
    steps = {"DEFT-DPO, free reference, weight 1": lambda: dpo_step(model, None, step_batch, qn, 1.0, pad, device,
                                                                    free_ref),
             "DEFT-DPO, free reference, weight 0": lambda: dpo_step(model, None, step_batch, qn, 0.0, pad, device,
                                                                    free_ref)}
    figures = {m: (timed(run, device, args.repeats), peak(run, device)) for m, run in steps.items()}
    reference = st.load_model(margs, device, dtype)[0]  # plain DPO's second copy
    plain = lambda: dpo_step(model, reference, step_batch, qn, 0.0, pad, device)  # noqa: E731
    figures["plain DPO, reference model forward"] = (timed(plain, device, args.repeats), peak(plain, device))
    plain_s = figures["plain DPO, reference model forward"][0]
    out += ["", f"P2, one step (forward + backward) on the {args.micro_batch} longest pairs ({trained_tokens} tokens):",
            "", "| mode | seconds | x plain | peak memory | MFU (6N/token) |", "|---|---|---|---|---|"]
    for mode, (s, mem) in figures.items():
        mfu = f"{6 * n_params * trained_tokens / s / peak_flops:.1%}" if peak_flops else "n/a"
        memory = f"{mem / 2**30:.1f} GiB" if mem is not None else "n/a (CPU)"
        out.append(f"| {mode} | {s:.3f} | {s / plain_s:.2f} | {memory} | {mfu} |")
    return out + [""]  # the models go with this frame; the next shape's peak() collects them


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoded", default=None, help="real HH-RLHF token ids (scoring_throughput.py --save-encoded)")
    p.add_argument("--shapes", default="smollm2-135m,llama3-8b")
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8, help="pairs per scoring batch")
    p.add_argument("--micro-batch", type=int, default=4, help="pairs in the training step")
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--results", default=None, help="append the figures to this Markdown file")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [f"## gpu_free_reference.py, {time.strftime('%Y-%m-%d %H:%M')}, {where}", "",
             f"torch {torch.__version__}, {str(dtype).removeprefix('torch.')}, random weights, median of "
             f"{args.repeats}; peak dense bf16 FLOPs taken as {gpu_peak_flops(device) or 'n/a'}.", ""]
    for shape in args.shapes.split(","):
        print(f"== {shape}", flush=True)
        lines += run_shape(args, shape, device, dtype)
    text = "\n".join(lines)
    print(text)
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
