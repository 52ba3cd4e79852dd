"""BARTScore (Yuan et al. 2021): score(a -> b) = mean over the tokens of b of log p(b_t | b_<t, a)
under a BART sequence-to-sequence model (facebook/bart-large-cnn by default).

precision = score(reference -> answer), recall = score(answer -> reference), F = their mean.
The reference is the chosen reply."""

from __future__ import annotations

import torch

from deft_eval.hookspecs import Scorer, hookimpl

DEFAULT_MODEL = "facebook/bart-large-cnn"
MAX_TOKENS = 1024


def load_bart(name_or_path: str, device: str = "auto"):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from deft_eval.models import device_and_dtype

    dev, _ = device_and_dtype(device, "float32")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForSeq2SeqLM.from_pretrained(name_or_path)
    except OSError as err:
        raise RuntimeError(f"could not load the BARTScore model {name_or_path!r} ({err}). Without hub access, give "
                           "a local copy with --bart-model DIR (a directory saved with save_pretrained).") from err
    return model.to(dev).eval(), tokenizer


@torch.inference_mode()
def bart_scores(model, tokenizer, sources: list[str], targets: list[str], batch_size: int = 8) -> list[float]:
    """Mean target-token log-probability of each target given its source."""
    device = next(model.parameters()).device
    out: list[float] = []
    for start in range(0, len(sources), batch_size):
        encode = dict(max_length=MAX_TOKENS, truncation=True, padding=True, padding_side="right", return_tensors="pt")
        src = tokenizer(sources[start:start + batch_size], **encode).to(device)
        tgt = tokenizer(targets[start:start + batch_size], **encode).to(device)
        labels = tgt["input_ids"].masked_fill(tgt["attention_mask"] == 0, -100)
        logits = model(input_ids=src["input_ids"], attention_mask=src["attention_mask"], labels=labels).logits
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        mask = tgt["attention_mask"].to(logp.dtype)
        out += ((logp * mask).sum(1) / mask.sum(1).clamp_min(1)).tolist()
    return out


def per_record(records: list[dict], options: dict) -> list[dict[str, float]]:
    model, tokenizer = options.get("bart") or load_bart(options.get("bart_model") or DEFAULT_MODEL,
                                                         options.get("device", "auto"))
    batch = int(options.get("batch_size", 8))
    refs, answers = [r["chosen"] for r in records], [r["answer"] for r in records]
    precision = bart_scores(model, tokenizer, refs, answers, batch)
    recall = bart_scores(model, tokenizer, answers, refs, batch)
    return [{"bartscore_precision": p, "bartscore_recall": r, "bartscore_f": (p + r) / 2}
            for p, r in zip(precision, recall)]


@hookimpl
def deft_eval_scorers():
    return [Scorer("bartscore", per_record, None, "BARTScore precision / recall / F against the chosen reply",
                   {"bart_model": f"BART model directory or hub id (default {DEFAULT_MODEL})"})]
