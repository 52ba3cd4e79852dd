"""The study's report: report.json computed from the runs' own files (result.json, eval.json),
report.md rendered from report.json alone, and the plots."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

import numpy as np

from deft_study.judge import RECORD, SCORES, judge_folder
from deft_study.judging import judging_sets
from deft_study.spec import ENDPOINTS, StudySpec
from deft_study.stats import (
    LENGTH_STRATA,
    bootstrap_differences,
    bootstrap_p_value,
    detectable_difference,
    holm,
    length_residuals,
    length_strata,
    mean_interval,
    pair_metrics,
    paired_bootstrap,
    prefer_shorter,
)
from deft_study.training import code_commit, guard_events, portable, run_dir

METRICS = ENDPOINTS
COMPARED = ("accuracy", "implicit_accuracy", "margin", "reward_gap")
PACKAGES = ("deft-plugin", "torch", "transformers", "trl", "axolotl", "peft", "accelerate", "datasets")


def environment(command: list[str]) -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"command": " ".join(command), "python": platform.python_version(), "machine": platform.machine(),
            "versions": versions, "commit": code_commit()}


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def collect(spec: StudySpec, out: Path) -> dict[str, dict[int, tuple[dict, dict]]]:
    """arm -> seed -> (result.json, eval.json) for every finished run."""
    runs = {}
    for arm in spec.arms:
        for seed in arm.seeds:
            result, evaluation = (_load(run_dir(out, arm, seed) / name) for name in ("result.json", "eval.json"))
            if result and evaluation:
                log = run_dir(out, arm, seed) / "train.log"
                if result.get("trained") and "guard_events" not in result and log.is_file():
                    result["guard_events"] = guard_events(log)  # runs from before it was recorded: their own log
                runs.setdefault(arm.name, {})[seed] = (result, evaluation)
    return runs


def build_report(spec: StudySpec, out: Path, command: list[str]) -> dict:
    runs = collect(spec, out)
    base_arm = next(a.name for a in spec.arms if a.method == "base")
    if base_arm not in runs:
        raise SystemExit(f"{out}: the base arm has not been measured yet; run the study first")
    base = runs[base_arm][0][1]["pairs"]
    per_pair = {name: {seed: pair_metrics(ev["pairs"], base, spec.recipe.rl_beta) for seed, (_, ev) in seeds.items()}
                for name, seeds in runs.items()}
    pool_scoring = max((r["scoring_seconds"] for seeds in runs.values() for r, _ in seeds.values()
                        if r.get("scoring_seconds")), default=0.0)
    tokens = {int(k): v for k, v in (_load(out / "data" / "pool_tokens.json") or {}).items()}
    strata = length_strata(base["n_chosen"], base["n_rejected"])  # every arm is measured on the same pairs
    arms = {name: arm_summary(spec.arm(name), seeds, per_pair[name], pool_scoring, tokens, spec.recipe.num_epochs,
                              strata)
            for name, seeds in runs.items()}
    add_time_ratios(spec, arms)
    comparisons = compare(spec, per_pair)
    q_volume = _load(out / "qvolume.json")
    pending = [f"{a.name}/seed-{s}" for a in spec.arms for s in a.seeds if s not in runs.get(a.name, {})]
    return {"spec": spec.to_dict(), "environment": environment(command),
            "data": {"split": {k: v for k, v in (_load(out / "data" / "split.json") or {}).items() if k != "indices"},
                     "measured": _load(out / "data" / "measured_counts.json")},
            "floors": floors(base, strata),
            "pool_scoring_seconds": pool_scoring, "arms": arms, "comparisons": comparisons, "pending": pending,
            # the code every run ran under: one commit, or the report says which differ
            "commits": sorted({str(r.get("commit")) for seeds in runs.values() for r, _ in seeds.values()}),
            "unclean_runs": [f"{name}/seed-{seed}" for name, seeds in runs.items() for seed, (r, _) in seeds.items()
                             if not r.get("clean", False)],  # runs before the flag was recorded count as unclean
            "q_volume": {k: v for k, v in q_volume.items() if k != "runs"} if q_volume else None,
            "judge": judge_summary(spec, out, runs)}


def judge_summary(spec: StudySpec, out: Path, runs: dict) -> dict | None:
    """The reward-model judge: how well it judges the held-out pairs beside the length rule,
    whether its scores are read, and per arm the mean of its logits over the answers (mean over
    seeds), raw and after a line on answer length fitted to every judged answer of the study."""
    record = _load(judge_folder(out) / RECORD)
    if not record:
        return None
    scored = {(name, seed): _load(run_dir(out, spec.arm(name), seed) / SCORES) for name, seeds in runs.items()
              for seed in seeds}
    scored = {k: v["answers"] for k, v in scored.items() if v}
    keys = [k for k, answers in scored.items() for _ in answers]
    logits = [a["logit"] for answers in scored.values() for a in answers]
    residuals, slope = length_residuals(logits, [a["chars"] for answers in scored.values() for a in answers])
    arms = {}
    for name in runs:
        rows = {s: [i for i, k in enumerate(keys) if k == (name, s)] for (n, s) in scored if n == name}
        if rows:
            arms[name] = {"score": mean_interval([float(np.mean([logits[i] for i in r])) for r in rows.values()]),
                          "length_residual": mean_interval([float(residuals[r].mean()) for r in rows.values()])}
    return {**{k: record[k] for k in ("settings", "pool_pairs", "pairs", "steps", "train_seconds", "cpu_seconds",
                                      "heldout", "lead", "read", "commit")},
            "dropped": {k: v["count"] for k, v in record["dropped"].items()}, "logit_per_char": slope, "arms": arms}


def compare(spec: StudySpec, per_pair: dict) -> list[dict]:
    """Every comparison whose arms have finished runs: the bootstrap difference of each compared
    metric (seeds paired when both arms ran the same seeds), and for the primary comparisons the
    test of the spec's endpoint, Holm-corrected over the primary ones, with the smallest
    difference the design detects (at the strictest Holm level, alpha / primary comparisons)."""
    st = spec.statistics
    out = []
    for c in spec.comparisons:
        if c.a not in per_pair or c.b not in per_pair:
            continue
        paired = sorted(per_pair[c.a]) == sorted(per_pair[c.b])
        values = {metric: (np.stack([per_pair[c.a][s][metric] for s in sorted(per_pair[c.a])]),
                           np.stack([per_pair[c.b][s][metric] for s in sorted(per_pair[c.b])]))
                  for metric in dict.fromkeys((*COMPARED, st.endpoint))}
        row = {"a": c.a, "b": c.b, "question": c.question, "primary": c.primary, "test": c.test,
               "ni_margin": c.margin,  # not "margin": that is a compared metric's key
               **{metric: paired_bootstrap(*values[metric], rounds=st.rounds, paired_seeds=paired)
                  for metric in COMPARED}}
        if c.primary:
            diffs = bootstrap_differences(*values[st.endpoint], rounds=st.rounds, paired_seeds=paired)
            row["endpoint"] = {"metric": st.endpoint, "difference": float(values[st.endpoint][0].mean()
                                                                          - values[st.endpoint][1].mean()),
                               "p_value": bootstrap_p_value(diffs, c.test, c.margin or 0.0),
                               "se": float(diffs.std(ddof=1))}
        out.append(row)
    primary = [row for row in out if row["primary"]]
    for row, adjusted in zip(primary, holm([row["endpoint"]["p_value"] for row in primary])):
        sides = 1 if row["test"] == "non_inferiority" else 2
        row["endpoint"].update(holm_p=adjusted, rejected=adjusted <= st.alpha,
                               detectable=detectable_difference(row["endpoint"]["se"], st.alpha / len(primary),
                                                                st.power, sides))
    return out


def floors(base: dict, strata: np.ndarray) -> dict:
    """What no model needs: the accuracy of "prefer the shorter reply" on the measured pairs, over
    all of them and by length stratum, and how many pairs each stratum holds."""
    rule = prefer_shorter(base["n_chosen"], base["n_rejected"])
    return {"prefer_shorter": {"all": float(rule.mean()),
                               **{name: float(rule[strata == i].mean()) if (strata == i).any() else None
                                  for i, name in enumerate(LENGTH_STRATA)}},
            "pairs_by_length": {name: int((strata == i).sum()) for i, name in enumerate(LENGTH_STRATA)}}


def by_length(per_pair: dict, strata: np.ndarray) -> dict:
    """Accuracy and implicit-reward accuracy per length stratum, mean over seeds."""
    return {metric: {name: mean_interval([float(values[metric][strata == i].mean()) for values in per_pair.values()])
                     for i, name in enumerate(LENGTH_STRATA) if (strata == i).any()}
            for metric in ("accuracy", "implicit_accuracy")}


def arm_summary(arm, seeds: dict, per_pair: dict, pool_scoring: float, pool_tokens: dict[int, int],
                epochs: int, strata: np.ndarray) -> dict:
    results = [r for r, _ in seeds.values()]
    trained_tokens = [epochs * sum(pool_tokens.get(i, 0) for i in r.get("kept_indices", [])) for r in results]
    metrics = {m: mean_interval([float(per_pair[s][m].mean()) for s in seeds]) for m in METRICS}
    generation = [ev["generation"] for _, ev in seeds.values() if ev.get("generation")]
    if generation:
        metrics["bleu_char"] = mean_interval([float(np.mean(g["bleu_char"])) for g in generation])
        metrics["sacrebleu"] = mean_interval([g["sacrebleu"] for g in generation])
        metrics["answer_chars"] = mean_interval([float(np.mean(g["answer_chars"])) for g in generation])
        for key in ("distinct_words", "repetitive", "empty", "at_cap", "distinct_1", "distinct_2"):
            # measures added after the first runs: backfilled from the saved answers where they can be
            if all(key in g for g in generation):
                metrics[key] = mean_interval([float(np.mean(g[key])) for g in generation])
    train = [r["train_seconds"] for r in results]
    cpu = [r["cpu_seconds"] for r in results if "cpu_seconds" in r]
    # a scored selection pays for scoring the pool once; the run that happened to score it paid it inside
    own_scoring = [r.get("scoring_seconds", 0.0) for r in results]
    selection_cost = pool_scoring if arm.select in ("top", "bottom") else 0.0
    cost = [t - s + selection_cost for t, s in zip(train, own_scoring)]
    return {"method": arm.method, "select": arm.select, "ratio": arm.ratio if arm.select != "all" else 1.0,
            "reward_weight": arm.reward_weight, "seeds": sorted(seeds), "kept": results[0].get("kept", 0),
            "by_length": by_length(per_pair, strata),
            "steps": results[0].get("steps", 0), "metrics": metrics,
            "train_seconds": mean_interval(train), "cost_seconds": mean_interval(cost),
            "cpu_seconds": mean_interval(cpu) if len(cpu) == len(results) else None,
            # runs resumed from a checkpoint: their time and CPU seconds are their last piece's only
            "resumed": {r["seed"]: r["resumed_from_step"] for r in results if "resumed_from_step" in r},
            # the collapse guard's event lines over the arm's runs (None: recorded by none of them)
            "guard_events": (sum(len(r["guard_events"]) for r in results if "guard_events" in r)
                             if any("guard_events" in r for r in results) else None),
            "train_tokens": mean_interval(trained_tokens),
            "pairs": len(next(iter(per_pair.values()))["accuracy"])}


def add_time_ratios(spec: StudySpec, arms: dict) -> None:
    """Each arm's cost (training, plus the pool's scoring for a scored selection) over the cost of
    the plain full-pool arm of its method."""
    for summary in arms.values():
        full = next((a.name for a in spec.arms if a.method == summary["method"] and a.select == "all"
                     and a.reward_weight == 0 and a.name in arms), None)
        if full and arms[full]["cost_seconds"]["mean"] > 0:
            summary["time_ratio_to"] = {"arm": full, "ratio": summary["cost_seconds"]["mean"]
                                        / arms[full]["cost_seconds"]["mean"]}


def _interval(m: dict, digits: int = 3) -> str:
    if m is None:
        return "-"
    text = f"{m['mean']:.{digits}f}"
    return text + (f" [{m['low']:.{digits}f}, {m['high']:.{digits}f}]" if m.get("low") is not None else "")


def render_markdown(report: dict) -> str:
    """report.md, from report.json alone."""
    env, data = report["environment"], report["data"]
    lines = ["# DEFT study", "", f"Command: `{env['command']}`", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
             + f", Python {env['python']}", "",
             "Code: " + (f"commit {report['commits'][0]}" if len(report.get("commits", [])) == 1
                         else "the runs span commits " + ", ".join(report.get("commits", [])))
             + ("; every run from a clean tree." if not report.get("unclean_runs")
                else "; not from a clean tree (or not recorded): " + ", ".join(report["unclean_runs"]) + "."),
             ""]
    if data.get("split"):
        s = data["split"]
        pool = s["sizes"]["pool"] or s["rows"] - s["sizes"]["validation"] - s["sizes"]["test"]  # null: the rest
        lines += [f"Data: {s['rows']} rows split with seed {s['seed']} into pool {pool}, validation "
                  f"{s['sizes']['validation']}, test {s['sizes']['test']}"
                  + (f"; measured on the {data['measured']['split']} split ({data['measured']['usable']} usable pairs)"
                     if data.get("measured") else "") + ".", ""]
    choices = report["spec"].get("choices") or {}
    if choices:
        lines += ["## Choices and reasons", ""] + [f"- {k}: {v}" for k, v in choices.items()] + ["", "## Results", ""]
    lines += ["Mean over seeds, 95% t interval in brackets (none for one seed). Accuracy: share of held-out pairs "
              "whose chosen reply has the higher mean token log-probability (implicit: the higher DPO implicit "
              "reward against the starting model; ties count half). Reward gap: R(y+) - R(y-) under the pool's Q. "
              "Distinct words: distinct over all words of an answer (near 0: the model repeats itself). "
              "Cost: training seconds, plus the pool's scoring for a scored selection; CPU: the training "
              "processes' CPU seconds.", "",
              "| arm | kept | seeds | accuracy | implicit accuracy | margin | reward gap | BLEU (char) | answer chars "
              "| distinct words | tokens trained | cost (s) | CPU (s) | cost ratio |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, a in report["arms"].items():
        m = a["metrics"]
        ratio = a.get("time_ratio_to")
        lines.append(f"| {name} | {a['kept']} | {len(a['seeds'])} | {_interval(m['accuracy'])} | "
                     f"{_interval(m['implicit_accuracy'])} | {_interval(m['margin'], 4)} | "
                     f"{_interval(m['reward_gap'], 5)} | {_interval(m.get('bleu_char'), 2)} | "
                     f"{_interval(m.get('answer_chars'), 0)} | {_interval(m.get('distinct_words'), 2)} | "
                     f"{a['train_tokens']['mean']:.0f} | "
                     f"{a['cost_seconds']['mean']:.0f} | "
                     + (f"{a['cpu_seconds']['mean']:.0f} | " if a.get("cpu_seconds") else "- | ")
                     + (f"{ratio['ratio']:.2f} of {ratio['arm']}" if ratio else "-") + " |")
    resumed = [f"{name} seed {seed} from step {step}" for name, a in report["arms"].items()
               for seed, step in a.get("resumed", {}).items()]
    if resumed:
        lines += ["", "Resumed from a checkpoint, so their cost counts the last piece only: "
                  + "; ".join(resumed) + "."]
    lines += answers_table(report) + length_table(report)
    primary = [c for c in report["comparisons"] if c.get("primary")]
    if primary:
        st = report["spec"]["statistics"]
        lines += ["", "## Primary comparisons", "",
                  f"Declared in the spec before the runs; endpoint {st['endpoint']}, family-wise alpha {st['alpha']} "
                  f"(Holm). p from the hierarchical bootstrap over pairs and seeds ({st['rounds']} replicates); "
                  f"detectable: the smallest true difference found with power {st['power']} at alpha / "
                  f"{len(primary)}.", "",
                  "| A | B | question | test | difference | p | Holm p | result | detectable |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c in primary:
            e = c["endpoint"]
            test = f"non-inferiority, margin {c['ni_margin']}" if c["test"] == "non_inferiority" else "difference"
            verdict = ({True: "non-inferior", False: "non-inferiority not shown"} if c["test"] == "non_inferiority"
                       else {True: "differs", False: "no difference shown"})[e["rejected"]]
            lines.append(f"| {c['a']} | {c['b']} | {c['question']} | {test} | {e['difference']:+.4f} | "
                         f"{e['p_value']:.4f} | {e['holm_p']:.4f} | {verdict} | {e['detectable']:.4f} |")
    if report["comparisons"]:
        lines += ["", "## Paired comparisons" + (" (the rest exploratory)" if primary else ""), "",
                  "Difference A - B on the same held-out pairs, 95% interval from a bootstrap over pairs and seeds "
                  "(the seeds paired where both arms ran the same ones); 'noise' where the interval holds 0.", "",
                  "| A | B | question | " + " | ".join(COMPARED) + " |", "|---|---|---|" + "---|" * len(COMPARED)]
        for c in report["comparisons"]:
            cells = [f"{c[k]['difference']:+.4f} [{c[k]['low']:+.4f}, {c[k]['high']:+.4f}]"
                     + (" noise" if c[k]["inside_noise"] else "") for k in COMPARED]
            label = "primary" if c.get("primary") else "exploratory" if primary else ""
            lines.append(f"| {c['a']} | {c['b']} | {c['question']}{' (' + label + ')' if label else ''} | "
                         + " | ".join(cells) + " |")
    if report.get("q_volume"):
        v = report["q_volume"]
        lines += ["", "## Q against data volume", "",
                  f"Q built from a fraction of the pool ({v['draws']} seeded draws each; the pool has "
                  f"{v['pool_pairs']} usable pairs) against Q of all of it: cosine of the two, overlap "
                  f"(Jaccard) of the top {v['ratio']:.0%} each selects from the whole pool, and the share of the "
                  "pairs a Q selects that helped build it (the fraction itself if Q did not favour its own "
                  "pairs).", "",
                  "| fraction | cosine to full Q | Jaccard of the selection | selected from its own pairs |",
                  "|---|---|---|---|"]
        for fraction, s in v["summary"].items():
            lines.append(f"| {float(fraction):.0%} | {_interval(s['cosine'])} | {_interval(s['jaccard'])} | "
                         f"{_interval(s['kept_from_own_pairs'])} |")
    lines += judge_lines(report) + judging_lines(report)
    if report["pending"]:
        lines += ["", "Not run yet: " + ", ".join(report["pending"]) + "."]
    lines += ["", "![accuracy and margin per arm](accuracy.png)", "", "![quality against cost](tradeoff.png)", ""]
    if report.get("q_volume"):
        lines += ["![Q against data volume](qvolume.png)", ""]
    return "\n".join(lines)


def judge_lines(report: dict) -> list[str]:
    """The reward-model judge's section: how it was trained, whether it beats the length rule,
    then its scores per arm."""
    judge = report.get("judge")
    if not judge:
        return []
    st, held = judge["settings"], judge["heldout"]
    dropped = "".join(f", {n} left out ({why})" for why, n in judge["dropped"].items())
    verdict = (f"it beats the rule by the declared {judge['lead']:g} or more, so its scores below are read "
               "as a judgement of the answers" if judge["read"] else
               f"it does not beat the rule by the declared {judge['lead']:g}: its scores below are shown, "
               "not read as quality")
    lines = ["", "## Reward-model judge", "",
             f"A reward model trained by `axolotl train` on {judge['pairs']} of the pool's {judge['pool_pairs']} "
             f"pairs{dropped}: {st['num_epochs']:g} epoch(s), learning rate {st['learning_rate']:g}, "
             f"{'LoRA r' + str(st['lora_r']) if st['lora_r'] else 'every weight'}, seed {st['seed']}, "
             f"{judge['steps']} steps in {judge['train_seconds'] / 60:.1f} min. How often it prefers the chosen "
             "reply, beside \"prefer the shorter reply\":", "",
             "| pairs | judge | prefer shorter |", "|---|---|---|"]
    lines += [f"| {name} ({h['pairs']}) | {h['accuracy']:.3f} | {h['prefer_shorter']:.3f} |" for name, h in
              held.items()]
    lines += ["", f"On the validation pairs {verdict}. Score: the judge's mean logit over an arm's answers; "
              "length-residualised: after a line on answer length fitted to every judged answer "
              f"({judge['logit_per_char']:+.4f} logit per character).", "",
              "| arm | judge score | length-residualised |", "|---|---|---|"]
    lines += [f"| {name} | {_interval(a['score'])} | {_interval(a['length_residual'])} |"
              for name, a in judge["arms"].items()]
    return lines


def judging_lines(report: dict) -> list[str]:
    """The human evaluation: each set, how to serve it, and the votes' win rates once exported back."""
    sets = report.get("judging") or []
    if not sets:
        return []
    lines = ["", "## Human judging", "",
             "Each set holds the greedy answers of one seed both arms ran, for `deft-app serve` (the judges see "
             f"neither the arms nor the references), judged on {report['spec']['judging']['criteria']}. "
             "Run the commands from the study folder; export the votes into the set's folder (`deft-app export "
             "--db ... --out <folder>`) and rebuild the report (`--report-only`) to read them here. Win rate of A, "
             "ties half, 95% bootstrap interval.", ""]
    for s in sets:
        if s.get("pending"):
            lines.append(f"- {s['a']} vs {s['b']}: {s['pending']}.")
            continue
        lines.append(f"- {s['a']} vs {s['b']}: {s['items']} items (seed {s['seed']}) in `{s['folder']}`; "
                     f"serve with `{s['serve']}`")
        for criterion, r in ((s.get("results") or {}).get("by_criterion") or {}).items():
            for p in r["pairs"]:
                lo, hi = p["win_rate_ci"]
                lines.append(f"  - {criterion}: {p['model_a']} won {p['win']}, lost {p['loss']}, tied "
                             f"{p['tie']} against {p['model_b']}: win rate {p['win_rate']:.3f} [{lo:.3f}, {hi:.3f}]")
        if not s.get("results"):
            lines.append("  - no votes exported here yet")
    return lines


