"""What tells the kept pairs from the dropped ones: mean reply lengths, mean filtering score
and a few examples of each, shortened, so a user sees what the filter chose."""

from __future__ import annotations

from statistics import fmean


def reply_text(value) -> str:
    """A reply as text: text as is, chat messages joined by their contents."""
    return value if isinstance(value, str) else " ".join(m["content"] for m in value)


def shorten(text: str, width: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _side(rows: list[dict], scores: dict[int, float], indices: list[int], examples: int, width: int) -> dict:
    if not indices:
        return {"pairs": 0}
    chosen = [len(reply_text(rows[i]["chosen"])) for i in indices]
    rejected = [len(reply_text(rows[i]["rejected"])) for i in indices]
    return {"pairs": len(indices), "chosen_chars": fmean(chosen), "rejected_chars": fmean(rejected),
            "score": fmean(scores[i] for i in indices),
            "examples": [example(rows[i], scores[i], i, width) for i in indices[:examples]]}


def example(row: dict, score: float, index: int, width: int) -> dict:
    """One pair, shortened: the end of the prompt, the chosen and the rejected reply."""
    return {"index": index, "score": score, "prompt": shorten(reply_text(row["prompt"])[-200:], width),
            "chosen": shorten(reply_text(row["chosen"]), width),
            "rejected": shorten(reply_text(row["rejected"]), width)}


def describe_selection(rows: list[dict], scores: dict[int, float], kept: list[int], examples: int = 2,
                       width: int = 80) -> dict:
    """rows: parsed preference rows (prompt/chosen/rejected, text or messages); scores: row index ->
    filtering score of every scored row; kept: the kept indices. Examples: the highest-scoring kept
    pairs and the lowest-scoring dropped ones."""
    kept_set = set(kept)
    kept_order = sorted(kept, key=lambda i: -scores[i])
    dropped = sorted((i for i in scores if i not in kept_set), key=lambda i: scores[i])
    return {"kept": _side(rows, scores, kept_order, examples, width),
            "dropped": _side(rows, scores, dropped, examples, width)}
