"""`deft-eval generate`: HH-RLHF test prompts with their subset and references, PRO's
generation conventions, batched greedy decoding equal to one-at-a-time decoding, resuming."""

from __future__ import annotations

import json

import pytest
import torch

from deft_eval.cli import main
from deft_eval.generate import (
    GenerationSettings,
    ResumeError,
    cut_answer,
    generate_answers,
    prompt_ids,
    read_done,
)
from deft_eval.hh_prompts import load_prompts, subset_of

from builders import HH_TEST, hh_rows, write_jsonl


def test_prompts_of_the_real_file_carry_subset_and_references():
    records, skipped = load_prompts(str(HH_TEST))
    assert len(records) + sum(skipped.values()) == 2312 and len(records) > 2300
    assert {r["subset"] for r in records} == {"harmless-base"}
    assert len({r["id"] for r in records}) == len(records)
    first = hh_rows(1)[0]
    assert first["chosen"].startswith(records[0]["prompt"]) and records[0]["prompt"].endswith("\n\nAssistant:")
    assert first["chosen"].endswith(records[0]["chosen"]) and first["rejected"].endswith(records[0]["rejected"])
    sample, _ = load_prompts(str(HH_TEST), sample=10, seed=1)
    assert len(sample) == 10 and sample == load_prompts(str(HH_TEST), sample=10, seed=1)[0]
    assert sample != load_prompts(str(HH_TEST), sample=10, seed=2)[0]
    assert [int(r["id"].split("/")[1]) for r in sample] == sorted(int(r["id"].split("/")[1]) for r in sample)


def test_subset_names_and_answer_cut(tmp_path):
    assert subset_of(tmp_path / "helpful-online" / "test.jsonl.gz") == "helpful-online"
    assert subset_of(tmp_path / "harmless-base-test.jsonl.gz") == "harmless-base"
    assert subset_of(tmp_path / "other.jsonl") == "other"
    assert cut_answer(" Sure, here it is.\n\nHuman: thanks\n\nAssistant: ok") == "Sure, here it is."
    assert cut_answer("  no further turn  ") == "no further turn"
    assert cut_answer("Human: at once") == ""


def test_prompt_is_left_truncated(tiny_tokenizer):
    prompt = "\n\nHuman: " + "tell me about bread and butter " * 40 + "\n\nAssistant:"
    full = tiny_tokenizer(text=prompt)["input_ids"]
    assert len(full) > 50
    assert prompt_ids(tiny_tokenizer, prompt, "raw", 50) == full[-50:]
    chat = prompt_ids(tiny_tokenizer, prompt, "chat_template", 10_000)
    assert tiny_tokenizer.decode(chat).endswith("<|im_start|>assistant\n")
    assert prompt_ids(tiny_tokenizer, prompt, "chat_template", 30) == chat[-30:]


@pytest.fixture()
def prompts():
    records, _ = load_prompts(str(HH_TEST), sample=5, seed=0)
    return records


def test_batched_answers_equal_one_at_a_time(tiny_model, tiny_tokenizer, prompts, tmp_path):
    settings = GenerationSettings(max_new_tokens=12, max_prompt_tokens=64, batch_size=3, prompt_style="raw")
    records = generate_answers(tiny_model, tiny_tokenizer, prompts, tmp_path / "a.jsonl", settings, "tiny", False)
    assert [r["id"] for r in records] == [p["id"] for p in prompts]
    for p, r in zip(prompts, records):
        ids = torch.tensor([prompt_ids(tiny_tokenizer, p["prompt"], "raw", 64)])
        alone = tiny_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                    max_new_tokens=12, pad_token_id=tiny_tokenizer.pad_token_id)
        assert r["answer"] == cut_answer(tiny_tokenizer.decode(alone[0, ids.shape[1]:], skip_special_tokens=True))
        assert ((r["subset"], r["chosen"], r["rejected"], r["model"])
                == (p["subset"], p["chosen"], p["rejected"], "tiny"))
        assert r["generation"]["max_new_tokens"] == 12 and r["generation"]["prompt_style"] == "raw"
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(p["id"] for p in prompts)


def test_resume_skips_finished_prompts_and_drops_a_torn_line(tiny_model, tiny_tokenizer, prompts, tmp_path):
    settings = GenerationSettings(max_new_tokens=4, max_prompt_tokens=64, batch_size=2, prompt_style="raw")
    out = tmp_path / "answers.jsonl"
    first = generate_answers(tiny_model, tiny_tokenizer, prompts[:2], out, settings, progress=False)
    with out.open("a") as f:
        f.write('{"id": "harmless-base/9999", "answ')  # a run killed in the middle of a write
    calls = []
    original = tiny_model.generate

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    tiny_model.generate = counting
    try:
        records = generate_answers(tiny_model, tiny_tokenizer, prompts, out, settings, progress=False)
    finally:
        del tiny_model.generate
    assert sum(calls) == 3  # only the three prompts not answered before
    assert records[:2] == first
    assert set(read_done(out)) == {p["id"] for p in prompts}
    assert len(out.read_text().splitlines()) == 5


@pytest.mark.parametrize("other", [{"model_name": "another"}, {"max_new_tokens": 6}, {"prompt_style": "chat_template"}])
def test_a_file_of_another_model_or_settings_is_not_resumed(tiny_model, tiny_tokenizer, prompts, tmp_path, other):
    """Resuming would mix two models' (or two settings') answers in one file: refused, the file kept."""
    settings = {"max_new_tokens": 4, "max_prompt_tokens": 64, "batch_size": 2, "prompt_style": "raw"}
    out = tmp_path / "answers.jsonl"
    generate_answers(tiny_model, tiny_tokenizer, prompts[:2], out, GenerationSettings(**settings), "tiny", False)
    before = out.read_bytes()
    changed = GenerationSettings(**{**settings, **{k: v for k, v in other.items() if k != "model_name"}})
    with pytest.raises(ResumeError, match="holds 2 answers of model 'tiny'"):
        generate_answers(tiny_model, tiny_tokenizer, prompts, out, changed, other.get("model_name", "tiny"), False)
    assert out.read_bytes() == before


def test_cli_generate_and_clear_errors(tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "helpful-base" / "test.jsonl", hh_rows(6) + [{"chosen": "no turns", "rejected": "x"}])
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--model", str(tiny_model_dir), "--data", str(data.parent), "--sample", "4",
                 "--out", str(out), "--max-new-tokens", "3", "--batch-size", "2"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 4 and {r["subset"] for r in lines} == {"helpful-base"}
    assert {r["model"] for r in lines} == {tiny_model_dir.name}  # the folder's name, not its path
    captured = capsys.readouterr()
    assert "skipped 1 rows" in captured.err and "4 answers" in captured.out
    # mistakes in what was given: one line and exit code 2 (tests/eval/test_eval_usage_errors.py)
    assert main(["generate", "--model", str(tmp_path / "missing"), "--data", str(data), "--out", str(out)]) == 2
    assert "--model" in capsys.readouterr().err
