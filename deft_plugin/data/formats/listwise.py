"""Ranked (listwise) rows: a `prompt`, its `responses` ranked best to worst (n >= 2; rows
may differ in n), and optional `rewards`, one score per response. Prompt and responses are
text, or chat messages (a response then being the assistant turn(s)). With rewards, PRO
derives its temperatures from the reward gaps, so they must agree with the ranking."""

from __future__ import annotations

import math

from deft_plugin.data.formats.preference import is_messages
from deft_plugin.hookspecs import DatasetFormat, RowError, hookimpl


def _rewards(row: dict, n: int) -> list[float] | None:
    rewards = row.get("rewards")
    if rewards is None:
        return None
    if not isinstance(rewards, list) or len(rewards) != n:
        raise RowError(f"'rewards' must be a list of one number per response ({n})")
    if not all(isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) for r in rewards):
        raise RowError("'rewards' holds a value that is not a finite number")
    if any(a < b for a, b in zip(rewards, rewards[1:])):
        raise RowError("'rewards' rise along the ranking; responses must be ordered best first")
    return [float(r) for r in rewards]


def parse(row: dict, style: str) -> dict:
    prompt, responses = row.get("prompt"), row.get("responses")
    if not (isinstance(prompt, str) or is_messages(prompt)):
        raise RowError("missing 'prompt' or it is neither text nor chat messages")
    if not isinstance(responses, list):
        raise RowError("missing 'responses' or it is not a list")
    if len(responses) < 2:
        raise RowError(f"fewer than 2 responses ({len(responses)}); a ranking needs n >= 2")
    if not all(isinstance(r, str) or is_messages(r) for r in responses):
        raise RowError("a response is neither text nor chat messages")
    conversational = [is_messages(v) for v in (prompt, *responses)]
    if any(conversational) and not all(conversational):
        raise RowError("'prompt' and 'responses' mix text and chat messages")
    if all(conversational) and style == "raw":
        raise RowError("chat-message rows need deft_prompt_style: chat_template")
    return {"prompt": prompt, "responses": list(responses), "rewards": _rewards(row, len(responses))}


@hookimpl
def deft_dataset_formats():
    return [DatasetFormat("listwise", parse, "prompt with responses ranked best first (n >= 2), optional rewards")]
