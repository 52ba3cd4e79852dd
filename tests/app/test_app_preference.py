"""Human verdicts as DEFT-DPO preference rows: the per-item majority on one criterion, the
items left out by reason with every vote accounted for, `deft-app export --as preference` on a
real database (atomic, errors on one line), and the plugin's own deft.preference reader taking
every row."""

from __future__ import annotations

import json
import os

import pytest

from deft_app import cli
from deft_app.items import InputError
from deft_app.preference import choose_criterion, criteria, outcome, preference_rows
from deft_app.store import Store
from deft_plugin.data.formats.preference import parse
from deft_plugin.data.parsing import parse_source

DIALOGUE = [{"role": "user", "content": "How do I boil an egg?"},
            {"role": "assistant", "content": "Soft or hard?"},
            {"role": "user", "content": "Hard, please."}]


def item(n: int, dialogue=None) -> dict:
    return {"id": f"q{n}", "dialogue": dialogue or [{"role": "user", "content": f"question {n}"}],
            "category": "writing", "model_a": "dpo", "answer_a": f"dpo answer {n}", "model_b": "deft",
            "answer_b": f"deft answer {n}"}


def vote(item_id: str, annotator: str, verdict: str, criterion: str | None = None, left: str = "dpo") -> dict:
    v = {"item_id": item_id, "annotator": annotator, "verdict": verdict, "model_a": "dpo", "model_b": "deft",
         "category": "writing", "left_model": left, "comment": "", "created": 0.0}
    if criterion is not None:
        v["criterion"] = criterion
    return v


def lookup(*items: dict):
    by_id = {i["id"]: i for i in items}
    return by_id.get


def row(n: int, winner: str, chosen: int, rejected: int = 0, tie: int = 0, both_bad: int = 0,
        criterion: str = "overall", dialogue=None) -> dict:
    dpo, deft = ("dpo", f"dpo answer {n}"), ("deft", f"deft answer {n}")
    (chosen_model, chosen_text), (rejected_model, rejected_text) = (dpo, deft) if winner == "a" else (deft, dpo)
    return {"prompt": dialogue or [{"role": "user", "content": f"question {n}"}],
            "chosen": [{"role": "assistant", "content": chosen_text}],
            "rejected": [{"role": "assistant", "content": rejected_text}],
            "item_id": f"q{n}", "criterion": criterion, "chosen_model": chosen_model, "rejected_model": rejected_model,
            "votes": {"chosen": chosen, "rejected": rejected, "tie": tie, "both_bad": both_bad}}


# ---------------------------------------------------------------- the rule, pure


@pytest.mark.parametrize("verdicts, expected", [
    (["a"], "a"), (["b"], "b"), (["a", "a", "b"], "a"), (["b", "b", "a", "tie"], "b"),
    (["a", "a", "tie", "both_bad"], "a"),  # the most votes, not more than half of them
    (["a", "b"], "split"), (["a", "a", "b", "b", "tie"], "split"), (["a", "tie"], "split"),
    (["tie", "both_bad"], "split"),
    (["tie"], "tie"), (["tie", "tie", "a"], "tie"), (["both_bad", "both_bad", "b"], "both_bad"),
    (["both_bad"], "both_bad"),
])
def test_the_verdict_with_the_most_votes_decides(verdicts, expected):
    assert outcome(verdicts) == expected


def test_rows_and_counts_over_several_annotators():
    items = [item(n) for n in range(7)]
    votes = [
        vote("q0", "ann", "a"),                                                  # one vote: a
        vote("q1", "ann", "b"), vote("q1", "bob", "b"), vote("q1", "cat", "a"),  # b by 2 to 1
        vote("q2", "ann", "a"), vote("q2", "bob", "b"),                          # even split
        vote("q3", "ann", "tie"), vote("q3", "bob", "tie"), vote("q3", "cat", "a"),  # majority tie
        vote("q4", "ann", "both_bad"),                                           # both bad
        vote("q5", "ann", "a"), vote("q5", "bob", "a"), vote("q5", "cat", "tie"), vote("q5", "dan", "both_bad"),
        vote("q6", "ann", "both_bad"), vote("q6", "bob", "tie"),                 # no verdict leads: split
    ]
    rows, counts = preference_rows(votes, lookup(*items))
    assert rows == [row(0, "a", 1), row(1, "b", 2, rejected=1), row(5, "a", 2, tie=1, both_bad=1)]
    assert counts == {"criterion": "overall", "votes_read": 16, "votes": 16, "votes_other_criteria": 0, "items": 7,
                      "rows": 3, "left_out": {"tie": 1, "both_bad": 1, "split": 2}, "votes_in_rows": 8,
                      "votes_left_out": 8}
    # every vote accounted for
    assert counts["votes"] == counts["votes_in_rows"] + counts["votes_left_out"]
    assert counts["items"] == counts["rows"] + sum(counts["left_out"].values())


