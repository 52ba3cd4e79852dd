"""`deft-eval`: evaluation of DEFT-trained models."""

from __future__ import annotations

import argparse
import os
import sys


def cmd_generate(args) -> int:
    from deft_eval.generate import GenerationSettings, generate_answers
    from deft_eval.hh_prompts import load_prompts
    from deft_eval.models import load_causal_lm

    prompts, skipped = load_prompts(args.data, args.sample, args.seed)
    if skipped:
        print(f"skipped {sum(skipped.values())} rows that are not HH-RLHF dialogues: {dict(skipped)}", file=sys.stderr)
    if not prompts:
        raise SystemExit("no prompts to answer")
    model, tokenizer = load_causal_lm(args.model, args.device, args.dtype)
    settings = GenerationSettings(args.max_new_tokens, args.max_prompt_tokens, args.batch_size, args.prompt_style)
    records = generate_answers(model, tokenizer, prompts, args.out, settings, model_name=args.name or args.model)
    by_subset = {}
    for r in records:
        by_subset[r["subset"]] = by_subset.get(r["subset"], 0) + 1
    print(f"{len(records)} answers in {args.out}: " + ", ".join(f"{k} {v}" for k, v in sorted(by_subset.items())))
    return 0


def cmd_score(args) -> int:
    from deft_eval.report import read_answers, score_answers

    records = read_answers(args.answers)
    names = [n.strip() for n in args.scorers.split(",") if n.strip()]
    options = {"reward_model": args.reward_model, "bart_model": args.bart_model, "batch_size": args.batch_size,
               "device": args.device}
    report = score_answers(records, names, options, args.out, title=args.title or args.answers)
    from deft_eval.report import markdown

    print(markdown(report["table"], report["title"]))
    print(f"written: {args.out}/report.md, report.json, report.png, scores.jsonl")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deft-eval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="answer HH-RLHF test prompts (greedy, PRO's conventions)")
    g.add_argument("--model", required=True, help="local model directory (e.g. a DEFT run's output_dir) or hub id")
    g.add_argument("--name", default=None, help="model name stored with the answers (default: --model)")
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
    s.add_argument("--scorers", default="reward,bleu,bartscore", help="comma-separated scorer names")
    s.add_argument("--reward-model", default=None, help="reward model directory or hub id")
    s.add_argument("--bart-model", default=None, help="BART model for BARTScore (default facebook/bart-large-cnn)")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--device", default="auto")
    s.add_argument("--title", default=None)
    s.set_defaults(func=cmd_score)
    return parser


def main(argv=None) -> int:
    # Offline unless the caller says otherwise (HF_HUB_OFFLINE=0): a missing model must fail fast, not hang.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    for name in ("batch_size", "max_new_tokens", "max_prompt_tokens", "sample"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
