"""What both DEFT trainers share: the loss settings they are configured with, through one method."""

from __future__ import annotations

from dataclasses import replace

from deft_plugin.core.losses import LossSettings


class DeftLossMixin:
    """A trainer whose loss carries the DEFT term; the plugin configures it in post_trainer_create."""

    deft_loss: LossSettings | None = None

    def configure_deft(self, loss: LossSettings) -> None:
        if loss.qn is None:
            raise ValueError("DEFT loss settings without a discrepancy distribution (qn)")
        self.deft_loss = replace(loss, qn=loss.qn.float(), special_ids=tuple(loss.special_ids))

    def configured_loss(self) -> LossSettings:
        if self.deft_loss is None:
            raise RuntimeError(f"{type(self).__name__}: DEFT loss without a discrepancy distribution "
                               "(configure_deft not called)")
        return self.deft_loss