def test_which_model_was_on_the_left_plays_no_part():
    items = [item(0), item(1)]
    left_dpo = [vote("q0", "ann", "b", left="dpo"), vote("q1", "ann", "a", left="dpo")]
    left_deft = [dict(v, left_model="deft") for v in left_dpo]
    assert preference_rows(left_dpo, lookup(*items)) == preference_rows(left_deft, lookup(*items))
    rows, _ = preference_rows(left_deft, lookup(*items))
    assert [(r["chosen_model"], r["chosen"][0]["content"]) for r in rows] == [("deft", "deft answer 0"),
                                                                             ("dpo", "dpo answer 1")]


def test_a_multi_turn_dialogue_stays_chat_messages():
    rows, _ = preference_rows([vote("q0", "ann", "b")], lookup(item(0, DIALOGUE)))
    assert rows == [row(0, "b", 1, dialogue=DIALOGUE)]
    assert rows[0]["prompt"] == DIALOGUE and rows[0]["prompt"] is not DIALOGUE  # a copy, every turn in order
    assert parse(rows[0], "chat_template") == {k: rows[0][k] for k in ("prompt", "chosen", "rejected")}


def test_one_criterion_at_a_time():
    items = [item(0), item(1)]
    votes = [vote("q0", "ann", "a", "overall"), vote("q0", "ann", "b", "safety"), vote("q0", "bob", "b", "safety"),
             vote("q1", "ann", "tie", "overall"), vote("q1", "ann", "a", "safety")]
    assert criteria(votes) == ["overall", "safety"]
    rows, counts = preference_rows(votes, lookup(*items), "safety")
    assert rows == [row(0, "b", 2, criterion="safety"), row(1, "a", 1, criterion="safety")]
    assert counts == {"criterion": "safety", "votes_read": 5, "votes": 3, "votes_other_criteria": 2, "items": 2,
                      "rows": 2, "left_out": {"tie": 0, "both_bad": 0, "split": 0}, "votes_in_rows": 3,
                      "votes_left_out": 0}
    rows, counts = preference_rows(votes, lookup(*items))  # "overall" by default
    assert rows == [row(0, "a", 1)]
    assert counts["left_out"] == {"tie": 1, "both_bad": 0, "split": 0} and counts["votes_other_criteria"] == 3
    # a vote without a criterion (the store before criteria) is an "overall" vote
    assert preference_rows([vote("q0", "ann", "a")], lookup(*items)) == \
        preference_rows([vote("q0", "ann", "a", "overall")], lookup(*items))


def test_choosing_the_criterion():
    overall = [vote("q0", "ann", "a")]
    two = [vote("q0", "ann", "a", "overall"), vote("q0", "ann", "a", "safety")]
    assert choose_criterion(overall) == "overall"
    assert choose_criterion([vote("q0", "ann", "a", "safety")]) == "safety"  # the only one there is
    assert choose_criterion(two, "safety") == "safety"
    with pytest.raises(InputError, match="several criteria \\(overall, safety\\): pick one with --criterion"):
        choose_criterion(two)
    with pytest.raises(InputError, match="no votes on criterion 'style' \\(criteria with votes: overall, safety\\)"):
        choose_criterion(two, "style")
    with pytest.raises(InputError, match="no votes on criterion 'overall' \\(the database has no votes\\)"):
        choose_criterion([])


def test_bad_input_is_named():
    with pytest.raises(InputError, match="item 'q0': its dialogue is not a non-empty list"):
        preference_rows([vote("q0", "ann", "a")], lookup(item(0, [{"role": "user"}])))
    with pytest.raises(InputError, match="item 'q9', which the database does not hold"):
        preference_rows([vote("q9", "ann", "a")], lookup(item(0)))
    with pytest.raises(InputError, match="verdict must be one of a, b, tie, both_bad, got 'left'"):
        preference_rows([vote("q0", "ann", "left")], lookup(item(0)))


# ---------------------------------------------------------------- deft-app export --as preference


def judged_db(path, criteria: dict[str, str] | None = None) -> Store:
    """Four items (one of them a multi-turn dialogue) judged by three annotators through the
    store's API; `criteria`: annotator -> the criterion their votes are on (default overall)."""
    store = Store(path)
    store.add_items([item(0, DIALOGUE), item(1), item(2), item(3)])
    for name in ("ann", "bob", "cat"):
        store.add_annotator(name, "long password")
    for item_id, verdicts in {"q0": "bba", "q1": "aa", "q2": "ab", "q3": "t"}.items():
        for name, verdict in zip(("ann", "bob", "cat"), verdicts):
            store.record_vote(item_id, name, {"t": "tie"}.get(verdict, verdict), "deft",
                              criterion=(criteria or {}).get(name, "overall"))
    return store


