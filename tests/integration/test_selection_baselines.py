"""The selection baselines from YAML alone: `deft_filter_by` with `deft_filter_select` through the
plugin's load_datasets, on the same pairs as DEFT's selection and at its count."""

from __future__ import annotations

import test_dpo_trainer
from builders import KEPT
from test_dpo_trainer import deft_dataset_meta, load

sharp_model_dir, base_cfg = test_dpo_trainer.sharp_model_dir, test_dpo_trainer.base_cfg


def selection(base_cfg, tmp_path, **keys):
    from deft_plugin.integration.plugin import DEFTPlugin

    cfg = load({**base_cfg, "dataset_prepared_path": str(tmp_path / "prepared"), **keys})
    meta = deft_dataset_meta(cfg)
    return DEFTPlugin.latest_datasets[0], meta.train_dataset


def test_each_ranking_keeps_its_own_pairs_at_deft_s_count(base_cfg, tmp_path):
    deft, _ = selection(base_cfg, tmp_path)
    longest, train = selection(base_cfg, tmp_path, deft_filter_by="length_ratio")
    shortest, _ = selection(base_cfg, tmp_path, deft_filter_by="length_ratio", deft_filter_select="bottom")
    margin, _ = selection(base_cfg, tmp_path, deft_filter_by="logp_margin")
    assert len(deft.kept) == len(longest.kept) == len(shortest.kept) == len(margin.kept) == KEPT == len(train)
    ratios = {i: len(row.chosen_ids) / len(row.rejected_ids) for i, row in longest.encoded.items()}
    assert min(ratios[i] for i in longest.kept) >= max(ratios[i] for i in ratios if i not in longest.kept)
    assert max(ratios[i] for i in shortest.kept) <= min(ratios[i] for i in ratios if i not in shortest.kept)
    assert margin.kept == sorted(sorted(margin.ranking, key=lambda i: (-margin.ranking[i], i))[:KEPT])
    assert margin.rewards == deft.rewards  # the same scoring pass, read from its cache
    assert len({tuple(deft.kept), tuple(longest.kept), tuple(margin.kept)}) == 3
