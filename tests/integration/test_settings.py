"""The door: Axolotl's config becomes DEFT's frozen settings once. Every deft_* default comes
from the DEFTArgs schema, the mode is decided there, the score cache keeps the key it had
before the settings existed (an existing cache is reused), and past the plugin's hooks no code
reads Axolotl's config but the one function that hands it back to Axolotl."""

from __future__ import annotations

import ast
import copy
import dataclasses
import math
from pathlib import Path

import pytest
from axolotl.utils.dict import DictDefault

from deft_plugin.core.selection import DEFAULT_FILTER_RATIO
from deft_plugin.filtering.cache_key import fingerprint, score_cache_key
from deft_plugin.integration.args import DEFTArgs
from deft_plugin.integration.plugin import deft_settings
from deft_plugin.integration.settings import REWARD_KEYS, read_settings

from builders import REPO

PLUGIN = ["deft_plugin.DEFTPlugin"]

# Where each deft_* key lands in the settings: a key added to DEFTArgs without a place here fails
# test_every_key_has_a_place_in_the_settings.
PLACE = {
    "deft_method": lambda s: s.method,
    "deft_prompt_style": lambda s: s.prompt_style,
    "deft_filter": lambda s: s.filter.filter,
    "deft_filter_ratio": lambda s: None if s.filter.ratio == DEFAULT_FILTER_RATIO else s.filter.ratio,
    "deft_filter_count": lambda s: s.filter.count,
    "deft_filter_score": lambda s: s.filter.score,
    "deft_filter_select": lambda s: s.filter.select,
    "deft_filter_seed": lambda s: s.filter.seed,
    "deft_filter_by": lambda s: s.filter.by,
    "deft_qdiff_norm": lambda s: s.filter.norm,
    "deft_qdiff_path": lambda s: s.qdiff_path,
    "deft_truncation": lambda s: s.filter.truncation,
    "deft_score_batch_size": lambda s: s.filter.batch_size,
    "deft_score_dtype": lambda s: s.score_dtype,
    "deft_cache_dir": lambda s: None if s.cache_root == Path("last_run_prepared") / "deft" else str(s.cache_root),
    "deft_reference": lambda s: "scoring" if s.scoring_reference else "model",
    "deft_reward_weight": lambda s: s.loss.reward_weight,
    "deft_loss_form": lambda s: s.loss.form,
    "deft_pro_sft_weight": lambda s: s.loss.pro_sft_weight,
    "deft_guard": lambda s: s.loss.guard,
    "deft_guard_answers_every": lambda s: s.guard_answers_every,
    "deft_guard_answers": lambda s: s.guard_answers,
}


def test_every_key_has_a_place_in_the_settings():
    assert set(PLACE) == set(DEFTArgs.model_fields)


@pytest.mark.parametrize("raw", [
    {"plugins": PLUGIN, "rl": "dpo"},  # what `register` sees: the YAML, no defaults filled in
    {"plugins": PLUGIN, "rl": "dpo", **{k: None for k in DEFTArgs.model_fields}},  # keys present, unset
])
def test_every_default_comes_from_the_schema(raw):
    settings = deft_settings(DictDefault(raw))
    for key, field in DEFTArgs.model_fields.items():
        assert PLACE[key](settings) == field.default, key


def test_set_keys_reach_the_settings():
    values = {"deft_method": "pro", "deft_prompt_style": "raw", "deft_filter": False, "deft_filter_count": 7,
              "deft_filter_score": "chosen", "deft_filter_select": "bottom", "deft_filter_seed": 3,
              "deft_filter_by": "logp_margin",
              "deft_qdiff_norm": "l2", "deft_qdiff_path": "q", "deft_truncation": "drop", "deft_score_batch_size": 2,
              "deft_score_dtype": "bfloat16", "deft_cache_dir": "cache", "deft_reward_weight": 0.25,
              "deft_loss_form": "chosen", "deft_pro_sft_weight": 0.5, "deft_guard": "stop",
              "deft_guard_answers_every": 10, "deft_guard_answers": 2}
    settings = deft_settings(DictDefault({"plugins": PLUGIN, **values}))
    for key, value in values.items():
        assert PLACE[key](settings) == value, key
    assert settings.filter.ratio is None  # a count and no ratio: the count decides
    assert dataclasses.is_dataclass(settings) and settings.__dataclass_params__.frozen
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.method = "dpo"


