"""Making data safe to show: names from the data (models, categories, annotators) escaped for the
Markdown the admin tables are rendered from and for plot labels; invisible control characters
in dialogues and answers (bidirectional overrides, zero-width marks) shown as visible escapes, so
that an answer cannot disguise what it says."""

from __future__ import annotations

import html
import unicodedata

MARKDOWN_SPECIAL = "\\`*_[]|<>#!~$"


def markdown_text(value) -> str:
    """A name as literal text inside a Markdown table cell: HTML escaped, Markdown escaped, one line."""
    text = html.escape(" ".join(str(value).split()), quote=False)
    return "".join("\\" + c if c in MARKDOWN_SPECIAL else c for c in text)


def plot_label(value) -> str:
    """A name as literal text in a matplotlib label (no mathtext between dollar signs)."""
    return str(value).replace("$", r"\$")


def visible_controls(text: str) -> str:
    """Control and format characters (Unicode categories Cc, Cf) other than newline and tab as
    visible escapes, e.g. a right-to-left override as <U+202E>."""
    return "".join(f"<U+{ord(c):04X}>" if unicodedata.category(c) in ("Cc", "Cf") and c not in "\n\t" else c
                   for c in text)
