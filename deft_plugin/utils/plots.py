"""PNG plots: the discrepancy distribution's top tokens, the filtering-score distribution
with its cut, and training curves; `subplots` and `save_figure` for the plots of deft_eval
and deft_app (matplotlib without a display)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def subplots(*args, **kwargs):
    """matplotlib's plt.subplots, on the file-only Agg backend."""
    return plt.subplots(*args, **kwargs)


def save_figure(fig, path) -> Path:
    """Write the figure as a PNG (folders made as needed) and close it. The image is cut to what is
    drawn, with a margin: tight_layout alone lets a centred axis label run off the figure when long
    tick labels push the axes aside."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return path


def plot_top_tokens(sides: dict[str, list[dict]], path) -> Path:
    """Horizontal bars of Q for the tokens most over-represented on each side."""
    fig, axes = plt.subplots(1, 2, figsize=(11, max(3.0, 0.28 * max(len(v) for v in sides.values()) + 1)))
    for ax, (name, colour) in zip(axes, (("chosen", "tab:green"), ("rejected", "tab:red"))):
        rows = sides.get(name, [])
        ax.barh(range(len(rows)), [r["q"] for r in rows], color=colour)
        ax.set_yticks(range(len(rows)), [repr(r["token"]) for r in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"over-represented in {name} replies")
        ax.set_xlabel("Q = P+ - P-")
    return save_figure(fig, path)


def plot_score_distribution(scores: list[float], threshold: float | None, path, title: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(scores, bins=min(60, max(10, len(scores) // 5)), color="tab:blue", alpha=0.8)
    if threshold is not None:
        kept = sum(s >= threshold for s in scores)
        ax.axvline(threshold, color="tab:red", linestyle="--", label=f"cut: {kept} of {len(scores)} kept")
        ax.legend()
    ax.set_xlabel("filtering score (differential distribution reward)")
    ax.set_ylabel("pairs")
    ax.set_title(title or "DEFT filtering scores")
    return save_figure(fig, path)


def plot_training_curves(history: list[dict], path, keys=("loss", "deft/term", "deft/reward_chosen",
                                                          "deft/reward_rejected", "rewards/margins")) -> Path:
    keys = [k for k in keys if any(k in h for h in history)]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(4 * max(1, len(keys)), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(h["step"], h[key]) for h in history if key in h and "step" in h]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
    return save_figure(fig, path)