@pytest.mark.parametrize("raw, mode", [
    ({"rl": "dpo"}, ("dpo", True, True, True)),
    ({"rl": "dpo", "deft_reference": "model"}, ("dpo", True, False, True)),
    ({"deft_method": "pro"}, ("pro", False, False, True)),
    ({"rl": "dpo", "datasets": [{"path": "hh.jsonl", "type": "chatml.intel"}]}, ("dpo", True, True, False)),
])
def test_the_mode_is_decided_once(raw, mode):
    raw = {"plugins": PLUGIN, "datasets": [{"path": "hh.jsonl", "type": "deft.hh_rlhf"}], **raw}
    s = deft_settings(DictDefault(raw))
    assert (s.method, s.dpo_trainer, s.scoring_reference, s.deft_formats) == mode
    assert s.filter.reference == s.scoring_reference  # the scoring pass records the reference exactly then


@pytest.mark.parametrize("form", ["margin", "anchored", None])
def test_at_lambda_0_the_form_asks_for_nothing(form):
    """No term, no starting rewards: a plain-DPO config pays for no scoring pass whatever the form."""
    raw = {"plugins": PLUGIN, "rl": "dpo", "deft_reference": "model", "deft_filter": False,
           **({"deft_loss_form": form} if form else {})}
    off = deft_settings(DictDefault({**raw, "deft_reward_weight": 0}))
    assert (off.loss.form, off.filter.start_rewards, off.filter.reference) == ("pair", False, False)
    on = deft_settings(DictDefault({**raw, "deft_reward_weight": 0.5}))
    assert on.loss.form == (form or DEFTArgs.model_fields["deft_loss_form"].default)
    assert on.filter.start_rewards == (on.loss.form in ("margin", "anchored"))


def test_a_mix_of_deft_and_axolotl_formats_is_refused_by_key():
    raw = {"plugins": PLUGIN, "rl": "dpo", "datasets": [{"path": "a", "type": "deft.hh_rlhf"},
                                                        {"path": "b", "type": "chatml.intel"}]}
    with pytest.raises(ValueError, match="datasets: either every entry uses a DEFT format"):
        read_settings(DictDefault(raw))


def test_a_config_without_the_plugin_is_not_the_plugins_to_check():
    """Axolotl 0.21 validates every config of a process against each plugin schema it has loaded:
    a plain config (here an rl the plugin refuses) must pass when it does not list the plugin."""
    plain = {"base_model": "m", "rl": "kto", "dpo_loss_type": ["ipo"]}
    assert DEFTArgs.model_validate(plain).deft_loss_form == DEFTArgs.model_fields["deft_loss_form"].default
    with pytest.raises(ValueError, match="rl: DEFT-DPO runs with rl: dpo"):
        DEFTArgs.model_validate({**plain, "plugins": PLUGIN})


def test_no_settings_without_the_plugin():
    assert deft_settings(DictDefault({"plugins": ["axolotl.integrations.liger.LigerPlugin"], "rl": "dpo"})) is None


# The score cache's identity as the plugin computed it before the settings object: these deft_*
# names and values. Any change here orphans every cache users already have.
DEFAULT_REWARD_KEY = {"deft_qdiff_norm": "maxabs", "deft_qdiff_path": None, "deft_prompt_style": "auto",
                      "deft_score_dtype": "auto", "deft_score_batch_size": 8, "deft_truncation": "keep_start"}


def test_the_reward_key_is_the_one_caches_were_written_under():
    settings = deft_settings(DictDefault({"plugins": PLUGIN, "rl": "dpo"}))
    assert settings.reward_key == DEFAULT_REWARD_KEY and tuple(settings.reward_key) == REWARD_KEYS
    assert fingerprint(settings.reward_key) == "8cd898b4f70c90aa"


