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
