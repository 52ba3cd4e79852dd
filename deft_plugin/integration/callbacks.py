"""Training callbacks."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback


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