@pytest.mark.slow
def test_the_plugin_reuses_an_existing_cache(tiny_model_dir, hh_file, tmp_path, monkeypatch):
    """Through Axolotl's own config loading: the cache directory is the one the key of the
    validated config names, and a second load_datasets reads every score from it, loading no model."""
    from axolotl.cli.config import load_cfg
    from axolotl.integrations.base import PluginManager
    from transformers import AutoTokenizer

    import deft_plugin.integration.datasets_hook as hook

    raw = {"base_model": str(tiny_model_dir), "plugins": PLUGIN, "rl": "dpo",
           "datasets": [{"path": str(hh_file), "type": "deft.hh_rlhf"}], "deft_filter_ratio": 0.25,
           "sequence_len": 128, "micro_batch_size": 2, "num_epochs": 1, "learning_rate": 1e-4,
           "output_dir": str(tmp_path / "out"), "dataset_prepared_path": str(tmp_path / "prepared"),
           "bf16": False, "device_map": "cpu", "special_tokens": {"pad_token": "<pad>"}}
    monkeypatch.setenv("AXOLOTL_TEE_STDOUT", "0")
    monkeypatch.setattr(PluginManager, "_instance", None)
    cfg = load_cfg(DictDefault(copy.deepcopy(raw)))
    first = PluginManager.get_instance().load_datasets(cfg, preprocess=False)
    (cache,) = (tmp_path / "prepared" / "deft").iterdir()
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in hook.load_deft_rows(
        read_settings(cfg), "chat_template")[0].remove_columns(hook.WHERE)]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    key = score_cache_key(rows, str(tiny_model_dir), None, tokenizer, 128, DEFAULT_REWARD_KEY)
    assert cache.name == key

    def no_model(*args, **kwargs):
        raise AssertionError("a scoring model was loaded although every score is cached")

    monkeypatch.setattr(hook, "load_scoring_model", no_model)
    second = PluginManager.get_instance().load_datasets(cfg, preprocess=False)
    assert [p.name for p in (tmp_path / "prepared" / "deft").iterdir()] == [key]
    assert second.train_dataset.to_list() == first.train_dataset.to_list()
    assert second.total_num_steps == first.total_num_steps == math.ceil(len(first.train_dataset) / 2)


# Modules that meet Axolotl's config: the hooks (plugin.py), the reading of it (settings.py), the
# pydantic schema (args.py), whether it lists the plugin (listing.py), and the reference-model
# wrapper Axolotl calls with it.
DOORS = {"plugin.py", "settings.py", "args.py", "listing.py", "scoring_reference.py"}


def test_nothing_past_the_door_reads_the_config():
    """No function of the package outside the doors takes a `cfg`, but the one that hands it back
    to Axolotl's own dataset loader."""
    takers = []
    for path in sorted((REPO / "deft_plugin").rglob("*.py")):
        if path.parent.name == "integration" and path.name in DOORS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.Lambda)) and "cfg" in [a.arg for a in node.args.args]:
                takers.append(f"{path.relative_to(REPO)}:{getattr(node, 'name', 'lambda')}")
    assert takers == ["deft_plugin/integration/datasets_hook.py:load_axolotl_rows"]


@pytest.mark.parametrize("extra, kept, steps", [({}, 19, 10), ({"max_steps": 20}, 19, 20), ({"max_steps": 3}, 19, 3),
                                                ({"num_epochs": 2}, 19, 19)])
def test_the_steps_announced_are_the_steps_the_trainer_runs(extra, kept, steps):
    """Axolotl gives the trainer max_steps over any epoch count, so the hook's step count is max_steps when set."""
    from deft_plugin.integration.datasets_hook import steps_for

    raw = {"plugins": PLUGIN, "rl": "dpo", "micro_batch_size": 2, "gradient_accumulation_steps": 1,
           "datasets": [{"path": "hh.jsonl", "type": "deft.hh_rlhf"}], **extra}
    assert steps_for(kept, deft_settings(DictDefault(raw))) == steps
