"""The organiser's settings: criteria from names or a YAML file, aliases, guidelines; bad values
refused with the option, file or entry named; and `deft-app serve` handing them to the app."""

from __future__ import annotations

import pytest

from deft_app.items import InputError
from deft_app.settings import QUESTIONS, Criterion, read_aliases, read_criteria, read_text_file

from builders import judging_files


def test_criteria_from_names_take_the_papers_questions():
    assert read_criteria(None) == [Criterion("overall", QUESTIONS["overall"])]
    harmless, helpful, style = read_criteria("harmless, helpful,style")
    assert (harmless.question, helpful.question) == (QUESTIONS["harmless"], QUESTIONS["helpful"])
    assert style == Criterion("style", "Which answer is better (style)?")


def test_criteria_from_a_yaml_mapping_or_list(tmp_path):
    mapping = tmp_path / "criteria.yaml"
    mapping.write_text("harmless: Which answer is safer?\nhelpful:\n")
    assert read_criteria(str(mapping)) == [Criterion("harmless", "Which answer is safer?"),
                                           Criterion("helpful", QUESTIONS["helpful"])]
    listed = tmp_path / "criteria.yml"
    listed.write_text("- name: factual\n  question: Which answer has fewer errors?\n")
    assert read_criteria(str(listed)) == [Criterion("factual", "Which answer has fewer errors?")]


