"""What a study keeps of a run's log: the collapse guard's event lines, exactly as the trainer wrote them,
also for runs that finished before they were recorded."""

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


def test_a_run_from_before_the_record_gets_its_guard_events_from_its_own_log(tmp_path):
    import json

    from deft_study.report import collect
    from deft_study.spec import Arm, StudySpec
    from deft_study.training import run_dir

    spec = StudySpec(arms=[Arm("base", "base"), Arm("dpo", select="random")], comparisons=[])
    (event,) = Events().lines({"accuracy_ratio": (0.3, True, "accuracy fell")}, step=40)
    for arm, log in ((spec.arms[0], None), (spec.arms[1], f"[WARNING] {event}\n")):
        folder = run_dir(tmp_path, arm, 0)
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps({"arm": arm.name, "trained": log is not None}))
        (folder / "eval.json").write_text(json.dumps({"arm": arm.name}))
        if log:
            (folder / "train.log").write_text(log)
    runs = collect(spec, tmp_path)
    assert runs["dpo"][0][0]["guard_events"] == [event]
    assert "guard_events" not in runs["base"][0][0]  # nothing trained: nothing to read
