"""The study's answers as a human evaluation: for each pair of arms the spec names, the greedy
answers of one seed both arms ran, written as two `deft-app serve` answer files (the judges see
neither the arm nor the references), and the votes exported back into the folder
(`deft-app export --out` it) read into the report as win rates per criterion."""

from __future__ import annotations

import json
from pathlib import Path

from deft_plugin.utils.atomic import atomic_write_text
from deft_study.spec import JudgingPair, StudySpec
from deft_study.training import run_dir

JUDGING_DIR = "judging"
VOTES_FILE = "votes.jsonl"  # what `deft-app export --db ... --out <set folder>` writes
SHOWN = ("id", "subset", "prompt", "answer")  # the references (chosen, rejected) stay out of the judges' view


def set_folder(out: Path, pair: JudgingPair) -> Path:
    return out / JUDGING_DIR / f"{pair.a}--{pair.b}"


def _answers(path: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["id"]: r for r in rows}


def shared_seed(spec: StudySpec, out: Path, pair: JudgingPair) -> int | None:
    """The first seed of arm a that arm b also ran, among those whose answers are on disk."""
    arm_a, arm_b = spec.arm(pair.a), spec.arm(pair.b)
    for seed in arm_a.seeds:
        if seed in arm_b.seeds and all((run_dir(out, arm, seed) / "generations.jsonl").is_file()
                                       for arm in (arm_a, arm_b)):
            return seed
    return None


def write_judging_set(spec: StudySpec, out: Path, pair: JudgingPair) -> dict:
    """The set's two answer files (the prompts both arms answered, in one order; the model is the
    arm) and how to serve it, the paths relative to the study folder; written again only when
    missing, so that votes already given keep their items."""
    folder = set_folder(out, pair)
    seed = shared_seed(spec, out, pair)
    entry = {"a": pair.a, "b": pair.b, "folder": f"{JUDGING_DIR}/{folder.name}", "seed": seed, "items": 0}
    if seed is None:
        return {**entry, "pending": "no seed both arms answered yet"}
    answers = {name: _answers(run_dir(out, spec.arm(name), seed) / "generations.jsonl") for name in (pair.a, pair.b)}
    ids = [i for i in answers[pair.a] if i in answers[pair.b]]
    files = []
    for name in (pair.a, pair.b):
        path = folder / f"{name}.jsonl"
        if not path.is_file():
            atomic_write_text(path, "".join(json.dumps({k: answers[name][i].get(k) for k in SHOWN} | {"model": name},
                                                       ensure_ascii=False) + "\n" for i in ids))
        files.append(f"{entry['folder']}/{name}.jsonl")
    serve = (f"deft-app serve --answers {' '.join(files)} --criteria {spec.judging.criteria} "
             f"--db {entry['folder']}/votes.sqlite --annotators annotators.jsonl")
    export = f"deft-app export --db {entry['folder']}/votes.sqlite --out {entry['folder']}"
    return {**entry, "items": len(ids), "answers": files, "serve": serve, "export": export}


def judging_results(out: Path, pair: JudgingPair) -> dict | None:
    """Win / tie / loss per criterion from the set's exported votes, when there are any."""
    path = set_folder(out, pair) / VOTES_FILE
    if not path.is_file():
        return None
    from deft_app.results import results_by_criterion

    votes = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not votes:
        return None
    return {"votes": len(votes), "by_criterion": results_by_criterion(votes)}


def judging_sets(spec: StudySpec, out: Path) -> list[dict]:
    """Every declared set, written where both arms have answers, with its results where votes are back."""
    return [{**write_judging_set(spec, out, pair), "results": judging_results(out, pair)}
            for pair in spec.judging.pairs]
