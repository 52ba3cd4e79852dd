"""From stored votes to the organiser's results: win / tie / loss per model pair with
bootstrap intervals, Bradley-Terry strengths for three or more models, position bias,
agreement on overlapping items, and the same per category; all of it per criterion (each
criterion, e.g. harmless and helpful, is its own study). Pure functions of the votes."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from pathlib import Path

from deft_app.stats import (
    bootstrap_interval,
    bradley_terry,
    bradley_terry_intervals,
    cohen_kappa,
    fleiss_kappa,
    left_win_rate,
    win_tie_loss,
)
from deft_app.store import criterion_of

OUTCOME = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}  # for model_a; "both bad" counts as a tie


def pair_results(votes: list[dict], seed: int = 0) -> list[dict]:
    by_pair = defaultdict(list)
    for v in votes:
        by_pair[(v["model_a"], v["model_b"])].append(OUTCOME[v["verdict"]])
    rows = []
    for (a, b), outcomes in sorted(by_pair.items()):
        lo, hi = bootstrap_interval(outcomes, seed=seed)
        rows.append({"model_a": a, "model_b": b, **win_tie_loss(outcomes), "win_rate_ci": (lo, hi),
                     "both_bad": sum(v["verdict"] == "both_bad" for v in votes
                                     if (v["model_a"], v["model_b"]) == (a, b))})
    return rows


def strengths(votes: list[dict], seed: int = 0) -> dict[str, dict] | None:
    """Bradley-Terry strengths with bootstrap intervals, when three or more models are judged."""
    comparisons = [(v["model_a"], v["model_b"], OUTCOME[v["verdict"]]) for v in votes]
    models = {m for a, b, _ in comparisons for m in (a, b)}
    if len(models) < 3:
        return None
    fit, intervals = bradley_terry(comparisons), bradley_terry_intervals(comparisons, seed=seed)
    return {m: {"strength": fit[m], "ci": intervals[m]} for m in sorted(fit, key=fit.get, reverse=True)}


def position_bias(votes: list[dict]) -> dict:
    decided = [v for v in votes if v["verdict"] in ("a", "b")]
    left_won = [(v["verdict"] == "a") == (v["left_model"] == v["model_a"]) for v in decided]
    return {"decided": len(decided), "left_win_rate": left_win_rate(left_won)}


def agreement(votes: list[dict]) -> dict:
    """Cohen's kappa for every pair of annotators over the items both judged (at least 2), and
    Fleiss' kappa over the items judged by the most common number (>= 2) of annotators."""
    by_item = defaultdict(dict)
    for v in votes:
        by_item[v["item_id"]][v["annotator"]] = v["verdict"]
    cohen = {}
    annotators = sorted({v["annotator"] for v in votes})
    for x, y in itertools.combinations(annotators, 2):
        shared = [i for i, labels in by_item.items() if x in labels and y in labels]
        if len(shared) >= 2:
            cohen[f"{x} / {y}"] = {"items": len(shared), "kappa": cohen_kappa([by_item[i][x] for i in shared],
                                                                                [by_item[i][y] for i in shared])}
    sizes = Counter(len(labels) for labels in by_item.values() if len(labels) >= 2)
    fleiss = None
    if sizes:
        size = max(sizes, key=lambda s: (sizes[s], s))
        items = [labels for labels in by_item.values() if len(labels) == size]
        if len(items) >= 2:
            categories = sorted(OUTCOME)
            table = [[list(labels.values()).count(c) for c in categories] for labels in items]
            fleiss = {"items": len(items), "annotators_per_item": size, "kappa": fleiss_kappa(table)}
    return {"cohen": cohen, "fleiss": fleiss}


def results_by_criterion(votes: list[dict], criteria: list[str] | None = None, seed: int = 0) -> dict[str, dict]:
    """{criterion: all_results of its votes}, in the organiser's order of `criteria` (criteria
    without votes included, empty), then any other criterion found in the votes, sorted."""
    found = {criterion_of(v) for v in votes}
    order = list(criteria or []) + sorted(found - set(criteria or []))
    return {c: all_results([v for v in votes if criterion_of(v) == c], seed) for c in order}


def all_results(votes: list[dict], seed: int = 0) -> dict:
    """The results of one criterion's votes (agreement compares one verdict per annotator and item)."""
    if len({criterion_of(v) for v in votes}) > 1:
        raise ValueError("all_results takes one criterion's votes; use results_by_criterion")
    categories = sorted({v["category"] for v in votes if v.get("category")})
    return {"votes": len(votes), "pairs": pair_results(votes, seed), "strengths": strengths(votes, seed),
            "position_bias": position_bias(votes), "agreement": agreement(votes),
            "by_category": {c: pair_results([v for v in votes if v.get("category") == c], seed) for c in categories}}


def plot_results(by_criterion: dict[str, dict], path) -> "Path":
    """Win rate (ties half) of model A per pair, with its bootstrap interval, and per category;
    for each criterion (named on its rows when there are several)."""
    from deft_app.text import plot_label
    from deft_plugin.utils.plots import save_figure, subplots

    rows = []
    for criterion, results in by_criterion.items():
        prefix = f"{criterion} | " if len(by_criterion) > 1 else ""
        rows += [(plot_label(f"{prefix}{r['model_a']} vs {r['model_b']}"), r) for r in results["pairs"]]
        rows += [(plot_label(f"{prefix}{c}: {r['model_a']} vs {r['model_b']}"), r)
                 for c, rs in results["by_category"].items() for r in rs]
    fig, ax = subplots(figsize=(7, max(2.2, 0.35 * len(rows) + 1)))
    for y, (_, r) in enumerate(rows):
        lo, hi = r["win_rate_ci"]
        ax.errorbar(r["win_rate"], y, xerr=[[r["win_rate"] - lo], [hi - r["win_rate"]]], fmt="o", color="tab:blue",
                    capsize=3)
    ax.axvline(0.5, color="grey", linewidth=0.8, linestyle="--")
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("win rate of model A (ties half), 95% bootstrap interval")
    return save_figure(fig, path)


def with_aliases(votes: list[dict], aliases: dict[str, str]) -> list[dict]:
    """The votes with the organiser's short model names, for tables and plots (exports keep
    the full names)."""
    if not aliases:
        return votes
    keys = ("model_a", "model_b", "left_model")
    return [{**v, **{k: aliases.get(v[k], v[k]) for k in keys if k in v}} for v in votes]
