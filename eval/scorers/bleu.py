"""BLEU of the answer against the chosen reply, two ways:

- `bleu_char`: PRO's BLEU, nltk's sentence_bleu([reference], answer) on raw strings, which
  makes it a character-level 4-gram BLEU (unsmoothed), averaged over records, x100;
- `sacrebleu`: sacreBLEU's corpus BLEU (13a tokenisation), with its signature string.
"""

from __future__ import annotations

from deft_eval.hookspecs import Scorer, hookimpl


def char_bleu(reference: str, answer: str) -> float:
    """PRO's per-answer BLEU in [0, 1]: nltk sentence_bleu over characters, no smoothing."""
    import warnings

    from nltk.translate.bleu_score import sentence_bleu

    with warnings.catch_warnings():  # nltk warns about zero n-gram overlaps; the score is then 0
        warnings.simplefilter("ignore")
        return float(sentence_bleu([reference], answer))


def per_record(records: list[dict], options: dict) -> list[dict[str, float]]:
    return [{"bleu_char": 100.0 * char_bleu(r["chosen"], r["answer"])} for r in records]


def corpus(records: list[dict], options: dict) -> dict:
    import sacrebleu

    metric = sacrebleu.metrics.BLEU()
    result = metric.corpus_score([r["answer"] for r in records], [[r["chosen"] for r in records]])
    return {"sacrebleu": result.score, "sacrebleu_signature": str(metric.get_signature())}


@hookimpl
def deft_eval_scorers():
    return [Scorer("bleu", per_record, corpus, "character BLEU as in PRO (nltk) and sacreBLEU corpus BLEU")]
