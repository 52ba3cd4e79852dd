"""`deft-eval`: evaluation of DEFT-trained models."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from deft_plugin.utils.usage import UsageError, run_reporting_usage_errors


def _model_given(flag: str, value: str) -> None:
    """A model that cannot be loaded ends the command here, before any long work."""
    from deft_eval.models import model_problem

    problem = model_problem(value)
    if problem:
        raise UsageError(f"{flag} {value}: {problem}")


def cmd_generate(args) -> int:
    from dataclasses import asdict

    from deft_eval.generate import GenerationSettings, ResumeError, check_resumable, generate_answers, read_done
    from deft_eval.hh_prompts import HUB_ID, load_prompts
    from deft_eval.models import load_causal_lm

    _model_given("--model", args.model)
    data = args.data or f"(default: the hub's {HUB_ID})"
    try:
        prompts, skipped = load_prompts(args.data, args.sample, args.seed)
    except (OSError, ValueError, RuntimeError) as err:  # not there, not readable, or not on the hub
        raise UsageError(f"--data {data}: {err}") from err
    if skipped:
        print(f"skipped {sum(skipped.values())} rows that are not HH-RLHF dialogues: {dict(skipped)}", file=sys.stderr)
    if not prompts:
        raise UsageError(f"--data {data}: no prompts to answer")
    settings = GenerationSettings(args.max_new_tokens, args.max_prompt_tokens, args.batch_size, args.prompt_style)
    name = args.name or Path(args.model.rstrip("/")).name  # the folder's (or the hub id's) own name
    try:  # before the model loads; generate_answers checks again with the prompt style resolved
        known = {k: v for k, v in asdict(settings).items() if (k, v) != ("prompt_style", "auto")}
        check_resumable(read_done(Path(args.out)), Path(args.out), name, known)
    except ResumeError as err:
        raise UsageError(f"--out {err}") from err
    model, tokenizer = load_causal_lm(args.model, args.device, args.dtype)
    try:
        records = generate_answers(model, tokenizer, prompts, args.out, settings, model_name=name)
    except ResumeError as err:
        raise UsageError(f"--out {err}") from err
    by_subset = {}
    for r in records:
        by_subset[r["subset"]] = by_subset.get(r["subset"], 0) + 1
    print(f"{len(records)} answers in {args.out}: " + ", ".join(f"{k} {v}" for k, v in sorted(by_subset.items())))
    return 0


def cmd_score(args) -> int:
    from deft_eval.report import markdown, read_answers, score_answers

    try:
        records = read_answers(args.answers)
    except ValueError as err:  # the message names the file, and the line
        raise UsageError(str(err)) from err
    missing = []
    if args.scorers is None:  # what runs with what was given: the model-based scorers need their model
        names = ["bleu"] + ["reward"] * bool(args.reward_model) + ["bartscore"] * bool(args.bart_model)
        missing = [f"{s} (give {flag})" for s, flag, given in (("reward", "--reward-model DIR", args.reward_model),
                                                               ("bartscore", "--bart-model DIR", args.bart_model))
                   if not given]
    else:
        names = [n.strip() for n in args.scorers.split(",") if n.strip()]
    _scorers_given(args, names)
    if missing:  # said once the run is sure to go on
        print("not scored: " + ", ".join(missing), file=sys.stderr)
    options = {"reward_model": args.reward_model, "bart_model": args.bart_model, "batch_size": args.batch_size,
               "device": args.device}
    report = score_answers(records, names, options, args.out, title=args.title or args.answers)
    print(markdown(report["table"], report["title"]))
    print(f"written: {args.out}/report.md, report.json, report.png, scores.jsonl")
    return 0


def _scorers_given(args, names: list[str]) -> None:
    """Every scorer known and its model loadable, before the first one runs."""
    from deft_eval.registry import scorers
    from deft_eval.scorers.bartscore import DEFAULT_MODEL

    known = scorers()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"--scorers {args.scorers}: unknown scorer(s) {', '.join(unknown)}; known: "
                         + ", ".join(sorted(known)))
    if "reward" in names and not args.reward_model:
        raise UsageError(f"--scorers {args.scorers}: give --reward-model DIR_OR_ID for the reward scorer")
    if args.reward_model:
        _model_given("--reward-model", args.reward_model)
    if args.bart_model or "bartscore" in names:
        _model_given("--bart-model", args.bart_model or DEFAULT_MODEL)


def cmd_mt_bench(args) -> int:
    import json

    from deft_eval.models import load_causal_lm
    from deft_eval.mt_bench import (
        JudgeEndpoint,
        answer_questions,
        judge_single,
        load_mt_questions,
        plot_results,
        results_markdown,
        summarise_judgments,
    )
    from deft_plugin.utils.atomic import atomic_write_text

    _model_given("--model", args.model)
    try:
        questions = load_mt_questions(args.mt_bench_dir)
    except FileNotFoundError as err:
        raise UsageError(f"--mt-bench-dir {args.mt_bench_dir}: no question.jsonl in it (FastChat's MT-Bench "
                         "questions; judge_prompts.jsonl and reference_answer/ for judging)") from err
    if args.question_ids:
        try:
            wanted = {int(q) for q in args.question_ids.split(",")}
        except ValueError as err:
            raise UsageError(f"--question-ids {args.question_ids}: question numbers, comma-separated") from err
        unknown = wanted - {q["question_id"] for q in questions}
        if unknown:
            raise UsageError(f"--question-ids {args.question_ids}: no question "
                             f"{', '.join(map(str, sorted(unknown)))} in the question file")
        questions = [q for q in questions if q["question_id"] in wanted]
    if args.questions is not None:
        questions = questions[: args.questions]
    out = Path(args.out)
    name = args.name or Path(args.model).name
    answer_file = out / "model_answer" / f"{name}.jsonl"
    baseline = _baseline_answers(args.baseline_answers) if args.baseline_answers else None
    model, tokenizer = load_causal_lm(args.model, args.device, args.dtype)
    answers = answer_questions(model, tokenizer, questions, answer_file, name, args.max_new_tokens, args.batch_size,
                               args.seed)
    print(f"{len(answers)} answers in {answer_file}")
    if not args.judge_url:
        print("no --judge-url: answers only")
        return 0
    endpoint = JudgeEndpoint(args.judge_url, args.judge_model,
                             args.judge_key or os.environ.get("OPENAI_API_KEY", "EMPTY"),
                             args.judge_timeout, args.judge_retries, parallel=args.parallel)
    judgment_file = out / "model_judgment" / f"{args.judge_model}_single.jsonl"
    judgments = judge_single(questions, {name: {a["question_id"]: a for a in answers}}, args.mt_bench_dir, endpoint,
                             judgment_file)
    summary = summarise_judgments(judgments, questions)
    report = results_markdown(summary)
    results = {"single": summary}
    if baseline:
        from deft_eval.mt_bench import judge_pairwise, pairwise_markdown, summarise_pairwise

        baseline_name = next(iter(baseline.values())).get("model_id") or Path(args.baseline_answers).stem
        pairs = judge_pairwise(questions, {name: {a["question_id"]: a for a in answers}, baseline_name: baseline},
                               baseline_name, args.mt_bench_dir, endpoint,
                               out / "model_judgment" / f"{args.judge_model}_pair.jsonl")
        results["pairwise"] = summarise_pairwise(pairs)
        report += "\n" + pairwise_markdown(results["pairwise"])
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    atomic_write_text(out / "results.md", report)
    plot_results(summary, out / "results.png")
    print(report)
    return 0


def _baseline_answers(path: str) -> dict:
    """The baseline's answers, read before the model is: an empty or missing file is the user's mistake."""
    from deft_eval.generate import read_done

    if not Path(path).is_file():
        raise UsageError(f"--baseline-answers {path}: no such file")
    try:
        baseline = read_done(Path(path), key="question_id")
    except (ValueError, KeyError) as err:  # a line that is not JSON, or not a FastChat answer
        raise UsageError(f"--baseline-answers {path}: not a FastChat answer file ({err})") from err
    if not baseline:
        raise UsageError(f"--baseline-answers {path}: no answers in it")
    return baseline


def _run_folder(label: str, path: str) -> None:
    """A folder with what compare reads: a score run's report.json or an mt-bench run's results.json."""
    run = Path(path)
    if not run.is_dir():
        raise UsageError(f"{label} {path}: no such folder")
    if not ((run / "report.json").is_file() or (run / "results.json").is_file()):
        raise UsageError(f"{label} {path}: neither report.json (deft-eval score) nor results.json "
                         "(deft-eval mt-bench) in it")


def cmd_compare(args) -> int:
    import json

    from deft_eval.compare import compare_runs, comparison_markdown, overlap, plot_comparison
    from deft_plugin.utils.atomic import atomic_write_text

    _run_folder("run_a", args.run_a)  # the positional arguments, named as in the usage line
    _run_folder("run_b", args.run_b)
    name_a, name_b = args.name_a or Path(args.run_a).name, args.name_b or Path(args.run_b).name
    try:
        counts = overlap(args.run_a, args.run_b)  # refuses runs that share no answer
    except ValueError as err:  # that, or a scores.jsonl line that is not JSON: the message names the file
        raise UsageError(str(err)) from err
    if counts["only_a"] or counts["only_b"]:
        print(f"warning: {counts['only_a']} answers only in {name_a} and {counts['only_b']} only in {name_b}; "
              f"the intervals use the {counts['shared']} shared, the totals each run's own", file=sys.stderr)
    rows = compare_runs(args.run_a, args.run_b)
    out = Path(args.out)
    atomic_write_text(out / "comparison.json", json.dumps({"a": name_a, "b": name_b, "rows": rows}, indent=2))
    table = comparison_markdown(rows, name_a, name_b)
    atomic_write_text(out / "comparison.md", table)
    plot_comparison(rows, name_a, name_b, out / "comparison.png")
    print(table)
    return 0


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # as Ctrl-C: the `with` below stops the three FastChat processes


def cmd_judge_server(args) -> int:
    import signal
    import time

    from deft_eval.judge_server import LocalJudge

    _model_given("--model", args.model)  # else the worker fails to load it, minutes in, in its log
    if args.port is not None and not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: a port number is between 1 and 65535 (0: a free one)")
    if args.start_timeout <= 0:
        raise UsageError(f"--start-timeout must be positive, got {args.start_timeout}")
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    # the whole `with` inside the try: a stop that lands at any moment (starting, just after the
    # address is printed, while serving) stops the three processes and ends the command cleanly
    try:
        with LocalJudge(args.model, args.name, args.device, args.port, args.log_dir, args.start_timeout) as judge:
            print(f"judge {args.name!r} answering at {judge.base_url} (OpenAI-compatible); Ctrl-C or SIGTERM "
                  "stops it", flush=True)
            while all(p.poll() is None for p in judge.procs):
                time.sleep(1.0)
            print("a judge server process exited; stopping", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deft-eval", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an input error")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="answer HH-RLHF test prompts (greedy, PRO's conventions)")
    g.add_argument("--model", required=True, help="local model directory (e.g. a DEFT run's output_dir) or hub id")
    g.add_argument("--name", default=None, help="model name stored with the answers (default: the model folder's name)")
    g.add_argument("--data", default=None, help="HH-RLHF test file or directory (default: the hub's four subsets)")
    g.add_argument("--sample", type=int, default=None, help="prompts drawn per subset (default: all)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True, help="answers JSONL (resumed when it exists)")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--max-prompt-tokens", type=int, default=384)
    g.add_argument("--prompt-style", choices=("auto", "chat_template", "raw"), default="auto")
    g.add_argument("--device", default="auto")
    g.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    g.set_defaults(func=cmd_generate)

    s = sub.add_parser("score", help="score a generate file: reward model, BLEU, BARTScore; tables and plots")
    s.add_argument("answers", help="answers JSONL from deft-eval generate")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--scorers", default=None,
                   help="comma-separated scorer names (default: bleu, plus reward with --reward-model and bartscore "
                        "with --bart-model)")
    s.add_argument("--reward-model", default=None, help="reward model directory or hub id")
    s.add_argument("--bart-model", default=None, help="BART model for BARTScore (default facebook/bart-large-cnn)")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--device", default="auto")
    s.add_argument("--title", default=None)
    s.set_defaults(func=cmd_score)

    m = sub.add_parser("mt-bench",
                       help="MT-Bench: answers in FastChat's format, judged by an OpenAI-compatible endpoint")
    m.add_argument("--model", required=True, help="local model directory or hub id (a chat model)")
    m.add_argument("--name", default=None, help="model id in the answer files (default: the directory name)")
    m.add_argument("--mt-bench-dir", required=True,
                   help="folder with question.jsonl, judge_prompts.jsonl, reference_answer/")
    m.add_argument("--out", required=True, help="output directory (model_answer/, model_judgment/, results.*)")
    m.add_argument("--judge-url", default=None, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    m.add_argument("--judge-model", default="gpt-4", help="the judge's model name at that endpoint")
    m.add_argument("--judge-key", default=None, help="API key (default: $OPENAI_API_KEY)")
    m.add_argument("--judge-timeout", type=float, default=120.0)
    m.add_argument("--judge-retries", type=int, default=3)
    m.add_argument("--parallel", type=int, default=4, help="concurrent judge calls")
    m.add_argument("--baseline-answers", default=None,
                   help="FastChat answer JSONL of a baseline model: also judge pairwise against it (both orders)")
    m.add_argument("--questions", type=int, default=None, help="only the first N questions")
    m.add_argument("--question-ids", default=None, help="only these question ids, comma-separated")
    m.add_argument("--max-new-tokens", type=int, default=1024)
    m.add_argument("--batch-size", type=int, default=8)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--device", default="auto")
    m.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    m.set_defaults(func=cmd_mt_bench)

    c = sub.add_parser("compare", help="two runs side by side: every metric with its delta, and a plot")
    c.add_argument("run_a", help="a deft-eval score and/or mt-bench output directory")
    c.add_argument("run_b")
    c.add_argument("--out", required=True)
    c.add_argument("--name-a", default=None)
    c.add_argument("--name-b", default=None)
    c.set_defaults(func=cmd_compare)

    j = sub.add_parser("judge-server", help="serve a local judge model (FastChat) on 127.0.0.1 until Ctrl-C")
    j.add_argument("--model", required=True, help="local model directory")
    j.add_argument("--name", default="local-judge", help="model name the endpoint serves (use it as --judge-model)")
    j.add_argument("--port", type=int, default=None, help="API port (default: a free one)")
    j.add_argument("--device", default="auto")
    j.add_argument("--log-dir", default=None, help="controller / worker / api logs (default ./judge-server-logs)")
    j.add_argument("--start-timeout", type=float, default=600.0, help="seconds to wait for the first answer")
    j.set_defaults(func=cmd_judge_server)
    return parser


def _counts_given(args) -> None:
    """Sizes and counts given on the command line are at least 1."""
    for name in ("batch_size", "max_new_tokens", "max_prompt_tokens", "sample", "parallel", "judge_retries"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def main(argv=None) -> int:
    # Offline unless the caller says otherwise (HF_HUB_OFFLINE=0): a missing model must fail fast, not hang.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)

    def command() -> int:
        _counts_given(args)
        return args.func(args)

    return run_reporting_usage_errors(f"deft-eval {args.command}", command, args.debug)


if __name__ == "__main__":
    sys.exit(main())
