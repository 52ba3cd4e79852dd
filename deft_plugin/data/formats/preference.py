"""Plain preference rows: `prompt`, `chosen`, `rejected` as text or as chat messages
(TRL's standard and conversational preference formats)."""

from __future__ import annotations

from deft_plugin.hookspecs import DatasetFormat, RowError, hookimpl


def is_messages(value) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def parse(row: dict, style: str) -> dict:
    values = {}
    for key in ("prompt", "chosen", "rejected"):
        value = row.get(key)
        if not (isinstance(value, str) or is_messages(value)):
            raise RowError(f"missing '{key}' or it is neither text nor chat messages")
        values[key] = value
    conversational = [is_messages(v) for v in values.values()]
    if any(conversational) and not all(conversational):
        raise RowError("'prompt', 'chosen' and 'rejected' mix text and chat messages")
    if all(conversational) and style == "raw":
        raise RowError("chat-message rows need deft_prompt_style: chat_template")
    return values


@hookimpl
def deft_dataset_formats():
    return [DatasetFormat("preference", parse, "prompt/chosen/rejected text or chat messages")]
