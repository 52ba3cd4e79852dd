"""Every YAML under configs/ goes through Axolotl's own `load_cfg` (plugin registration, config
validation with the plugin's schema merged in, normalisation, the DeepSpeed environment), with the
model swapped for the tiny local one and the data for a local HH-RLHF file; the DeepSpeed JSONs
are checked by DeepSpeed's own config classes; bad DEFT values fail with errors naming the key.

No training and no GPU: the GPU configs are loaded as on one rank of an 8-GPU node (capabilities
and WORLD_SIZE faked, the process group not created)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pydantic
import pytest
import torch
import yaml

from builders import REPO

CONFIG_DIR = REPO / "configs"
CONFIGS = sorted([*CONFIG_DIR.rglob("*.yaml"), *CONFIG_DIR.rglob("*.yml")])
DEEPSPEED_JSONS = sorted((CONFIG_DIR / "deepspeed").glob("*.json"))
CPU_CONFIG = CONFIG_DIR / "smollm2" / "deft-dpo-cpu.yaml"
PRO_CPU_CONFIG = CONFIG_DIR / "smollm2" / "deft-pro-cpu.yaml"
N_GPU = 8
GPU_NODE = {"bf16": True, "fp8": True, "tf32": True, "n_gpu": N_GPU, "compute_capability": "sm_90"}  # H100 x8
LLAMA3_8B_HIDDEN = 4096


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def _needs_gpus(raw: dict) -> bool:
    return bool(raw.get("deepspeed")) or raw.get("bf16") is True


@pytest.fixture
def axolotl_process(monkeypatch):
    """Keep what `load_cfg` does to this process (environment variables, the stdout tee of its
    debug log, Axolotl's distributed state) from leaking into other tests."""
    import axolotl.utils.distributed as axolotl_dist
    from axolotl.integrations.base import PluginManager
    from axolotl.utils.tee import close_debug_log

    saved_env, saved_precision = dict(os.environ), _fp32_precision()
    monkeypatch.setenv("AXOLOTL_TEE_STDOUT", "0")
    monkeypatch.setattr(axolotl_dist, "distributed_state", None)
    # a fresh plugin registry, as in a new `axolotl` process: none left over from another test
    monkeypatch.setattr(PluginManager, "_instance", None)
    close_debug_log()
    yield monkeypatch
    close_debug_log()
    os.environ.clear()
    os.environ.update(saved_env)
    _restore_fp32_precision(saved_precision)  # `tf32: true` switches TF32 on for the whole process


_PRECISION_PATHS = ("", "cuda.matmul", "cudnn", "cudnn.conv", "cudnn.rnn", "mkldnn", "mkldnn.matmul", "mkldnn.conv",
                    "mkldnn.rnn")


def _backend(path: str):
    obj = torch.backends
    for part in filter(None, path.split(".")):
        obj = getattr(obj, part, None)
    return obj


def _fp32_precision() -> dict:
    state = {"matmul": torch.get_float32_matmul_precision()}
    for path in _PRECISION_PATHS:
        if hasattr(_backend(path), "fp32_precision"):
            state[path] = _backend(path).fp32_precision
    return state


def _restore_fp32_precision(state: dict) -> None:
    torch.set_float32_matmul_precision(state.pop("matmul"))
    for path, value in state.items():
        _backend(path).fp32_precision = value


def _localised(path: Path | dict, tiny_model_dir, hh_file, tmp_path, changes: dict | None = None) -> dict:
    """The YAML (a file, or one already read) with the model, the data and the output paths made
    local; everything else as written."""
    raw = dict(path) if isinstance(path, dict) else yaml.safe_load(path.read_text())
    raw["base_model"] = str(tiny_model_dir)
    for key in ("base_model_config", "tokenizer_config"):
        if key in raw:
            raw[key] = str(tiny_model_dir)
    for entry in raw["datasets"]:
        entry["path"] = str(hh_file)  # split etc. stay: a local file has one split
    raw["output_dir"] = str(tmp_path / "out")
    raw["dataset_prepared_path"] = str(tmp_path / "prepared")
    if isinstance(raw.get("deepspeed"), str) and not Path(raw["deepspeed"]).is_absolute():
        raw["deepspeed"] = str(REPO / raw["deepspeed"])  # the configs are launched from the repository root
    raw.update(changes or {})
    return raw


def _load(raw: dict, tmp_path: Path, monkeypatch):
    """Axolotl's own `load_cfg` on a temporary copy of the YAML. For configs meant for GPUs:
    the capabilities of an 8-GPU H100 node (peer access included), WORLD_SIZE=8, and no process group."""
    import axolotl.cli.config as axolotl_config
    import axolotl.utils.trainer as axolotl_trainer

    if _needs_gpus(raw):
        env_caps = {"torch_version": torch.__version__.split("+")[0]}
        monkeypatch.setattr(axolotl_config, "gpu_capabilities", lambda: (dict(GPU_NODE), env_caps))
        monkeypatch.setenv("WORLD_SIZE", str(N_GPU))
        monkeypatch.setenv("LOCAL_RANK", "0")
        monkeypatch.setattr(axolotl_trainer, "init_distributed_state", lambda: None)
        # the node's GPUs reach each other (NVLink); without this, Axolotl asks torch, which on a
        # CUDA build of torch without a driver raises RuntimeError (the CPU build: AssertionError)
        monkeypatch.setattr(axolotl_trainer, "check_cuda_p2p_ib_support", lambda: True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return axolotl_config.load_cfg(str(path))


def test_expected_configs_exist():
    names = {str(p.relative_to(CONFIG_DIR)) for p in CONFIGS}
    assert {"llama3-8b/deft-dpo.yaml", "llama3-8b/dpo.yaml", "smollm2/deft-dpo-cpu.yaml",
            "llama3-8b/deft-pro.yaml", "llama3-8b/pro.yaml", "smollm2/deft-pro-cpu.yaml"} <= names
    assert {p.name for p in DEEPSPEED_JSONS} >= {"zero2.json", "zero3_bf16.json"}


@pytest.mark.parametrize("path", CONFIGS, ids=_rel)
def test_config_loads_through_axolotl(path, tiny_model_dir, hh_file, tmp_path, axolotl_process):
    written = yaml.safe_load(path.read_text())
    raw = _localised(path, tiny_model_dir, hh_file, tmp_path)
    cfg = _load(raw, tmp_path, axolotl_process)

    if written.get("deft_method") == "pro":  # PRO on the causal trainer: no rl, no packing
        assert not cfg.rl and cfg.sample_packing is False
        assert "rl" not in written
    else:
        assert cfg.rl == "dpo"
    assert "deft_plugin.DEFTPlugin" in cfg.plugins
    # No key is dropped: Axolotl silently drops keys that are not in its schema (0.19 has no `fp32`)
    # and the keys of a plugin that is not loaded.
    assert [k for k in written if cfg.get(k) is None] == []
    # Every deft_* key survives with its value: the plugin's schema was merged.
    deft_keys = {k: v for k, v in written.items() if k.startswith("deft_")}
    assert deft_keys, "a config listing the DEFT plugin should say how DEFT is set"
    for key, value in deft_keys.items():
        assert cfg[key] == value, key
    assert [d["type"] for d in cfg.datasets] == [d["type"] for d in written["datasets"]]
    assert all(d["type"].startswith("deft.") for d in cfg.datasets)
    for key in ("sequence_len", "micro_batch_size", "gradient_accumulation_steps", "learning_rate", "num_epochs",
                "chat_template", "lr_scheduler", "warmup_ratio", "val_set_size", "rl_beta", "attn_implementation"):
        if key in written:
            assert cfg[key] == written[key], key
    # Relative paths in the committed files, never a machine path.
    for key in ("base_model", "output_dir", "dataset_prepared_path", "deepspeed"):
        if isinstance(written.get(key), str):
            assert not Path(written[key]).is_absolute(), key
    for entry in written["datasets"]:
        assert not Path(entry["path"]).is_absolute()

    if _needs_gpus(written):
        assert cfg.bf16 is True and cfg.torch_dtype == torch.bfloat16
        assert cfg.world_size == N_GPU
        assert cfg.batch_size == written["micro_batch_size"] * written["gradient_accumulation_steps"] * N_GPU
        assert written["gradient_checkpointing"] is True
    else:
        assert cfg.torch_dtype == torch.float32 and not cfg.bf16 and not cfg.fp16
        assert cfg.device_map == "cpu"
    if written.get("deepspeed"):
        ds_file = REPO / written["deepspeed"]
        assert ds_file.is_file()
        stage = json.loads(ds_file.read_text())["zero_optimization"]["stage"]
        # normalize_config replaced the path by the parsed JSON; prepare_optim_env told accelerate.
        assert cfg.deepspeed["zero_optimization"]["stage"] == stage
        assert os.environ["ACCELERATE_USE_DEEPSPEED"] == "true"
        assert os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == str(ds_file)
        assert os.environ["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == str(stage)
        assert os.environ.get("ACCELERATE_DEEPSPEED_ZERO3_INIT") == ("true" if stage == 3 else None)
        assert os.environ["ACCELERATE_MIXED_PRECISION"] == "bf16"


def readme_configs() -> list[dict]:
    """The YAML blocks of the README that are Axolotl configs."""
    blocks = re.findall(r"```yaml\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    return [raw for raw in map(yaml.safe_load, blocks) if isinstance(raw, dict) and "plugins" in raw]


def test_readme_has_a_config_per_method():
    assert sorted(raw.get("deft_method", "dpo") for raw in readme_configs()) == ["dpo", "pro"]


@pytest.mark.parametrize("index", range(2))
def test_readme_config_loads_through_axolotl(index, tiny_model_dir, hh_file, tmp_path, axolotl_process):
    """Each README config as written, but for the model and the data files, passes Axolotl's
    validation with every key kept."""
    written = readme_configs()[index]
    cfg = _load(_localised(written, tiny_model_dir, hh_file, tmp_path), tmp_path, axolotl_process)
    assert [k for k in written if cfg.get(k) is None] == []
    for key in ("learning_rate", "micro_batch_size", "sequence_len", "deft_filter_ratio", "deft_method"):
        if key in written:
            assert cfg[key] == written[key], key


@pytest.mark.parametrize("method", ["dpo", "pro"])
def test_llama3_configs(method):
    deft = yaml.safe_load((CONFIG_DIR / f"llama3-8b/deft-{method}.yaml").read_text())
    base = yaml.safe_load((CONFIG_DIR / f"llama3-8b/{method}.yaml").read_text())
    assert deft["base_model"] == base["base_model"] == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert deft["datasets"] == base["datasets"] == [{"path": "Anthropic/hh-rlhf", "split": "train",
                                                     "type": "deft.hh_rlhf"}]
    assert deft["deepspeed"] == base["deepspeed"] == "configs/deepspeed/zero3_bf16.json"
    assert deft["deft_filter_ratio"] == 0.05
    # 8 GPUs x micro batch x accumulation = the pairs per optimizer step
    assert deft["micro_batch_size"] * deft["gradient_accumulation_steps"] * N_GPU == 64


@pytest.mark.parametrize("method", ["dpo", "pro"])
def test_baseline_is_the_deft_config_without_deft(method):
    deft = yaml.safe_load((CONFIG_DIR / f"llama3-8b/deft-{method}.yaml").read_text())
    base = yaml.safe_load((CONFIG_DIR / f"llama3-8b/{method}.yaml").read_text())
    # Plain DPO / PRO on every pair: no filtering, no DEFT term; for DPO the plugin only parses
    # HH-RLHF, for PRO it also provides the trainer (and PRO's own SFT weight stays the same).
    pro_keys = {"deft_method": "pro", "deft_pro_sft_weight": 0.05} if method == "pro" else {}
    assert {k: v for k, v in base.items() if k.startswith("deft_")} == {"deft_filter": False,
                                                                        "deft_reward_weight": 0, **pro_keys}
    assert {k: deft[k] for k in pro_keys} == pro_keys
    ignore = {"output_dir", "dataset_prepared_path"}
    shared = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("deft_") and k not in ignore}  # noqa: E731
    assert shared(base) == shared(deft)
    assert base["output_dir"] != deft["output_dir"]
    assert base["dataset_prepared_path"] != deft["dataset_prepared_path"]


def test_configs_that_say_the_default_use_it():
    from deft_plugin.core.losses import DEFAULT_LOSS_FORM, DEFAULT_REWARD_WEIGHT

    defaults = {"deft_reward_weight": DEFAULT_REWARD_WEIGHT, "deft_loss_form": DEFAULT_LOSS_FORM}
    said = 0
    for path in CONFIGS:
        for line in path.read_text().splitlines():
            key = line.split(":")[0]
            if key in defaults and "(the default)" in line:
                assert yaml.safe_load(line)[key] == defaults[key], (_rel(path), key)
                said += 1
    assert said >= 2 * 2  # both keys in the CPU configs at least


def _deepspeed_config(filled: dict, monkeypatch):
    """DeepSpeed's own parsed config, as on one rank of N_GPU (no process group is created)."""
    import deepspeed.runtime.config as ds_config

    monkeypatch.setattr(ds_config.dist, "get_rank", lambda *args, **kwargs: 0)
    return ds_config.DeepSpeedConfig(filled, mpu=SimpleNamespace(get_data_parallel_world_size=lambda: N_GPU))


def _hf_filled(ds_config: dict, world_size: int, micro_batch: int, grad_accum: int) -> dict:
    """The JSON with its "auto" values filled the way the HF Trainer fills them (transformers'
    own HfTrainerDeepSpeedConfig), for a Llama-3-8B-sized model in bf16."""
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    args = SimpleNamespace(world_size=world_size, per_device_train_batch_size=micro_batch,
                           gradient_accumulation_steps=grad_accum, max_grad_norm=1.0, learning_rate=5e-7,
                           adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, weight_decay=0.0,
                           save_on_each_node=False, fp16=False, fp16_full_eval=False, bf16=True,
                           bf16_full_eval=False, get_warmup_steps=lambda steps: 0)
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=LLAMA3_8B_HIDDEN))
    try:
        hf = HfTrainerDeepSpeedConfig(json.loads(json.dumps(ds_config)))
        hf.trainer_config_process(args)
        hf.trainer_config_finalize(args, model, num_training_steps=100)
        return hf.config
    finally:
        unset_hf_deepspeed_config()


@pytest.mark.parametrize("path", DEEPSPEED_JSONS, ids=_rel)
def test_deepspeed_config_is_valid(path, monkeypatch):
    raw = json.loads(path.read_text())
    stage = raw["zero_optimization"]["stage"]
    assert stage == {"zero2.json": 2, "zero3_bf16.json": 3}.get(path.name, stage)
    # Filled by the HF integration at train time, from Axolotl's settings.
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping"):
        assert raw[key] == "auto", key
    # ZeRO-3 partitions the model while it loads, before the trainer fills "auto": bf16 is set outright
    assert raw["bf16"]["enabled"] == (True if stage == 3 else "auto")
    # 8 x 80 GB full fine-tuning of an 8B model: faster without CPU offload.
    assert "offload_optimizer" not in raw["zero_optimization"]
    assert "offload_param" not in raw["zero_optimization"]
    if stage == 3:
        assert raw["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True

    filled = _hf_filled(raw, N_GPU, micro_batch=2, grad_accum=4)
    assert "auto" not in json.dumps(filled)
    assert filled["train_batch_size"] == 64 and filled["bf16"]["enabled"] is True
    ds = _deepspeed_config(filled, monkeypatch)  # DeepSpeed's pydantic models forbid unknown keys
    assert ds.zero_optimization_stage == stage
    assert ds.bfloat16_config.enabled and not ds.float16_config.enabled
    assert ds.train_batch_size == 64
    if stage == 3:
        assert ds.zero_config.gather_16bit_weights_on_model_save
        assert ds.zero_config.reduce_bucket_size == LLAMA3_8B_HIDDEN ** 2


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in DEEPSPEED_JSONS
                                  if json.loads(p.read_text())["zero_optimization"]["stage"] == 3], ids=_rel)
