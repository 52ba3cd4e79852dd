"""Answers to HH-RLHF prompts with PRO's evaluation conventions: greedy decoding, 128 new
tokens, the prompt left-truncated to its last 384 tokens, the answer cut at the next
"Human:" turn. Batched (left padding, longest prompts first) and resumable: every finished
batch is appended to the output JSONL as whole lines, and a restart skips the ids already
there."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from deft_plugin.core.answers import eos_ids, generate_ids, stopped_at_cap

LOG = logging.getLogger(__name__)
STOP = "Human:"


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    max_prompt_tokens: int = 384
    batch_size: int = 8
    prompt_style: str = "auto"  # chat_template | raw | auto (chat template when the tokenizer has one)


def cut_answer(text: str, stop: str = STOP) -> str:
    """The answer up to the next turn of the human, without surrounding blanks."""
    return text.split(stop, 1)[0].strip()


def prompt_ids(tokenizer, prompt: str, style: str, max_tokens: int) -> list[int]:
    """Token ids of a raw HH-RLHF prompt in the model's format, keeping its last max_tokens."""
    if style == "chat_template":
        from deft_plugin.data.formats.hh_rlhf import to_messages

        ids = tokenizer.apply_chat_template(to_messages(prompt), add_generation_prompt=True, tokenize=True,
                                            return_dict=True)["input_ids"]
    else:
        ids = tokenizer(text=prompt)["input_ids"]
    return list(ids)[-max_tokens:]


def read_done(path: Path, key: str = "id") -> dict:
    """Records already in an output file. A last line cut off by a killed run is removed
    from the file (it is regenerated); any other bad line is an error naming it."""
    if not path.is_file():
        return {}
    lines = path.read_text().split("\n")
    done, good_bytes = {}, 0
    for n, line in enumerate(lines):
        if not line:
            good_bytes += n < len(lines) - 1  # a blank line's newline
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) - 1:  # the unfinished tail of an interrupted write
                LOG.warning("%s: dropping an unfinished last line; it will be generated again", path)
                with path.open("r+b") as f:
                    f.truncate(good_bytes)
                break
            raise ValueError(f"{path}: line {n + 1} is not valid JSON") from None
        done[record[key]] = record
        good_bytes += len(line.encode()) + 1
    return done


def append_lines(path: Path, records: list[dict]) -> None:
    """Whole lines in one write, flushed to disk: a killed run leaves at most one torn last line."""
    with path.open("a") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


class ResumeError(ValueError):
    """An output file written by another model or with other settings: resuming it would mix them."""


def check_resumable(done: dict, out_path: Path, model_name: str, generation: dict) -> None:
    """ResumeError unless every record already in out_path is of this model with these settings
    (those in `generation`: the prompt style can be checked only once the tokenizer resolved it)."""
    foreign = [r for r in done.values() if r.get("model") != model_name
               or any((r.get("generation") or {}).get(k) != v for k, v in generation.items())]
    if foreign:
        r = foreign[0]
        raise ResumeError(f"{out_path} holds {len(foreign)} answers of model {r.get('model')!r} with settings "
                          f"{r.get('generation')}, not of {model_name!r} with {generation}; resuming would mix "
                          "them: give another file, or remove it to start again")


@torch.inference_mode()
def generate_answers(model, tokenizer, prompts: list[dict], out_path: str | Path, settings: GenerationSettings,
                     model_name: str = "", progress: bool = True) -> list[dict]:
    """Answer every prompt record not yet in out_path; return all records in prompt order. An
    out_path written by another model or with other settings is refused (ResumeError)."""
    from deft_plugin.data.encoding import resolve_prompt_style

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = read_done(out_path)
    style = resolve_prompt_style(settings.prompt_style, tokenizer)
    generation = {**asdict(settings), "prompt_style": style}
    check_resumable(done, out_path, model_name, generation)
    todo = [(p, prompt_ids(tokenizer, p["prompt"], style, settings.max_prompt_tokens))
            for p in prompts if p["id"] not in done]
    todo.sort(key=lambda item: -len(item[1]))
    model.eval()
    eos = eos_ids(model, tokenizer)
    with tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc="generating", unit="prompt",
              disable=not progress) as bar:
        for start in range(0, len(todo), settings.batch_size):
            batch = todo[start:start + settings.batch_size]
            answers = generate_ids(model, tokenizer, [ids for _, ids in batch], settings.max_new_tokens)
            texts = tokenizer.batch_decode(answers, skip_special_tokens=True)
            records = [{**p, "answer": cut_answer(text), "model": model_name, "new_tokens": len(ids),
                        "stopped": "cap" if stopped_at_cap(ids, settings.max_new_tokens, eos) else "eos",
                        "generation": generation}
                       for (p, _), text, ids in zip(batch, texts, answers)]
            append_lines(out_path, records)
            done.update((r["id"], r) for r in records)
            bar.update(len(batch))
    return [done[p["id"]] for p in prompts]
