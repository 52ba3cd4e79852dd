"""deft_eval's built-in scorers against hand-computed values: PRO's character BLEU, sacreBLEU
corpus BLEU, and BARTScore on a tiny random BART built here."""

from __future__ import annotations

import math

import pytest
import torch

from deft_eval.registry import scorers
from deft_eval.scorers import bartscore, bleu


def test_builtin_scorers_are_registered():
    assert {"bleu", "bartscore"} <= set(scorers())
    assert scorers()["bleu"].corpus is not None and scorers()["bartscore"].per_record is not None


@pytest.mark.covers("plugin:deft_eval.scorers.bleu", "scorer:bleu")
def test_char_bleu_by_hand():
    # "abcdf" against "abcde": character n-gram precisions 4/5, 3/4, 2/3, 1/2, same length (no penalty)
    assert bleu.char_bleu("abcde", "abcdf") == pytest.approx((4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25)
    # a shorter answer with every n-gram matching: only the brevity penalty exp(1 - 6/5)
    assert bleu.char_bleu("abcdef", "abcde") == pytest.approx(math.exp(1 - 6 / 5))
    assert bleu.char_bleu("same text", "same text") == pytest.approx(1.0)
    assert bleu.char_bleu("abcdefgh", "xyz") == 0.0  # no 4-gram in common, unsmoothed
    rows = scorers()["bleu"].per_record([{"chosen": "abcde", "answer": "abcdf"}], {})  # as registered
    assert rows == [{"bleu_char": pytest.approx(100 * 0.2 ** 0.25)}]


def test_sacrebleu_corpus_by_hand():
    records = [{"chosen": "a b c d e", "answer": "a b c d f"}]
    out = scorers()["bleu"].corpus(records, {})
    # word n-gram precisions 4/5, 3/4, 2/3, 1/2, no brevity penalty
    assert out["sacrebleu"] == pytest.approx(100 * 0.2 ** 0.25, abs=1e-6)
    assert "nrefs:1" in out["sacrebleu_signature"] and "tok:13a" in out["sacrebleu_signature"]
    # corpus statistics are pooled before the geometric mean, not averaged per sentence
    two = [{"chosen": "a b c d e", "answer": "a b c d f"}, {"chosen": "g h i j", "answer": "g h i j"}]
    pooled = (8 / 9 * 6 / 7 * 4 / 5 * 2 / 3) ** 0.25
    assert bleu.corpus(two, {})["sacrebleu"] == pytest.approx(100 * pooled, abs=1e-6)


@pytest.fixture(scope="module")
def tiny_bart(tiny_tokenizer):
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    tok = tiny_tokenizer
    config = BartConfig(vocab_size=len(tok), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=512,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=None)
    model = BartForConditionalGeneration(config).eval()
    with torch.no_grad():  # a sharper random model: log-probabilities that differ clearly between targets
        model.lm_head.weight.mul_(50)
    return model, tok


def by_hand(model, tok, source: str, target: str) -> float:
    """One pair, no padding: decoder input = start token + target[:-1], mean log p of the target."""
    src = torch.tensor([tok(source)["input_ids"]])
    tgt = tok(target)["input_ids"]
    decoder_in = torch.tensor([[model.config.decoder_start_token_id] + tgt[:-1]])
    with torch.no_grad():
        logits = model(input_ids=src, decoder_input_ids=decoder_in).logits[0]
    logp = torch.log_softmax(logits, -1)
    return sum(logp[t, tok_id].item() for t, tok_id in enumerate(tgt)) / len(tgt)


@pytest.mark.covers("plugin:deft_eval.scorers.bartscore", "scorer:bartscore")
def test_bartscore_by_hand_with_padding(tiny_bart):
    model, tok = tiny_bart
    records = [{"chosen": "Bread is baked in an oven for an hour.", "answer": "No."},
               {"chosen": "Yes.", "answer": "I can help you find a recipe for bread with butter."}]
    rows = scorers()["bartscore"].per_record(records, {"bart": tiny_bart, "batch_size": 2})  # as registered
    for r, row in zip(records, rows):
        precision, recall = by_hand(model, tok, r["chosen"], r["answer"]), by_hand(model, tok, r["answer"], r["chosen"])
        assert row["bartscore_precision"] == pytest.approx(precision, abs=1e-4)
        assert row["bartscore_recall"] == pytest.approx(recall, abs=1e-4)
        assert row["bartscore_f"] == pytest.approx((precision + recall) / 2, abs=1e-4)
    assert abs(rows[0]["bartscore_precision"] - rows[0]["bartscore_recall"]) > 1e-3  # the direction matters


def test_bartscore_without_the_model_says_how_to_give_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="--bart-model"):
        bartscore.per_record([{"chosen": "a", "answer": "b"}], {"bart_model": "facebook/bart-large-cnn"})


@pytest.mark.covers("hook:deft_eval_scorers")
def test_a_third_party_scorer_registers_like_the_builtins(monkeypatch):
    """A plugin implementing deft_eval_scorers adds a scorer; a name clash is refused."""
    import pluggy

    from deft_eval import registry
    from deft_eval.hookspecs import EvalSpecs, Scorer, hookimpl

    class LengthScorer:
        @hookimpl
        def deft_eval_scorers(self):
            return [Scorer("answer_length", lambda records, options: [{"chars": len(r["answer"])} for r in records])]

    pm = pluggy.PluginManager("deft_eval")
    pm.add_hookspecs(EvalSpecs)
    for module in (bleu, bartscore):
        pm.register(module)
    pm.register(LengthScorer())
    monkeypatch.setattr(registry, "plugin_manager", lambda: pm)
    found = registry.scorers()
    assert set(found) == {"bleu", "bartscore", "answer_length"}
    assert found["answer_length"].per_record([{"answer": "four"}], {}) == [{"chars": 4}]

    class Clash:
        @hookimpl
        def deft_eval_scorers(self):
            return [Scorer("bleu")]

    pm.register(Clash())
    with pytest.raises(ValueError, match="registered twice"):
        registry.scorers()
