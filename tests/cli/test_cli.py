"""The `deft` command line on real HH-RLHF pairs with the tiny local model."""

import json
import math
import os
import subprocess
import sys

import pytest

from deft_plugin.cli import main


def test_qdiff_then_inspect(tmp_path, tiny_model_dir, hh_file, capsys):
    out = tmp_path / "q"
    assert main(["qdiff", "--data", str(hh_file), "--model", str(tiny_model_dir), "--out", str(out), "--top", "5"]) == 0
    printed = capsys.readouterr().out
    assert "64 rows read, 0 unparseable" in printed
    meta = json.loads((out / "qdiff.json").read_text())
    assert meta["pairs"] == 64 and meta["norm"] == "maxabs" and meta["vocab_size"] == 512
    sides = json.loads((out / "top_tokens.json").read_text())
    assert len(sides["chosen"]) == 5 and all(r["q"] > 0 for r in sides["chosen"])
    assert all(r["q"] < 0 for r in sides["rejected"])
    assert (out / "top_tokens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(["inspect", str(out), "--top", "3", "--out", str(tmp_path / "inspected")]) == 0
    shown = json.loads((tmp_path / "inspected" / "top_tokens.json").read_text())
    assert shown["chosen"] == sides["chosen"][:3]
    assert "top tokens of chosen replies" in capsys.readouterr().out


def test_score_and_filter(tmp_path, tiny_model_dir, hh_file):
    scored = tmp_path / "scored"
    assert main(["score", "--data", str(hh_file), "--model", str(tiny_model_dir), "--out", str(scored),
                 "--max-length", "256"]) == 0
    report = json.loads((scored / "report.json").read_text())
    assert report["read"] == 64 and report["rows"] == 64
    assert report["scored"] + report["degenerate"] == 64
    assert sum(report["degenerate_reasons"].values()) == report["degenerate"]
    rows = [json.loads(line) for line in (scored / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == report["scored"]
    for row in rows:  # original HH-RLHF rows plus the scores; delta = R+ - R-
        assert {"chosen", "rejected"} <= row.keys()
        assert row["deft_score"] == pytest.approx(row["deft_reward_chosen"] - row["deft_reward_rejected"], abs=1e-6)

    kept_dir = tmp_path / "kept"
    assert main(["filter", "--data", str(hh_file), "--model", str(tiny_model_dir), "--out", str(kept_dir),
                 "--max-length", "256", "--ratio", "0.25"]) == 0
    kept = [json.loads(line) for line in (kept_dir / "kept.jsonl").read_text().splitlines()]
    assert len(kept) == math.ceil(0.25 * report["scored"])
    threshold = min(r["deft_score"] for r in kept)
    dropped_scores = sorted((r["deft_score"] for r in rows), reverse=True)[len(kept):]
    assert all(s <= threshold for s in dropped_scores)
    assert (kept_dir / "scores.png").is_file()

    by_count = tmp_path / "count"
    assert main(["filter", "--data", str(hh_file), "--model", str(tiny_model_dir), "--out", str(by_count),
                 "--max-length", "256", "--count", "3"]) == 0
    assert len((by_count / "kept.jsonl").read_text().splitlines()) == 3


def one_line_error(capsys, argv, words):
    """The command exits with 2 and one line on stderr that names what is wrong, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "Traceback" not in err, err
    return err


def test_bad_input_gets_one_line_and_exit_code_2(tmp_path, tiny_model_dir, hh_file, capsys):
    base = ["filter", "--data", str(hh_file), "--model", str(tiny_model_dir), "--out", str(tmp_path / "o")]
    one_line_error(capsys, base + ["--ratio", "0.1", "--count", "3"], "--ratio or --count")
    one_line_error(capsys, base + ["--ratio", "1.5"], "--ratio must be in (0, 1]")
    score = ["score", "--model", str(tiny_model_dir), "--out", str(tmp_path / "o")]
    one_line_error(capsys, score + ["--data", str(tmp_path / "missing.jsonl")], "does not exist")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    one_line_error(capsys, score + ["--data", str(empty)], f"--data {empty}: no rows")
    one_line_error(capsys, score + ["--data", str(hh_file), "--format", "nope"], "--format nope: unknown")
    missing_model = tmp_path / "no-model"
    one_line_error(capsys, ["score", "--data", str(hh_file), "--model", str(missing_model), "--out",
                            str(tmp_path / "o")], f"--model {missing_model}: neither a model directory")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root writes anywhere: a file in the way stands in for the lock
            locked = tmp_path / "a-file"
            locked.write_text("")
        one_line_error(capsys, ["score", "--data", str(hh_file), "--model", str(tiny_model_dir),
                                "--out", str(locked / "out")], "cannot write there")
    finally:
        (tmp_path / "locked").chmod(0o700)
    from deft_plugin.cli.main import UsageError

    with pytest.raises(UsageError) as err:  # --debug: the traceback, for a bug report
        main(["--debug", *score, "--data", str(tmp_path / "missing.jsonl")])
    assert isinstance(err.value.__cause__, FileNotFoundError)


def test_a_missing_or_empty_qdiff_folder_gets_one_line(tmp_path, tiny_model_dir, hh_file, capsys):
    missing, empty = tmp_path / "missing", tmp_path / "empty"
    empty.mkdir()
    one_line_error(capsys, ["inspect", str(missing)], f"qdiff {missing}: no such folder")
    one_line_error(capsys, ["inspect", str(empty)], f"qdiff {empty}: no saved discrepancy distribution")
    one_line_error(capsys, ["filter", "--data", str(hh_file), "--model", str(tiny_model_dir), "--out",
                            str(tmp_path / "o"), "--qdiff", str(empty)], f"--qdiff {empty}: no saved discrepancy")


def test_the_format_as_deft_formats_prints_it(tmp_path, tiny_model_dir, hh_file):
    out = tmp_path / "o"
    assert main(["score", "--data", str(hh_file), "--model", str(tiny_model_dir), "--out", str(out),
                 "--format", "deft.hh_rlhf", "--limit", "6"]) == 0
    assert json.loads((out / "report.json").read_text())["read"] == 6


def test_unparseable_rows_are_counted_not_lost(tmp_path, tiny_model_dir):
    from builders import hh_rows, write_jsonl

    rows = hh_rows(10)
    rows[3] = {"chosen": "no dialogue markers here", "rejected": "nor here"}
    rows[7] = {"chosen": rows[7]["chosen"]}
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    assert main(["score", "--data", str(data), "--model", str(tiny_model_dir), "--out", str(tmp_path / "o")]) == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["read"] == 10 and report["unparseable"] == 2
    assert report["unparseable_reasons"] == {"no '\\n\\nAssistant:' turn": 1, "missing or non-text 'rejected'": 1}
    examples = report["unparseable_examples"]  # named by file and 1-based line
    assert examples == [f"{data}:4: no '\\n\\nAssistant:' turn", f"{data}:8: missing or non-text 'rejected'"]
    assert report["rows"] == 8


def test_broken_json_lines_are_counted_and_named_and_the_run_goes_on(tmp_path, tiny_model_dir):
    """A cut-off line, a stray quote, a list instead of an object and a field that turns from text
    to a number: the datasets JSON loader used to crash on each; now each is counted and named."""
    from builders import hh_rows

    rows = [json.dumps(r) for r in hh_rows(8)]
    lines = [rows[0], rows[1][: len(rows[1]) // 2], rows[2], '{"chosen": "x", "rejected": "y"' + '"', rows[3],
             "[1, 2]", json.dumps({**hh_rows(5)[4], "chosen": 5}), rows[5], "", rows[6]]
    data = tmp_path / "broken.jsonl"
    data.write_text("\n".join(lines) + "\n")
    assert main(["score", "--data", str(data), "--model", str(tiny_model_dir), "--out", str(tmp_path / "o")]) == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["read"] == 9 and report["unparseable"] == 4 and report["rows"] == 5
    assert report["unparseable_reasons"] == {"line is not a JSON object: not valid JSON": 2,
                                             "line is not a JSON object: a JSON list, not an object": 1,
                                             "missing or non-text 'chosen'": 1}
    named = [e.split(": ")[0] for e in report["unparseable_examples"]]
    assert named == [f"{data}:2", f"{data}:4", f"{data}:6", f"{data}:7"]


def test_every_rejected_row_is_written_with_its_place_and_reason(tmp_path, tiny_model_dir):
    """Twelve bad rows (more than the report names), three duplicates and a pair whose replies differ
    only past --max-length: every one in rejected.jsonl by file:line, and the counts add up."""
    from builders import hh_rows

    good = hh_rows(40)
    lines = [json.dumps(r) for r in good]
    bad_at = list(range(2, 38, 3))  # 12 places
    for n in bad_at:
        lines[n] = '{"chosen": "cut off'
    lines += [json.dumps(good[0]), json.dumps(good[1]), json.dumps(good[0])]  # lines 41-43: copies
    prompt = "\n\nHuman: Tell me about bread.\n\nAssistant:"
    shared = " Bread is made from flour, water, salt and yeast, and baked in a hot oven." * 20
    lines.append(json.dumps({"chosen": f"{prompt}{shared} For an hour.",
                             "rejected": f"{prompt}{shared} Until golden."}))  # line 44
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "o"
    assert main(["filter", "--data", str(data), "--model", str(tiny_model_dir), "--out", str(out),
                 "--max-length", "512", "--count", "3"]) == 0
    report = json.loads((out / "report.json").read_text())
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert len(report["unparseable_examples"]) == 5  # the report names the first few ...
    unparseable = [r for r in rejected if r["stage"] == "unparseable"]
    assert [r["where"] for r in unparseable] == [f"{data}:{n + 1}" for n in bad_at]  # ... the file names all
    assert {r["reason"] for r in unparseable} == {"line is not a JSON object: not valid JSON (Unterminated string "
                                                  "starting at)"}
    degenerate = {r["where"]: r for r in rejected if r["stage"] == "degenerate"}
    assert degenerate[f"{data}:41"] == {"where": f"{data}:41", "stage": "degenerate", "reason": "duplicate",
                                        "duplicate_of": f"{data}:1"}
    assert degenerate[f"{data}:42"]["duplicate_of"] == f"{data}:2"
    assert degenerate[f"{data}:43"]["duplicate_of"] == f"{data}:1"
    assert degenerate[f"{data}:44"]["reason"] == "identical_after_truncation"
    assert report["degenerate_reasons"]["duplicate"] == 3
    assert report["degenerate_reasons"]["identical_after_truncation"] == 1
    # nothing lost: every line read is kept, not selected, or rejected with a place
    assert report["read"] == len(lines) == 44
    assert report["read"] == report["unparseable"] + report["degenerate"] + report["scored"]
    assert report["rejected"] == len(rejected) == report["unparseable"] + report["degenerate"]
    assert len((out / "kept.jsonl").read_text().splitlines()) == report["kept"] == 3
    assert (out / "cache" / "rejected.jsonl").read_text() == (out / "rejected.jsonl").read_text()


def test_console_script_lists_formats():
    out = subprocess.run([sys.executable, "-m", "deft_plugin.cli", "formats"], capture_output=True, text=True,
                         check=True)
    assert "deft.hh_rlhf" in out.stdout and "deft.preference" in out.stdout and "deft.listwise" in out.stdout
    assert "delta" in out.stdout and "chosen" in out.stdout


def test_filter_ranked_lists(tmp_path, tiny_model_dir):
    """Ranked rows keep their n replies and rewards; the score is R(y1) - mean R(yk>1)."""
    from builders import listwise_rows, write_jsonl

    data = write_jsonl(tmp_path / "ranked.jsonl", listwise_rows(24))
    out = tmp_path / "kept"
    assert main(["filter", "--data", str(data), "--format", "listwise", "--model", str(tiny_model_dir),
                 "--out", str(out), "--count", "6", "--max-length", "512"]) == 0
    kept = [json.loads(line) for line in (out / "kept.jsonl").read_text().splitlines()]
    report = json.loads((out / "report.json").read_text())
    assert len(kept) == 6 and report["read"] == 24 and report["scored"] + report["degenerate"] == 24
    for row in kept:
        n = len(row["responses"])
        rest = sum(row["deft_rewards"][1:]) / (n - 1) if n > 2 else row["deft_reward_rejected"]
        assert row["deft_score"] == pytest.approx(row["deft_reward_chosen"] - rest, abs=1e-9)
        assert row["deft_reward_rejected"] == pytest.approx(rest, abs=1e-9)
        assert len(row.get("deft_rewards", [0, 0])) == n
    assert any(len(r["responses"]) > 2 for r in kept)


@pytest.mark.parametrize("flags, named", [
    (["--ratio", "2"], "--ratio 2.0: the fraction of pairs kept must be in (0, 1]"),
    (["--ratio", "0"], "--ratio 0.0:"),
    (["--pairs", "0"], "--pairs 0: must be at least 1"),
    (["--steps", "-1"], "--steps -1: must be at least 1"),
    (["--learning-rate", "0"], "--learning-rate 0.0: must be above 0"),
    (["--model", "no/such/model-dir"], "--model no/such/model-dir: no model directory there"),
    (["--data", "missing.jsonl.gz"], "--data missing.jsonl.gz: dataset path missing.jsonl.gz does not exist"),
    (["--pairs", "100000"], "--pairs 100000 / --heldout 40: the split leaves"),
])
def test_demo_mistakes_are_one_line_before_any_work(tmp_path, capsys, monkeypatch, flags, named):
    """Refused with exit code 2 before the held-out pass or training starts (each ~30 s or more)."""
    import deft_plugin.cli.demo as demo

    started = []
    monkeypatch.setattr(demo, "heldout", lambda *args: started.append("held-out pass"))
    monkeypatch.setattr(demo, "run_axolotl_train", lambda *args: started.append("training"))
    assert main(["demo", "--run-dir", str(tmp_path / "run"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("deft demo: ") and named in err and len(err.splitlines()) == 1, err
    assert started == []
    assert not (tmp_path / "run" / "report.json").exists()
