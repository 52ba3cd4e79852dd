"""The judging app's handlers and its login, without a browser: blind sides fixed per item and
annotator, votes stored in model terms, resume, admin-only results and export; several
criteria, undo, skip, flag, the raw-text toggle, the reveal of the models, annotators'
progress; the served app lets only listed annotators in."""

from __future__ import annotations

import base64
import io
import json
import re
import socket
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import pytest
from fastapi import HTTPException
from PIL import Image

from deft_app.settings import Criterion, JudgingSettings
from deft_app.store import Store
from deft_app.ui import NOTHING_TO_UNDO, UNDONE_NOTE, JudgingApp, launch, verdict_for

from builders import judging_files

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
    return JudgingApp(store, overlap=2)


def req(user, cookies=None):
    login = {"access-token-x": f"token of {user}"}  # what Gradio's login cookie carries
    return SimpleNamespace(username=user, cookies=login if cookies is None else cookies)


def test_vote_flow_blind_sides_and_resume(app):
    state, progress, dialogue, left, right, comment, raw, results_tab, who = app.on_load(req("ann"))
    assert who == "Logged in as **ann**" and "<progress value='0' max='3'" in progress
    assert state["id"] == "q0" and "0 / 3" in progress and dialogue == "User: question 0"
    assert set(state["texts"]) == {"dpo answer 0", HOSTILE} and raw is False
    # rendered as Markdown, the hostile answer is text: its tags escaped, none of them live
    hostile_view = left if state["texts"][0] == HOSTILE else right
    assert "&lt;script&gt;" in hostile_view and "<script" not in hostile_view and "<img" not in hostile_view
    assert "<p>dpo answer 0</p>" in left + right
    assert results_tab["visible"] is False  # annotators do not get the results tab
    # the layout is the same after a reload, and the click on the side with deft's answer stores "b"
    assert app.on_load(req("ann"))[0] == state
    deft_side = "left" if state["texts"][0] == HOSTILE else "right"
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
    table, plot, annotators, flags = app.results(req("boss"))
    assert "| dpo | deft | 1 | 0 | 1 | 0 | 0.500 |" in table
    assert "| ann | 1 | 0 | 0 |" in annotators and flags == "No flagged items."
    # the plot travels inline in the admin's response: a PNG, never a file Gradio would serve
    prefix = '<img alt="Win rates" src="data:image/png;base64,'
    assert plot.startswith(prefix)
    png = base64.b64decode(plot[len(prefix):plot.index('"', len(prefix))])
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size[0] > 300
    links = re.findall(r"\((deft-export/[^/]+/(votes\.\w+))\)", app.export(req("boss")))
    assert [name for _, name in links] == ["votes.jsonl", "votes.csv"]
    token = links[0][0].split("/")[1]
    download = app.download(token, "votes.jsonl", req("boss"))
    assert [json.loads(line)["verdict"] for line in download.body.decode().splitlines()] == ["tie"]
    assert download.headers["content-disposition"] == 'attachment; filename="votes.jsonl"'
    # the link serves only the admin's own login, and only names it knows
    for token_, name, request in [(token, "votes.jsonl", req("ann")), (token, "votes.jsonl", req("boss", {})),
                                  (token, "../votes.db", req("boss")), ("guess", "votes.jsonl", req("boss"))]:
        with pytest.raises(HTTPException) as refused:
            app.download(token_, name, request)
        assert refused.value.status_code == 404
    # a demoted admin's live link stops working
    app.store.add_annotator("boss", "admin-pw-123", "annotator")
    with pytest.raises(HTTPException):
        app.download(token, "votes.csv", req("boss"))


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
            # the download route is served, to the login the link was granted to
            admin = httpx.Client(base_url=base, timeout=30)
            assert admin.post("/login", data={"username": "boss", "password": "admin-pw-123"}).status_code == 200
            token = app.grants.grant("boss", dict(admin.cookies))
            fetched = admin.get(f"/deft-export/{token}/votes.csv")
            assert fetched.status_code == 200 and fetched.text.startswith("item_id,annotator,criterion,verdict")
            assert client.get(f"/deft-export/{token}/votes.csv").status_code == 404  # an annotator's login
            admin.close()
        with httpx.Client(base_url=base, timeout=30) as anonymous:
            assert anonymous.get("/config").status_code in (401, 403)
            assert anonymous.get(f"/deft-export/{token}/votes.csv").status_code == 404
    finally:
        demo.close()


