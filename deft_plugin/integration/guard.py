"""The collapse guard (`deft_guard`): signals that move before a model's generation breaks, read
from what the DEFT trainers measure at every training step anyway.

- top_token_share: the share of the chosen replies' positions whose most likely next token is the
  batch's single most frequent one. A model collapsing into one repeated token drives it towards 1
  (the linear DEFT term's optimum is a point mass on Qn's top token at every position).
- accuracy_ratio: the mean-token accuracy of the chosen replies (argmax = the human token) against
  its value at the start; it falls as the model stops predicting text.
- rejected_reward_rise: how far R(y-) has risen since the start while R(y+) rose as well: the DEFT
  term then moves every position towards Q's top tokens instead of separating the replies.

Each is the mean of the last WINDOW steps against the mean of the first WINDOW, checked once 2 x
WINDOW steps have run. An event is one line, written when a signal crosses its threshold (not at
every step after), naming the signal, its value and what to change; `deft_guard: stop` also ends
the run, with its checkpoint saved. The trainers gather the values across processes first, so every
rank decides alike.

With `deft_guard_answers_every: N` the guard also reads greedy answers to a few prompts the run does
not train on, every N optimizer steps, against the model's answers before training (answer_signals):
the same rule the study chooses by (distinct-word share >= 0.9x the start's, repetitive answers <=
the start's + 10 points, length within 0.5-2x the start's). With few prompts one answer is more
than 10 points: one answer turning repetitive is allowed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from statistics import fmean

import torch

from deft_plugin.core.answers import AnswerSummary
from deft_plugin.filtering.pipeline import FilterResult

GUARD_MODES = ("warn", "stop", "off")
WINDOW = 5  # steps averaged at the start and now
TOP_TOKEN_SHARE = 0.5  # and at least twice the start's
ACCURACY_RATIO = 0.5  # of the start's mean-token accuracy
REJECTED_REWARD_RISE = 0.1  # in units of Qn (max |Qn| = 1): R(y-) and R(y+) both up by this much
DISTINCT_RATIO = 0.9  # of the start's distinct-word share, at least
REPETITIVE_POINTS = 0.10  # above the start's share of repetitive answers, at most (and one answer more)
LENGTH_RATIO = (0.5, 2.0)  # of the start's mean answer length
ANSWER_TOKENS = 64  # new tokens per guard answer: enough to see a loop, cheap enough to run often
EVENT = "DEFT guard (step"  # how every event line begins: a run's log shows whether the guard spoke
ADVICE = ("lower deft_reward_weight, or use a saturating deft_loss_form (margin or anchored); "
          "deft_guard: stop ends such a run with its checkpoint saved")


@dataclass
class Events:
    """Which signals fire; an event line only when a signal starts firing, not at every check after."""

    firing: set[str] = field(default_factory=set)
    count: int = 0

    def lines(self, signals: dict[str, tuple[float, bool, str]], step: int) -> list[str]:
        crossed = {name: line for name, (_, fires, line) in signals.items() if fires}
        lines = [f"{EVENT} {step}): {line}; {ADVICE}" for name, line in crossed.items()
                 if name not in self.firing]
        self.firing = set(crossed)
        self.count += len(lines)
        return lines

    def to_dict(self) -> dict:
        return {"firing": sorted(self.firing), "count": self.count}

    @classmethod
    def from_dict(cls, data: dict) -> "Events":
        return cls(set(data["firing"]), data["count"])


@dataclass
class CollapseGuard:
    """Feed it one record a training step (top_token_share, mean_token_accuracy, reward_chosen,
    reward_rejected; a missing one is not checked); it returns the deft/guard_* metrics of the step
    and the event lines of the signals that have just crossed their thresholds."""

    history: list[dict[str, float]] = field(default_factory=list)
    events: Events = field(default_factory=Events)

    def update(self, values: dict[str, float], step: int) -> tuple[dict[str, float], list[str]]:
        self.history.append(values)
        if len(self.history) < 2 * WINDOW:
            return {}, []
        start, now = (_means(self.history[:WINDOW]), _means(self.history[-WINDOW:]))
        signals = guard_signals(start, now)
        lines = self.events.lines(signals, step)
        metrics = {f"deft/guard_{name}": value for name, (value, _, _) in signals.items()}
        return {**metrics, "deft/guard_events": float(self.events.count)}, lines

    def to_dict(self) -> dict:
        """What a checkpoint keeps, so that a resumed run holds its signals against the start of
        the run, not against the step it resumed at."""
        return {"history": self.history, "events": self.events.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> "CollapseGuard":
        return cls(list(data["history"]), Events.from_dict(data["events"]))


@dataclass
class AnswerGuard:
    """The generation check: feed it the summary of the answers before training, then of each
    check's answers; it returns the check's deft/guard_answer_* metrics and event lines."""

    start: AnswerSummary
    events: Events = field(default_factory=Events)

    def update(self, now: AnswerSummary, step: int) -> tuple[dict[str, float], list[str]]:
        signals = answer_signals(self.start, now)
        metrics = {f"deft/guard_answer_{name}": value for name, (value, _, _) in signals.items()}
        return metrics, self.events.lines(signals, step)

    def to_dict(self) -> dict:
        return {"start": asdict(self.start), "events": self.events.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> "AnswerGuard":
        return cls(AnswerSummary(**data["start"]), Events.from_dict(data["events"]))


def answer_signals(start: AnswerSummary, now: AnswerSummary) -> dict[str, tuple[float, bool, str]]:
    """name -> (value, whether it fires, its line) of answers against the starting model's: the
    generation guard of the collapse guard and of the study's choices alike."""
    ratio = now.chars / max(start.chars, 1e-9)
    allowed = max(REPETITIVE_POINTS, 1 / max(now.answers, 1))  # one answer turning is never a collapse on its own
    return {
        "distinct_words": (now.distinct_words, now.distinct_words < DISTINCT_RATIO * start.distinct_words,
                           f"answers' distinct-word share {now.distinct_words:.3f} < {DISTINCT_RATIO} x the "
                           f"start's {start.distinct_words:.3f}"),
        "repetitive": (now.repetitive, now.repetitive > start.repetitive + allowed,
                       f"repetitive answers {now.repetitive:.0%} > the start's {start.repetitive:.0%} "
                       f"+ {allowed:.0%}"),
        "length_ratio": (ratio, not LENGTH_RATIO[0] <= ratio <= LENGTH_RATIO[1],
                         f"answer length {ratio:.2f}x the start's, outside {LENGTH_RATIO[0]}-{LENGTH_RATIO[1]}x"),
    }


