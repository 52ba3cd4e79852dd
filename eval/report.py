"""Scoring a file of answers: every chosen scorer over the records, per-record values, means
per subset and in total, corpus metrics per subset and in total, a Markdown table and plots."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from deft_plugin.utils.atomic import atomic_write_text
from deft_plugin.utils.jsonl import read_jsonl

TOTAL = "total"


def read_answers(path: str | Path) -> list[dict]:
    """Records of a `deft-eval generate` file; a bad line is an error naming it."""
    records = []
    for n, record in read_jsonl(path):
        missing = [k for k in ("id", "subset", "prompt", "answer", "chosen") if k not in record]
        if missing:
            raise ValueError(f"{path}: line {n} lacks {', '.join(missing)} (not a deft-eval generate file?)")
        records.append(record)
    if not records:
        raise ValueError(f"{path}: no answers")
    return records


def summarise(records: list[dict], per_record: list[dict[str, float]], corpus_fns: dict) -> dict:
    """{group: {"n", metric means..., corpus metrics...}} for every subset and the total."""
    groups = {TOTAL: list(range(len(records)))}
    for i, r in enumerate(records):
        groups.setdefault(r["subset"], []).append(i)
    table = {}
    for group, idx in sorted(groups.items(), key=lambda kv: (kv[0] == TOTAL, kv[0])):
        row = {"n": len(idx)}
        for metric in per_record[0] if per_record else {}:
            row[metric] = statistics.fmean(per_record[i][metric] for i in idx)
        for fn in corpus_fns.values():
            row.update(fn([records[i] for i in idx], {}))
        table[group] = row
    return table


def markdown(table: dict, title: str) -> str:
    metrics = [k for k in next(iter(table.values())) if k != "n" and not k.endswith("_signature")]
    lines = [f"### {title}", "", "| subset | n | " + " | ".join(metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for group, row in table.items():
        lines.append(f"| {group} | {row['n']} | " + " | ".join(f"{row[m]:.4f}" for m in metrics) + " |")
    signatures = sorted({v for row in table.values() for k, v in row.items() if k.endswith("_signature")})
    return "\n".join(lines + [""] + [f"sacreBLEU signature: `{s}`" for s in signatures]) + "\n"


def plot(table: dict, path: str | Path) -> Path:
    from deft_plugin.utils.plots import save_figure, subplots

    metrics = [k for k in next(iter(table.values())) if k != "n" and not k.endswith("_signature")]
    fig, axes = subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.4), squeeze=False)
    groups = list(table)
    for ax, metric in zip(axes[0], metrics):
        ax.bar(range(len(groups)), [table[g][metric] for g in groups], color="tab:blue")
        ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=9)
    return save_figure(fig, path)


def score_answers(records: list[dict], scorer_names: list[str], options: dict, out_dir: str | Path,
                  title: str = "") -> dict:
    """Run the scorers, write scores.jsonl, report.json, report.md and report.png into out_dir."""
    from deft_eval.registry import scorers

    available = scorers()
    unknown = [n for n in scorer_names if n not in available]
    if unknown:
        raise ValueError(f"unknown scorer(s) {', '.join(unknown)}; known: {', '.join(sorted(available))}")
    per_record = [{} for _ in records]
    corpus_fns = {}
    for name in scorer_names:
        scorer = available[name]
        if scorer.per_record:
            for row, values in zip(per_record, scorer.per_record(records, options)):
                row.update(values)
        if scorer.corpus:
            corpus_fns[name] = scorer.corpus
    table = summarise(records, per_record, corpus_fns)
    out = Path(out_dir)
    atomic_write_text(out / "scores.jsonl", "".join(json.dumps({"id": r["id"], "subset": r["subset"], **s}) + "\n"
                                                    for r, s in zip(records, per_record)))
    report = {"title": title, "scorers": scorer_names, "table": table}
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    atomic_write_text(out / "report.md", markdown(table, title or "scores"))
    plot(table, out / "report.png")
    return report
