"""Choosing among a study's arms on validation, under a generation guard, by a rule fixed before
the runs: among the arms whose greedy answers stay like the starting model's (distinct-word share
>= 0.9x base, repetitive answers <= base + 10 points, length within 0.5-2x base), the one with the
highest value of the criterion (validation implicit-reward accuracy by default); ties go to the
arm listed first. An arm whose answers break the guard is never chosen, however accurate.

    python -m deft_study.choice STUDY/report.json --arms lr-5e-5,lr-1e-4 --out STUDY/choice.json

writes the table, the chosen arm and its recipe (the spec's recipe with the arm's changes), which
a later spec takes with `recipe_from:`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from deft_plugin.core.answers import AnswerSummary
from deft_plugin.integration.guard import answer_signals


def guard_failures(metrics: dict, base: dict, answers: int) -> list[str]:
    """Why an arm's `answers` answers fail the generation guard against the base's ([] when they
    pass): the plugin's collapse guard's own rule (deft_plugin.integration.guard.answer_signals)."""
    summary = lambda m: AnswerSummary(m["distinct_words"]["mean"], m["repetitive"]["mean"],  # noqa: E731
                                      m["answer_chars"]["mean"], answers)
    return [line for _, fires, line in answer_signals(summary(base), summary(metrics)).values() if fires]


def choose(report: dict, arms: list[str], criterion: str = "implicit_accuracy") -> dict:
    """The rule above over `arms` of a study report: {criterion, table, chosen}."""
    if report["spec"]["measure"]["heldout"] != "validation":
        raise ValueError("choices are made on the validation split only; this report measured "
                         f"{report['spec']['measure']['heldout']}")
    base = next(a for a in report["arms"].values() if a["method"] == "base")["metrics"]
    table = []
    for name in arms:
        if name not in report["arms"]:
            raise ValueError(f"--arms: {name} has no finished run in the report (pending: {report['pending']})")
        metrics = report["arms"][name]["metrics"]
        failures = guard_failures(metrics, base, report["spec"]["measure"]["generate"])
        table.append({"arm": name, criterion: metrics[criterion]["mean"], "passes": not failures,
                      "failures": failures})
    passing = [row for row in table if row["passes"]]
    chosen = max(passing, key=lambda row: row[criterion])["arm"] if passing else None  # max keeps the first of ties
    return {"criterion": criterion, "table": table, "chosen": chosen}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", help="a study's report.json, measured on validation")
    p.add_argument("--arms", required=True, help="comma-separated candidate arms, in order of preference on ties")
    p.add_argument("--criterion", default="implicit_accuracy")
    p.add_argument("--out", required=True, help="where to write choice.json")
    args = p.parse_args(argv)
    report = json.loads(Path(args.report).read_text())
    result = choose(report, [a.strip() for a in args.arms.split(",")], args.criterion)
    spec = report["spec"]
    arm = next((a for a in spec["arms"] if a["name"] == result["chosen"]), None)
    result["recipe"] = {**spec["recipe"], **arm["recipe"]} if arm else None
    if arm and arm.get("reward_weight", 0) > 0:  # a DEFT arm: the term's form and lambda it chose
        result["term"] = {"loss_form": arm["loss_form"], "reward_weight": arm["reward_weight"]}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for row in result["table"]:
        print(f"{row['arm']:<20} {args.criterion} {row[args.criterion]:.3f}  "
              + ("passes" if row["passes"] else "fails: " + "; ".join(row["failures"])))
    print(f"chosen: {result['chosen'] or 'none: no arm passes the generation guard'}")
    return 0 if arm else 1


if __name__ == "__main__":
    raise SystemExit(main())
