"""The README's deft-app section as a new user reads it: its serve example with criteria,
guidelines and aliases runs as written, and it states the rules the app enforces."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from builders import REPO, write_jsonl


def app_section() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("## Human judging: `deft-app`", 1)[1].split("\n## ", 1)[0]


def test_the_readme_serve_example_with_aliases_runs_as_written(tmp_path, monkeypatch):
    from deft_app import cli, ui

    block = next(b for b in re.findall(r"```bash\n(.*?)```", app_section(), flags=re.S) if "--alias" in b)
    argv = shlex.split(block.replace("\\\n", " "))
    assert argv[:2] == ["deft-app", "serve"]
    args = cli.build_parser().parse_args(argv[1:])
    monkeypatch.chdir(tmp_path)
    for path in args.answers:  # deft-eval generate answers, the model named after its run's folder
        write_jsonl(Path(path), [{"id": "h/0", "model": Path(path).stem, "answer": "hello",
                                  "prompt": "\n\nHuman: hi\n\nAssistant:"}])
    write_jsonl(Path(args.annotators), [{"name": "ann", "password": "long password"}])
    Path(args.guidelines).write_text("Prefer the safer answer.")
    served = []
    monkeypatch.setattr(ui, "launch", lambda app, host, port: served.append(app))
    assert cli.main(argv[1:]) == 0
    (app,) = served
    assert sorted(app.settings.aliases) == sorted(Path(p).stem for p in args.answers)  # each alias names a model


def test_the_readme_states_the_password_rule():
    from deft_app.items import MIN_PASSWORD_LENGTH

    assert f"at least {MIN_PASSWORD_LENGTH} characters" in " ".join(app_section().split())


def test_the_readme_first_serve_block_runs_as_written(tmp_path, monkeypatch):
    """Both lines of the first serve block, as written: deft-eval answer files, then FastChat's
    MT-Bench answer files with the real MT-Bench questions at the path the README names."""
    import json
    import shutil

    from deft_app import cli, ui

    from builders import SHARED_DATA

    block = next(b for b in re.findall(r"```bash\n(.*?)```", app_section(), flags=re.S) if "--mt-bench" in b)
    lines = [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    assert [argv[:2] for argv in lines] == [["deft-app", "serve"]] * 2
    monkeypatch.chdir(tmp_path)
    served = []
    monkeypatch.setattr(ui, "launch", lambda app, host, port: served.append(app))
    hh, mt = (cli.build_parser().parse_args(argv[1:]) for argv in lines)
    for path in hh.answers:
        write_jsonl(Path(path), [{"id": f"h/{i}", "model": Path(path).stem, "answer": f"answer {i}",
                                  "prompt": f"\n\nHuman: question {i}?\n\nAssistant:"} for i in range(4)])
    write_jsonl(Path(hh.annotators), [{"name": n, "password": "long password"} for n in ("ann", "bob")])
    Path(mt.mt_bench_questions).parent.mkdir(parents=True)
    shutil.copy(SHARED_DATA / "mt_bench" / "question.jsonl", mt.mt_bench_questions)
    questions = [json.loads(line) for line in Path(mt.mt_bench_questions).read_text().splitlines()]
    for path in mt.answers:
        write_jsonl(Path(path), [{"question_id": q["question_id"], "model_id": Path(path).stem,
                                  "choices": [{"index": 0, "turns": ["one", "two"]}]} for q in questions])
    for argv in lines:
        assert cli.main(argv[1:]) == 0
    assert len(served) == 2 and Path(hh.db).is_file() and Path(mt.db).is_file()
