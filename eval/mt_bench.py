"""MT-Bench through FastChat: the 80 questions answered by a model in FastChat's answer
format (two turns; FastChat's per-category temperatures), resumable.

Questions come from a data directory holding FastChat's question.jsonl (the fschat wheel
does not ship it). The dialogue is written with the model's own chat template: FastChat
0.2.36 has no template for newer models such as Llama-3."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import torch
from tqdm.auto import tqdm

from deft_eval.generate import append_lines, generate_batch, read_done

DEFAULT_TEMPERATURE = 0.7  # FastChat's value for a category it has no entry for


def question_file(data_dir: str | Path) -> Path:
    path = Path(data_dir) / "question.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: give --mt-bench-dir, a folder with FastChat's MT-Bench "
                                "question.jsonl (and judge_prompts.jsonl, reference_answer/ for judging)")
    return path


def load_mt_questions(data_dir: str | Path) -> list[dict]:
    from fastchat.llm_judge.common import load_questions

    return load_questions(str(question_file(data_dir)), None, None)


def temperature_of(question: dict) -> float:
    from fastchat.llm_judge.common import temperature_config

    return temperature_config.get(question["category"], DEFAULT_TEMPERATURE)


def _prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"])


def answer_questions(model, tokenizer, questions: list[dict], out_path: str | Path, model_id: str,
                     max_new_tokens: int = 1024, batch_size: int = 8, seed: int = 0,
                     progress: bool = True) -> list[dict]:
    """Answer every question not yet in out_path, turn by turn, in batches of questions that
    share a temperature; returns the answers in question order (FastChat's answer records)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("MT-Bench answers need a chat model: the tokenizer has no chat template")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = read_done(out_path, key="question_id")
    todo = [q for q in questions if q["question_id"] not in done]
    torch.manual_seed(seed)
    groups: dict[float, list[dict]] = {}
    for q in todo:
        groups.setdefault(temperature_of(q), []).append(q)
    model.eval()
    with tqdm(total=len(questions), initial=len(questions) - len(todo), desc="MT-Bench answers", unit="question",
              disable=not progress) as bar:
        for temperature, group in groups.items():
            for start in range(0, len(group), batch_size):
                batch = group[start:start + batch_size]
                dialogues = [[] for _ in batch]
                for turn in range(max(len(q["turns"]) for q in batch)):
                    active = [i for i, q in enumerate(batch) if turn < len(q["turns"])]
                    for i in active:
                        dialogues[i].append({"role": "user", "content": batch[i]["turns"][turn]})
                    texts = generate_batch(model, tokenizer, [_prompt_ids(tokenizer, dialogues[i]) for i in active],
                                           max_new_tokens, temperature)
                    for i, text in zip(active, texts):
                        dialogues[i].append({"role": "assistant", "content": text.strip()})
                records = [{"question_id": q["question_id"], "answer_id": uuid.uuid4().hex, "model_id": model_id,
                            "choices": [{"index": 0, "turns": [m["content"] for m in d if m["role"] == "assistant"]}],
                            "tstamp": time.time()} for q, d in zip(batch, dialogues)]
                append_lines(out_path, records)
                done.update((r["question_id"], r) for r in records)
                bar.update(len(batch))
    return [done[q["question_id"]] for q in questions]