ANSWER_COLUMNS = (("answer_chars", "chars", 0), ("distinct_words", "distinct words", 2),
                  ("distinct_1", "distinct-1", 2), ("distinct_2", "distinct-2", 2), ("repetitive", "repetitive", 2),
                  ("empty", "empty", 2), ("at_cap", "at the token cap", 2))


def answers_table(report: dict) -> list[str]:
    """Greedy answers per arm: the statistics that need no reference (the arms that answered)."""
    answered = {name: a for name, a in report["arms"].items() if "answer_chars" in a["metrics"]}
    if not answered:
        return []
    lines = ["", "## Greedy answers", "",
             "Per answer, mean over answers then seeds: length in characters, distinct-word share, repetitive "
             "(a 3-word run three times), empty, cut off by the token cap; distinct-1/2 over all of an arm's answers "
             "(distinct n-grams over n-grams); guard events: the collapse guard's event lines in the arm's training "
             "logs (0: it stayed silent).", "",
             "| arm | " + " | ".join(label for _, label, _ in ANSWER_COLUMNS) + " | guard events |",
             "|---|" + "---|" * (len(ANSWER_COLUMNS) + 1)]
    for name, a in answered.items():
        events = "-" if a.get("guard_events") is None else str(a["guard_events"])
        lines.append(f"| {name} | " + " | ".join(_interval(a["metrics"].get(key), digits)
                                                 for key, _, digits in ANSWER_COLUMNS) + f" | {events} |")
    return lines


