"""The scoring pass's decoder with each prompt run once per row, two ways, against once per reply,
on the same batches of real HH-RLHF pairs:

  unshared   [prompt, reply] per reply, right padded (the fallback scorer);
  shared     [prompt, reply 1, ..., reply n] per row under a block mask, positions restarting
             after the prompt (what ReplyScorer runs);
  kv-cache   the prompt alone, its key/value cache repeated for the row's replies, then the
             replies (right padded) on top of it: one prompt forward per row, the replies batched.

Both modes run the decoder only (the LM head and the reward are the same work in both) on the
batches ReplyScorer makes (batches_by_length); they alternate batch by batch, the order flipping
every batch and every repeat, so that machine noise hits both alike. Reported: seconds of each
mode summed over batches and repeats, their ratio (shared / unshared), and the tokens each runs
(padding included).

    python benchmarks/shared_prompt.py                   # SmolLM2-135M-Instruct, CPU, ~5 minutes
    python benchmarks/shared_prompt.py --pairs 64 --batch-size 8 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import torch

from deft_plugin.core.head_pass import decoder_and_head
from deft_plugin.data.encoding import encode_rows, resolve_prompt_style
from deft_plugin.data.parsing import parse_rows
from deft_plugin.data.sources import load_rows
from deft_plugin.filtering.batching import batches_by_length, collate_candidates
from deft_plugin.filtering.shared_prompt import additive_mask, pack_shared


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deft_plugin.cli.smollm2 import ensure_smollm2

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory (default: SmolLM2-135M-Instruct)")
    p.add_argument("--data", default="../shared/data/hh-rlhf/harmless-base-test.jsonl.gz")
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=4, help="pairs per batch")
    p.add_argument("--max-length", type=int, default=384)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    model_dir = args.model or str(ensure_smollm2())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    decoder = decoder_and_head(model)[0]
    raw = [dict(r) for r in load_rows(args.data)][: args.pairs]
    rows = parse_rows(raw, "hh_rlhf", resolve_prompt_style("auto", tokenizer)).rows
    encoded, _ = encode_rows(rows, tokenizer, args.max_length)
    special, pad = set(tokenizer.all_special_ids), tokenizer.pad_token_id or 0
    batches = list(batches_by_length(encoded, args.batch_size))

    def unshared(batch):
        ids, attn, _ = collate_candidates(batch, special, pad, "cpu")
        decoder(input_ids=ids, attention_mask=attn, use_cache=False)
        return ids.numel()

    def kv_cache(batch, check=False):
        positions = 0
        for row in batch:
            prompt = torch.tensor([row.prompt_ids])
            cache = decoder(input_ids=prompt, use_cache=True).past_key_values
            n, width = len(row.completions), max(map(len, row.completions))
            cache.batch_repeat_interleave(n)
            replies = torch.full((n, width), pad)
            mask = torch.zeros((n, prompt.shape[1] + width), dtype=torch.long)
            mask[:, : prompt.shape[1]] = 1
            for k, reply in enumerate(row.completions):
                replies[k, : len(reply)] = torch.tensor(reply)
                mask[k, prompt.shape[1] : prompt.shape[1] + len(reply)] = 1
            last = decoder(input_ids=replies, attention_mask=mask, past_key_values=cache, use_cache=True)
            positions += prompt.shape[1] + replies.numel()
        return positions if not check else last.last_hidden_state

    def kv_cache_equals_unshared(row) -> None:
        """The modes compute the same thing: a reply's hidden states on the cache equal its own sequence's."""
        reply = row.completions[-1]
        own = decoder(input_ids=torch.tensor([row.prompt_ids + reply])).last_hidden_state[0, len(row.prompt_ids):]
        on_cache = kv_cache([row], check=True)[-1, : len(reply)]
        assert torch.allclose(own, on_cache, atol=1e-4), float((own - on_cache).abs().max())

    def shared(batch):
        ids, positions, allowed, *_ = pack_shared(batch, pad)
        decoder(input_ids=ids, position_ids=positions, attention_mask=additive_mask(allowed, torch.float32),
                use_cache=False)
        return ids.numel()

    runs = {"unshared": unshared, "shared": shared, "kv-cache": kv_cache}
    with torch.inference_mode():
        kv_cache_equals_unshared(encoded[0])
    seconds, tokens = dict.fromkeys(runs, 0.0), dict.fromkeys(runs, 0)
    with torch.inference_mode():
        for repeat in range(args.repeats):
            for i, batch in enumerate(batches):
                modes = list(runs.items())
                for name, run in modes if (i + repeat) % 2 == 0 else modes[::-1]:
                    start = time.perf_counter()
                    n = run(batch)
                    seconds[name] += time.perf_counter() - start
                    tokens[name] += n if repeat == 0 else 0
    print(f"{len(encoded)} pairs in {len(batches)} batches of {args.batch_size}, {args.repeats} repeats, "
          f"{torch.get_num_threads()} threads")
    for name in seconds:
        print(f"  {name:>8}: {seconds[name]:7.1f} s, {tokens[name]} positions per pass (padding included)")
    print(f"  shared / unshared time: {seconds['shared'] / seconds['unshared']:.3f}")
    print(f"  kv-cache / unshared time: {seconds['kv-cache'] / seconds['unshared']:.3f}")


if __name__ == "__main__":
    main()