@pytest.mark.parametrize("text, message", [
    ("Harmless: x", "criterion name 'Harmless'"),
    ("harmless: ''", "empty or non-text question"),
    ("[1, 2]", "expected a mapping"),
    ("a: x\nb: x\nc: x\nd: x\ne: x", "between 1 and 4 criteria, got 5"),
    ("a: 1", "criterion 'a' has an empty or non-text question"),
    ("a: [unclosed", "not valid YAML"),
])
def test_bad_criteria_files_name_the_file_and_entry(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as error:
        read_criteria(str(path))
    assert str(path) in str(error.value)


def test_bad_criteria_names_and_missing_files():
    with pytest.raises(InputError, match="named twice"):
        read_criteria("helpful,helpful")
    with pytest.raises(InputError, match="criterion name 'two words'"):
        read_criteria("two words")
    with pytest.raises(InputError, match="no such file"):
        read_criteria("missing.yaml")


def test_aliases_and_text_files(tmp_path):
    assert read_aliases(["runs/a=A", " runs/b = B "]) == {"runs/a": "A", "runs/b": "B"}
    for bad, message in [(["runs/a"], "MODEL=SHORT"), (["runs/a=A", "runs/a=B"], "given twice"),
                         (["x=S", "y=S"], "share a short name")]:
        with pytest.raises(InputError, match=message):
            read_aliases(bad)
    guide = tmp_path / "guide.md"
    guide.write_text("# Judge *carefully*\n")
    assert read_text_file(str(guide), "--guidelines") == "# Judge *carefully*\n"
    assert read_text_file(None, "--guidelines") == ""
    (tmp_path / "latin1.md").write_bytes(b"caf\xe9")
    with pytest.raises(InputError, match="--guidelines .*not UTF-8"):
        read_text_file(str(tmp_path / "latin1.md"), "--guidelines")


def test_serve_hands_the_settings_to_the_app(tmp_path, monkeypatch, capsys):
    from deft_app import cli, ui

    answers, annotators = judging_files(tmp_path, 2)
    guide = tmp_path / "guide.md"
    guide.write_text("Prefer the *safer* answer.")
    served = []
    monkeypatch.setattr(ui, "launch", lambda app, host, port: served.append(app))
    base = ["serve", "--answers", *answers, "--annotators", annotators, "--db", str(tmp_path / "v.db")]
    assert cli.main(base + ["--criteria", "harmless,helpful", "--guidelines", str(guide), "--content-warning",
                            "Offensive  text\nahead", "--alias", "dpo=D", "--reveal-models"]) == 0
    (app,) = served
    assert app.criteria == ["harmless", "helpful"] and app.settings.guidelines == "Prefer the *safer* answer."
    assert app.settings.content_warning == "Offensive text ahead" and app.settings.aliases == {"dpo": "D"}
    assert app.settings.reveal_models is True and "criteria harmless, helpful" in capsys.readouterr().out
    assert cli.main(base + ["--criteria", "Bad"]) == 2
    assert "--criteria: criterion name 'Bad'" in capsys.readouterr().err


def serve_args(tmp_path, *extra) -> list[str]:
    """`deft-app serve` over judging_files' two models, dpo (dpo.jsonl) and deft (deft.jsonl)."""
    answers, annotators = judging_files(tmp_path, 3)
    return ["serve", "--answers", *answers, "--annotators", annotators, "--db", str(tmp_path / "v.db"), *extra]


def test_an_alias_names_a_model_by_its_answer_file_or_its_name(tmp_path, monkeypatch):
    from deft_app import cli, ui

    served = []
    monkeypatch.setattr(ui, "launch", lambda app, host, port: served.append(app))
    monkeypatch.chdir(tmp_path)
    base = serve_args(tmp_path)
    assert cli.main(base + ["--alias", f"{tmp_path / 'dpo.jsonl'}=DPO 100%", "--alias", "deft=DEFT 5%"]) == 0
    # the same answer files written as relative paths
    assert cli.main(base + ["--alias", "dpo.jsonl=DPO 100%", "--alias", "./deft.jsonl=DEFT 5%"]) == 0
    assert [app.settings.aliases for app in served] == [{"dpo": "DPO 100%", "deft": "DEFT 5%"}] * 2


def test_an_alias_that_names_no_model_is_refused_before_serving(tmp_path, monkeypatch, capsys):
    from deft_app import cli, ui

    monkeypatch.setattr(ui, "launch", lambda *args: pytest.fail("served with an alias that names no model"))
    base = serve_args(tmp_path)
    models = f"the models: dpo ({tmp_path / 'dpo.jsonl'}), deft ({tmp_path / 'deft.jsonl'})"
    for aliases, words in [(["runs/dpo-full=DPO 100%"], f"--alias 'runs/dpo-full': no answer file or model of "
                                                        f"that name; {models}"),
                           (["dpo=D", f"{tmp_path / 'dpo.jsonl'}=E"], "--alias: model 'dpo' given twice")]:
        assert cli.main(base + [arg for alias in aliases for arg in ("--alias", alias)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "v.db").exists()  # refused before the database is opened


def test_reopening_a_database_with_other_criteria_is_refused_and_leaves_it_as_it_was(tmp_path, monkeypatch,
                                                                                      capsys):
    """Votes fix a database's criteria: served with others, every item judged on the old ones
    would count as done with no vote on the new ones."""
    from deft_app import cli, ui

    served = []
    monkeypatch.setattr(ui, "launch", lambda app, host, port: served.append(app))
    base = serve_args(tmp_path)
    assert cli.main(base) == 0  # the default criterion, overall
    store = served[0].store
    store.record_vote(store.next_item("ann", 1)["id"], "ann", "a", "dpo")
    db = tmp_path / "v.db"
    before = {p.name: p.read_bytes() for p in (db, tmp_path / "v.db-wal")}
    assert cli.main(base + ["--criteria", "harmless,helpful"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("deft-app: error: --criteria harmless,helpful: ") and \
        "votes on overall" in err, err
    assert {p.name: p.read_bytes() for p in (db, tmp_path / "v.db-wal")} == before  # byte for byte
    assert len(served) == 1 and len(store.votes()) == 1
    assert cli.main(base) == 0  # the same criteria: served again


def test_criteria_are_free_until_the_first_vote_and_their_order_is_free(tmp_path, monkeypatch, capsys):
    from deft_app import cli, ui

    served = []
    monkeypatch.setattr(ui, "launch", lambda app, host, port: served.append(app))
    base = serve_args(tmp_path)
    assert cli.main(base) == 0
    assert cli.main(base + ["--criteria", "harmless,helpful"]) == 0  # no vote yet: nothing judged on overall
    store = served[-1].store
    store.record_verdicts(store.next_item("ann", 1)["id"], "ann", {"harmless": "a", "helpful": "b"}, "dpo")
    assert cli.main(base + ["--criteria", "helpful,harmless"]) == 0
    assert cli.main(base) == 2  # the default, overall, is another criterion
    assert "--criteria overall (the default): " in capsys.readouterr().err
