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
