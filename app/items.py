"""Judging items from two or more models' answer files: deft-eval generation JSONL (HH-RLHF;
keyed by `id`) or FastChat MT-Bench answer JSONL (keyed by `question_id`, two turns; the
questions come from a question.jsonl). Every pair of models gives one item per prompt that
all of them answered. Paths and rows are checked with errors that name them."""

from __future__ import annotations

import itertools
from pathlib import Path

from deft_plugin.utils.jsonl import read_jsonl

MIN_PASSWORD_LENGTH = 8  # an annotator's password, in characters


class InputError(ValueError):
    """A bad file or row given to the app; the message names it."""


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = read_jsonl(path, InputError)
    if not rows:
        raise InputError(f"{path}: no rows")
    return rows


def read_answers(path: str | Path, questions: dict[int, dict] | None = None) -> tuple[str, dict[str, dict]]:
    """(model name, prompt key -> {dialogue, answer turns, category}) of one answer file."""
    path = Path(path)
    rows = _read_jsonl(path)
    out: dict[str, dict] = {}
    first = rows[0][1]
    if "question_id" in first:  # FastChat MT-Bench answers
        if questions is None:
            raise InputError(f"{path}: MT-Bench answers need the questions (--mt-bench-questions question.jsonl)")
        model = first.get("model_id") or path.stem
        for n, row in rows:
            q = questions.get(row.get("question_id"))
            if q is None:
                raise InputError(f"{path}: line {n}: question_id {row.get('question_id')!r} is not in the questions")
            turns = mt_bench_turns(row)
            if turns is None:
                raise InputError(f"{path}: line {n}: no answer turns (FastChat's choices: [{{turns: [...]}}], "
                                 "a list of texts)")
            out[f"mt_bench/{q['question_id']}"] = {"turns": q["turns"], "answers": turns, "category": q["category"]}
        return model, out
    model = first.get("model") or path.stem
    for n, row in rows:
        missing = [k for k in ("id", "prompt", "answer") if k not in row]
        if missing:
            raise InputError(f"{path}: line {n} lacks {', '.join(missing)} (expected deft-eval generate "
                             "or FastChat MT-Bench answers)")
        out[row["id"]] = {"prompt": row["prompt"], "answers": [row["answer"]], "category": row.get("subset")}
    return model, out


def mt_bench_turns(row: dict) -> list[str] | None:
    """The answer turns of a FastChat MT-Bench answer row, or None where it has none readable."""
    try:
        turns = row["choices"][0]["turns"]
    except (KeyError, IndexError, TypeError):
        return None
    return turns if isinstance(turns, list) and turns and all(isinstance(t, str) for t in turns) else None


def _dialogue(entry: dict) -> list[dict]:
    """The turns shown above the two answers. HH-RLHF: the dialogue so far; MT-Bench: the first
    question (each side's reply then carries its first answer, the second question and its
    second answer: see _reply)."""
    if "prompt" in entry:
        from deft_plugin.data.formats.hh_rlhf import to_messages

        return to_messages(entry["prompt"])
    return [{"role": "user", "content": entry["turns"][0]}]


def _reply(entry: dict, answers: list[str]) -> str:
    if "turns" in entry and len(entry["turns"]) > 1:  # MT-Bench: the whole two-turn conversation
        return f"{answers[0]}\n\n[User] {entry['turns'][1]}\n\n{answers[1] if len(answers) > 1 else ''}"
    return answers[0]


def items_from_files(paths: list[str | Path], questions_path: str | Path | None = None) -> list[dict]:
    """The items of the answer files: read_models, then items_from_models."""
    return items_from_models(read_models(paths, questions_path))


def read_models(paths: list[str | Path], questions_path: str | Path | None = None) -> list[tuple[str, dict]]:
    """(model name, its answers) of each answer file, in the order of `paths`."""
    if len(paths) < 2:
        raise InputError("give at least two answer files (one per model)")
    questions = None
    if questions_path:
        questions = {q["question_id"]: q for _, q in _read_jsonl(Path(questions_path))}
    models = [read_answers(p, questions) for p in paths]
    names = [m for m, _ in models]
    if len(set(names)) != len(names):
        raise InputError(f"two answer files carry the same model name: {names}")
    return models


def items_from_models(models: list[tuple[str, dict]]) -> list[dict]:
    """One item per (prompt, pair of models) over the prompts every model answered."""
    shared = sorted(set.intersection(*(set(a) for _, a in models)))
    if not shared:
        raise InputError("the answer files have no prompt in common")
    items = []
    for (name_a, ans_a), (name_b, ans_b) in itertools.combinations(models, 2):
        for key in shared:
            entry = ans_a[key]
            items.append({"id": f"{key}|{name_a}|{name_b}", "dialogue": _dialogue(entry),
                          "category": entry.get("category"), "model_a": name_a,
                          "answer_a": _reply(entry, ans_a[key]["answers"]), "model_b": name_b,
                          "answer_b": _reply(entry, ans_b[key]["answers"])})
    return items


def read_annotators(path: str | Path) -> list[dict]:
    """Annotators file: JSONL rows {"name", "password", "role": annotator|admin (default annotator)}.
    The passwords are hashed when stored; the file itself stays with the organiser."""
    numbered = _read_jsonl(Path(path))
    for n, row in numbered:
        if not isinstance(row.get("name"), str) or not row["name"].strip():
            raise InputError(f"{path}: line {n}: missing 'name'")
        if not isinstance(row.get("password"), str) or len(row["password"]) < MIN_PASSWORD_LENGTH:
            raise InputError(f"{path}: line {n}: 'password' must be a string of at least {MIN_PASSWORD_LENGTH} "
                             "characters")
        if row.get("role", "annotator") not in ("annotator", "admin"):
            raise InputError(f"{path}: line {n}: role must be annotator or admin, got {row['role']!r}")
    return [row for _, row in numbered]
