"""encode_rows against TRL's own DPO tokenization (DPOTrainer._prepare_dataset: add EOS to
text replies, tokenize prompt and prompt + reply) and truncation (DataCollatorForPreference,
keep_start), plus the degenerate pairs it drops and counts."""

from collections import Counter
from types import SimpleNamespace

import pytest

from deft_plugin.data.encoding import EncodedRow, encode_completion, encode_rows, resolve_prompt_style
from deft_plugin.data.formats import hh_rlhf
from deft_plugin.hookspecs import RowError

from builders import hh_rows


def _parsed(n: int, style: str) -> list[dict]:
    out = []
    for row in hh_rows(n):
        try:
            out.append(hh_rlhf.parse(row, style))
        except RowError:
            pass
    return out


def _trl_tokenized(rows: list[dict], tokenizer) -> list[dict]:
    """TRL's DPO dataset preparation, run for real (no max_length: nothing dropped)."""
    from datasets import Dataset
    from trl.trainer.dpo_trainer import DPOTrainer

    args = SimpleNamespace(dataset_num_proc=None, max_length=None, truncation_mode="keep_start")
    ds = DPOTrainer._prepare_dataset(SimpleNamespace(_tokenizer=tokenizer), Dataset.from_list(rows), tokenizer,
                                     args, "train")
    return [{k: ex[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for ex in ds]


def _assert_same_as_trl(rows, pairs, trl_rows):
    assert pairs, "nothing to compare"
    for p in pairs:
        assert isinstance(p, EncodedRow)
        ref = trl_rows[p.index]
        assert list(p.prompt_ids) == ref["prompt_ids"], p.index
        assert list(p.chosen_ids) == ref["chosen_ids"], p.index
        assert list(p.rejected_ids) == ref["rejected_ids"], p.index


# ----------------------------------------------------------------------------- TRL parity


def test_text_rows_match_trl_and_get_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    rows = _parsed(40, "raw")
    rows.append({"prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": " hello" + tok.eos_token, "rejected": " go away"})
    rows.append({"prompt": "Plain text prompt.", "chosen": "No leading space", "rejected": "\nnewline first"})
    pairs, dropped = encode_rows(rows, tok)
    assert dropped == Counter()
    assert [p.index for p in pairs] == list(range(len(rows)))
    _assert_same_as_trl(rows, pairs, _trl_tokenized(rows, tok))
    eos = tok.eos_token_id
    for p in pairs:
        assert p.chosen_ids[-1] == eos and p.rejected_ids[-1] == eos  # EOS appended to text replies
        assert eos not in p.chosen_ids[:-1]  # once: not doubled when the reply already ends with it
        assert list(p.prompt_ids) == tok(text=rows[p.index]["prompt"])["input_ids"]
        assert tok.decode(list(p.prompt_ids + p.chosen_ids)) == rows[p.index]["prompt"] + rows[p.index]["chosen"] \
            + ("" if rows[p.index]["chosen"].endswith(tok.eos_token) else tok.eos_token)
    assert tok.decode(list(pairs[-2].chosen_ids)) == " hello" + tok.eos_token


def test_message_rows_match_trl_and_use_chat_template(tiny_tokenizer):
    tok = tiny_tokenizer
    rows = _parsed(40, "chat_template")
    rows.append({"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
                 "chosen": [{"role": "assistant", "content": "4"}],
                 "rejected": [{"role": "assistant", "content": "5, I think"}]})
    pairs, dropped = encode_rows(rows, tok)
    assert dropped == Counter() and len(pairs) == len(rows)
    _assert_same_as_trl(rows, pairs, _trl_tokenized(rows, tok))
    last = pairs[-1]
    assert tok.decode(list(last.prompt_ids)) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(list(last.chosen_ids)) == "4<|im_end|>\n"  # the template's end of turn, no extra EOS
    assert tok.decode(list(last.rejected_ids)) == "5, I think<|im_end|>\n"
    for p in pairs:
        assert p.chosen_ids.count(tok.eos_token_id) == 1


def test_encode_completion_reuses_prompt_ids(tiny_tokenizer):
    tok = tiny_tokenizer
    prompt = [{"role": "user", "content": "Hi"}]
    prompt_ids, completion = encode_completion(tok, prompt, [{"role": "assistant", "content": "Hello"}])
    again, completion2 = encode_completion(tok, prompt, [{"role": "assistant", "content": "Hello"}], prompt_ids)
    assert again is prompt_ids and completion2 == completion
    full = tok.apply_chat_template(prompt + [{"role": "assistant", "content": "Hello"}], tokenize=True,
                                   return_dict=True)["input_ids"]
    assert list(prompt_ids) + completion == list(full)


# ----------------------------------------------------------------------------- truncation


@pytest.mark.parametrize("style", ["raw", "chat_template"])
def test_truncation_keeps_start_like_trl_collator(tiny_tokenizer, style):
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    tok, max_length = tiny_tokenizer, 96
    rows = _parsed(40, style)
    full, _ = encode_rows(rows, tok)
    cut, dropped = encode_rows(rows, tok, max_length=max_length)
    full = {p.index: p for p in full}
    trl_rows = _trl_tokenized(rows, tok)
    # the prompt-only rows TRL drops (keep_start would remove every reply token)
    trl_dropped = {i for i, r in enumerate(trl_rows) if len(r["prompt_ids"]) >= max_length}
    assert trl_dropped, "choose a max_length that cuts some prompts off"
    assert sum(len(full[p.index].chosen_ids) > len(p.chosen_ids) for p in cut) > 0, "and some replies"
    collated = DataCollatorForPreference(pad_token_id=tok.pad_token_id, max_length=max_length)(
        [trl_rows[p.index] for p in cut])
    n = len(cut)
    for j, p in enumerate(cut):
        assert p.index not in trl_dropped
        assert p.prompt_ids == full[p.index].prompt_ids  # the prompt itself is not cut here
        keep = max_length - len(p.prompt_ids)
        assert p.chosen_ids == full[p.index].chosen_ids[:keep]
        assert p.rejected_ids == full[p.index].rejected_ids[:keep]
        mask = collated["completion_mask"]
        assert collated["input_ids"][j][mask[j].bool()].tolist() == list(p.chosen_ids)
        assert collated["input_ids"][n + j][mask[n + j].bool()].tolist() == list(p.rejected_ids)
    # every row TRL drops is counted here as cut off, and nothing vanishes without a reason
    assert dropped["reply cut off: prompt fills sequence_len"] >= len(trl_dropped)
    assert len(cut) + sum(dropped.values()) == len(rows)


# ----------------------------------------------------------------------------- degenerate pairs


def test_degenerate_reasons_text(tiny_tokenizer):
    tok = tiny_tokenizer
    p = "\n\nHuman: Tell me about bread.\n\nAssistant:"
    long_prompt = "\n\nHuman: " + "Tell me about bread and butter, please. " * 20 + "\n\nAssistant:"
    shared = " Bread is made from flour, water, salt and yeast, and it is baked in an oven"
    rows = [
        {"prompt": p, "chosen": " Bread is baked.", "rejected": " No."},  # 0 kept
        {"prompt": p, "chosen": " ", "rejected": " No."},  # 1 empty chosen (only EOS)
        {"prompt": p, "chosen": " Bread is baked.", "rejected": ""},  # 2 empty rejected
        {"prompt": p, "chosen": " Same reply.", "rejected": " Same reply."},  # 3 identical
        {"prompt": long_prompt, "chosen": " Yes.", "rejected": " No."},  # 4 prompt fills max_length
        {"prompt": p, "chosen": shared + " for an hour.", "rejected": shared + " until golden."},  # 5 same once cut
        {"prompt": p, "chosen": " " + tok.eos_token, "rejected": " No."},  # 6 empty: EOS only
        {"prompt": p, "chosen": " Yes.", "rejected": " No."},  # 7 kept
        {"prompt": p, "chosen": " Bread is baked.", "rejected": " No."},  # 8 a copy of row 0
        {"prompt": p, "chosen": " No.", "rejected": " Bread is baked."},  # 9 row 0 the other way round: kept
    ]
    prompt_len = len(tok(text=p)["input_ids"])
    assert len(tok(text=long_prompt)["input_ids"]) > 64 > prompt_len + 8
    pairs, dropped = encode_rows(rows, tok, max_length=prompt_len + 8)
    assert [q.index for q in pairs] == [0, 7, 9]
    assert dropped == Counter({"empty chosen reply": 2, "empty rejected reply": 1,
                               "chosen and rejected identical": 1, "identical_after_truncation": 1,
                               "reply cut off: prompt fills sequence_len": 1, "duplicate": 1})
    assert dropped.rows["identical_after_truncation"] == [5] and dropped.rows["duplicate"] == [8]
    assert dropped.duplicate_of == {8: 0}
    assert dropped.by_row() == [(1, "empty chosen reply"), (2, "empty rejected reply"),
                                (3, "chosen and rejected identical"), (4, "reply cut off: prompt fills sequence_len"),
                                (5, "identical_after_truncation"), (6, "empty chosen reply"), (8, "duplicate")]
    # without max_length only the replies that differ at the end survive
    pairs, dropped = encode_rows(rows, tok)
    assert [q.index for q in pairs] == [0, 4, 5, 7, 9]
    assert dropped == Counter({"empty chosen reply": 2, "empty rejected reply": 1,
                               "chosen and rejected identical": 1, "duplicate": 1})


def test_a_duplicate_is_the_same_prompt_and_replies_in_the_same_order(tiny_tokenizer):
    """Kept once (the first copy); another prompt, another reply or another order is another example,
    and a duplicate of a degenerate row is counted as a duplicate (its first copy carries the reason)."""
    user = [{"role": "user", "content": "Hi"}]

    def reply(text):
        return [{"role": "assistant", "content": text}]

    rows = [
        {"prompt": user, "chosen": reply("Hello"), "rejected": reply("Go away")},  # 0
        {"prompt": user, "chosen": reply("Hello"), "rejected": reply("Go away")},  # 1 copy of 0
        {"prompt": [{"role": "user", "content": "Hi!"}], "chosen": reply("Hello"), "rejected": reply("Go away")},
        {"prompt": user, "chosen": reply("Go away"), "rejected": reply("Hello")},  # 3 swapped: kept
        {"prompt": user, "chosen": reply("Hello"), "rejected": reply("Hello")},  # 4 identical
        {"prompt": user, "chosen": reply("Hello"), "rejected": reply("Hello")},  # 5 copy of 4
        {"prompt": user, "chosen": reply("Hello"), "rejected": reply("Go away")},  # 6 copy of 0 again
    ]
    pairs, dropped = encode_rows(rows, tiny_tokenizer)
    assert [p.index for p in pairs] == [0, 2, 3]
    assert dropped == Counter({"duplicate": 3, "chosen and rejected identical": 1})
    assert dropped.duplicate_of == {1: 0, 5: 4, 6: 0}
    ranked = [{"prompt": "Q", "responses": [" a", " b", " c"]}, {"prompt": "Q", "responses": [" a", " b", " c"]},
              {"prompt": "Q", "responses": [" a", " c", " b"]}]
    pairs, dropped = encode_rows(ranked, tiny_tokenizer)
    assert [p.index for p in pairs] == [0, 2] and dropped == Counter({"duplicate": 1})


def test_degenerate_reasons_messages(tiny_tokenizer):
    user = [{"role": "user", "content": "Hi"}]

    def reply(text):
        return [{"role": "assistant", "content": text}]

    rows = [
        {"prompt": user, "chosen": reply(""), "rejected": reply("Hello")},  # template tokens only
        {"prompt": user, "chosen": reply("Hello"), "rejected": reply("  \n ")},  # whitespace only
        {"prompt": user, "chosen": reply("Hello"), "rejected": reply("Hello")},
        {"prompt": user, "chosen": reply("Hello"), "rejected": reply("Go away")},
    ]
    pairs, dropped = encode_rows(rows, tiny_tokenizer)
    assert [p.index for p in pairs] == [3]
    assert dropped == Counter({"empty chosen reply": 1, "empty rejected reply": 1,
                               "chosen and rejected identical": 1})


def test_real_hh_rlhf_rows_encode(tiny_tokenizer):
    """All 2,307 parseable real pairs: the 4 with an empty chosen reply are the only drops."""
    rows = _parsed(None, "raw")
    assert len(rows) == 2307
    pairs, dropped = encode_rows(rows, tiny_tokenizer)
    assert dropped == Counter({"empty chosen reply": 4})
    assert len(pairs) == 2303
    assert len({p.index for p in pairs}) == 2303 and [p.index for p in pairs] == sorted(p.index for p in pairs)


def test_truncation_keep_start_cuts_and_counts_drop_leaves_out(tiny_tokenizer):
    from deft_plugin.data.encoding import encode_rows

    rows = [{"prompt": "Q: a short question?", "chosen": " " + "yes " * 40, "rejected": " no"},
            {"prompt": "Q: another one?", "chosen": " fine", "rejected": " bad"}]
    whole, _ = encode_rows(rows, tiny_tokenizer)
    room = len(whole[0].prompt_ids) + 5  # the long reply does not fit, the short ones do
    kept, dropped = encode_rows(rows, tiny_tokenizer, room, "keep_start")
    assert [r.index for r in kept] == [0, 1] and dropped.truncated == 1 and sum(dropped.values()) == 0
    assert len(kept[0].chosen_ids) == 5 and kept[0].rejected_ids == whole[0].rejected_ids
    kept, dropped = encode_rows(rows, tiny_tokenizer, room, "drop")
    assert [r.index for r in kept] == [1] and dropped == {"reply cut off by sequence_len": 1}
    assert dropped.rows == {"reply cut off by sequence_len": [0]} and dropped.truncated == 0
    with pytest.raises(ValueError, match="deft_truncation"):
        encode_rows(rows, tiny_tokenizer, room, "middle")



# ------------------------------------------------------------------ chat messages and text, mixed


def test_text_rows_mixed_with_chat_rows_become_the_same_chat_sequences(smollm2_dir):
    """The same dialogue as an hh_rlhf row (chat messages under the default model's chat template) and as
    a listwise text row: once in one form, both encode to the very same token ids; text that is no
    Human/Assistant transcript becomes one user turn."""
    from transformers import AutoTokenizer

    from deft_plugin.data.encoding import as_ranked, in_one_form
    from deft_plugin.data.formats.hh_rlhf import parse as parse_hh
    from deft_plugin.data.formats.hh_rlhf import split_transcript
    from deft_plugin.data.formats.listwise import parse as parse_listwise

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert resolve_prompt_style("auto", tokenizer) == "chat_template"
    hh = hh_rows(3)[2]
    chat_row = as_ranked(parse_hh(hh, "chat_template"))
    prompt, chosen = split_transcript(hh["chosen"])
    rejected = split_transcript(hh["rejected"])[1]
    text_rows = [parse_listwise({"prompt": prompt, "responses": [" " + chosen, " " + rejected]}, "chat_template"),
                 parse_listwise({"prompt": "Name a colour.", "responses": ["Blue.", "Seven."]}, "chat_template")]
    assert isinstance(text_rows[0]["prompt"], str)  # a text row stays text under a chat template, alone
    rows, converted = in_one_form([chat_row, *text_rows])
    assert converted == 2 and all(isinstance(r["prompt"], list) for r in rows)
    assert rows[0] is chat_row and rows[1]["prompt"] == chat_row["prompt"]
    assert rows[1]["responses"] == chat_row["responses"]
    assert rows[2]["prompt"] == [{"role": "user", "content": "Name a colour."}]
    assert rows[2]["responses"] == [[{"role": "assistant", "content": "Blue."}],
                                    [{"role": "assistant", "content": "Seven."}]]
    _, dropped = encode_rows(rows, tokenizer)
    assert dropped.duplicate_of == {1: 0}  # the same example once in one form: the text copy repeats the chat row
    encoded = [encode_rows([row], tokenizer)[0][0] for row in rows]
    assert encoded[0].prompt_ids == encoded[1].prompt_ids and encoded[0].completions == encoded[1].completions
    assert tokenizer.decode(encoded[2].prompt_ids).endswith("<|im_start|>user\nName a colour.<|im_end|>\n"
                                                            "<|im_start|>assistant\n")
    # rows all of one form are left as they are
    assert in_one_form(text_rows) == (text_rows, 0) and in_one_form([chat_row]) == ([chat_row], 0)
