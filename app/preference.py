"""Human verdicts as DEFT-DPO training data: the judging app's votes on one criterion,
aggregated per item, become preference rows that the plugin's `deft.preference` format reads.

Rule, per item (over the votes on the chosen criterion): the verdict with the most votes
decides. "a" -> chosen answer_a, rejected answer_b; "b" -> the other way round. An item whose
most-voted verdict is "tie" or "both_bad" is left out under that name; an item where two or more
verdicts share the most votes (an even split between a and b, or a against tie, ...) is left
out as "split". Which side a model was shown on plays no part. Every vote is accounted for:
votes = votes in rows + votes on left-out items, and votes read = votes + votes on other criteria.

A row is TRL's conversational preference row: `prompt` is the item's dialogue as chat
messages (every turn kept), `chosen` and `rejected` one assistant message each. The reader
keeps only prompt/chosen/rejected, so the provenance beside them (item, criterion, models,
vote counts) rides along without reaching training. Pure functions; no database."""

from __future__ import annotations

import json
from collections import Counter
from typing import Callable

from deft_app.items import InputError
from deft_app.store import DEFAULT_CRITERION, VERDICTS, criterion_of

LEFT_OUT = ("tie", "both_bad", "split")  # why an item gives no row


def criteria(votes: list[dict]) -> list[str]:
    """The criteria the votes were cast on, sorted."""
    return sorted({criterion_of(v) for v in votes})


def choose_criterion(votes: list[dict], given: str | None = None) -> str:
    """The criterion to export: the one given (it must have votes); else the only one the votes
    have; else "overall" when there are no votes at all (and so an error naming it). Several
    criteria and none given is an error naming them."""
    available = criteria(votes)
    if given is None:
        if len(available) > 1:
            raise InputError(f"the votes are on several criteria ({', '.join(available)}): "
                             "pick one with --criterion")
        given = available[0] if available else DEFAULT_CRITERION
    if given not in available:
        have = f"criteria with votes: {', '.join(available)}" if available else "the database has no votes"
        raise InputError(f"no votes on criterion {given!r} ({have})")
    return given


def outcome(verdicts: list[str]) -> str:
    """"a", "b", or the reason the item is left out: "tie", "both_bad" or "split"."""
    counts = Counter(verdicts)
    if not counts:
        raise ValueError("an item without votes has no outcome")
    top = max(counts.values())
    leaders = [v for v in VERDICTS if counts[v] == top]
    return leaders[0] if len(leaders) == 1 else "split"


def _messages(item_id: str, dialogue) -> list[dict]:
    ok = (isinstance(dialogue, list) and dialogue
          and all(isinstance(t, dict) and isinstance(t.get("role"), str) and isinstance(t.get("content"), str)
                  for t in dialogue))
    if not ok:
        raise InputError(f"item {item_id!r}: its dialogue is not a non-empty list of {{role, content}} turns")
    return [{"role": t["role"], "content": t["content"]} for t in dialogue]


def preference_rows(votes: list[dict], item: Callable[[str], dict | None],
                    criterion: str = DEFAULT_CRITERION) -> tuple[list[dict], dict]:
    """(rows, counts) for one criterion. `votes` as Store.votes() gives them; `item(item_id)` as
    Store.item does. Rows come in item id order. counts: criterion, votes_read, votes (on this
    criterion), votes_other_criteria, items, rows, left_out {tie, both_bad, split} (items),
    votes_in_rows, votes_left_out."""
    by_item: dict[str, list[dict]] = {}
    for v in votes:
        if v.get("verdict") not in VERDICTS:
            raise InputError(f"vote of {v.get('annotator')!r} on item {v.get('item_id')!r}: verdict must be one of "
                             f"{', '.join(VERDICTS)}, got {v.get('verdict')!r}")
        if criterion_of(v) == criterion:
            by_item.setdefault(v["item_id"], []).append(v)
    rows: list[dict] = []
    left_out = dict.fromkeys(LEFT_OUT, 0)
    in_rows = 0
    for item_id in sorted(by_item):
        item_votes = by_item[item_id]
        verdicts = [v["verdict"] for v in item_votes]
        result = outcome(verdicts)
        if result in LEFT_OUT:
            left_out[result] += 1
            continue
        found = item(item_id)
        if found is None:
            raise InputError(f"votes on item {item_id!r}, which the database does not hold")
        win, lose = ("a", "b") if result == "a" else ("b", "a")
        counts = Counter(verdicts)
        rows.append({
            "prompt": _messages(item_id, found["dialogue"]),
            "chosen": [{"role": "assistant", "content": found[f"answer_{win}"]}],
            "rejected": [{"role": "assistant", "content": found[f"answer_{lose}"]}],
            "item_id": item_id,
            "criterion": criterion,
            "chosen_model": found[f"model_{win}"],
            "rejected_model": found[f"model_{lose}"],
            "votes": {"chosen": counts[win], "rejected": counts[lose], "tie": counts["tie"],
                      "both_bad": counts["both_bad"]},
        })
        in_rows += len(item_votes)
    on_criterion = sum(len(vs) for vs in by_item.values())
    report = {"criterion": criterion, "votes_read": len(votes), "votes": on_criterion,
              "votes_other_criteria": len(votes) - on_criterion, "items": len(by_item), "rows": len(rows),
              "left_out": left_out, "votes_in_rows": in_rows, "votes_left_out": on_criterion - in_rows}
    return rows, report


def preference_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def summary(counts: dict) -> str:
    """One line for the organiser: rows written and the items left out by reason."""
    reasons = ", ".join(f"{n} {reason}" for reason, n in counts["left_out"].items())
    other = counts["votes_other_criteria"]
    other = f"; {other} votes on other criteria not used" if other else ""
    return (f"criterion {counts['criterion']!r}: {counts['votes']} votes on {counts['items']} items -> "
            f"{counts['rows']} preference rows; {sum(counts['left_out'].values())} items left out "
            f"({reasons}){other}")
