"""Dataset formats: HH-RLHF transcripts (hand-made and the real 2,312-pair test split) and
plain preference rows."""

from collections import Counter

import pytest

from deft_plugin import registry
from deft_plugin.data.formats import hh_rlhf, preference
from deft_plugin.hookspecs import PROMPT_STYLES, RowError

from builders import hh_rows

H, A = "\n\nHuman:", "\n\nAssistant:"


def _row(prompt: str, chosen: str, rejected: str) -> dict:
    return {"chosen": prompt + chosen, "rejected": prompt + rejected}


# ----------------------------------------------------------------------------- HH-RLHF by hand


@pytest.mark.covers("plugin:deft_plugin.data.formats.hh_rlhf", "format:hh_rlhf")
def test_hh_rlhf_as_registered():
    """`type: deft.hh_rlhf` reaches this module's parser through its entry point."""
    assert registry.plugin_manager().get_plugin("hh_rlhf") is hh_rlhf
    fmt = registry.get_format("hh_rlhf")
    row = _row(f"{H} Hi.{A}", " Hello.", " Go away.")
    assert fmt.parse(row, "raw") == {"prompt": f"{H} Hi.{A}", "chosen": " Hello.", "rejected": " Go away."}
    assert fmt.parse(row, "chat_template") == {"prompt": [{"role": "user", "content": "Hi."}],
                                               "chosen": [{"role": "assistant", "content": "Hello."}],
                                               "rejected": [{"role": "assistant", "content": "Go away."}]}


def test_single_turn_raw():
    row = _row(f"{H} How do I bake bread?{A}", " Mix flour, water and yeast.", " I don't know.")
    assert hh_rlhf.parse(row, "raw") == {
        "prompt": "\n\nHuman: How do I bake bread?\n\nAssistant:",
        "chosen": " Mix flour, water and yeast.",
        "rejected": " I don't know.",
    }


def test_single_turn_chat_template():
    row = _row(f"{H} How do I bake bread?{A}", " Mix flour, water and yeast.", " I don't know.")
    assert hh_rlhf.parse(row, "chat_template") == {
        "prompt": [{"role": "user", "content": "How do I bake bread?"}],
        "chosen": [{"role": "assistant", "content": "Mix flour, water and yeast."}],
        "rejected": [{"role": "assistant", "content": "I don't know."}],
    }


def test_multi_turn_both_styles():
    prompt = f"{H} Hi there.{A} Hello! How can I help?{H} Tell me a joke.\nA short one.{A}"
    row = _row(prompt, " Why did the chicken cross the road?", " No.")
    raw = hh_rlhf.parse(row, "raw")
    assert raw["prompt"] == prompt  # the whole shared dialogue, ending with "\n\nAssistant:"
    assert (raw["chosen"], raw["rejected"]) == (" Why did the chicken cross the road?", " No.")
    chat = hh_rlhf.parse(row, "chat_template")
    assert chat["prompt"] == [
        {"role": "user", "content": "Hi there."},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke.\nA short one."},  # single newlines stay inside a turn
    ]
    assert chat["chosen"] == [{"role": "assistant", "content": "Why did the chicken cross the road?"}]
    assert chat["rejected"] == [{"role": "assistant", "content": "No."}]


def test_leading_and_trailing_space_handling():
    # replies with no space, several spaces, trailing whitespace; turns with extra spaces
    prompt = f"{H}   Question?  {A}"
    row = _row(prompt, "Answer one.  \n", "   Answer two.")
    raw = hh_rlhf.parse(row, "raw")
    assert raw["chosen"] == " Answer one." and raw["rejected"] == " Answer two."  # exactly one leading space
    assert raw["prompt"] == prompt  # the prompt text is kept verbatim
    chat = hh_rlhf.parse(row, "chat_template")
    assert chat["prompt"] == [{"role": "user", "content": "Question?"}]
    assert chat["chosen"][0]["content"] == "Answer one." and chat["rejected"][0]["content"] == "Answer two."


def test_reply_with_inline_role_words_and_empty_reply():
    prompt = f"{H} Say something.{A}"
    row = _row(prompt, " The Human: label and Assistant: label are inline here.", " ")
    raw = hh_rlhf.parse(row, "raw")
    assert raw["chosen"] == " The Human: label and Assistant: label are inline here."
    assert raw["rejected"] == " "  # empty reply: kept here, dropped as degenerate at encoding
    assert hh_rlhf.parse(row, "chat_template")["rejected"] == [{"role": "assistant", "content": ""}]


