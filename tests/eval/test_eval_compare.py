"""`deft-eval compare`: score and MT-Bench runs side by side with deltas."""

from __future__ import annotations

import json

import pytest

from deft_eval.cli import main
from deft_eval.compare import compare_runs, run_metrics


def write_run(directory, bleu, reward, mt=None):
    directory.mkdir(parents=True)
    table = {"harmless-base": {"n": 2, "bleu_char": bleu, "reward": reward, "sacrebleu_signature": "nrefs:1"},
             "total": {"n": 2, "bleu_char": bleu, "reward": reward}}
    (directory / "report.json").write_text(json.dumps({"table": table}))
    if mt is not None:
        single = {"m": {"score": mt, "judged": 160, "unparseable": 0, "turn": {"1": mt + 1, "2": mt - 1},
                        "category": {"writing": mt}}}
        (directory / "results.json").write_text(json.dumps({"single": single}))
    return directory


def test_deltas_over_the_union_of_metrics(tmp_path):
    a = write_run(tmp_path / "dpo", bleu=10.0, reward=50.0, mt=5.0)
    b = write_run(tmp_path / "deft-dpo", bleu=12.5, reward=49.0)
    assert run_metrics(a)["mt_bench/turn_1"] == 6.0 and "total/sacrebleu_signature" not in run_metrics(a)
    rows = {r["metric"]: r for r in compare_runs(a, b)}
    assert rows["total/bleu_char"]["delta"] == pytest.approx(2.5)
    assert rows["harmless-base/reward"]["delta"] == pytest.approx(-1.0)
    assert rows["mt_bench/score"] == {"metric": "mt_bench/score", "a": 5.0, "b": None, "delta": None}


def test_cli_compare_writes_table_and_plot(tmp_path, capsys):
    a = write_run(tmp_path / "dpo", 10.0, 50.0, mt=5.0)
    b = write_run(tmp_path / "deft", 12.5, 49.0, mt=5.5)
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out), "--name-a", "DPO", "--name-b", "DEFT-DPO"]) == 0
    table = (out / "comparison.md").read_text()
    assert "| metric | DPO | DEFT-DPO | delta |" in table and "| mt_bench/score | 5.0000 | 5.5000 | +0.5000 |" in table
    assert json.loads((out / "comparison.json").read_text())["b"] == "DEFT-DPO"
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["compare", str(a), str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "neither report.json" in capsys.readouterr().err


def write_mt_bench(directory, scores: dict[str, float], win_rates: dict[str, float]):
    """results.json of a `deft-eval mt-bench` run over several models, each with its own scores."""
    directory.mkdir(parents=True)
    single = {m: {"score": s, "judged": 160, "unparseable": 0, "turn": {"1": s + 1, "2": s - 1},
                  "category": {"writing": s + 0.5}} for m, s in scores.items()}
    pairwise = {m: {"baseline": "gpt-3.5", "win": 1, "loss": 1, "tie": 0, "inconsistent": 0, "unparseable": 0,
                    "win_rate": w, "win_rate_ties_half": w} for m, w in win_rates.items()}
    (directory / "results.json").write_text(json.dumps({"single": single, "pairwise": pairwise}))
    return directory


def test_mt_bench_results_with_several_models_keep_every_model(tmp_path):
    a = write_mt_bench(tmp_path / "a", {"dpo": 5.0, "deft": 6.0}, {"dpo": 0.25, "deft": 0.5})
    b = write_mt_bench(tmp_path / "b", {"dpo": 5.5, "deft": 7.0}, {"dpo": 0.5, "deft": 0.5})
    assert run_metrics(a) == {
        "mt_bench/dpo/score": 5.0, "mt_bench/dpo/turn_1": 6.0, "mt_bench/dpo/turn_2": 4.0,
        "mt_bench/dpo/writing": 5.5, "mt_bench/dpo/win_rate_vs_gpt-3.5": 0.25,
        "mt_bench/deft/score": 6.0, "mt_bench/deft/turn_1": 7.0, "mt_bench/deft/turn_2": 5.0,
        "mt_bench/deft/writing": 6.5, "mt_bench/deft/win_rate_vs_gpt-3.5": 0.5}
    deltas = {r["metric"]: r["delta"] for r in compare_runs(a, b)}
    assert deltas == pytest.approx({
        "mt_bench/dpo/score": 0.5, "mt_bench/dpo/turn_1": 0.5, "mt_bench/dpo/turn_2": 0.5,
        "mt_bench/dpo/writing": 0.5, "mt_bench/dpo/win_rate_vs_gpt-3.5": 0.25,
        "mt_bench/deft/score": 1.0, "mt_bench/deft/turn_1": 1.0, "mt_bench/deft/turn_2": 1.0,
        "mt_bench/deft/writing": 1.0, "mt_bench/deft/win_rate_vs_gpt-3.5": 0.0})


def write_scores(directory, values: dict[str, float]):
    (directory / "scores.jsonl").write_text("".join(json.dumps({"id": i, "subset": "harmless-base", "bleu_char": v})
                                                    + "\n" for i, v in values.items()))


def test_paired_interval_over_shared_answers_and_a_refusal(tmp_path, capsys):
    a = write_run(tmp_path / "a", bleu=10.0, reward=50.0)
    b = write_run(tmp_path / "b", bleu=11.0, reward=50.0)
    ids = [f"harmless-base/{i}" for i in range(40)]
    write_scores(a, {i: 10.0 + (k % 5) for k, i in enumerate(ids)})
    write_scores(b, {i: 11.0 + (k % 5) + (0.5 if k % 2 else -0.5) for k, i in enumerate(ids[:30] + ["extra/0"])})
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    rows = {r["metric"]: r for r in json.loads((out / "comparison.json").read_text())["rows"]}
    low, high = rows["total/bleu_char"]["interval"]  # per answer b - a is 1 +- 0.5 over the 30 shared
    assert 0.5 < low < 1.0 < high < 1.5
    assert "interval" not in rows["total/reward"]  # no per-answer reward scores: no interval
    assert "10 answers only in a and 1 only in b" in capsys.readouterr().err
    write_scores(b, {"other/1": 1.0})
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 2
    assert "share no answer id" in capsys.readouterr().err


@pytest.mark.parametrize("written", ["null", "NaN"])  # NaN: as results.json files were written before null
def test_an_mt_bench_score_the_judge_never_gave_is_none(tmp_path, written):
    (tmp_path / "results.json").write_text('{"single": {"m": {"score": %s, "judged": 0, "unparseable": 2, '
                                           '"turn": {}, "category": {}}}}' % written)
    assert run_metrics(tmp_path) == {"mt_bench/score": None}
    assert compare_runs(tmp_path, tmp_path) == [{"metric": "mt_bench/score", "a": None, "b": None, "delta": None}]
