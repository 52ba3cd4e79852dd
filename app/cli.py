"""`deft-app serve`: the blind side-by-side judging app (criteria, guidelines, a content
warning, model aliases); `deft-app export`: every vote of a database as JSONL and CSV, or the
verdicts as a preference file for DEFT-DPO, for the organiser on the machine that holds it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_serve(args) -> int:
    from deft_app import ui
    from deft_app.items import InputError, items_from_models, read_annotators, read_models
    from deft_app.settings import JudgingSettings, aliases_by_model, read_aliases, read_criteria, read_text_file

    db = Path(args.db)
    if not db.parent.is_dir():
        raise InputError(f"--db {db}: the folder {db.parent} does not exist")
    if args.overlap < 1:
        raise InputError(f"--overlap must be at least 1, got {args.overlap}")
    if args.hold_minutes <= 0:
        raise InputError(f"--hold-minutes must be positive, got {args.hold_minutes}")
    if not 1 <= args.port <= 65535:
        raise InputError(f"--port {args.port}: a port number is between 1 and 65535")
    files = {path: "--answers" for path in args.answers}
    files.update({args.mt_bench_questions: "--mt-bench-questions", args.annotators: "--annotators"})
    for path, flag in files.items():
        file_given(flag, path)
    aliases = read_aliases(args.alias)
    try:
        models = read_models(args.answers, args.mt_bench_questions)
        items = items_from_models(models)
    except InputError as err:
        raise naming_the_flag(err, files, "--answers") from None
    model_files = {path: name for path, (name, _) in zip(args.answers, models)}
    settings = JudgingSettings(criteria=read_criteria(args.criteria),
                               guidelines=read_text_file(args.guidelines, "--guidelines"),
                               content_warning=" ".join((args.content_warning or "").split()),
                               aliases=aliases_by_model(aliases, model_files), reveal_models=args.reveal_models)
    try:
        annotators = read_annotators(args.annotators)
    except InputError as err:
        raise naming_the_flag(err, files, "--annotators") from None
    check_criteria(db, settings.criterion_names, args.criteria is None)
    store = open_store(db)
    added = store.add_items(items)
    for a in annotators:
        store.add_annotator(a["name"], a["password"], a.get("role", "annotator"))
    print(f"{len(items)} items ({added} new) for {len(annotators)} annotators, overlap {args.overlap}, criteria "
          f"{', '.join(settings.criterion_names)}; votes in {db}")
    ui.launch(ui.JudgingApp(store, args.overlap, hold=args.hold_minutes * 60, settings=settings), args.host, args.port)
    return 0


def file_given(flag: str, path: str | None) -> None:
    """A file named on the command line is there and readable as text, before any is read for
    its rows; None: not given."""
    from deft_app.items import InputError

    if path is None:
        return
    if not Path(path).exists():
        raise InputError(f"{flag} {path}: no such file")
    if not Path(path).is_file():
        raise InputError(f"{flag} {path}: not a file")
    try:
        Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise InputError(f"{flag} {path}: cannot be read ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise InputError(f"{flag} {path}: not UTF-8 text ({error})") from None


def naming_the_flag(err: Exception, files: dict[str | None, str], default: str) -> Exception:
    """A reader's error (`path: what is wrong`, or about the files together) with the flag that
    gave the path put in front: the flag of the file it begins with, else `default`."""
    from deft_app.items import InputError

    message = str(err)
    for path, flag in files.items():
        if path is not None and message.startswith(f"{Path(path)}:"):
            return InputError(f"{flag} {message}")
    return InputError(f"{default}: {message}")


def check_criteria(db: Path, criteria: list[str], default: bool) -> None:
    """Votes fix a database's criteria: served with others, every item judged on the old ones
    would count as done (its annotators told "All done") with no vote on the new ones. So other
    criteria are refused, the database left as it was; before the first vote any will do."""
    from deft_app.items import InputError
    from deft_app.store import NotOurDatabase, criteria_voted

    try:
        voted = criteria_voted(db)
    except NotOurDatabase as err:
        raise InputError(f"--db {err}") from None
    if voted and voted != set(criteria):
        given = ",".join(criteria) + (" (the default)" if default else "")
        raise InputError(f"--criteria {given}: {db} holds votes on {', '.join(sorted(voted))}; serve it with "
                         f"those criteria, or give a new --db for these")


def open_store(db):
    """The app's database at --db; anything else there is named in one line and left untouched."""
    from deft_app.items import InputError
    from deft_app.store import NotOurDatabase, Store

    try:
        return Store(db)
    except NotOurDatabase as err:
        raise InputError(f"--db {err}") from None


