"""The collapse guard (deft_guard): its rules on made-up step records and answer summaries, then
real DEFT-DPO training on the sharpened tiny Llama through Axolotl: a run driven to collapse (the
linear term at a huge lambda and learning rate) is named in one line per signal, by the training
signals and by the generation check alike, `stop` ends it early with a checkpoint saved, a
healthy run and `off` stay silent, and a run resumed from a checkpoint is the run never stopped,
its guard and metrics log included."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil

import pytest
import torch

from deft_plugin.core.answers import AnswerSummary
from deft_plugin.data.encoding import EncodedRow
from deft_plugin.filtering.pipeline import FilterResult
from deft_plugin.integration.guard import ADVICE, WINDOW, AnswerGuard, CollapseGuard, Events, guard_prompts
from deft_plugin.launch.outputs import METRICS_LOG

import test_dpo_trainer
from test_dpo_trainer import deft_dataset_meta, load

sharp_model_dir, base_cfg = test_dpo_trainer.sharp_model_dir, test_dpo_trainer.base_cfg

HEALTHY = {"top_token_share": 0.1, "mean_token_accuracy": 0.4, "reward_chosen": 0.05, "reward_rejected": 0.02}


def feed(guard: CollapseGuard, records: list[dict]) -> list[str]:
    lines = []
    for step, record in enumerate(records, 1):
        lines += guard.update(record, step)[1]
    return lines


def test_a_healthy_run_is_silent_and_reports_its_signals():
    guard = CollapseGuard()
    assert feed(guard, [HEALTHY] * (3 * WINDOW)) == []
    metrics, _ = guard.update(HEALTHY, 3 * WINDOW + 1)
    assert metrics == {"deft/guard_top_token_share": pytest.approx(0.1),
                       "deft/guard_accuracy_ratio": pytest.approx(1.0),
                       "deft/guard_rejected_reward_rise": pytest.approx(0.0), "deft/guard_events": 0.0}


def test_nothing_is_judged_before_two_windows():
    guard = CollapseGuard()
    collapsed = {**HEALTHY, "top_token_share": 1.0}
    for step, record in enumerate([HEALTHY] * WINDOW + [collapsed] * (WINDOW - 1), 1):
        assert guard.update(record, step) == ({}, [])
    metrics, lines = guard.update(collapsed, 2 * WINDOW)
    assert metrics["deft/guard_top_token_share"] == pytest.approx(1.0) and len(lines) == 1


def test_each_signal_fires_once_when_it_crosses_and_names_its_value():
    guard = CollapseGuard()
    collapsing = {"top_token_share": 0.9, "mean_token_accuracy": 0.1, "reward_chosen": 0.3, "reward_rejected": 0.25}
    lines = feed(guard, [HEALTHY] * WINDOW + [collapsing] * (3 * WINDOW))
    assert len(lines) == 3 and guard.events.count == 3  # once each, not at every step after
    assert lines[0].startswith(f"DEFT guard (step {2 * WINDOW}): 90% of the chosen replies' positions predict the "
                               "same single token (start: 10%)")
    assert "mean-token accuracy fell to 0.100 (25% of the start's 0.400)" in lines[1]
    assert "R(y-) rose by +0.230 with R(y+)" in lines[2]
    assert all("lower deft_reward_weight, or use a saturating deft_loss_form" in line for line in lines)
    assert feed(guard, [HEALTHY] * (2 * WINDOW)) == []  # recovered: quiet again
    assert len(feed(guard, [collapsing] * WINDOW)) == 3  # and a new crossing is a new event


def test_rewards_rising_together_fire_but_a_separating_pair_does_not():
    separating = {**HEALTHY, "reward_chosen": 0.5, "reward_rejected": 0.0}
    assert feed(CollapseGuard(), [HEALTHY] * WINDOW + [separating] * WINDOW) == []
    together = {**HEALTHY, "reward_chosen": 0.2, "reward_rejected": 0.15}
    assert len(feed(CollapseGuard(), [HEALTHY] * WINDOW + [together] * WINDOW)) == 1


def test_the_answer_check_names_each_signal_once_against_the_start():
    guard = AnswerGuard(AnswerSummary(distinct_words=0.7, repetitive=0.1, chars=300.0, answers=20))
    assert guard.update(AnswerSummary(0.68, 0.15, 400.0, 20), 10) == (
        {"deft/guard_answer_distinct_words": 0.68, "deft/guard_answer_repetitive": 0.15,
         "deft/guard_answer_length_ratio": pytest.approx(4 / 3)}, [])
    metrics, lines = guard.update(AnswerSummary(0.2, 0.75, 90.0, 20), 20)
    assert [line.split(": ", 1)[1].split(";")[0] for line in lines] == [
        "answers' distinct-word share 0.200 < 0.9 x the start's 0.700",
        "repetitive answers 75% > the start's 10% + 10%",
        "answer length 0.30x the start's, outside 0.5-2.0x"]
    assert all(line.startswith("DEFT guard (step 20): ") and "deft_reward_weight" in line for line in lines)
    assert guard.update(AnswerSummary(0.2, 0.75, 90.0, 20), 30)[1] == []  # still firing: no new event


def test_a_guards_state_survives_its_round_trip():
    guard = CollapseGuard()
    collapsing = {**HEALTHY, "top_token_share": 0.9}
    feed(guard, [HEALTHY] * WINDOW + [collapsing] * WINDOW)
    kept = CollapseGuard.from_dict(json.loads(json.dumps(guard.to_dict())))
    assert kept == guard and kept.events.firing == {"top_token_share"}
    assert kept.update(collapsing, 11) == guard.update(collapsing, 11)
    answers = AnswerGuard(AnswerSummary(0.7, 0.1, 300.0, 20), Events({"repetitive"}, 2))
    assert AnswerGuard.from_dict(json.loads(json.dumps(answers.to_dict()))) == answers


def test_one_answer_turning_repetitive_among_few_is_not_a_collapse():
    guard = AnswerGuard(AnswerSummary(0.7, 0.25, 300.0, answers=4))
    assert guard.update(AnswerSummary(0.7, 0.5, 300.0, 4), 2)[1] == []  # one of four: 25 points
    assert guard.update(AnswerSummary(0.7, 0.75, 300.0, 4), 4)[1][0].endswith(
        "repetitive answers 75% > the start's 25% + 25%; " + ADVICE)


def test_the_answer_check_prompts_are_rows_the_run_does_not_train_on():
    encoded = {i: EncodedRow(i, (100 + i, 1), ((5,), (6,))) for i in (0, 1, 2, 3, 5)}
    result = FilterResult(kept=[3, 1], scores={}, rewards={}, qdiff=None, encoded=encoded)
    assert guard_prompts(result, 2) == ([[100, 1], [102, 1]], "rows the filter left out")
    assert guard_prompts(result, 9)[0] == [[100, 1], [102, 1], [105, 1]]
    everything = FilterResult(kept=[3, 1, 0, 2, 5], scores={}, rewards={}, qdiff=None, encoded=encoded)
    assert guard_prompts(everything, 2) == ([[103, 1], [101, 1]], "training rows (the filter left none out)")


@contextlib.contextmanager
def guard_lines():
    """The DEFT logger's warning lines while active (Axolotl's loggers do not propagate to the root)."""
    lines: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("axolotl.integrations.deft")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def train(base_cfg, tmp_path, resume_from=None, **keys):
    from axolotl.train import setup_model_and_trainer

    cfg = load({**base_cfg, "output_dir": str(tmp_path / "out"), "num_epochs": 3, "lr_scheduler": "constant", **keys})
    trainer = setup_model_and_trainer(cfg, deft_dataset_meta(cfg))[0]
    with guard_lines() as lines:  # after Axolotl has set its logging up
        trainer.train(resume_from_checkpoint=resume_from)
    return trainer, [h for h in trainer.state.log_history if "loss" in h], lines


COLLAPSE = {"deft_reward_weight": 50.0, "learning_rate": 1e-2, "deft_loss_form": "pair"}


@pytest.mark.slow
def test_a_run_driven_to_collapse_is_named(base_cfg, tmp_path):
    trainer, steps, lines = train(base_cfg, tmp_path, **COLLAPSE)
    assert any("predict the same single token" in line for line in lines), lines
    assert len(steps) == trainer.state.max_steps  # warn: the run goes on
    assert steps[-1]["deft/guard_events"] >= 1 and steps[-1]["deft/guard_top_token_share"] >= 0.5


@pytest.mark.slow
def test_the_generation_check_names_a_run_driven_to_collapse(base_cfg, tmp_path):
    trainer, steps, lines = train(base_cfg, tmp_path, deft_guard_answers_every=2, deft_guard_answers=3, **COLLAPSE)
    answer_lines = [line for line in lines if "answers' distinct-word share" in line or "repetitive answers" in line
                    or "answer length" in line]
    assert answer_lines, lines
    checked = [h for h in steps if "deft/guard_answer_distinct_words" in h]
    assert [h["step"] for h in checked] == list(range(2, trainer.state.max_steps + 1, 2))


@pytest.mark.slow
def test_stop_ends_the_run_with_a_checkpoint(base_cfg, tmp_path):
    trainer, steps, lines = train(base_cfg, tmp_path, deft_guard="stop", **COLLAPSE)
    assert trainer.state.global_step < trainer.state.max_steps
    assert (tmp_path / "out" / f"checkpoint-{trainer.state.global_step}").is_dir()
    assert any("deft_guard is stop: the run ends after this step" in line for line in lines)


@pytest.mark.slow
@pytest.mark.parametrize("keys", [{"deft_reward_weight": 0.5, "learning_rate": 1e-4, "deft_guard_answers_every": 2,
                                   "deft_loss_form": "pair"},
                                  {"deft_reward_weight": 2.0, "learning_rate": 1e-3, "deft_loss_form": "margin"},
                                  {**COLLAPSE, "deft_guard": "off", "deft_guard_answers_every": 1}],
                         ids=["healthy-pair", "healthy-margin", "off"])
def test_a_healthy_run_and_off_are_silent(base_cfg, tmp_path, keys):
    trainer, steps, lines = train(base_cfg, tmp_path, **keys)
    assert not [line for line in lines if line.startswith("DEFT guard")]
    assert len(steps) == trainer.state.max_steps
    if keys.get("deft_guard") == "off":
        assert not any(k.startswith("deft/guard_") for h in steps for k in h)
    else:
        assert steps[-1]["deft/guard_events"] == 0 and "deft/guard_top_token_share" in steps[-1]


@pytest.mark.slow
def test_a_resumed_run_is_the_run_never_stopped(base_cfg, tmp_path):
    """A run stopped after its checkpoint at step 12 and resumed from it: the same adapter, losses
    and guard metrics as the run never stopped, the guard's events after step 12 and no others
    (it measures against the run's start, not the step it resumed at), and one metrics log."""
    keys = {**COLLAPSE, "deft_guard_answers_every": 2, "deft_guard_answers": 3, "save_strategy": "steps",
            "save_steps": 6}
    whole, whole_steps, whole_lines = train(base_cfg, tmp_path / "whole", **keys)
    assert whole.state.global_step > 12 and any(line.startswith("DEFT guard (step 1") for line in whole_lines)
    stopped = tmp_path / "resumed" / "out"
    shutil.copytree(tmp_path / "whole" / "out" / "checkpoint-12", stopped / "checkpoint-12")
    shutil.copy(tmp_path / "whole" / "out" / METRICS_LOG, stopped / METRICS_LOG)  # with records past step 12
    resumed, resumed_steps, resumed_lines = train(base_cfg, tmp_path / "resumed",
                                                  resume_from=str(stopped / "checkpoint-12"), **keys)

    def params(trainer):
        return {n: p.detach() for n, p in trainer.model.named_parameters() if p.requires_grad}

    assert all(torch.equal(p, params(resumed)[n]) for n, p in params(whole).items())
    def logged(steps):  # TRL's running count of tokens seen restarts at 0 in a resumed run (TRL's, not DEFT's)
        return [{k: v for k, v in h.items() if k != "num_tokens"} for h in steps]

    assert logged(resumed_steps) == logged(whole_steps)  # to step 12 the checkpoint's history, then trained again
    after = [h for h in whole_steps if h["step"] > 12]
    assert any("deft/guard_answer_distinct_words" in h for h in after) and after[-1]["deft/guard_events"] >= 1
    events = [line for line in whole_lines if line.startswith("DEFT guard (step")]
    assert [line for line in resumed_lines if line.startswith("DEFT guard (step")] == \
        [line for line in events if int(line.split()[3].rstrip("):")) > 12]
    records = [[json.loads(line) for line in (out / METRICS_LOG).read_text().splitlines()]
               for out in (stopped, tmp_path / "whole" / "out")]
    assert [r["step"] for r in records[0]] == [r["step"] for r in records[1]]  # each step once
    assert logged(r for r in records[0] if "loss" in r) == logged(r for r in records[1] if "loss" in r)
