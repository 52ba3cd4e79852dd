"""Reward models for scoring answers: standard sequence-classification checkpoints (one
logit), and the OpenAssistant GPT-NeoX reward format PRO evaluated with
(`model_type: gpt_neox_reward_model`: a GPT-NeoX body and a Linear(hidden, 1) head read at the
last non-pad token), which transformers cannot load until its config and class are registered.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, GPTNeoXConfig, GPTNeoXModel
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXPreTrainedModel

OA_PROMPTER, OA_ASSISTANT = "<|prompter|>", "<|assistant|>"
MAX_TOKENS = 1024


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
    """(model, tokenizer, kind) with kind "openassistant" or "standard"."""
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
    return model.to(dev).eval(), tokenizer, kind


def reward_text(tokenizer, kind: str, messages: list[dict], answer: str) -> str:
    """The dialogue with the answer as its last assistant turn, in the reward model's format:
    OpenAssistant's <|prompter|>q<eos><|assistant|>a<eos> turns, the tokenizer's chat template,
    or the raw Human:/Assistant: text."""
    turns = messages + [{"role": "assistant", "content": answer}]
    if kind == "openassistant":
        eos = tokenizer.eos_token or ""
        tag = {"user": OA_PROMPTER, "assistant": OA_ASSISTANT}
        return "".join(f"{tag[m['role']]}{m['content']}{eos}" for m in turns)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(turns, tokenize=False)
    names = {"user": "Human", "assistant": "Assistant"}
    return "".join(f"\n\n{names[m['role']]}: {m['content']}" for m in turns)


@torch.inference_mode()
def reward_logits(model, tokenizer, texts: list[str], batch_size: int = 8,
                  add_special_tokens: bool = False) -> list[float]:
    """One logit per text, each left-truncated to its last MAX_TOKENS tokens, right padded.
    add_special_tokens: for raw text (a chat template already writes the model's BOS)."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad  # standard heads find the last token through it
    out: list[float] = []
    for start in range(0, len(texts), batch_size):
        ids = [tokenizer(text=t, add_special_tokens=add_special_tokens)["input_ids"][-MAX_TOKENS:]
               for t in texts[start:start + batch_size]]
        width = max(map(len, ids))
        input_ids = torch.tensor([i + [pad] * (width - len(i)) for i in ids], device=device)
        attention = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=device)
        out += model(input_ids=input_ids, attention_mask=attention).logits[:, 0].float().tolist()
    return out