def cmd_export(args) -> int:
    from deft_app.items import InputError

    if not Path(args.db).is_file():
        raise InputError(f"--db {args.db}: no such database")
    if args.as_ == "votes":
        from deft_app.export import export_votes

        if args.criterion is not None:
            raise InputError("--criterion applies to --as preference only")
        votes = open_store(args.db).votes()
        jsonl, table = export_votes(votes, args.out)
        print(f"{len(votes)} votes written to {jsonl} and {table}")
        return 0
    from deft_app.preference import choose_criterion, preference_jsonl, preference_rows, summary
    from deft_plugin.utils.atomic import atomic_write_text

    store = open_store(args.db)
    votes = store.votes()
    rows, counts = preference_rows(votes, store.item, choose_criterion(votes, args.criterion))
    try:
        path = atomic_write_text(Path(args.out) / "preference.jsonl", preference_jsonl(rows))
    except OSError as error:  # --out a file, a folder not writable, a full disk: nothing is left behind
        raise InputError(f"--out {args.out}: cannot write preference.jsonl ({error.strerror or error})") from error
    print(f"{summary(counts)}; written to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from deft_app.items import MIN_PASSWORD_LENGTH

    parser = argparse.ArgumentParser(prog="deft-app", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve the judging app")
    s.add_argument("--answers", nargs="+", required=True,
                   help="two or more answer files: deft-eval generate JSONL or FastChat MT-Bench answer JSONL")
    s.add_argument("--mt-bench-questions", default=None, help="FastChat question.jsonl, for MT-Bench answer files")
    s.add_argument("--db", required=True, help="SQLite database of items and votes (created if missing)")
    s.add_argument("--annotators", required=True,
                   help=f'JSONL: {{"name", "password" ({MIN_PASSWORD_LENGTH}+ characters), '
                        '"role": "annotator" | "admin"}')
    s.add_argument("--overlap", type=int, default=1, help="annotators who judge each item")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument("--criteria", default=None,
                   help="what annotators judge: names (harmless,helpful) or a YAML file of name: question "
                        "(default: one criterion, overall)")
    s.add_argument("--guidelines", default=None, help="a Markdown file shown, collapsible, above every item")
    s.add_argument("--content-warning", default=None, help="a warning shown above every item of this data set")
    s.add_argument("--alias", action="append", default=None, metavar="MODEL=SHORT",
                   help="a short model name for the admin's tables and plots (repeatable); MODEL is the model's "
                        "name in its answers or its answer file as given to --answers")
    s.add_argument("--reveal-models", action="store_true",
                   help="after each vote, tell the annotator which models they judged (off: the study stays blind)")
    s.add_argument("--hold-minutes", type=float, default=15,
                   help="how long an item handed to an annotator stays reserved for them before it goes back")
    s.set_defaults(func=cmd_serve)
    e = sub.add_parser("export", help="write every vote as votes.jsonl and votes.csv, or the verdicts as "
                       "preference.jsonl for DEFT-DPO training (--as preference)")
    e.add_argument("--db", required=True, help="the app's SQLite database")
    e.add_argument("--out", required=True, help="folder for votes.jsonl and votes.csv, or preference.jsonl")
    e.add_argument("--as", dest="as_", choices=("votes", "preference"), default="votes",
                   help="votes: every vote (default); preference: per item the majority verdict as a "
                   "prompt/chosen/rejected row of chat messages (datasets: type: deft.preference, with a "
                   "tokenizer that has a chat template); tie, both-bad and split items are left out and counted")
    e.add_argument("--criterion", default=None,
                   help="with --as preference: the criterion whose votes count (default: the only one the "
                   "votes have, else 'overall')")
    e.set_defaults(func=cmd_export)
    return parser


def main(argv=None) -> int:
    from deft_app.items import InputError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as error:  # bad input is the user's to fix: one line, no traceback
        print(f"deft-app: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
