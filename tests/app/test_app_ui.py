"""The judging app's handlers and its login, without a browser: blind sides fixed per item and
annotator, votes stored in model terms, resume, admin-only results and export; the served app
lets only listed annotators in."""

from __future__ import annotations

import json
import socket
from types import SimpleNamespace

import gradio as gr
import httpx
import pytest

from deft_app.store import Store
from deft_app.ui import JudgingApp, launch, verdict_for

HOSTILE = '<script>document.title="pwned"</script><img src=x onerror=alert(1)>'


@pytest.fixture()
def app(tmp_path):
    store = Store(tmp_path / "votes.db")
    store.add_items([{"id": f"q{i}", "dialogue": [{"role": "user", "content": f"question {i}"}], "category": "writing",
                      "model_a": "dpo", "answer_a": f"dpo answer {i}", "model_b": "deft",
                      "answer_b": HOSTILE if i == 0 else f"deft answer {i}"} for i in range(3)])
    store.add_annotator("ann", "annotator-pw")
    store.add_annotator("ann2", "annotator-pw")
    store.add_annotator("boss", "admin-pw-123", "admin")
    return JudgingApp(store, overlap=2, export_dir=tmp_path / "exports")


def req(user):
    return SimpleNamespace(username=user)


def test_vote_flow_blind_sides_and_resume(app):
    state, progress, dialogue, left, right, comment, results_tab, who = app.on_load(req("ann"))
    assert who == "Logged in as **ann**" and "<progress value='0' max='3'" in progress
    assert state["id"] == "q0" and "0 / 3" in progress and dialogue == "User: question 0"
    assert {left, right} == {"dpo answer 0", HOSTILE}
    assert results_tab["visible"] is False  # annotators do not get the results tab
    # the layout is the same after a reload, and the click on the side with deft's answer stores "b"
    assert app.on_load(req("ann"))[0] == state
    deft_side = "left" if left == HOSTILE else "right"
    assert verdict_for(deft_side, state) == "b"
    nxt = app.vote(deft_side, "deft was better", state, req("ann"))
    assert nxt[0]["id"] == "q1" and "1 / 3" in nxt[1]
    again = app.vote(deft_side, "double click", state, req("ann"))  # the same item again: not counted twice
    assert again[0]["id"] == "q1"
    votes = app.store.votes()
    assert [(v["item_id"], v["verdict"], v["comment"]) for v in votes] == [("q0", "b", "deft was better")]
    assert votes[0]["left_model"] == state["left"]
    # a second annotator gets the overlapping item first
    assert app.on_load(req("ann2"))[0]["id"] == "q0"


def test_results_and_export_are_for_admins_only(app):
    state = app.on_load(req("ann"))[0]
    app.vote("tie", "", state, req("ann"))
    with pytest.raises(gr.Error):
        app.results(req("ann"))
    with pytest.raises(gr.Error):
        app.export(req("ann"))
    assert app.on_load(req("boss"))[-2]["visible"] is True
    table, plot = app.results(req("boss"))
    assert "| dpo | deft | 1 | 0 | 1 | 0 | 0.500 |" in table
    assert open(plot, "rb").read(4) == b"\x89PNG"
    jsonl, csv_file = app.export(req("boss"))
    assert [json.loads(line)["verdict"] for line in open(jsonl)] == ["tie"] and csv_file.endswith("votes.csv")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_only_listed_annotators_get_in(app, capsys):
    port = free_port()
    demo = launch(app, port=port, block=False)
    assert f"deft-app: serving at http://127.0.0.1:{port}/" in capsys.readouterr().out
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=30) as client:
            assert client.post("/login", data={"username": "ann", "password": "wrong"}).status_code == 400
            assert client.post("/login", data={"username": "mallory", "password": "annotator-pw"}).status_code == 400
            ok = client.post("/login", data={"username": "ann", "password": "annotator-pw"})
            assert ok.status_code == 200 and client.cookies
            config = client.get("/config")
            assert config.status_code == 200
            # a logout button for annotators, no link to the API page in the footer
            assert any(c.get("props", {}).get("link") == "/logout" for c in config.json()["components"])
            assert "api" not in config.json().get("footer_links", ["api"])
        with httpx.Client(base_url=base, timeout=30) as anonymous:
            assert anonymous.get("/config").status_code in (401, 403)
    finally:
        demo.close()


