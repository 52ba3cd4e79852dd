"""The README's two Axolotl configs, run as a user on a CPU runs them: the config as written, with the
README's CPU keys added, a local model (the default SmolLM2-135M-Instruct, whose chat template turns
HH-RLHF dialogues into messages) and small local data files in place of the hub ids, the README's
environment variables, and `axolotl train --launcher python` for one step. The PRO config mixes an
HH-RLHF dataset (chat messages) with a listwise one (text)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_configs import readme_configs

from builders import REPO, hh_rows, listwise_rows, write_jsonl

pytestmark = pytest.mark.slow
AXOLOTL = Path(sys.executable).with_name("axolotl")
README = (REPO / "README.md").read_text()


def readme_cpu_keys() -> dict:
    """The YAML block the README gives for a CPU run."""
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", README, flags=re.S)]
    (keys,) = [b for b in blocks if isinstance(b, dict) and b.get("device_map") == "cpu" and "plugins" not in b]
    return keys


def readme_environment() -> dict:
    """The variables of the README's `export` line for calling axolotl directly."""
    (line,) = [line for line in README.splitlines() if line.startswith("export HF_HUB_OFFLINE")]
    return dict(pair.split("=", 1) for pair in line.split()[1:])


def local_data(entry: dict, tmp_path: Path) -> str:
    if entry["type"] == "deft.hh_rlhf":
        return str(write_jsonl(tmp_path / "hh.jsonl", hh_rows(24)))
    assert entry["type"] == "deft.listwise", entry
    return str(write_jsonl(tmp_path / "ranked.jsonl", listwise_rows(12)))


@pytest.mark.parametrize("method", ["dpo", "pro"])
def test_a_readme_config_trains_on_cpu_as_the_readme_says(method, smollm2_dir, tmp_path):
    written = next(raw for raw in readme_configs() if raw.get("deft_method", "dpo") == method)
    cfg = {**written, **readme_cpu_keys(),
           "base_model": str(smollm2_dir),
           "datasets": [{**{k: v for k, v in d.items() if k != "split"}, "path": local_data(d, tmp_path)}
                        for d in written["datasets"]],
           # small: one step on a short sequence
           "sequence_len": 256, "micro_batch_size": 1, "gradient_accumulation_steps": 1, "max_steps": 1,
           "deft_filter_ratio": 0.1, "save_strategy": "no",
           "output_dir": str(tmp_path / "out"), "dataset_prepared_path": str(tmp_path / "prepared")}
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    proc = subprocess.run([str(AXOLOTL), "train", str(config), "--launcher", "python"], cwd=tmp_path,
                          env={**env, **readme_environment()}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=900)
    (tmp_path / "train.log").write_text(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert re.search(r"DEFT: \d+ rows read, 0 unparseable, \d+ degenerate, \d+ scored, \d+ kept -> 1 steps",
                     proc.stdout)
    if method == "pro":  # the listwise text rows were presented as chat messages, like the HH-RLHF ones
        assert "DEFT: 12 text rows presented as chat messages, like the other 24 rows" in proc.stdout