def test_export_writes_rows_the_plugin_reads(tmp_path, capsys):
    judged_db(tmp_path / "v.db")
    out = tmp_path / "export"
    assert cli.main(["export", "--db", str(tmp_path / "v.db"), "--out", str(out), "--as", "preference"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("criterion 'overall': 8 votes on 4 items -> 2 preference rows; 2 items left out "
                              "(1 tie, 0 both_bad, 1 split); written to ")
    assert os.listdir(out) == ["preference.jsonl"]  # nothing else: no votes files, no temporary file
    rows = [json.loads(line) for line in (out / "preference.jsonl").read_text().splitlines()]
    assert rows == [row(0, "b", 2, rejected=1, dialogue=DIALOGUE), row(1, "a", 2)]
    # the plugin's own reader: every row parsed, as chat messages, the provenance left behind
    parsed = parse_source(str(out / "preference.jsonl"), "preference", "chat_template")
    assert parsed.report() == {"read": 2, "unparseable": 0, "unparseable_reasons": {}, "unparseable_examples": []}
    assert parsed.rows == [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]


def test_the_vote_export_stays_the_default(tmp_path, capsys):
    judged_db(tmp_path / "v.db")
    assert cli.main(["export", "--db", str(tmp_path / "v.db"), "--out", str(tmp_path / "out")]) == 0
    assert "8 votes written" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "out")) == ["votes.csv", "votes.jsonl"]
    assert cli.main(["export", "--db", str(tmp_path / "v.db"), "--out", str(tmp_path / "out"), "--as", "votes",
                     "--criterion", "overall"]) == 2
    assert capsys.readouterr().err == "deft-app: error: --criterion applies to --as preference only\n"


def test_the_criterion_on_the_command_line(tmp_path, capsys):
    """Votes on two criteria: bob's on "safety", the others' on "overall"."""
    judged_db(tmp_path / "v.db", criteria={"bob": "safety"})
    base = ["export", "--db", str(tmp_path / "v.db"), "--out", str(tmp_path / "out"), "--as", "preference"]
    assert cli.main(base) == 2
    assert capsys.readouterr().err == ("deft-app: error: the votes are on several criteria (overall, safety): "
                                       "pick one with --criterion\n")
    assert cli.main(base + ["--criterion", "style"]) == 2
    assert capsys.readouterr().err == ("deft-app: error: no votes on criterion 'style' (criteria with votes: "
                                       "overall, safety)\n")
    assert not (tmp_path / "out").exists()
    assert cli.main(base + ["--criterion", "safety"]) == 0  # bob: b on q0, a on q1, b on q2
    assert ("criterion 'safety': 3 votes on 3 items -> 3 preference rows; 0 items left out (0 tie, 0 both_bad, "
            "0 split); 5 votes on other criteria not used") in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "out" / "preference.jsonl").open()]
    assert rows == [row(0, "b", 1, criterion="safety", dialogue=DIALOGUE), row(1, "a", 1, criterion="safety"),
                    row(2, "b", 1, criterion="safety")]
    assert cli.main(base + ["--criterion", "overall"]) == 0  # ann and cat: q0 split, q1 a, q2 a, q3 tie
    assert "5 votes on 4 items -> 2 preference rows; 2 items left out (1 tie, 0 both_bad, 1 split)" in \
        capsys.readouterr().out


def test_a_failed_export_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    judged_db(tmp_path / "v.db")
    out = tmp_path / "out"
    base = ["export", "--db", str(tmp_path / "v.db"), "--out", str(out), "--as", "preference"]
    assert cli.main(base) == 0
    before = (out / "preference.jsonl").read_bytes()
    capsys.readouterr()
    # an empty database, a missing one, a criterion without votes: one line, exit 2, the last export untouched
    Store(tmp_path / "empty.db")
    for argv, message in [
            (["--db", str(tmp_path / "empty.db")], "no votes on criterion 'overall' (the database has no votes)"),
            (["--db", str(tmp_path / "none.db")], f"--db {tmp_path / 'none.db'}: no such database"),
            (["--criterion", "safety"], "no votes on criterion 'safety' (criteria with votes: overall)")]:
        assert cli.main(base + argv) == 2
        assert capsys.readouterr().err == f"deft-app: error: {message}\n"
        assert os.listdir(out) == ["preference.jsonl"] and (out / "preference.jsonl").read_bytes() == before
    # the write itself fails at the last moment: the old file stands and no temporary file is left
    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", refuse)
        assert cli.main(base) == 2
        assert cli.main(["export", "--db", str(tmp_path / "v.db"), "--out", str(tmp_path / "fresh"), "--as",
                         "preference"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"deft-app: error: --out {where}: cannot write preference.jsonl (No space left on device)"
                   for where in (out, tmp_path / "fresh")]
    assert os.listdir(out) == ["preference.jsonl"] and (out / "preference.jsonl").read_bytes() == before
    assert os.listdir(tmp_path / "fresh") == []  # a fresh folder gets no file at all
    # --out names a file
    (tmp_path / "afile").write_text("x")
    assert cli.main(["export", "--db", str(tmp_path / "v.db"), "--out", str(tmp_path / "afile"), "--as",
                     "preference"]) == 2
    assert "cannot write preference.jsonl" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "x"