def test_serve_checks_its_paths_then_loads_items_and_annotators(tmp_path, monkeypatch):
    from deft_app import cli, ui
    from deft_app.items import InputError

    answers = []
    for model in ("dpo", "deft"):
        path = tmp_path / f"{model}.jsonl"
        path.write_text("".join(json.dumps({"id": f"h/{i}", "model": model, "answer": f"{model} {i}",
                                            "prompt": "\n\nHuman: hi\n\nAssistant:"}) + "\n" for i in range(4)))
        answers.append(str(path))
    annotators = tmp_path / "annotators.jsonl"
    annotators.write_text(json.dumps({"name": "ann", "password": "long password"}) + "\n")
    base = ["serve", "--answers", *answers, "--annotators", str(annotators)]
    with pytest.raises(InputError, match="does not exist"):
        cli.main(base + ["--db", str(tmp_path / "missing" / "v.db")])
    with pytest.raises(InputError, match="no such file"):
        cli.main(["serve", "--answers", answers[0], str(tmp_path / "nope.jsonl"), "--annotators", str(annotators),
                  "--db", str(tmp_path / "v.db")])
    served = []
    monkeypatch.setattr(ui, "launch", lambda app, host, port: served.append((app, host, port)))
    assert cli.main(base + ["--db", str(tmp_path / "v.db"), "--overlap", "2"]) == 0
    (app, host, port), = served
    assert host == "127.0.0.1" and port == 7860 and app.overlap == 2
    assert app.store.authenticate("ann", "long password") == "annotator"
    assert app.store.progress("ann", 2) == (0, 4)


def test_names_from_the_data_are_escaped_in_the_admin_tables_and_plots(tmp_path):
    """A model or category name holding HTML, table syntax or dollar signs stays literal text."""
    from deft_app.results import all_results, plot_results
    from deft_app.ui import results_markdown

    evil_model, evil_category = "<img src=x onerror=alert(1)>|x", "**bold** $\\alpha$"
    store = Store(tmp_path / "v.db")
    store.add_items([{"id": f"q{i}", "dialogue": [{"role": "user", "content": "q"}], "category": evil_category,
                      "model_a": evil_model, "answer_a": "a", "model_b": "deft", "answer_b": "b"} for i in range(2)])
    store.add_annotator("ann", "annotator-pw")
    app = JudgingApp(store, overlap=1, export_dir=tmp_path / "exports")
    for _ in range(2):
        state = app.on_load(req("ann"))[0]
        app.vote("left", "", state, req("ann"))
    text = results_markdown(all_results(store.votes()))
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;\\|x" in text
    assert "\\*\\*bold\\*\\* \\$\\\\alpha\\$" in text
    assert plot_results(all_results(store.votes()), tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_invisible_controls_in_answers_are_shown(tmp_path):
    from deft_app.text import visible_controls

    assert visible_controls("abc\u202edef\u200b\n\tx") == "abc<U+202E>def<U+200B>\n\tx"
    store = Store(tmp_path / "v.db")
    store.add_items([{"id": "q0", "dialogue": [{"role": "user", "content": "hi\u2066"}], "category": "c",
                      "model_a": "a", "answer_a": "safe \u202eeulav", "model_b": "b", "answer_b": "plain"}])
    store.add_annotator("ann", "annotator-pw")
    _, _, dialogue, left, right, _ = JudgingApp(store, overlap=1, export_dir=tmp_path / "e")._show("ann")
    assert "<U+202E>" in left + right and "\u202e" not in left + right and dialogue.endswith("hi<U+2066>")