def guard_prompts(result: FilterResult, count: int) -> tuple[list[list[int]], str]:
    """(prompt token ids, where they come from) for the generation check: the first `count` usable
    rows the filter did not keep (the run never trains on them); when it kept every row, the
    first kept rows'."""
    kept = set(result.kept)
    held_out = [i for i in sorted(result.encoded) if i not in kept]
    if held_out:
        return [list(result.encoded[i].prompt_ids) for i in held_out[:count]], "rows the filter left out"
    return [list(result.encoded[i].prompt_ids) for i in result.kept[:count]], \
        "training rows (the filter left none out)"


def _means(records: list[dict[str, float]]) -> dict[str, float]:
    keys = set.intersection(*(set(r) for r in records))
    return {k: fmean(r[k] for r in records) for k in keys}


def guard_signals(start: dict[str, float], now: dict[str, float]) -> dict[str, tuple[float, bool, str]]:
    """name -> (value, whether it fires, its line) for the signals both windows have."""
    out = {}
    if "top_token_share" in now:
        share, before = now["top_token_share"], start["top_token_share"]
        out["top_token_share"] = (share, share >= TOP_TOKEN_SHARE and share >= 2 * before,
                                  f"{share:.0%} of the chosen replies' positions predict the same single token "
                                  f"(start: {before:.0%}): the model is collapsing onto one token")
    if "mean_token_accuracy" in now and start.get("mean_token_accuracy", 0) > 0:
        ratio = now["mean_token_accuracy"] / start["mean_token_accuracy"]
        out["accuracy_ratio"] = (ratio, ratio < ACCURACY_RATIO,
                                 f"the chosen replies' mean-token accuracy fell to {now['mean_token_accuracy']:.3f} "
                                 f"({ratio:.0%} of the start's {start['mean_token_accuracy']:.3f})")
    if {"reward_chosen", "reward_rejected"} <= set(now):
        rise = now["reward_rejected"] - start["reward_rejected"]
        both = rise > REJECTED_REWARD_RISE and now["reward_chosen"] - start["reward_chosen"] > REJECTED_REWARD_RISE
        out["rejected_reward_rise"] = (rise, both,
                                       f"R(y-) rose by {rise:+.3f} with R(y+) "
                                       f"({start['reward_rejected']:+.3f} -> {now['reward_rejected']:+.3f}, "
                                       f"{start['reward_chosen']:+.3f} -> {now['reward_chosen']:+.3f}): the DEFT term "
                                       "is moving every reply towards Q's top tokens rather than separating them")
    return out


def top_token_share(predicted: torch.Tensor, owner: torch.Tensor, chosen: torch.Tensor) -> tuple[int, int]:
    """(positions predicting the most frequent token, positions) over the chosen sequences, from
    the head pass's per-position most likely tokens and the sequence each position belongs to;
    chosen: [sequences] bool, the chosen (best) sequences."""
    tokens = predicted[chosen[owner]]
    if tokens.numel() == 0:
        return 0, 0
    return int(torch.bincount(tokens).max()), int(tokens.numel())
