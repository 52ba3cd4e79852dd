"""Reading JSON-lines files: every row is kept, or named with its file:line and reason."""

from __future__ import annotations

import gzip
import json

import pytest

from deft_plugin.data.sources import read_json_lines

from builders import hh_rows


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_a_byte_order_mark_does_not_cost_the_first_row(tmp_path, suffix):
    rows = hh_rows(3)
    data = ("\ufeff" + "\n".join(json.dumps(r) for r in rows) + "\n").encode("utf-8")
    path = tmp_path / f"bom{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    read = read_json_lines(path)
    assert read.rows == rows and read.bad == [] and read.where == [f"{path}:{n}" for n in (1, 2, 3)]


def test_a_byte_order_mark_before_a_json_array(tmp_path):
    path = tmp_path / "rows.json"
    path.write_bytes(("\ufeff" + json.dumps(hh_rows(2))).encode("utf-8"))
    assert read_json_lines(path).rows == hh_rows(2)


@pytest.mark.parametrize("suffix,newline", [(".jsonl", "\n"), (".jsonl", "\r\n"), (".jsonl.gz", "\n")])
def test_line_separators_inside_strings_are_no_line_breaks(tmp_path, suffix, newline):
    """JSON strings may hold U+2028, U+2029, U+0085 and \\x0b-\\x1e raw (json.dumps with ensure_ascii=False
    writes them so): every row is read, and a bad line keeps its own line number."""
    odd = "\u2028\u2029\u0085\x0b\x0c\x1c\x1d\x1e"
    rows = [{**r, "chosen": r["chosen"] + odd} for r in hh_rows(3)]
    lines = [json.dumps(rows[0], ensure_ascii=False), '{"cut off', json.dumps(rows[1], ensure_ascii=False),
             json.dumps(rows[2], ensure_ascii=False)]
    data = ("\ufeff" + newline.join(lines) + newline).encode("utf-8")
    path = tmp_path / f"odd{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    read = read_json_lines(path)
    assert read.rows == rows and read.where == [f"{path}:{n}" for n in (1, 3, 4)]
    assert [where for where, _ in read.bad] == [f"{path}:2"]
