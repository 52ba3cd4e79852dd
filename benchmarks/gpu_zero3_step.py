"""One DEFT-DPO training step under DeepSpeed ZeRO-3, from the shipped configs/deepspeed/zero3_bf16.json,
for a GPU machine that has torch, transformers and deepspeed (no Axolotl, TRL or datasets, no real
weights): random weights of the Llama-3-8B shape with fewer layers (one process holds a whole ZeRO-3
world: 16 bytes a parameter with Adam, so the 32-layer model needs several GPUs), the plugin's
decoder-then-chunked-head pass on [chosen; rejected] with DPO's loss minus the DEFT term, and
DeepSpeed's own backward and optimizer step. It runs twice: with the shipped JSON (bf16 enabled)
and with bf16 "auto" as the JSON had it before the fix, which zero.Init and this engine read as
off (float32 shards; under the HF trainer "auto" became true only after the model was partitioned):
the shards' dtype, the peak memory and the step time of each.

    python benchmarks/gpu_zero3_step.py --layers 8 --micro-batch 2 --length 1024      # ~3 minutes on one H100
    DS_ACCELERATOR=cpu python benchmarks/gpu_zero3_step.py --device cpu --layers 1 --hidden 64 \
        --intermediate 128 --heads 4 --kv-heads 2 --vocab 1024 --length 32             # a CPU dry run

deepspeed is not on the lent GPU machines by default: carry it (a folder with deepspeed and its
pure-Python dependencies, on PYTHONPATH) or install it there first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def filled(ds: dict, micro_batch: int, bf16) -> dict:
    """The JSON with its "auto" batch values filled for one process (as Axolotl's loader fills them),
    bf16 as given."""
    ds = json.loads(json.dumps(ds))
    ds.update(train_micro_batch_size_per_gpu=micro_batch, gradient_accumulation_steps=1, train_batch_size=micro_batch,
              gradient_clipping=1.0, optimizer={"type": "AdamW", "params": {"lr": 1e-5}})
    ds["bf16"] = {"enabled": bf16}
    for key, value in list(ds["zero_optimization"].items()):
        if value == "auto":
            ds["zero_optimization"][key] = {"reduce_bucket_size": 5e7, "stage3_prefetch_bucket_size": 5e7,
                                            "stage3_param_persistence_threshold": 1e5}[key]
    return ds


def step_once(args, bf16) -> dict:
    import deepspeed
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    from deft_plugin.core.head_pass import model_head_pass

    shipped = json.loads((ROOT / "configs" / "deepspeed" / "zero3_bf16.json").read_text())
    ds = filled(shipped, args.micro_batch, bf16)
    keep = HfDeepSpeedConfig(ds)  # noqa: F841 (from_pretrained and from_config partition under zero.Init while it lives)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, tie_word_embeddings=False)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    with deepspeed.zero.Init(config_dict_or_path=ds):
        model = LlamaForCausalLM(config)
    shard_dtype = str(next(model.parameters()).ds_tensor.dtype)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    generator = torch.Generator().manual_seed(0)
    device = engine.device
    ids = torch.randint(0, args.vocab, (2 * args.micro_batch, args.length), generator=generator).to(device)
    reply = torch.zeros_like(ids, dtype=torch.bool)
    reply[:, args.length // 2:-1] = True  # positions predicting the second half: the reply
    targets = torch.roll(ids, -1, dims=1)
    q = torch.randn(args.vocab, generator=generator).to(device)
    q = q / q.abs().max()
    times = []
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        passed = model_head_pass(engine.module, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, targets,
                                 reply, reply, q)
        chosen, rejected = passed.logps.chunk(2)
        r_chosen, r_rejected = passed.rewards.chunk(2)
        loss = -torch.nn.functional.logsigmoid(0.1 * (chosen - rejected)).mean() - (r_chosen - r_rejected).mean()
        engine.backward(loss)
        engine.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None
    params = sum(p.ds_numel for p in model.parameters())
    unset_hf_deepspeed_config()
    del engine, model
    return {"bf16": bf16, "shard_dtype": shard_dtype, "parameters": params, "step_s": statistics.median(times),
            "peak_gib": peak, "loss": float(loss)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=14336)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--micro-batch", type=int, default=2, help="pairs a step")
    p.add_argument("--length", type=int, default=1024, help="tokens a sequence (half prompt, half reply)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    os.environ.setdefault("MASTER_PORT", "29733")
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if args.device == "cuda" else "gloo")
    import subprocess

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    results = [{**step_once(args, bf16), "commit": commit or None} for bf16 in (True, "auto")]
    for r in results:
        print(json.dumps(r))
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