def length_table(report: dict) -> list[str]:
    """Implicit-reward accuracy by length stratum beside the floor of "prefer the shorter reply"."""
    floor = report.get("floors")
    if not floor:
        return []
    names = [n for n in floor["pairs_by_length"] if floor["pairs_by_length"][n]]
    lines = ["", "## By length", "",
             "Implicit-reward accuracy by the chosen reply's length against the rejected one's (tokens, 10% "
             "bands), beside the rule \"prefer the shorter reply\", which needs no model.", "",
             "| arm | all | " + " | ".join(f"{n} ({floor['pairs_by_length'][n]} pairs)" for n in names) + " |",
             "|---|---|" + "---|" * len(names),
             "| prefer the shorter reply | " + f"{floor['prefer_shorter']['all']:.3f} | "
             + " | ".join(f"{floor['prefer_shorter'][n]:.3f}" for n in names) + " |"]
    for name, a in report["arms"].items():
        strata = a.get("by_length", {}).get("implicit_accuracy", {})
        lines.append(f"| {name} | {_interval(a['metrics']['implicit_accuracy'])} | "
                     + " | ".join(_interval(strata.get(n)) for n in names) + " |")
    return lines


def plot_report(report: dict, out: Path) -> dict[str, str]:
    from deft_plugin.utils.plots import save_figure, subplots

    names = list(report["arms"])
    fig, axes = subplots(1, 2, figsize=(12, max(3.0, 0.4 * len(names) + 1.5)))
    for ax, metric in zip(axes, ("accuracy", "margin")):
        ms = [report["arms"][n]["metrics"][metric] for n in names]
        means = [m["mean"] for m in ms]
        errors = [[m["mean"] - (m["low"] if m["low"] is not None else m["mean"]) for m in ms],
                  [(m["high"] if m["high"] is not None else m["mean"]) - m["mean"] for m in ms]]
        ax.errorbar(means, range(len(names)), xerr=errors, fmt="o", capsize=3)
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_xlabel(f"held-out {metric} (mean token log-prob)")
        base = report["arms"][names[0]]["metrics"][metric]["mean"] if names else None
        if base is not None:
            ax.axvline(base, color="grey", linestyle=":", label="first arm")
    paths = {"accuracy": str(save_figure(fig, out / "accuracy.png"))}
    fig, ax = subplots(figsize=(7, 4.5))
    for n in names:
        a = report["arms"][n]
        ax.errorbar(a["cost_seconds"]["mean"], a["metrics"]["accuracy"]["mean"], fmt="o")
        ax.annotate(n, (a["cost_seconds"]["mean"], a["metrics"]["accuracy"]["mean"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("symlog")
    ax.set_xlabel("cost: training seconds (+ the pool's scoring for a scored selection)")
    ax.set_ylabel("held-out accuracy")
    paths["tradeoff"] = str(save_figure(fig, out / "tradeoff.png"))
    if report.get("q_volume"):
        summary = report["q_volume"]["summary"]
        fractions = [float(f) for f in summary]
        fig, ax = subplots(figsize=(7, 4.5))
        for key, label in (("cosine", "cosine to full Q"), ("jaccard", "Jaccard of the selection"),
                           ("kept_from_own_pairs", "selected from its own pairs")):
            ms = [summary[f][key] for f in summary]
            low = [m["mean"] - (m["low"] if m["low"] is not None else m["mean"]) for m in ms]
            high = [(m["high"] if m["high"] is not None else m["mean"]) - m["mean"] for m in ms]
            ax.errorbar(fractions, [m["mean"] for m in ms], yerr=[low, high], marker="o", capsize=3, label=label)
        ax.plot(fractions, fractions, color="grey", linestyle=":", label="the fraction itself")
        ax.set_xscale("log")
        ax.set_xlabel("fraction of the pool Q is built from")
        ax.legend(fontsize=8)
        paths["qvolume"] = str(save_figure(fig, out / "qvolume.png"))
    return paths


def write_report(spec: StudySpec, out: Path, command: list[str]) -> dict:
    from deft_plugin.utils.atomic import atomic_write_text

    report = build_report(spec, out, command)
    report["judging"] = judging_sets(spec, out)
    report["plots"] = {k: Path(v).name for k, v in plot_report(report, out).items()}
    atomic_write_text(out / "report.json", portable(json.dumps(report, indent=2)))
    atomic_write_text(out / "report.md", render_markdown(json.loads((out / "report.json").read_text())))
    return report

