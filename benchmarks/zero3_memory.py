"""What one ZeRO-3 rank holds for the Llama-3-8B configs, computed from the shipped DeepSpeed
JSON and YAMLs (no GPU needed): the parameter, gradient and optimizer-state shards, and the
largest parameter gathered whole at a time, in the dtype zero.Init gives the shards. That dtype
is what the JSON's bf16 says while Axolotl loads the model, before the trainer fills "auto":
"enabled": true gives bf16 shards; "auto" (the config before the fix) left them float32, as the
test tests/integration/test_configs.py::test_a_bf16_run_holds_bf16_shards measures on a tiny model.

    python benchmarks/zero3_memory.py --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Meta-Llama-3-8B-Instruct's config.json: the shapes that fix the parameter count
LLAMA3_8B = {"vocab": 128256, "hidden": 4096, "layers": 32, "intermediate": 14336, "heads": 32, "kv_heads": 8,
             "tied": False}
GIB = 1024 ** 3


def parameter_count(c: dict) -> tuple[int, int]:
    """(all parameters, the largest single one): embeddings, per layer q/k/v/o, the gated MLP and two
    RMSNorms, the final norm and the untied LM head."""
    head_dim = c["hidden"] // c["heads"]
    attention = 2 * c["hidden"] * c["hidden"] + 2 * c["hidden"] * c["kv_heads"] * head_dim
    layer = attention + 3 * c["hidden"] * c["intermediate"] + 2 * c["hidden"]
    embedding = c["vocab"] * c["hidden"]
    return embedding * (1 if c["tied"] else 2) + c["layers"] * layer + c["hidden"], embedding


def shard_dtype_bytes(ds: dict) -> int:
    """Bytes per parameter of a zero.Init shard: 2 when bf16 (or fp16) is enabled outright, else 4
    (unfilled "auto" reads as off while the model loads)."""
    half = any(ds.get(key, {}).get("enabled") is True for key in ("bf16", "fp16"))
    return 2 if half else 4


def per_rank(ds: dict, world: int, params: int, largest: int) -> dict:
    shard = params / world
    width = shard_dtype_bytes(ds)
    # Adam: two fp32 moments; with half-precision shards DeepSpeed also keeps an fp32 master copy
    optimizer = shard * (8 + (4 if width == 2 else 0))
    live = ds["zero_optimization"].get("stage3_max_live_parameters", 1e9)
    return {"shard_dtype": "bfloat16" if width == 2 else "float32", "parameters_gib": shard * width / GIB,
            "gradients_gib": shard * width / GIB, "optimizer_gib": optimizer / GIB,
            "largest_gathered_gib": largest * width / GIB, "live_gathered_bound_gib": min(live, params) * width / GIB}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "llama3-8b" / "deft-dpo.yaml"))
    p.add_argument("--world", type=int, default=8, help="GPUs (the Llama-3-8B configs are written for 8)")
    p.add_argument("--results", default=None, help="append the table to this Markdown file")
    args = p.parse_args()
    cfg = yaml.safe_load(Path(args.config).read_text())
    ds = json.loads((ROOT / cfg["deepspeed"]).read_text())
    before = json.loads(json.dumps(ds))
    before["bf16"]["enabled"] = "auto"  # the shipped JSON before the fix
    params, largest = parameter_count(LLAMA3_8B)
    rows = {"shipped (bf16 enabled)": per_rank(ds, args.world, params, largest),
            "before the fix (bf16 auto)": per_rank(before, args.world, params, largest)}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    lines = [f"## zero3_memory.py, {datetime.now():%Y-%m-%d %H:%M} (commit {commit})", "",
             f"Llama-3-8B ({params / 1e9:.2f} B parameters), {Path(args.config).relative_to(ROOT)} with "
             f"{cfg['deepspeed']}, {args.world} ranks, bf16: {cfg.get('bf16')}; per rank, GiB:", "",
             "| JSON | shard dtype | parameters | gradients | optimizer states | sum | largest gathered (embedding) "
             "| live gathered bound |", "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        total = r["parameters_gib"] + r["gradients_gib"] + r["optimizer_gib"]
        lines.append(f"| {name} | {r['shard_dtype']} | {r['parameters_gib']:.2f} | {r['gradients_gib']:.2f} | "
                     f"{r['optimizer_gib']:.2f} | {total:.2f} | {r['largest_gathered_gib']:.2f} | "
                     f"{r['live_gathered_bound_gib']:.2f} |")
    lines += ["", "The sums are alike (bf16 shards carry an fp32 master copy in the optimizer); the difference is "
              "in what is gathered whole for each forward and backward (layers, the embedding and the LM head) "
              "and in the activations, which follow the parameters' dtype: twice the bytes in float32.", ""]
    text = "\n".join(lines)
    print(text)
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
