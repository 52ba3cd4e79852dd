"""Anthropic HH-RLHF: rows with full `chosen` and `rejected` transcripts.

The prompt x is the shared dialogue up to the last "\\n\\nAssistant:"; y+ and y- are the
last assistant replies. Offered as chat messages (chat_template) or as the raw
"Human:/Assistant:" text (raw, for base models).
"""

from __future__ import annotations

import re

from deft_plugin.hookspecs import DatasetFormat, RowError, hookimpl

ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def split_transcript(text: str) -> tuple[str, str]:
    """(prompt ending with "\\n\\nAssistant:", last reply without its leading space)."""
    cut = text.rfind(ASSISTANT)
    if cut < 0:
        raise RowError("no '\\n\\nAssistant:' turn")
    end = cut + len(ASSISTANT)
    return text[:end], text[end:].strip()


def to_messages(prompt: str) -> list[dict]:
    """Raw "\\n\\nHuman: ...\\n\\nAssistant:" prompt text -> chat messages (last empty turn dropped)."""
    parts = _TURN.split(prompt)
    if parts[0].strip():
        raise RowError("text before the first 'Human:' turn")
    messages = []
    for role, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": _ROLES[role], "content": content.strip()})
    if not messages or messages[-1] != {"role": "assistant", "content": ""}:
        raise RowError("prompt does not end with an empty Assistant turn")
    messages.pop()
    if not messages or messages[0]["role"] != "user":
        raise RowError("dialogue does not start with a Human turn")
    return messages


def parse(row: dict, style: str) -> dict:
    for key in ("chosen", "rejected"):
        if not isinstance(row.get(key), str):
            raise RowError(f"missing or non-text '{key}'")
    prompt, chosen = split_transcript(row["chosen"])
    prompt_r, rejected = split_transcript(row["rejected"])
    if prompt != prompt_r:
        raise RowError("chosen and rejected dialogues differ before the last reply")
    if style == "raw":
        return {"prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected}
    return {
        "prompt": to_messages(prompt),
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


@hookimpl
def deft_dataset_formats():
    return [DatasetFormat("hh_rlhf", parse, "Anthropic HH-RLHF chosen/rejected transcripts")]
