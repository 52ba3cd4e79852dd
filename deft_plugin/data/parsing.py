"""Raw rows (from data.sources) -> parsed rows through a registered dataset format, with every row that
cannot be parsed counted by reason and kept with its file and row (the report names the first few)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from deft_plugin.data.sources import load_rows
from deft_plugin.hookspecs import RowError
from deft_plugin.registry import get_format

LOG = logging.getLogger(__name__)
EXAMPLES_KEPT = 5


@dataclass
class ParsedRows:
    rows: list[dict] = field(default_factory=list)
    raw: list[dict] = field(default_factory=list)  # the raw row each parsed row came from
    where: list[str] = field(default_factory=list)  # and where it was: file and 1-based line
    read: int = 0
    unparseable: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (where, reason) of every unparseable row

    def extend(self, other: "ParsedRows") -> None:
        self.rows += other.rows
        self.raw += other.raw
        self.where += other.where
        self.read += other.read
        self.unparseable += other.unparseable
        self.examples += other.examples[: max(0, EXAMPLES_KEPT - len(self.examples))]
        self.rejected += other.rejected

    def report(self) -> dict:
        return {"read": self.read, "unparseable": sum(self.unparseable.values()),
                "unparseable_reasons": dict(self.unparseable), "unparseable_examples": self.examples}


def parse_rows(raw_rows, format_name: str, style: str, source: str = "") -> ParsedRows:
    """Rows through a format. raw_rows: RawRows (rows named by file and line, and the lines that
    were not JSON objects, counted here) or any sequence of dicts (named `source row N`, 1-based)."""
    fmt = get_format(format_name)
    out = ParsedRows()
    where = getattr(raw_rows, "where", None)
    for location, reason in getattr(raw_rows, "bad", ()):
        out.read += 1
        _unparseable(out, f"line is not a JSON object: {reason}", location)
    for i, row in enumerate(raw_rows):
        out.read += 1
        try:
            parsed = fmt.parse(row, style)
        except RowError as err:
            _unparseable(out, str(err), where[i] if where else f"{source} row {i + 1}")
            continue
        out.rows.append(parsed)
        out.raw.append(row)
        out.where.append(where[i] if where else f"{source} row {i + 1}")
    if out.unparseable:
        LOG.warning("%s: %d of %d rows could not be parsed as %s: %s", source, sum(out.unparseable.values()),
                    out.read, format_name, dict(out.unparseable))
    return out


def _unparseable(out: ParsedRows, reason: str, location: str) -> None:
    # the reason without the line's own text, so that one reason counts many lines
    out.unparseable[reason.split(" (")[0] if reason.startswith("line is not") else reason] += 1
    out.rejected.append((location, reason))
    if len(out.examples) < EXAMPLES_KEPT:
        out.examples.append(f"{location}: {reason}")


def parse_source(path: str, format_name: str, style: str, split: str | None = None, data_files=None,
                revision: str | None = None) -> ParsedRows:
    return parse_rows(load_rows(path, split, data_files, revision), format_name, style, source=path)
