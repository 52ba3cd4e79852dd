"""Loads a model the way Axolotl does under ZeRO-3 (its loader fills the batch sizes of the
DeepSpeed JSON and leaves the rest, bf16 included, to the trainer later) and prints the dtype of
the partitioned parameters. Run as a script, one gloo process on CPU:
    python zero_init_dtype.py DEEPSPEED_JSON MODEL_DIR"""

import json
import os
import sys

os.environ.update(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
os.environ.setdefault("MASTER_PORT", "29731")

import deepspeed  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig  # noqa: E402

deepspeed.init_distributed(dist_backend="gloo")
config = HfTrainerDeepSpeedConfig(json.loads(open(sys.argv[1]).read()))
for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size"):
    config.fill_match(key, 1)  # as Axolotl's loader does before the model, for one process
model = AutoModelForCausalLM.from_pretrained(sys.argv[2], dtype=torch.bfloat16)  # the YAML's bf16: true
shards = {str(p.ds_tensor.dtype) for p in model.parameters() if hasattr(p, "ds_id")}
print(json.dumps({"partitioned": all(hasattr(p, "ds_id") for p in model.parameters()), "dtypes": sorted(shards)}))
