"""Two evaluation runs side by side: every metric both report, with the delta B - A, as a
table (Markdown and JSON) and a plot. A run is a `deft-eval score` directory (report.json:
metric means per subset and in total) or a `deft-eval mt-bench` directory (results.json:
MT-Bench scores per turn and category), or both merged in one directory.

MT-Bench metric names: with one model in results.json, `mt_bench/score`, `mt_bench/turn_N`,
`mt_bench/<category>` and `mt_bench/win_rate_vs_<baseline>`; with several, each model's own under
its name: `mt_bench/<model>/score`, `mt_bench/<model>/turn_N`, `mt_bench/<model>/<category>` and
`mt_bench/<model>/win_rate_vs_<baseline>`."""

from __future__ import annotations

import json
import math
from pathlib import Path


def _value(value: float | None) -> float | None:
    """A result's value, None where it has none: null in results.json, or NaN as older files hold."""
    return None if value is None or value != value else value


def model_metrics(single: dict | None, pairwise: dict | None) -> dict[str, float | None]:
    """Flat {name: value} of one model's MT-Bench result: its single-grading entry (score, turn,
    category) and its pairwise entry (baseline, win_rate), either of them None when absent. A
    value is None where the judge gave nothing parseable."""
    metrics: dict[str, float | None] = {}
    if single is not None:
        metrics["score"] = single["score"]
        metrics.update({f"turn_{t}": v for t, v in single["turn"].items()})
        metrics.update(single["category"])
    if pairwise is not None:
        metrics[f"win_rate_vs_{pairwise['baseline']}"] = pairwise["win_rate"]
    return {name: _value(v) for name, v in metrics.items()}


def mt_bench_metrics(results: dict) -> dict[str, float | None]:
    """Flat metrics of a `deft-eval mt-bench` results.json: `mt_bench/<name>` for a single model,
    `mt_bench/<model>/<name>` for each model when it holds several (see the module docstring)."""
    single, pairwise = results.get("single", {}), results.get("pairwise", {})
    models = sorted(set(single) | set(pairwise))
    metrics: dict[str, float | None] = {}
    for model in models:
        prefix = "mt_bench/" if len(models) == 1 else f"mt_bench/{model}/"
        metrics.update({prefix + name: value for name, value in
                        model_metrics(single.get(model), pairwise.get(model)).items()})
    return metrics


def run_metrics(run_dir: str | Path) -> dict[str, float | None]:
    """Flat {metric name: value} of a run directory (MT-Bench names: see the module docstring)."""
    run = Path(run_dir)
    metrics: dict[str, float | None] = {}
    if (run / "report.json").is_file():
        for group, row in json.loads((run / "report.json").read_text())["table"].items():
            for key, value in row.items():
                if key != "n" and isinstance(value, (int, float)):
                    metrics[f"{group}/{key}"] = float(value)
    if (run / "results.json").is_file():
        metrics.update(mt_bench_metrics(json.loads((run / "results.json").read_text())))
    if not metrics:
        raise ValueError(f"{run}: neither report.json (deft-eval score) nor results.json (deft-eval mt-bench) found")
    return metrics


def per_record(run_dir: str | Path) -> dict[str, dict[str, float]]:
    """id -> {metric: value} of a score run's scores.jsonl ({} for a run without one)."""
    path = Path(run_dir) / "scores.jsonl"
    if not path.is_file():
        return {}
    from deft_plugin.utils.jsonl import read_jsonl

    return {r["id"]: {k: float(v) for k, v in r.items() if k not in ("id", "subset") and isinstance(v, (int, float))}
            for _, r in read_jsonl(path)}


def paired_intervals(run_a: str | Path, run_b: str | Path, rounds: int = 2000, seed: int = 0) -> dict:
    """For each per-record metric both score runs have: the mean of b - a over the answers they
    share, with a paired bootstrap 95% interval (scipy). Runs that share no answer are refused."""
    a, b = per_record(run_a), per_record(run_b)
    counts = overlap(run_a, run_b, a, b)
    if not counts["shared"]:
        return {**counts, "metrics": {}}
    shared = sorted(set(a) & set(b))
    import numpy as np
    from scipy.stats import bootstrap

    metrics = {}
    for metric in sorted(set.intersection(*(set(a[i]) & set(b[i]) for i in shared))):
        x = np.array([a[i][metric] for i in shared])
        y = np.array([b[i][metric] for i in shared])
        low = high = float(np.mean(y - x))
        if len(shared) > 1 and np.ptp(y - x) > 0:
            ci = bootstrap((x, y), lambda u, v, axis=-1: np.mean(v - u, axis=axis), paired=True, n_resamples=rounds,
                           method="percentile", rng=np.random.default_rng(seed)).confidence_interval
            low, high = float(ci.low), float(ci.high)
        metrics[metric] = {"mean_delta": float(np.mean(y - x)), "low": low, "high": high,
                           "inside_noise": low <= 0 <= high}
    return {**counts, "metrics": metrics}


def overlap(run_a, run_b, a: dict | None = None, b: dict | None = None) -> dict:
    """Answers both score runs have, and those only one has; runs that share none are refused."""
    a = per_record(run_a) if a is None else a
    b = per_record(run_b) if b is None else b
    shared = set(a) & set(b)
    if a and b and not shared:
        raise ValueError(f"{run_a} and {run_b} share no answer id: they did not answer the same prompts")
    return {"shared": len(shared), "only_a": len(set(a) - shared), "only_b": len(set(b) - shared)}


def compare_runs(run_a: str | Path, run_b: str | Path) -> list[dict]:
    """Rows {metric, a, b, delta} over the union of metrics (a missing side is None), and for a
    per-record metric of two score runs the paired bootstrap interval of the delta."""
    a, b = run_metrics(run_a), run_metrics(run_b)
    paired = paired_intervals(run_a, run_b)["metrics"]
    rows = []
    for metric in sorted(set(a) | set(b)):
        va, vb = a.get(metric), b.get(metric)
        delta = vb - va if va is not None and vb is not None and not (math.isnan(va) or math.isnan(vb)) else None
        row = {"metric": metric, "a": va, "b": vb, "delta": delta}
        interval = paired.get(metric.split("/", 1)[1]) if metric.startswith("total/") else None
        if interval and delta is not None:
            row["interval"] = [interval["low"], interval["high"]]
        rows.append(row)
    return rows


def comparison_markdown(rows: list[dict], name_a: str, name_b: str) -> str:
    show = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [f"| metric | {name_a} | {name_b} | delta | 95% interval (paired, over shared answers) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['metric']} | {show(r['a'])} | {show(r['b'])} | "
              + ("–" if r["delta"] is None else f"{r['delta']:+.4f}") + " | "
              + (f"[{r['interval'][0]:+.4f}, {r['interval'][1]:+.4f}]" + (" noise" if r["interval"][0] <= 0
                                                                          <= r["interval"][1] else "")
                 if r.get("interval") else "–") + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_comparison(rows: list[dict], name_a: str, name_b: str, path: str | Path) -> Path:
    from deft_plugin.utils.plots import save_figure, subplots

    shown = [r for r in rows if r["delta"] is not None]
    fig, ax = subplots(figsize=(7, max(2.5, 0.3 * len(shown) + 1)))
    ax.barh(range(len(shown)), [r["delta"] for r in shown],
            color=["tab:green" if r["delta"] >= 0 else "tab:red" for r in shown])
    ax.set_yticks(range(len(shown)), [r["metric"] for r in shown], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"{name_b} - {name_a}")
    return save_figure(fig, path)