def test_a_bf16_run_holds_bf16_shards(path, tiny_model_dir, tmp_path):
    """A model loaded under zero.Init as Axolotl loads it, with bf16 requested: the shards are
    bf16 (with "enabled": "auto" they stayed float32, twice the memory). ZeRO-2 partitions nothing
    while loading: the loader's dtype is the model's."""
    script = Path(__file__).with_name("zero_init_dtype.py")
    env = {**os.environ, "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    proc = subprocess.run([sys.executable, str(script), str(path), str(tiny_model_dir)], capture_output=True,
                          text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == {"partitioned": True, "dtypes": ["torch.bfloat16"]}


def test_deepspeed_config_with_an_unknown_key_is_refused(monkeypatch):
    """The check above has teeth: DeepSpeed refuses an unknown ZeRO key."""
    raw = json.loads((CONFIG_DIR / "deepspeed/zero2.json").read_text())
    raw["zero_optimization"]["stage3_gather_16bit_weights_on_model_sav"] = True
    filled = _hf_filled(raw, N_GPU, micro_batch=2, grad_accum=4)
    with pytest.raises(pydantic.ValidationError, match="stage3_gather_16bit_weights_on_model_sav"):
        _deepspeed_config(filled, monkeypatch)


# (change to the CPU config, text the error must contain)
BAD = [
    pytest.param({"deft_filter_ratio": 0}, "deft_filter_ratio", id="ratio-0"),
    pytest.param({"deft_filter_ratio": 1.5}, "deft_filter_ratio", id="ratio-1.5"),
    pytest.param({"deft_filter_ratio": 0.1, "deft_filter_count": 5}, "deft_filter_count", id="ratio-and-count"),
    pytest.param({"deft_filter_ratio": None, "deft_filter_count": 0}, "deft_filter_count", id="count-0"),
    pytest.param({"deft_reward_weight": -1}, "deft_reward_weight", id="weight-negative"),
    pytest.param({"deft_qdiff_norm": "foo"}, "deft_qdiff_norm", id="norm-foo"),
    pytest.param({"deft_filter_score": "bar"}, "deft_filter_score", id="score-bar"),
    pytest.param({"deft_loss_form": "sum"}, "deft_loss_form", id="loss-form-sum"),
    pytest.param({"deft_score_dtype": "int8"}, "deft_score_dtype", id="score-dtype-int8"),
    pytest.param({"deft_score_batch_size": 0}, "deft_score_batch_size", id="score-batch-0"),
    pytest.param({"dpo_loss_type": ["robust"]}, "dpo_loss_type", id="loss-type-robust"),
    pytest.param({"dpo_loss_type": ["sigmoid", "bco_pair"], "dpo_loss_weights": [1.0, 1.0]}, "dpo_loss_type",
                 id="loss-type-mixed"),
    pytest.param({"dpo_loss_type": ["ipo"], "deft_loss_form": "margin"}, "deft_loss_form: margin puts",
                 id="ipo-with-margin"),
    pytest.param({"dpo_loss_type": ["ipo"], "deft_loss_form": None}, "deft_loss_form: margin (the default) puts",
                 id="ipo-with-the-default-form"),
    pytest.param({"dpo_use_weighting": True}, "dpo_use_weighting", id="wpo-weighting"),
    pytest.param({"dpo_padding_free": True}, "dpo_padding_free", id="padding-free"),
    pytest.param({"rl_adapter_ref_model": True}, "rl_adapter_ref_model", id="ref-adapter"),
    pytest.param({"datasets": [{"path": "x.jsonl", "type": "deft.nope"}]}, "datasets[0].type",
                 id="unknown-format"),
    pytest.param({"rl": "kto"}, "rl", id="rl-kto"),
    pytest.param({"deft_filter_rato": 0.5}, "deft_filter_rato", id="misspelt-key"),
    pytest.param({"deft_method": "ppo"}, "deft_method", id="method-ppo"),
    pytest.param({"deft_filter_select": "middle"}, "deft_filter_select", id="select-middle"),
    pytest.param({"deft_filter_by": "shortest"}, "deft_filter_by", id="by-shortest"),
    pytest.param({"deft_filter_select": "random", "deft_filter_by": "logp_margin"}, "deft_filter_by",
                 id="random-by-margin"),
    pytest.param({"deft_truncation": "cut"}, "deft_truncation", id="truncation-cut"),
    pytest.param({"datasets": [{"path": "x.jsonl", "type": "deft.listwise"}]}, "datasets[0].type",
                 id="listwise-with-dpo"),
    pytest.param({"deft_reference": "cache"}, "deft_reference", id="reference-cache"),
    pytest.param({"precompute_ref_log_probs": False}, "precompute_ref_log_probs", id="precompute-off"),
    pytest.param({"dpo_ld_alpha": 0.5}, "dpo_ld_alpha", id="ld-dpo"),
    pytest.param({"trl": {"sync_ref_model": True}}, "sync_ref_model", id="sync-ref-model"),
]

def test_another_trainer_class_is_refused_naming_the_key(tiny_model_dir, hh_file, tmp_path, axolotl_process):
    raw = _localised(CPU_CONFIG, tiny_model_dir, hh_file, tmp_path,
                     {"trainer_cls": "axolotl.core.trainers.dpo.trainer.AxolotlDPOTrainer"})
    with pytest.raises(ValueError, match=r"^trainer_cls: .*AxolotlDPOTrainer is not a DEFT-DPO trainer"):
        _load(raw, tmp_path, axolotl_process)


def test_deft_dpo_configures_its_trainer_and_the_free_reference(tiny_model_dir, hh_file, tmp_path, axolotl_process):
    """The plugin's register: Axolotl will construct the DEFT trainer, with TRL's precomputed
    reference on; deft_reference: model leaves TRL's reference as it is."""
    cfg = _load(_localised(CPU_CONFIG, tiny_model_dir, hh_file, tmp_path, {}), tmp_path, axolotl_process)
    assert cfg.trainer_cls == "deft_plugin.integration.dpo_trainer.DeftDPOTrainer"
    assert cfg.precompute_ref_log_probs is True
    cfg = _load(_localised(CPU_CONFIG, tiny_model_dir, hh_file, tmp_path, {"deft_reference": "model"}), tmp_path,
                axolotl_process)
    assert cfg.trainer_cls == "deft_plugin.integration.dpo_trainer.DeftDPOTrainer"
    assert not cfg.precompute_ref_log_probs


def test_liger_dpo_loss_is_replaced_by_the_chunked_loss(tiny_model_dir, hh_file, tmp_path, axolotl_process):
    """dpo_use_liger_kernel is accepted: the DEFT trainer's own chunked loss takes its place (TRL's
    Liger loss, which would replace the DEFT trainer's, is turned off)."""
    raw = _localised(CPU_CONFIG, tiny_model_dir, hh_file, tmp_path, {"dpo_use_liger_kernel": True})
    cfg = _load(raw, tmp_path, axolotl_process)
    assert cfg.dpo_use_liger_kernel is False
    assert cfg.trainer_cls == "deft_plugin.integration.dpo_trainer.DeftDPOTrainer"


# (change to the PRO CPU config, text the error must contain)
BAD_PRO = [
    pytest.param({"rl": "dpo"}, "rl", id="rl-with-pro"),
    pytest.param({"sample_packing": True}, "sample_packing", id="packing"),
    pytest.param({"deft_pro_sft_weight": -0.1}, "deft_pro_sft_weight", id="sft-weight-negative"),
    pytest.param({"datasets": [{"path": "x.jsonl", "type": "chatml.intel"}]}, "datasets[0].type",
                 id="non-deft-format"),
]


@pytest.mark.parametrize("config,change,key", [pytest.param(CPU_CONFIG, *p.values, id=p.id) for p in BAD]
                         + [pytest.param(PRO_CPU_CONFIG, *p.values, id="pro-" + p.id) for p in BAD_PRO])
def test_bad_values_fail_validation_naming_the_key(config, change, key, tiny_model_dir, hh_file, tmp_path,
                                                   axolotl_process):
    raw = _localised(config, tiny_model_dir, hh_file, tmp_path, change)
    raw = {k: v for k, v in raw.items() if v is not None}
    # Axolotl's validate_config raises pydantic's ValidationError (a ValueError) carrying the plugin's
    # message; the key must be named in an error's location or message (not just in the echoed input).
    with pytest.raises(pydantic.ValidationError) as err:
        _load(raw, tmp_path, axolotl_process)
    errors = [" ".join(map(str, e["loc"])) + " " + e["msg"] for e in err.value.errors()]
    assert any(re.search(rf"(?<![\w.-]){re.escape(key)}\b", text) for text in errors), errors


def test_misspelt_key_gets_a_suggestion(tiny_model_dir, hh_file, tmp_path, axolotl_process):
    raw = _localised(CPU_CONFIG, tiny_model_dir, hh_file, tmp_path, {"deft_filter_rato": 0.5})
    with pytest.raises(pydantic.ValidationError, match="did you mean deft_filter_ratio"):
        _load(raw, tmp_path, axolotl_process)


def test_plugin_keys_are_dropped_when_the_plugin_is_not_listed(tiny_model_dir, hh_file, tmp_path, axolotl_process):
    """What the key checks above rely on: without the plugin, Axolotl drops deft_* keys silently."""
    raw = _localised(CPU_CONFIG, tiny_model_dir, hh_file, tmp_path)
    raw.pop("plugins")
    raw["datasets"] = [{"path": str(hh_file), "type": "chatml.intel"}]
    cfg = _load(raw, tmp_path, axolotl_process)
    assert cfg.get("deft_filter_ratio") is None


@pytest.mark.parametrize("change, line", [
    ({"deft_filter_ratio": 2}, "  deft_filter_ratio must be in (0, 1], got 2.0"),
    ({"deft_filtr_ratio": 0.1}, "  deft_filtr_ratio: unknown DEFT key; did you mean deft_filter_ratio?"),
    ({"base_model": "./models/no-such-model"}, "  base_model: ./models/no-such-model is not a model directory"),
    ({"datasets": [{"path": "data/no-such-file.jsonl", "type": "deft.hh_rlhf"}]},
     "  datasets[0].path: data/no-such-file.jsonl does not exist"),
])
def test_a_refused_config_reaches_the_axolotl_user_in_a_few_lines(change, line, tiny_model_dir, hh_file, tmp_path):
    """Through `axolotl preprocess` as a user calls it: the key and the message, no traceback (before: the
    message at the end of 60-250 lines; a missing model folder read as a malformed hub id)."""
    from test_axolotl_e2e import write_config

    config = write_config(tmp_path, tiny_model_dir, hh_file, **change)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "AXOLOTL_DO_NOT_TRACK": "1"}
    env.pop("DEFT_DEBUG", None)
    proc = subprocess.run([str(Path(sys.executable).with_name("axolotl")), "preprocess", str(config)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "Repo id must be" not in proc.stderr, proc.stderr[-3000:]
    errors = proc.stderr[proc.stderr.index("axolotl: the config is not valid"):].splitlines()
    assert errors[0] == "axolotl: the config is not valid (1 error; DEFT_DEBUG=1 shows the traceback):"
    assert len(errors) == 2 and errors[1].startswith(line), errors
    debug = subprocess.run([str(Path(sys.executable).with_name("axolotl")), "preprocess", str(config)], cwd=tmp_path,
                           env={**env, "DEFT_DEBUG": "1"}, capture_output=True, text=True, timeout=300)
    assert "Traceback" in debug.stderr and line.strip().split(" (")[0] in debug.stderr