def test_split_on_last_assistant_turn():
    # a reply that itself contains a "\n\nAssistant:" turn: the split is at the last one
    text = f"{H} a{A} b{H} c{A} d"
    assert hh_rlhf.split_transcript(text) == (f"{H} a{A} b{H} c{A}", "d")


@pytest.mark.parametrize("style", PROMPT_STYLES)
def test_row_errors(style):
    prompt = f"{H} Hi.{A}"
    with pytest.raises(RowError, match="no '\\\\n\\\\nAssistant:' turn"):
        hh_rlhf.parse({"chosen": f"{H} Hi. Hello.", "rejected": f"{H} Hi. Bye."}, style)
    with pytest.raises(RowError, match="no '\\\\n\\\\nAssistant:' turn"):
        hh_rlhf.parse({"chosen": prompt + " ok", "rejected": "Human: Hi. Assistant: no"}, style)
    with pytest.raises(RowError, match="differ before the last reply"):
        hh_rlhf.parse({"chosen": prompt + " ok", "rejected": f"{H} Hey.{A} ok"}, style)
    with pytest.raises(RowError, match="differ before the last reply"):
        # one side has an extra (empty-reply) turn: the real data's failure mode
        hh_rlhf.parse({"chosen": f"{prompt} first{H} more?{A} yes", "rejected": prompt}, style)
    with pytest.raises(RowError, match="missing or non-text 'rejected'"):
        hh_rlhf.parse({"chosen": prompt + " ok"}, style)
    with pytest.raises(RowError, match="missing or non-text 'chosen'"):
        hh_rlhf.parse({"rejected": prompt + " ok"}, style)
    with pytest.raises(RowError, match="missing or non-text 'chosen'"):
        hh_rlhf.parse({"chosen": ["not", "text"], "rejected": prompt + " ok"}, style)
    assert issubclass(RowError, ValueError)


def test_chat_style_rejects_dialogues_that_are_not_human_first():
    # raw text keeps whatever precedes the first turn; chat messages cannot hold it
    row = _row(f"Preamble.{H} Hi.{A}", " ok", " no")
    assert hh_rlhf.parse(row, "raw")["prompt"] == f"Preamble.{H} Hi.{A}"
    with pytest.raises(RowError, match="text before the first 'Human:' turn"):
        hh_rlhf.parse(row, "chat_template")
    with pytest.raises(RowError, match="does not start with a Human turn"):
        hh_rlhf.parse(_row(f"{A} I start.{H} Hi.{A}", " ok", " no"), "chat_template")


# ----------------------------------------------------------------------------- HH-RLHF, the real test split

# Observed on harmless-base-test.jsonl.gz (STACK.md: "5 of 2,312 pairs have different prompts,
# 4 have an empty reply"). In each of the 5, one transcript has one more turn than the other
# (the shorter one ends in an empty Assistant reply).
REAL_ROWS = 2312
DIFFERING_PROMPTS = [1254, 1688, 1950, 1952, 2036]
EMPTY_CHOSEN = [86, 516, 925, 1103]


@pytest.fixture(scope="module")
def real_rows():
    rows = hh_rows()
    assert len(rows) == REAL_ROWS
    return rows


@pytest.mark.parametrize("style", PROMPT_STYLES)
def test_real_hh_rlhf_parse_counts(real_rows, style):
    parsed, failures = {}, {}
    for i, row in enumerate(real_rows):
        try:
            parsed[i] = hh_rlhf.parse(row, style)
        except RowError as e:
            failures[i] = str(e)
    assert len(parsed) == REAL_ROWS - 5 == 2307
    assert sorted(failures) == DIFFERING_PROMPTS
    assert Counter(failures.values()) == {"chosen and rejected dialogues differ before the last reply": 5}
    if style == "raw":
        empty_chosen = [i for i, p in parsed.items() if not p["chosen"].strip()]
        empty_rejected = [i for i, p in parsed.items() if not p["rejected"].strip()]
        for p in parsed.values():
            assert p["prompt"].startswith(H) and p["prompt"].endswith(A)
            assert p["chosen"].startswith(" ") and p["rejected"].startswith(" ")
    else:
        empty_chosen = [i for i, p in parsed.items() if not p["chosen"][0]["content"]]
        empty_rejected = [i for i, p in parsed.items() if not p["rejected"][0]["content"]]
        for p in parsed.values():
            assert p["prompt"][0]["role"] == "user" and p["prompt"][-1]["role"] == "user"
            assert {m["role"] for m in p["prompt"]} <= {"user", "assistant"}
    assert empty_chosen == EMPTY_CHOSEN and empty_rejected == []


