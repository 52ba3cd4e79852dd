"""The shared-prompt packing: [prompt, reply 1, ..., reply n] in one sequence with a block mask
and restarting positions gives every reply token the log-probability (and so the distribution
reward) of the unshared [prompt, reply] sequence, for pairs and ranked lists, with the eager
and the SDPA attention backends."""

from __future__ import annotations

import pytest
import torch

from deft_plugin.data.encoding import EncodedRow, encode_rows
from deft_plugin.data.parsing import parse_rows
from deft_plugin.filtering.batching import collate_candidates
from deft_plugin.filtering.shared_prompt import additive_mask, pack_shared

from builders import hh_rows, listwise_rows


def test_replies_see_the_prompt_and_themselves_only():
    row = EncodedRow(index=0, prompt_ids=(5, 6), completions=((7, 8), (9,)))
    ids, positions, allowed, where, targets, sequence = pack_shared([row], 0)
    assert ids.tolist() == [[5, 6, 7, 8, 9]] and positions.tolist() == [[0, 1, 2, 3, 2]]
    seen = allowed[0, 0].int().tolist()
    assert seen[4] == [1, 1, 0, 0, 1]  # reply 2 sees the prompt and itself, not reply 1
    assert seen[3] == [1, 1, 1, 1, 0]
    # the first token of each reply is predicted by the prompt's last position
    assert where.tolist() == [[0, 1], [0, 2], [0, 1]] and targets.tolist() == [7, 8, 9]
    assert sequence.tolist() == [0, 0, 1]


def unshared_logprobs(model, batch, special, pad_id):
    ids, attn, pred = collate_candidates(batch, special, pad_id, "cpu")
    logp = model(input_ids=ids, attention_mask=attn).logits.log_softmax(-1)
    rows = pred.nonzero()
    return logp[rows[:, 0], rows[:, 1], ids[rows[:, 0], rows[:, 1] + 1]], rows[:, 0]


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", ["pairs", "ranked"])
def test_shared_prompt_equals_the_unshared_pass(tiny_model, tiny_tokenizer, backend, kind):
    rows = (parse_rows(hh_rows(16), "hh_rlhf", "chat_template").rows if kind == "pairs"
            else parse_rows(listwise_rows(12), "listwise", "raw").rows)
    encoded, _ = encode_rows(rows, tiny_tokenizer, 256)
    batch = encoded[:6]
    special, pad = set(tiny_tokenizer.all_special_ids), tiny_tokenizer.pad_token_id or 0
    saved = tiny_model.config._attn_implementation
    tiny_model.config._attn_implementation = backend
    try:
        with torch.no_grad():
            expected, expected_seq = unshared_logprobs(tiny_model, batch, special, pad)
            ids, positions, allowed, where, targets, sequence = pack_shared(batch, pad)
            counted = ~torch.isin(targets, torch.tensor(sorted(special)))
            where, targets, sequence = where[counted], targets[counted], sequence[counted]
            logits = tiny_model(input_ids=ids, position_ids=positions,
                                attention_mask=additive_mask(allowed, torch.float32)).logits
            got = logits.log_softmax(-1)[where[:, 0], where[:, 1], targets]
    finally:
        tiny_model.config._attn_implementation = saved
    assert sequence.tolist() == expected_seq.tolist()  # the same reply tokens, in the same order
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    # each prompt runs once: fewer positions, padding included, than the replies' own sequences without padding
    assert ids.numel() < sum(len(r.prompt_ids) + len(c) for r in batch for c in r.completions)
