"""Training callbacks."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback

from deft_plugin.core.answers import AnswerSummary, generate_batch
from deft_plugin.integration.guard import ANSWER_TOKENS, AnswerGuard


class MetricsLogCallback(TrainerCallback):
    """Appends every log record (loss, deft/* metrics, ...) with its step to a JSONL file,
    on the main process only, so runs can be plotted and compared without parsing logs."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            record = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


class AnswerGuardCallback(TrainerCallback):
    """The collapse guard's generation check (deft_guard_answers_every): greedy answers to a few
    prompts the run does not train on, before training and every `every` optimizer steps, held
    against each other by guard.AnswerGuard. Every process answers the same prompts, so every rank
    decides alike; the metrics and event lines go through the DEFT trainer like the guard's others."""

    def __init__(self, trainer, prompts: list[list[int]], every: int, max_new_tokens: int = ANSWER_TOKENS):
        self.trainer, self.prompts, self.every, self.max_new_tokens = trainer, prompts, every, max_new_tokens
        self.guard: AnswerGuard | None = None

    def answers(self) -> AnswerSummary:
        model = self.trainer.model
        training = model.training
        model.eval()
        try:
            return AnswerSummary.of(generate_batch(model, self.trainer.processing_class, self.prompts,
                                                   self.max_new_tokens))
        finally:
            model.train(training)

    def on_train_begin(self, args, state, control, **kwargs):
        self.guard = AnswerGuard(self.answers())

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every:
            return
        metrics, lines = self.guard.update(self.answers(), state.global_step)
        self.trainer.record_train_metrics(metrics)
        self.trainer.guard_events(lines)
