"""What both DEFT trainers share: the loss settings they are configured with, through one method."""

from __future__ import annotations

import logging
from dataclasses import replace

from deft_plugin.core.losses import LossSettings
from deft_plugin.integration.guard import CollapseGuard

LOG = logging.getLogger("axolotl.integrations.deft")


class DeftLossMixin:
    """A trainer whose loss carries the DEFT term; the plugin configures it in post_trainer_create.
    It also runs the collapse guard on what the loss measured."""

    deft_loss: LossSettings | None = None
    deft_guard: CollapseGuard | None = None

    def configure_deft(self, loss: LossSettings) -> None:
        if loss.qn is None:
            raise ValueError("DEFT loss settings without a discrepancy distribution (qn)")
        self.deft_loss = replace(loss, qn=loss.qn.float(), special_ids=tuple(loss.special_ids))

    def configured_loss(self) -> LossSettings:
        if self.deft_loss is None:
            raise RuntimeError(f"{type(self).__name__}: DEFT loss without a discrepancy distribution "
                               "(configure_deft not called)")
        return self.deft_loss

    def guarding(self) -> bool:
        return self.configured_loss().guard != "off" and self.model.training

    def guard_step(self, values: dict[str, float]) -> dict[str, float]:
        """The collapse guard's deft/guard_* metrics of a training step (values gathered over the
        processes); writes its event lines (guard_events)."""
        if self.deft_guard is None:
            self.deft_guard = CollapseGuard()
        metrics, lines = self.deft_guard.update(values, self.state.global_step + 1)
        self.guard_events(lines)
        return metrics

    def guard_events(self, lines: list[str]) -> None:
        """Writes the guard's event lines; under deft_guard: stop the run ends after this step,
        with its checkpoint saved."""
        for line in lines:
            LOG.warning(line)
        if lines and self.configured_loss().guard == "stop":
            LOG.warning("DEFT guard: deft_guard is stop: the run ends after this step, its checkpoint saved")
            self.control.should_training_stop = True
            self.control.should_save = True

    def record_train_metrics(self, metrics: dict[str, float]) -> None:
        """Adds values to the training metrics logged (as means) at the next log."""
        for key, value in metrics.items():
            self.train_metrics()[key].append(value)

    def train_metrics(self) -> dict[str, list[float]]:
        raise NotImplementedError