def test_serve_checks_its_paths_then_loads_items_and_annotators(tmp_path, monkeypatch, capsys):
    from deft_app import cli, ui

    answers, annotators = judging_files(tmp_path, 4)
    base = ["serve", "--answers", *answers, "--annotators", annotators]
    assert cli.main(base + ["--db", str(tmp_path / "missing" / "v.db")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["serve", "--answers", answers[0], str(tmp_path / "nope.jsonl"), "--annotators", annotators,
                     "--db", str(tmp_path / "v.db")]) == 2
    assert "no such file" in capsys.readouterr().err
    served = []
    monkeypatch.setattr(ui, "launch", lambda app, host, port: served.append((app, host, port)))
    assert cli.main(base + ["--db", str(tmp_path / "v.db"), "--overlap", "2"]) == 0
    (app, host, port), = served
    assert host == "127.0.0.1" and port == 7860 and app.overlap == 2 and app.hold == 15 * 60
    assert app.store.authenticate("ann", "long password") == "annotator"
    assert app.store.progress("ann", 2) == (0, 4)
    # the organiser's export on the server's machine
    app.store.record_vote(app.store.next_item("ann", 2)["id"], "ann", "tie", "dpo")
    assert cli.main(["export", "--db", str(tmp_path / "v.db"), "--out", str(tmp_path / "out")]) == 0
    assert "1 votes written" in capsys.readouterr().out
    assert [json.loads(line)["verdict"] for line in (tmp_path / "out" / "votes.jsonl").open()] == ["tie"]
    assert cli.main(["export", "--db", str(tmp_path / "none.db"), "--out", str(tmp_path / "out")]) == 2



def test_serve_names_the_flag_of_a_bad_port_or_file_before_serving(tmp_path, monkeypatch, capsys):
    """A port out of range, or a missing, unreadable or bad file: one line naming the flag and its
    value, exit code 2, before the database is opened or the app served."""
    from deft_app import cli, ui

    monkeypatch.setattr(ui, "launch", lambda *args: pytest.fail("served after a mistake on the command line"))
    answers, annotators = judging_files(tmp_path, 2)
    db = str(tmp_path / "v.db")
    base = ["serve", "--answers", *answers, "--annotators", annotators, "--db", db]
    missing = str(tmp_path / "missing.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"name": "caf\xe9"}\n')
    (tmp_path / "no-name.jsonl").write_text('{"password": "long password"}\n')
    (tmp_path / "guide.md").mkdir()
    for argv, words in [
        (base + ["--port", "99999"], "--port 99999: a port number is between 1 and 65535"),
        (base + ["--port", "-1"], "--port -1: "),
        (base + ["--port", "0"], "--port 0: "),
        (["serve", "--answers", answers[0], missing, "--annotators", annotators, "--db", db],
         f"--answers {missing}: no such file"),
        (["serve", "--answers", answers[0], str(tmp_path), "--annotators", annotators, "--db", db],
         f"--answers {tmp_path}: not a file"),
        (base[:-4] + ["--annotators", missing, "--db", db], f"--annotators {missing}: no such file"),
        (base[:-4] + ["--annotators", str(tmp_path / "latin1.jsonl"), "--db", db],
         f"--annotators {tmp_path / 'latin1.jsonl'}: not UTF-8 text"),
        (base[:-4] + ["--annotators", str(tmp_path / "no-name.jsonl"), "--db", db],
         f"--annotators {tmp_path / 'no-name.jsonl'}: line 1: missing 'name'"),
        (base + ["--mt-bench-questions", missing], f"--mt-bench-questions {missing}: no such file"),
        (base + ["--guidelines", missing], f"--guidelines {missing}: no such file"),
        (base + ["--guidelines", str(tmp_path / "guide.md")], f"--guidelines {tmp_path / 'guide.md'}: "),
        (["serve", "--answers", answers[0], "--annotators", annotators, "--db", db],
         "--answers: give at least two answer files"),
    ]:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "v.db").exists()  # refused before the database is opened


def other_databases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Files at --db that are not this app's database, with the words their one line must hold."""
    import sqlite3

    made = {"text": ("notes.txt", b"just some notes\n"), "random": ("random.bin", bytes(range(256)) * 8),
            "jsonl": ("answers.jsonl", b'{"id": 1}\n')}
    out = {name: (tmp_path / file, "is not an SQLite database") for name, (file, _) in made.items()}
    for file, data in made.values():
        (tmp_path / file).write_bytes(data)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE votes (x INTEGER)")  # a `votes` table of another application
    out["other-votes"] = (other, "another application's SQLite database (tables: votes)")
    bare = tmp_path / "bare.db"
    with sqlite3.connect(bare) as conn:
        conn.execute("CREATE TABLE recipes (name TEXT)")
    out["other-tables"] = (bare, "another application's SQLite database (tables: recipes)")
    ours = tmp_path / "ours.db"
    Store(ours).add_annotator("ann", "annotator-pw")
    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(ours.read_bytes()[:1500])
    out["truncated"] = (truncated, "is not a readable SQLite database")
    (tmp_path / "folder.db").mkdir()
    out["directory"] = (tmp_path / "folder.db", "is a directory, not a database")
    return out


def test_a_db_that_is_not_the_apps_is_named_in_one_line_and_left_untouched(tmp_path, capsys, monkeypatch):
    from deft_app import cli, ui

    monkeypatch.setattr(ui, "launch", lambda *args: pytest.fail("served a database that is not the app's"))
    answers, annotators = judging_files(tmp_path, 2)
    for name, (path, words) in other_databases(tmp_path).items():
        before = path.read_bytes() if path.is_file() else None
        for argv in (["serve", "--answers", *answers, "--annotators", annotators, "--db", str(path)],
                     ["export", "--db", str(path), "--out", str(tmp_path / "out")]):
            if argv[0] == "export" and not path.is_file():
                continue  # export refuses a missing or non-file --db before reading it
            assert cli.main(argv) == 2, name
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"error: --db {path} " in err and words in err, (name, err)
        assert (path.read_bytes() if path.is_file() else None) == before, name  # byte for byte
        assert not [p for p in path.parent.glob(path.name + "-*")], name  # no -wal or -shm made beside it
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    Store(empty).add_annotator("ann", "annotator-pw")  # an empty file becomes a new database, as a new path does
    assert Store(empty).authenticate("ann", "annotator-pw") == "annotator"


def test_names_from_the_data_are_escaped_in_the_admin_tables_and_plots(tmp_path):
    """A model or category name holding HTML, table syntax or dollar signs stays literal text."""
    from deft_app.results import plot_results, results_by_criterion
    from deft_app.ui import results_markdown

    evil_model, evil_category = "<img src=x onerror=alert(1)>|x", "**bold** $\\alpha$"
    store = Store(tmp_path / "v.db")
    store.add_items([{"id": f"q{i}", "dialogue": [{"role": "user", "content": "q"}], "category": evil_category,
                      "model_a": evil_model, "answer_a": "a", "model_b": "deft", "answer_b": "b"} for i in range(2)])
    store.add_annotator("ann", "annotator-pw")
    app = JudgingApp(store, overlap=1)
    for _ in range(2):
        state = app.on_load(req("ann"))[0]
        app.vote("left", "", state, req("ann"))
    text = results_markdown(results_by_criterion(store.votes()))
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;\\|x" in text
    assert "\\*\\*bold\\*\\* \\$\\\\alpha\\$" in text
    assert plot_results(results_by_criterion(store.votes()), tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_results_with_only_ties_say_so_without_nan(tmp_path):
    from deft_app.results import results_by_criterion
    from deft_app.ui import results_markdown

    store = Store(tmp_path / "v.db")
    store.add_items([{"id": f"q{i}", "dialogue": [{"role": "user", "content": "q"}], "model_a": "dpo",
                      "answer_a": "a", "model_b": "deft", "answer_b": "b"} for i in range(2)])
    store.add_annotator("ann", "annotator-pw")
    app = JudgingApp(store, overlap=1)
    for side in ("tie", "both_bad"):
        state = app.on_load(req("ann"))[0]
        app.vote(side, "", state, req("ann"))
    text = results_markdown(results_by_criterion(store.votes()))
    assert "**2 votes**" in text and "nan" not in text.lower()
    assert "Position bias: no decided vote yet (every vote a tie or both bad)." in text


def test_invisible_controls_in_answers_are_shown(tmp_path):
    from deft_app.text import visible_controls

    assert visible_controls("abc\u202edef\u200b\n\tx") == "abc<U+202E>def<U+200B>\n\tx"
    store = Store(tmp_path / "v.db")
    store.add_items([{"id": "q0", "dialogue": [{"role": "user", "content": "hi\u2066"}], "category": "c",
                      "model_a": "a", "answer_a": "safe \u202eeulav", "model_b": "b", "answer_b": "plain"}])
    store.add_annotator("ann", "annotator-pw")
    _, _, dialogue, left, right, *_ = JudgingApp(store, overlap=1)._show("ann")
    assert "&lt;U+202E&gt;" in left + right and "\u202e" not in left + right and dialogue.endswith("hi<U+2066>")


def test_a_late_vote_on_an_item_others_completed_is_not_counted_and_said(tmp_path):
    store = Store(tmp_path / "votes.db")
    store.add_items([{"id": f"q{i}", "dialogue": [{"role": "user", "content": f"question {i}"}], "category": "c",
                      "model_a": "dpo", "answer_a": "x", "model_b": "deft", "answer_b": "y"} for i in range(2)])
    for name in ("ann", "ann2"):
        store.add_annotator(name, "annotator-pw")
    app = JudgingApp(store, overlap=1, hold=0)  # every reservation lapses at once: ann walked away
    slow = app.on_load(req("ann"))[0]
    fast = app.on_load(req("ann2"))[0]
    assert slow["id"] == fast["id"] == "q0"
    app.vote("left", "", fast, req("ann2"))
    state, progress = app.vote("right", "", slow, req("ann"))[:2]
    assert "completed by other annotators" in progress and state["id"] == "q1"
    assert [(v["item_id"], v["annotator"]) for v in store.votes()] == [("q0", "ann2")]


def two_criteria_app(tmp_path, **settings):
    store = Store(tmp_path / "votes.db")
    store.add_items([{"id": f"q{i}", "dialogue": [{"role": "user", "content": f"question {i}"}], "category": "c",
                      "model_a": "runs/dpo-full", "answer_a": f"**bold** answer {i}", "model_b": "runs/deft-5pct",
                      "answer_b": f"plain answer {i}"} for i in range(3)])
    for name in ("ann", "ann2"):
        store.add_annotator(name, "annotator-pw")
    store.add_annotator("boss", "admin-pw-123", "admin")
    criteria = [Criterion("harmless", "More harmless?"), Criterion("helpful", "More helpful?")]
    return JudgingApp(store, overlap=1, settings=JudgingSettings(criteria=criteria, **settings))


def test_several_criteria_are_answered_together_and_counted_apart(tmp_path):
    app = two_criteria_app(tmp_path, aliases={"runs/dpo-full": "DPO", "runs/deft-5pct": "DEFT"})
    shown = app.on_load(req("ann"))
    state = shown[0]
    assert len(shown) == 7 + 2 + 2 and shown[7:9] == (None, None)  # one cleared choice per criterion
    # an unanswered criterion: nothing stored, the item stays, a note says why
    kept = app.submit("", state, req("ann"), "left", None)
    assert "Answer every question" in kept[1] and kept[0] == gr.skip()  # the item and its choices stay
    assert app.store.votes() == []
    nxt = app.submit("both fine", state, req("ann"), "left", "tie")
    assert nxt[0]["id"] == "q1" and "1 / 3" in nxt[1]
    left_verdict = verdict_for("left", state)
    assert sorted((v["criterion"], v["verdict"], v["comment"]) for v in app.store.votes()) == [
        ("harmless", left_verdict, "both fine"), ("helpful", "tie", "both fine")]
    table = app.results(req("boss"))[0]
    assert "### harmless" in table and "### helpful" in table
    assert "| DPO | DEFT | 1 |" in table and "runs/" not in table  # the organiser's aliases in the tables


def test_undo_takes_back_the_last_vote_once(tmp_path):
    app = two_criteria_app(tmp_path)
    first = app.on_load(req("ann"))[0]
    assert app.undo(first, req("ann"))[1].endswith(NOTHING_TO_UNDO)  # no vote yet
    second = app.submit("", first, req("ann"), "left", "right")
    assert second[0]["undo"] is True and second[0]["id"] == "q1"
    back = app.undo(second[0], req("ann"))
    assert back[0]["id"] == first["id"] and UNDONE_NOTE in back[1] and app.store.votes() == []
    assert back[0]["undo"] is False  # only the last vote, once
    assert app.undo(back[0], req("ann"))[1].endswith(NOTHING_TO_UNDO)
    again = app.submit("", back[0], req("ann"), "tie", "tie")
    assert again[0]["id"] == "q1"
    assert sorted(v["verdict"] for v in app.store.votes()) == ["tie", "tie"]  # the latest vote is the one kept
    assert [(a["old_verdict"] is None, a["new_verdict"] is None) for a in app.store.audit()] == [
        (True, False), (True, False), (False, True), (False, True), (True, False), (True, False)]


def test_skip_and_flag_hand_the_item_on_and_the_admin_sees_them(tmp_path):
    app = two_criteria_app(tmp_path)
    first = app.on_load(req("ann"))[0]
    after_skip = app.skip(first, req("ann"))
    assert after_skip[0]["id"] == "q1" and "Skipped" in after_skip[1]
    assert app.on_load(req("ann2"))[0]["id"] == first["id"]  # someone else gets it
    unchanged = app.flag(None, "", after_skip[0], req("ann"))
    assert "Choose a reason" in unchanged[1] and app.store.flags() == []
    flagged = app.flag("Identical answers", "<b>same</b> text", after_skip[0], req("ann"))
    assert flagged[0]["id"] == "q2" and "Flagged (Identical answers)" in flagged[1]
    _, _, annotators, flags = app.results(req("boss"))
    assert "| ann | 0 | 1 | 1 |" in annotators
    assert "| q1 | ann | Identical answers | &lt;b&gt;same&lt;/b&gt; text |" in flags
    assert app.store.votes() == []  # neither is a vote


def test_raw_toggle_and_the_reveal_after_a_vote(tmp_path):
    app = two_criteria_app(tmp_path, reveal_models=True, aliases={"runs/dpo-full": "<i>DPO</i>"})
    state = app.on_load(req("ann"))[0]
    rendered = app.show_raw(False, state)
    raw = app.show_raw(True, state)
    bold_side = 0 if state["texts"][0].startswith("**") else 1
    assert "<strong>bold</strong>" in rendered[bold_side]
    assert "<pre class=\"raw-answer\">**bold** answer 0</pre>" in raw[bold_side]
    note = app.submit("", state, req("ann"), "left", "left")[1]
    names = {"left": state["left"], "right": state["right"]}
    shown = {side: "&lt;i&gt;DPO&lt;/i&gt;" if names[side] == "runs/dpo-full" else "runs/deft-5pct"
             for side in names}
    assert f"A was <b>{shown['left']}</b>, B was <b>{shown['right']}</b>" in note
    (tmp_path / "blind").mkdir()
    blind = two_criteria_app(tmp_path / "blind")  # off by default
    s2 = blind.on_load(req("ann"))[0]
    assert "A was" not in blind.submit("", s2, req("ann"), "left", "left")[1]

