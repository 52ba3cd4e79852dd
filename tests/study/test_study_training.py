"""What a study keeps of a run's log: the collapse guard's event lines, exactly as the trainer wrote them."""

from __future__ import annotations

from deft_plugin.integration.guard import Events
from deft_study.training import guard_events


def test_guard_events_are_the_event_lines_of_the_log_without_their_prefix(tmp_path):
    (event,) = Events().lines({"top_token_share": (0.8, True, "80% of positions predict one token")}, step=12)
    log = tmp_path / "train.log"
    log.write_text("\n".join([
        "[2026-12-07 10:00:00][INFO] loading model",
        f"[2026-12-07 10:05:00,123] [WARNING] [axolotl.integrations.deft] {event}",
        "{'loss': '0.69', 'deft/guard_events': '1'}",
        "[2026-12-07 10:06:00][WARNING] DEFT guard: deft_guard is stop: the run ends after this step",
    ]) + "\n")
    assert guard_events(log) == [event]
    assert event.startswith("DEFT guard (step 12): 80% of positions predict one token; lower deft_reward_weight")
    log.write_text("[INFO] training\n{'loss': '0.69', 'deft/guard_events': '0'}\n")
    assert guard_events(log) == []
