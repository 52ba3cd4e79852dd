"""Two evaluation runs side by side: every metric both report, with the delta B - A, as a
table (Markdown and JSON) and a plot. A run is a `deft-eval score` directory (report.json:
metric means per subset and in total) or a `deft-eval mt-bench` directory (results.json:
MT-Bench scores per turn and category), or both merged in one directory."""

from __future__ import annotations

import json
import math
from pathlib import Path


def run_metrics(run_dir: str | Path) -> dict[str, float]:
    """Flat {metric name: value} of a run directory."""
    run = Path(run_dir)
    metrics: dict[str, float] = {}
    if (run / "report.json").is_file():
        for group, row in json.loads((run / "report.json").read_text())["table"].items():
            for key, value in row.items():
                if key != "n" and isinstance(value, (int, float)):
                    metrics[f"{group}/{key}"] = float(value)
    if (run / "results.json").is_file():
        results = json.loads((run / "results.json").read_text())
        for _model, r in results.get("single", {}).items():
            metrics["mt_bench/score"] = r["score"]
            metrics.update({f"mt_bench/turn_{t}": v for t, v in r["turn"].items()})
            metrics.update({f"mt_bench/{c}": v for c, v in r["category"].items()})
        for _model, r in results.get("pairwise", {}).items():
            metrics[f"mt_bench/win_rate_vs_{r['baseline']}"] = r["win_rate"]
    if not metrics:
        raise ValueError(f"{run}: neither report.json (deft-eval score) nor results.json (deft-eval mt-bench) found")
    return metrics


def compare_runs(run_a: str | Path, run_b: str | Path) -> list[dict]:
    """Rows {metric, a, b, delta} over the union of metrics (a missing side is None)."""
    a, b = run_metrics(run_a), run_metrics(run_b)
    rows = []
    for metric in sorted(set(a) | set(b)):
        va, vb = a.get(metric), b.get(metric)
        delta = vb - va if va is not None and vb is not None and not (math.isnan(va) or math.isnan(vb)) else None
        rows.append({"metric": metric, "a": va, "b": vb, "delta": delta})
    return rows


def comparison_markdown(rows: list[dict], name_a: str, name_b: str) -> str:
    show = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [f"| metric | {name_a} | {name_b} | delta |", "|---|---|---|---|"]
    lines += [f"| {r['metric']} | {show(r['a'])} | {show(r['b'])} | "
              + ("–" if r["delta"] is None else f"{r['delta']:+.4f}") + " |" for r in rows]
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
