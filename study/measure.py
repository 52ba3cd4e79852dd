"""Held-out measurements of one model, per pair, so that every arm is compared on the same
pairs: the summed log-probability and the token count of each reply (accuracy by mean token
log-probability, and by DPO's implicit reward against the starting model), the distribution
reward of each reply under the study's Q, and greedy answers to a sample of the prompts scored
with BLEU against the chosen reply."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from deft_plugin.core.answers import distinct_n, distinct_word_share, repetitive
from deft_plugin.data.encoding import EncodedRow
from deft_plugin.filtering.heldout import measure_replies

PER_PAIR = ("lp_chosen", "lp_rejected", "n_chosen", "n_rejected", "r_chosen", "r_rejected")


def load_trained(model_dir: Path, base_model: Path):
    """A run's model as a plain causal LM in float32: a LoRA adapter is merged into its base."""
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    if (model_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
        return PeftModel.from_pretrained(base, model_dir).merge_and_unload().eval()
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def measure_pairs(model, rows: list[EncodedRow], qn: torch.Tensor, special_ids, pad_id: int, batch_size: int = 8,
                  progress: bool = True) -> dict[str, list[float]]:
    """PER_PAIR values of every row (a pair), in the order of `rows`, as the plugin's held-out
    measurement gives them (the token counts as floats, as eval.json has always had them)."""
    measured = measure_replies(model, rows, special_ids, pad_id, qn, batch_size, progress, desc="held-out pairs")
    out = {key: [] for key in PER_PAIR}
    for row in rows:
        chosen, rejected = measured[row.index][:2]
        values = (chosen.logp, rejected.logp, float(chosen.tokens), float(rejected.tokens), chosen.reward,
                  rejected.reward)
        for key, value in zip(PER_PAIR, values):
            out[key].append(value)
    return out


def generation_stats(answers: list[str], records: list[dict] | None = None) -> dict:
    """The statistics that need no reference: per answer its length, distinct-word share, whether it
    loops, whether it is empty and (where the records say how generation stopped) whether the token
    cap cut it off; over all answers distinct-1 and distinct-2."""
    stats = {"answer_chars": [len(a) for a in answers], "distinct_words": [distinct_word_share(a) for a in answers],
             "repetitive": [float(repetitive(a)) for a in answers], "empty": [float(not a.strip()) for a in answers],
             "distinct_1": distinct_n(answers, 1), "distinct_2": distinct_n(answers, 2)}
    if records and all("stopped" in r for r in records):
        stats["at_cap"] = [float(r["stopped"] == "cap") for r in records]
    return stats


def backfill_generation_stats(eval_path: Path, generations_path: Path) -> dict:
    """eval.json with any reference-free generation statistic it lacks (a measure added after
    the run) computed from the saved answers; rewritten only when something was added."""
    result = json.loads(eval_path.read_text())
    generation = result.get("generation")
    if not generation or not generations_path.is_file():
        return result
    records = [json.loads(line) for line in generations_path.read_text().splitlines() if line.strip()]
    missing = {k: v for k, v in generation_stats([r["answer"] for r in records], records).items()
               if k not in generation}
    if missing:
        generation.update(missing)
        write_json(eval_path, result)
    return result


def generate_and_score(model, tokenizer, prompts: list[dict], out_path: Path, max_new_tokens: int,
                       max_prompt_tokens: int, batch_size: int, name: str) -> dict:
    """Greedy answers (PRO's conventions, resumable) and their BLEU against the chosen reply."""
    from deft_eval.generate import GenerationSettings, generate_answers
    from deft_eval.registry import scorers

    settings = GenerationSettings(max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens,
                                  batch_size=batch_size)
    records = generate_answers(model, tokenizer, prompts, out_path, settings, model_name=name, progress=False)
    bleu = scorers()["bleu"]
    per_record = bleu.per_record(records, {})
    return {"prompts": len(records), "bleu_char": [r["bleu_char"] for r in per_record],
            **generation_stats([r["answer"] for r in records], records),
            "answer_tokens": [len(tokenizer(text=r["answer"])["input_ids"]) for r in records],
            **bleu.corpus(records, {})}


def write_json(path: Path, value: dict) -> None:
    from deft_plugin.utils.atomic import atomic_write_text
    from deft_study.training import portable

    atomic_write_text(path, portable(json.dumps(value)))
