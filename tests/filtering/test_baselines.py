"""The literature's selection baselines (deft_filter_by): the starting model's mean-token
log-probability margin, from DEFT's own scoring pass, and the reply-length ratio, with no model;
top and bottom at the same count as DEFT's selection, against values computed here from full
forwards and token counts. Also through `deft filter --by` and the plugin's YAML."""

from __future__ import annotations

import dataclasses
import json

import pytest
import test_scoring
from test_scoring import CountingLoader, NeverLoad, naive_logprob

from deft_plugin.core.selection import RANKINGS, length_ratio, logp_margin
from deft_plugin.filtering.pipeline import FilterSettings, run_filter

from builders import KEPT, RATIO, SCORED, SEQUENCE_LEN

rows, pairs, sharp_model, count_batches = (test_scoring.rows, test_scoring.pairs, test_scoring.sharp_model,
                                           test_scoring.count_batches)


def test_the_ranking_values_by_hand():
    assert logp_margin([-10.0, -30.0], [5, 10]) == pytest.approx(-2.0 - -3.0)
    assert logp_margin([-4.0, -9.0, -20.0], [2, 3, 4]) == pytest.approx(-2.0 - (-3.0 - 5.0) / 2)
    assert length_ratio([30, 10]) == 3.0 and length_ratio([6, 2, 4]) == 2.0


def test_the_schema_offers_every_ranking():
    from deft_plugin.integration.args import DEFTArgs

    assert DEFTArgs.model_fields["deft_filter_by"].annotation.__args__ == RANKINGS


def top_or_bottom(values: dict[int, float], select: str, k: int) -> list[int]:
    sign = -1 if select == "top" else 1
    return sorted(sorted(values, key=lambda i: (sign * values[i], i))[:k])


@pytest.mark.parametrize("select", ["top", "bottom"])
def test_length_ratio_ranks_by_token_counts_without_a_model(rows, tiny_tokenizer, pairs, select):
    settings = FilterSettings(ratio=RATIO, max_length=SEQUENCE_LEN, select=select, by="length_ratio")
    result = run_filter(rows, tiny_tokenizer, NeverLoad(), settings, progress=False)
    ratios = {p.index: len(p.chosen_ids) / len(p.rejected_ids) for p in pairs}
    assert result.ranking == pytest.approx(ratios)
    assert result.kept == top_or_bottom(ratios, select, KEPT) and len(result.kept) == KEPT
    stats = result.report["rank_stats"]
    cut = (min if select == "top" else max)(ratios[i] for i in result.kept)
    assert stats["by"] == "length_ratio" and stats["threshold"] == pytest.approx(cut)
    assert result.report["filter"]["by"] == "length_ratio" and result.scores == {}  # nothing scored


def test_logp_margin_ranks_by_the_starting_model_in_the_scoring_pass(rows, tiny_tokenizer, sharp_model, pairs,
                                                                     tmp_path, count_batches):
    loader, cache = CountingLoader(sharp_model), tmp_path / "cache"
    settings = FilterSettings(ratio=RATIO, batch_size=4, max_length=SEQUENCE_LEN, by="logp_margin")
    result = run_filter(rows, tiny_tokenizer, loader, settings, cache, progress=False)
    assert loader.calls == 1 and sum(map(len, count_batches)) == SCORED  # one pass: rewards and log-probs
    margins = {p.index: naive_logprob(sharp_model, p.prompt_ids, p.chosen_ids) / len(p.chosen_ids)
               - naive_logprob(sharp_model, p.prompt_ids, p.rejected_ids) / len(p.rejected_ids) for p in pairs}
    assert result.ranking == pytest.approx(margins, rel=1e-5, abs=1e-4)  # float32 sums, as the logps test
    ordered = sorted(margins.values(), reverse=True)
    assert ordered[KEPT - 1] - ordered[KEPT] > 1e-3  # the cut is not a near tie
    assert result.kept == top_or_bottom(margins, "top", KEPT)
    assert set(result.scores) == set(margins)  # DEFT's scores are reported beside
    assert "score_stats" in result.report and result.report["score_stats"]["threshold"] is None
    records = [json.loads(line) for line in (cache / "scores.jsonl").read_text().splitlines()]
    assert {r["index"]: r["logp_margin"] for r in records} == pytest.approx(result.ranking)
    # DEFT's own selection and the bottom of the margins read the same cache: no model, no forward
    count_batches.clear()
    deft = run_filter(rows, tiny_tokenizer, NeverLoad(), dataclasses.replace(settings, by="deft"), cache,
                      progress=False)
    bottom = run_filter(rows, tiny_tokenizer, NeverLoad(), dataclasses.replace(settings, select="bottom"), cache,
                        progress=False)
    assert count_batches == [] and deft.rewards == result.rewards
    assert bottom.kept == top_or_bottom(margins, "bottom", KEPT)


def test_a_ranking_with_a_random_draw_is_refused(rows, tiny_tokenizer):
    with pytest.raises(ValueError, match="deft_filter_by: length_ratio ranks pairs for deft_filter_select top"):
        run_filter(rows, tiny_tokenizer, NeverLoad(), FilterSettings(select="random", by="length_ratio"),
                   progress=False)
    with pytest.raises(ValueError, match="deft_filter_by: unknown ranking 'shortest'"):
        run_filter(rows, tiny_tokenizer, NeverLoad(), FilterSettings(by="shortest"), progress=False)


def test_deft_filter_by_from_the_command_line(tmp_path, tiny_model_dir, hh_file, capsys):
    from deft_plugin.cli.main import main

    base = ["filter", "--data", str(hh_file), "--model", str(tiny_model_dir), "--max-length", "256", "--count", "4"]
    assert main([*base, "--out", str(tmp_path / "len"), "--by", "length_ratio"]) == 0
    kept = [json.loads(line) for line in (tmp_path / "len" / "kept.jsonl").read_text().splitlines()]
    report = json.loads((tmp_path / "len" / "report.json").read_text())
    assert len(kept) == 4 and all("deft_length_ratio" in r for r in kept)
    assert min(r["deft_length_ratio"] for r in kept) == pytest.approx(report["rank_stats"]["threshold"])
    assert report["rank_stats"]["max"] == pytest.approx(max(r["deft_length_ratio"] for r in kept))
    assert main([*base, "--out", str(tmp_path / "len"), "--by", "length_ratio", "--select", "random"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--by length_ratio ranks pairs for --select top or bottom" in err
