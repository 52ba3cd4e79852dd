"""Every YAML in configs/ goes through Axolotl's own plugin loading and config validation
with the DEFT plugin (the model swapped for the tiny local one, the data for a local file),
and bad DEFT values fail with errors that name the key."""

import json
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
GPU_NODE = {"bf16": True, "fp8": False, "tf32": True, "n_gpu": 8, "compute_capability": "sm_90"}


def _validate(raw: dict, capabilities: dict):
    from axolotl.cli.config import prepare_plugins
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault(raw)
    prepare_plugins(cfg)
    return validate_config(cfg, capabilities=capabilities,
                           env_capabilities={"torch_version": torch.__version__.split("+")[0]})


def _localised(path: Path, tiny_model_dir, hh_file) -> tuple[dict, dict]:
    raw = yaml.safe_load(path.read_text())
    raw["base_model"] = str(tiny_model_dir)
    raw.pop("chat_template", None)  # the tiny tokenizer carries its own template
    for entry in raw["datasets"]:
        entry.update(path=str(hh_file))
        entry.pop("split", None)
    if "deepspeed" in raw:
        raw["deepspeed"] = str(REPO / raw["deepspeed"])
    capabilities = GPU_NODE if raw.get("bf16") is True else {**GPU_NODE, "bf16": False, "n_gpu": 1}
    return raw, capabilities


def test_configs_exist():
    names = {str(p.relative_to(REPO / "configs")) for p in CONFIGS}
    assert {"llama3-8b/deft-dpo.yaml", "llama3-8b/dpo.yaml", "smollm2/deft-dpo-cpu.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_config_validates_with_plugin(path, tiny_model_dir, hh_file):
    raw, capabilities = _localised(path, tiny_model_dir, hh_file)
    cfg = _validate(raw, capabilities)
    assert cfg.rl == "dpo"
    assert "deft_plugin.DEFTPlugin" in cfg.plugins
    for key, value in raw.items():  # DEFT keys survive validation: the plugin's schema was merged
        if key.startswith("deft_"):
            assert cfg[key] == value, key
    assert cfg.datasets[0]["type"] == "deft.hh_rlhf"
    if "deepspeed" in raw:
        assert Path(cfg.deepspeed).is_file()


def test_baseline_differs_from_deft_only_in_deft_keys():
    deft = yaml.safe_load((REPO / "configs/llama3-8b/deft-dpo.yaml").read_text())
    base = yaml.safe_load((REPO / "configs/llama3-8b/dpo.yaml").read_text())
    assert base["deft_filter"] is False and base["deft_reward_weight"] == 0
    ignore = {"output_dir", "dataset_prepared_path", "num_epochs"}
    shared = {k for k in deft if not k.startswith("deft_") and k not in ignore}
    assert {k: deft[k] for k in shared} == {k: base.get(k) for k in shared}


@pytest.mark.parametrize("name,stage", [("zero2.json", 2), ("zero3_bf16.json", 3)])
def test_deepspeed_configs(name, stage):
    cfg = json.loads((REPO / "configs/deepspeed" / name).read_text())
    assert cfg["zero_optimization"]["stage"] == stage
    assert "offload_optimizer" not in cfg["zero_optimization"]  # 8x80 GB: faster without CPU offload
    assert cfg["train_micro_batch_size_per_gpu"] == "auto"
    if stage == 3:
        assert cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
        assert cfg["bf16"]["enabled"] is True


BAD = [
    ({"deft_filter_ratio": 0}, "deft_filter_ratio"),
    ({"deft_filter_ratio": 1.5}, "deft_filter_ratio"),
    ({"deft_filter_ratio": 0.1, "deft_filter_count": 5}, "deft_filter_count"),
    ({"deft_filter_count": 0}, "deft_filter_count"),
    ({"deft_reward_weight": -1}, "deft_reward_weight"),
    ({"deft_qdiff_norm": "foo"}, "deft_qdiff_norm"),
    ({"deft_filter_score": "bar"}, "deft_filter_score"),
    ({"deft_loss_form": "sum"}, "deft_loss_form"),
    ({"dpo_use_liger_kernel": True}, "dpo_use_liger_kernel"),
    ({"rl": "kto"}, "rl"),
    ({"datasets": [{"path": "x.jsonl", "type": "deft.nope"}]}, "datasets[0].type"),
]


@pytest.mark.parametrize("change,key", BAD, ids=[k for _, k in BAD])
def test_bad_values_name_the_key(change, key, tiny_model_dir, hh_file):
    raw, capabilities = _localised(REPO / "configs/smollm2/deft-dpo-cpu.yaml", tiny_model_dir, hh_file)
    raw.update(change)
    with pytest.raises(Exception) as err:
        _validate(raw, capabilities)
    assert key in str(err.value)


def test_plugin_keys_are_dropped_when_the_plugin_is_not_listed(tiny_model_dir, hh_file):
    """Axolotl silently drops keys of plugins that are not loaded: listing the plugin matters."""
    raw, capabilities = _localised(REPO / "configs/smollm2/deft-dpo-cpu.yaml", tiny_model_dir, hh_file)
    raw.pop("plugins")
    raw["datasets"] = [{"path": str(hh_file), "type": "chatml.intel"}]
    cfg = _validate(raw, capabilities)
    assert cfg.get("deft_filter_ratio") is None
