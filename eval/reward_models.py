"""Reward models for scoring answers: standard sequence-classification checkpoints (one
logit), and the OpenAssistant GPT-NeoX reward format PRO evaluated with
(`model_type: gpt_neox_reward_model`: a GPT-NeoX body and a Linear(hidden, 1) head read at the
last non-pad token), which transformers cannot load until its config and class are registered.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, GPTNeoXConfig, GPTNeoXModel
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXPreTrainedModel

OA_PROMPTER, OA_ASSISTANT = "<|prompter|>", "<|assistant|>"
MAX_TOKENS = 1024
# A reward model trained by `axolotl train` (reward_model: true, bradley_terry.chat_template) reads
# a system line, the dialogue as one user turn and the reply as the assistant's: Axolotl's
# Bradley-Terry rows hold one input, not a list of turns. Its folder says so in FORM_FILE, and the
# scorer then builds the same sequence (judge_row and reward_text share one_turn_messages).
FORM_FILE = "reward_form.json"
ONE_TURN = "one-turn"
JUDGE_SYSTEM = "Judge the assistant's last reply in this dialogue."


class GPTNeoXRewardModelConfig(GPTNeoXConfig):
    model_type = "gpt_neox_reward_model"

    def __init__(self, pooling: str = "last", **kwargs):
        super().__init__(**kwargs)
        self.pooling = pooling


class GPTNeoXRewardModel(GPTNeoXPreTrainedModel):
    config_class = GPTNeoXRewardModelConfig

    def __init__(self, config):
        super().__init__(config)
        self.gpt_neox = GPTNeoXModel(config)
        self.out_proj = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        hidden = self.gpt_neox(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.config.pooling == "mean":
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1)
        else:  # the last non-pad token (right padding)
            last = attention_mask.sum(1) - 1
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return SequenceClassifierOutput(logits=self.out_proj(pooled))


def register_openassistant() -> None:
    """Let AutoConfig / AutoModelForSequenceClassification load gpt_neox_reward_model checkpoints."""
    try:
        AutoConfig.register(GPTNeoXRewardModelConfig.model_type, GPTNeoXRewardModelConfig)
    except ValueError:  # already registered
        pass
    try:
        AutoModelForSequenceClassification.register(GPTNeoXRewardModelConfig, GPTNeoXRewardModel)
    except ValueError:
        pass


def load_reward_model(name_or_path: str, device: str = "auto", dtype: str = "auto"):
    """(model, tokenizer, kind) with kind "openassistant", "one-turn" (a folder with FORM_FILE) or
    "standard"."""
    from transformers import AutoTokenizer

    from deft_eval.models import device_and_dtype

    register_openassistant()
    dev, dt = device_and_dtype(device, dtype)
    try:
        config = AutoConfig.from_pretrained(name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForSequenceClassification.from_pretrained(name_or_path, dtype=dt)
    except OSError as err:
        raise RuntimeError(f"could not load the reward model {name_or_path!r} ({err}). Without hub access, give a "
                           "local copy with --reward-model DIR "
                           "(a directory with config.json and the weights).") from err
    if getattr(model.config, "num_labels", 1) != 1 and not isinstance(model, GPTNeoXRewardModel):
        raise ValueError(f"{name_or_path}: a reward model must output one logit, "
                         f"this one has {model.config.num_labels}")
    kind = "openassistant" if config.model_type == GPTNeoXRewardModelConfig.model_type else "standard"
    form = Path(name_or_path) / FORM_FILE
    if form.is_file():
        kind = read_form(form)
    return model.to(dev).eval(), tokenizer, kind


def read_form(path: Path) -> str:
    """The kind a FORM_FILE names; a form this code cannot build is an error, not a silent guess."""
    form = json.loads(path.read_text())
    if form != one_turn_form():
        raise ValueError(f"{path}: a reward model read in a form this version does not build: {form}; "
                         f"expected {one_turn_form()}")
    return ONE_TURN


def one_turn_form() -> dict:
    return {"dialogue": "one user turn", "system": JUDGE_SYSTEM}


def dialogue_text(messages: list[dict]) -> str:
    """The turns as HH-RLHF writes them, "Human: ...", "Assistant: ...", a blank line between."""
    names = {"user": "Human", "assistant": "Assistant"}
    return "\n\n".join(f"{names[m['role']]}: {m['content']}" for m in messages)


def one_turn_messages(messages: list[dict], answer: str) -> list[dict]:
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": dialogue_text(messages)},
            {"role": "assistant", "content": answer}]


def judge_row(prompt: str, chosen: str, rejected: str) -> dict:
    """An HH-RLHF pair as a row of Axolotl's `bradley_terry.chat_template` dataset type, which
    builds one_turn_messages from it."""
    from deft_plugin.data.formats.hh_rlhf import to_messages

    system, user, _ = one_turn_messages(to_messages(prompt), "")
    return {"system": system["content"], "input": user["content"], "chosen": chosen, "rejected": rejected}


def reward_text(tokenizer, kind: str, messages: list[dict], answer: str) -> str:
    """The dialogue with the answer as its last assistant turn, in the reward model's format:
    OpenAssistant's <|prompter|>q<eos><|assistant|>a<eos> turns, one_turn_messages or the turns
    themselves in the tokenizer's chat template, or the raw Human:/Assistant: text."""
    if kind == ONE_TURN:
        return tokenizer.apply_chat_template(one_turn_messages(messages, answer), tokenize=False)
    turns = messages + [{"role": "assistant", "content": answer}]
    if kind == "openassistant":
        eos = tokenizer.eos_token or ""
        tag = {"user": OA_PROMPTER, "assistant": OA_ASSISTANT}
        return "".join(f"{tag[m['role']]}{m['content']}{eos}" for m in turns)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(turns, tokenize=False)
    return "\n\n" + dialogue_text(turns)


def reward_ids(tokenizer, kind: str, prompt: str, answer: str) -> list[int]:
    """The token ids a reward model reads for an answer to an HH-RLHF prompt: reward_text of the
    dialogue, left-truncated to its last MAX_TOKENS tokens (the answer survives a long dialogue).
    Raw text gets the tokenizer's special tokens; a chat template writes its own."""
    from deft_plugin.data.formats.hh_rlhf import to_messages

    text = reward_text(tokenizer, kind, to_messages(prompt), answer)
    raw = kind == "standard" and not getattr(tokenizer, "chat_template", None)
    return tokenizer(text=text, add_special_tokens=raw)["input_ids"][-MAX_TOKENS:]


def pad_right(ids: list[list[int]], pad: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) of a batch, right padded."""
    width = max(map(len, ids))
    input_ids = torch.tensor([i + [pad] * (width - len(i)) for i in ids], device=device)
    attention = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=device)
    return input_ids, attention


@torch.inference_mode()
def reward_logits(model, tokenizer, ids: list[list[int]], batch_size: int = 8) -> list[float]:
    """One logit per sequence of token ids (reward_ids), in batches, right padded."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad  # standard heads find the last token through it
    out: list[float] = []
    for start in range(0, len(ids), batch_size):
        input_ids, attention = pad_right(ids[start:start + batch_size], pad, device)
        out += model(input_ids=input_ids, attention_mask=attention).logits[:, 0].float().tolist()
    return out