def test_real_hh_rlhf_styles_agree(real_rows):
    """Raw and chat styles carry the same replies; the raw prompt rebuilds from the messages."""
    for row in real_rows[:300]:
        try:
            raw = hh_rlhf.parse(row, "raw")
        except RowError:
            continue
        chat = hh_rlhf.parse(row, "chat_template")
        assert raw["chosen"] == " " + chat["chosen"][0]["content"]
        assert raw["rejected"] == " " + chat["rejected"][0]["content"]
        turns = [(m["role"], m["content"]) for m in chat["prompt"]] + [("assistant", "")]
        names = {"user": "Human", "assistant": "Assistant"}
        rebuilt = "".join(f"\n\n{names[r]}: {c}" if c else f"\n\n{names[r]}:" for r, c in turns)
        assert " ".join(rebuilt.split()) == " ".join(raw["prompt"].split())


def test_first_real_row(real_rows):
    raw = hh_rlhf.parse(real_rows[0], "raw")
    assert raw["prompt"] + raw["chosen"] == real_rows[0]["chosen"].rstrip()
    assert raw["prompt"] + raw["rejected"] == real_rows[0]["rejected"].rstrip()


# ----------------------------------------------------------------------------- plain preference rows


@pytest.mark.covers("plugin:deft_plugin.data.formats.preference", "format:preference")
def test_preference_as_registered():
    assert registry.plugin_manager().get_plugin("preference") is preference
    fmt = registry.get_format("preference")
    assert fmt.parse({"prompt": "2+2?", "chosen": " 4", "rejected": " 5"}, "raw") == {
        "prompt": "2+2?", "chosen": " 4", "rejected": " 5"}
    with pytest.raises(RowError, match="missing 'rejected'"):
        fmt.parse({"prompt": "2+2?", "chosen": " 4"}, "raw")


@pytest.mark.parametrize("style", PROMPT_STYLES)
def test_preference_text_rows(style):
    row = {"prompt": "Q: 2+2?", "chosen": " 4", "rejected": " 5", "extra": 1}
    assert preference.parse(row, style) == {"prompt": "Q: 2+2?", "chosen": " 4", "rejected": " 5"}


def test_preference_message_rows():
    row = {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
    }
    assert preference.parse(row, "chat_template") == row
    with pytest.raises(RowError, match="deft_prompt_style: chat_template"):
        preference.parse(row, "raw")


@pytest.mark.parametrize("style", PROMPT_STYLES)
def test_preference_rejects_mixed_and_missing(style):
    msgs = [{"role": "user", "content": "2+2?"}]
    reply = [{"role": "assistant", "content": "4"}]
    with pytest.raises(RowError, match="mix text and chat messages"):
        preference.parse({"prompt": msgs, "chosen": " 4", "rejected": " 5"}, style)
    with pytest.raises(RowError, match="mix text and chat messages"):
        preference.parse({"prompt": "2+2?", "chosen": reply, "rejected": " 5"}, style)
    with pytest.raises(RowError, match="missing 'rejected'"):
        preference.parse({"prompt": "2+2?", "chosen": " 4"}, style)
    with pytest.raises(RowError, match="missing 'prompt'"):
        preference.parse({"prompt": None, "chosen": " 4", "rejected": " 5"}, style)
    with pytest.raises(RowError, match="missing 'chosen'"):  # a list that is not chat messages
        preference.parse({"prompt": "2+2?", "chosen": ["4"], "rejected": " 5"}, style)
    with pytest.raises(RowError, match="missing 'chosen'"):  # messages without content
        preference.parse({"prompt": msgs, "chosen": [{"role": "assistant"}], "rejected": reply}, style)
