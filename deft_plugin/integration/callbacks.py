"""Training callbacks."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from deft_plugin.core.answers import AnswerSummary, generate_batch
from deft_plugin.integration.guard import ANSWER_TOKENS, AnswerGuard, CollapseGuard
from deft_plugin.utils.atomic import atomic_write_text

LOG = logging.getLogger("axolotl.integrations.deft")
COLLAPSE_GUARD_STATE = "deft_guard.json"  # in each checkpoint folder
ANSWER_GUARD_STATE = "deft_answer_guard.json"


def checkpoint_dir(args, state) -> Path:
    """The folder the Trainer saves the checkpoint of the current step in, and resumes from."""
    return Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"


def keep_in_checkpoint(args, state, name: str, data: dict) -> None:
    """A guard's state beside the checkpoint just saved; one copy per machine, since a resumed run
    reads it on every process."""
    if state.is_local_process_zero:
        atomic_write_text(checkpoint_dir(args, state) / name, json.dumps(data))


def kept_in_checkpoint(args, state, name: str) -> dict | None:
    """A guard's state when the run resumes from a checkpoint that holds it; None on a fresh run.
    A checkpoint without it (saved before the guard kept its state) restarts that guard at the step
    resumed, and says so."""
    if state.global_step == 0:
        return None
    path = checkpoint_dir(args, state) / name
    if path.is_file():
        return json.loads(path.read_text())
    LOG.warning("DEFT guard: resumed at step %d, but %s holds no %s (saved by an older version, or the "
                "checkpoint is outside output_dir); that check measures from step %d instead of the run's start",
                state.global_step, path.parent, name, state.global_step)
    return None


class MetricsLogCallback(TrainerCallback):
    """Appends every log record (loss, deft/* metrics, ...) with its step to a JSONL file,
    on the main process only, so runs can be plotted and compared without parsing logs."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_train_begin(self, args, state, control, **kwargs):
        """A fresh run starts an empty log; a resumed one keeps the records up to the step it resumed
        at (those after it belong to the interrupted run and come again)."""
        if state.is_world_process_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            kept = []
            if state.global_step and self.path.is_file():
                kept = [line for line in self.path.read_text().splitlines()
                        if line and json.loads(line)["step"] <= state.global_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))

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
        kept = kept_in_checkpoint(args, state, ANSWER_GUARD_STATE)
        self.guard = AnswerGuard.from_dict(kept) if kept else AnswerGuard(self.answers())

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every:
            return
        metrics, lines = self.guard.update(self.answers(), state.global_step)
        self.trainer.record_train_metrics(metrics)
        self.trainer.guard_events(lines)

    def on_save(self, args, state, control, **kwargs):
        keep_in_checkpoint(args, state, ANSWER_GUARD_STATE, self.guard.to_dict())


class CollapseGuardStateCallback(TrainerCallback):
    """Keeps the trainer's collapse guard in each checkpoint and gives it back when the run
    resumes from one, so that the guard keeps measuring against the run's first steps."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        kept = kept_in_checkpoint(args, state, COLLAPSE_GUARD_STATE)
        self.trainer.deft_guard = CollapseGuard.from_dict(kept) if kept else None

    def on_save(self, args, state, control, **kwargs):
        if self.trainer.deft_guard is not None:
            keep_in_checkpoint(args, state, COLLAPSE_GUARD_STATE, self.trainer.deft_guard.to_dict())
