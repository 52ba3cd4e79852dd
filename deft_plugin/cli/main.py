"""`deft`: the DEFT filter without Axolotl.

    deft qdiff   build the discrepancy distribution of a preference file and save it
    deft inspect show a saved distribution: top tokens of each side, decoded, and a plot
    deft score   score every pair of a preference file with a model
    deft filter  keep the top pairs; writes kept pairs with their scores and a report
    deft demo    the end-to-end DEFT-DPO demo on SmolLM2-135M (CPU)
    deft study   DEFT against random and full-data arms, each through axolotl train, with a report
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from deft_plugin.utils.atomic import atomic_write_text
from deft_plugin.utils.usage import UsageError, run_reporting_usage_errors


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="a .jsonl/.jsonl.gz file, a directory of them, or a hub dataset id")
    p.add_argument("--format", default="hh_rlhf", help="dataset format (see `deft formats`); default hh_rlhf")
    p.add_argument("--split", default=None)
    p.add_argument("--style", default="auto", choices=["auto", "chat_template", "raw"],
                   help="present dialogues as chat messages or raw Human/Assistant text")
    p.add_argument("--max-length", type=int, default=None, help="cut sequences to this many tokens (sequence_len)")
    p.add_argument("--truncation", choices=("keep_start", "drop"), default="keep_start",
                   help="a reply that does not fit --max-length: cut to fit (keep_start) or leave the row out (drop)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N rows")


def _model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, help="model directory or hub id (its tokenizer is used)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])


def _read(args, tokenizer):
    from deft_plugin.data.encoding import resolve_prompt_style
    from deft_plugin.data.parsing import parse_rows
    from deft_plugin.data.sources import load_rows
    from deft_plugin.registry import dataset_formats, format_name

    name = format_name(args.format) or args.format  # `deft.hh_rlhf`, as `deft formats` prints it, or `hh_rlhf`
    if name not in dataset_formats():
        raise UsageError(f"--format {args.format}: unknown dataset format; known: "
                         + ", ".join(sorted(dataset_formats())))
    try:
        raw = load_rows(args.data, args.split)
    except (OSError, ValueError, RuntimeError) as err:
        raise UsageError(f"--data {args.data}: {err}") from err
    if not len(raw) and not raw.bad:
        raise UsageError(f"--data {args.data}: no rows (the data is empty)")
    if args.limit is not None:
        raw = raw[: args.limit]
    return parse_rows(raw, name, resolve_prompt_style(args.style, tokenizer), source=args.data)


def _tokenizer(name: str, flag: str = "--model"):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise UsageError(f"{flag} {name}: neither a model directory nor a hub model available "
                         f"{'offline' if os.environ.get('HF_HUB_OFFLINE') == '1' else 'here'}") from err


def _writable(directory: str | Path) -> Path:
    """The output folder, made and checked before any work, so a run does not fail at its end."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise UsageError(f"--out {directory}: cannot write there ({err.strerror or err})") from err
    return directory


def cmd_qdiff(args) -> int:
    from deft_plugin.data.encoding import encode_rows
    from deft_plugin.filtering.cache_key import rows_fingerprint
    from deft_plugin.filtering.pipeline import build_qdiff

    _writable(args.out)
    tokenizer = _tokenizer(args.model)
    parsed = _read(args, tokenizer)
    pairs, degenerate = encode_rows(parsed.rows, tokenizer, args.max_length, args.truncation)
    qdiff = build_qdiff(pairs, tokenizer, args.norm, data=rows_fingerprint(parsed.rows), source=args.data)
    qdiff.save(args.out)
    _show(qdiff, tokenizer, args.out, args.top)
    print(f"{parsed.read} rows read, {sum(parsed.unparseable.values())} unparseable, "
          f"{sum(degenerate.values())} degenerate, {len(pairs)} pairs counted -> {args.out}")
    return 0


def _show(qdiff, tokenizer, out: str | Path, top: int) -> None:
    from deft_plugin.utils.plots import plot_top_tokens

    decode = (lambda i: tokenizer.decode([i])) if tokenizer is not None else None
    sides = qdiff.top_tokens(top, decode)
    atomic_write_text(Path(out) / "top_tokens.json", json.dumps(sides, indent=2, ensure_ascii=False))
    plot_top_tokens(sides, Path(out) / "top_tokens.png")
    for name in ("chosen", "rejected"):
        print(f"top tokens of {name} replies:")
        for row in sides[name]:
            print(f"  {row['token']!r:>18}  Q={row['q']:+.5f}  Qn={row['qn']:+.3f}  "
                  f"counts {row['chosen_count']}/{row['rejected_count']}")


def _saved_qdiff(flag: str, directory: str):
    """The distribution `deft qdiff` saved in directory; a wrong folder is the user's mistake."""
    from deft_plugin.core.qdiff import QDiff

    if not Path(directory).is_dir():
        raise UsageError(f"{flag} {directory}: no such folder")
    try:
        return QDiff.load(directory)
    except FileNotFoundError as err:
        raise UsageError(f"{flag} {directory}: no saved discrepancy distribution in it (qdiff.safetensors and "
                         "qdiff.json, as `deft qdiff` writes them)") from err


def cmd_inspect(args) -> int:
    qdiff = _saved_qdiff("qdiff", args.qdiff)  # the positional argument, named as in the usage line
    name = args.tokenizer or qdiff.meta.get("tokenizer")
    tokenizer = _tokenizer(name, "--tokenizer") if name else None  # not given: the one qdiff.json records
    print(json.dumps({k: v for k, v in qdiff.meta.items() if k != "special_ids"}, indent=2))
    _show(qdiff, tokenizer, args.out or args.qdiff, args.top)
    return 0


def _filter(args, ratio, count, select="top", seed=0, by="deft") -> int:
    """Under torchrun or accelerate launch each rank scores a shard; rank 0 writes the outputs."""
    from deft_plugin.filtering.distributed import join_launched_group, leave_group

    made_group = join_launched_group()
    try:
        return _filter_on_this_rank(args, ratio, count, select, seed, by)
    finally:
        if made_group:
            leave_group()


def _filter_on_this_rank(args, ratio, count, select, seed, by) -> int:
    from deft_plugin.filtering.distributed import is_main_process
    from deft_plugin.filtering.pipeline import REJECTED_FILE, FilterSettings, best_and_rest, run_filter, write_rejected
    from deft_plugin.filtering.scoring_model import load_scoring_model

    out = _writable(args.out)
    qdiff = _saved_qdiff("--qdiff", args.qdiff) if args.qdiff else None
    tokenizer = _tokenizer(args.model)
    parsed = _read(args, tokenizer)
    settings = FilterSettings(ratio=ratio, count=count, score=args.score, norm=args.norm,
                              batch_size=args.batch_size, max_length=args.max_length, truncation=args.truncation,
                              select=select, seed=seed, by=by)
    result = run_filter(parsed.rows, tokenizer, lambda: load_scoring_model(args.model, args.dtype), settings,
                        cache_dir=out / "cache", qdiff=qdiff,
                        source_report=parsed.report(), row_names=parsed.where, source_rejected=parsed.rejected)
    if not is_main_process():
        return 0
    selected = result.kept if args.command == "filter" else sorted(result.scores)
    lines = []
    for i in selected:
        scored = {}
        if i in result.rewards:  # a random subset is drawn without scoring
            best, rest = best_and_rest(result.rewards[i])
            scored = {"deft_score": result.scores[i], "deft_reward_chosen": best, "deft_reward_rejected": rest}
            if len(result.rewards[i]) > 2:
                scored["deft_rewards"] = list(result.rewards[i])
        if by != "deft":
            scored[f"deft_{by}"] = result.ranking[i]
        lines.append(json.dumps({**parsed.raw[i], **scored}, ensure_ascii=False))
    name = "kept.jsonl" if args.command == "filter" else "scores.jsonl"
    atomic_write_text(out / name, "".join(line + "\n" for line in lines))
    write_rejected(out / REJECTED_FILE, result.rejected)
    atomic_write_text(out / "report.json", json.dumps(result.report, indent=2))
    from deft_plugin.utils.plots import plot_score_distribution

    cut = result.report.get("score_stats", {}).get("threshold")
    cut = cut if args.command == "filter" and select == "top" and by == "deft" else None
    plot_score_distribution(list(result.scores.values()), cut, out / "scores.png")
    r = result.report
    print(f"{r['read']} rows read, {r['unparseable']} unparseable, {r['degenerate']} degenerate "
          f"{r['degenerate_reasons'] or ''}, {r['scored']} scored, {len(lines)} written to {out / name}")
    if result.rejected:
        print(f"{len(result.rejected)} rows left out, each with its place and reason: {out / REJECTED_FILE}")
    return 0


def cmd_score(args) -> int:
    return _filter(args, ratio=1.0, count=None)


def cmd_filter(args) -> int:
    if args.ratio is not None and args.count is not None:
        raise UsageError("give --ratio or --count, not both")
    if args.ratio is not None and not 0 < args.ratio <= 1:
        raise UsageError(f"--ratio must be in (0, 1], got {args.ratio}")
    if args.count is not None and args.count < 1:
        raise UsageError(f"--count must be at least 1, got {args.count}")
    ratio = args.ratio if args.ratio is not None or args.count is not None else 0.05
    if args.by != "deft" and args.select == "random":
        raise UsageError(f"--by {args.by} ranks pairs for --select top or bottom; random draws without a ranking")
    return _filter(args, ratio=ratio, count=args.count, select=args.select, seed=args.seed, by=args.by)


def cmd_formats(args) -> int:
    from deft_plugin.registry import dataset_formats, score_variants

    for name, fmt in sorted(dataset_formats().items()):
        print(f"deft.{name:<12} {fmt.description}")
    print("filtering scores:", ", ".join(sorted(score_variants())))
    return 0


def cmd_demo(args) -> int:
    from deft_plugin.cli.demo import run_demo

    run_demo(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deft", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an input error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("qdiff", help="build and save the discrepancy distribution")
    _data_args(p)
    p.add_argument("--model", required=True, help="model or tokenizer directory / hub id whose tokenizer to use")
    p.add_argument("--norm", default="maxabs", choices=["maxabs", "l2", "none"])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--top", type=int, default=20)
    p.set_defaults(func=cmd_qdiff)

    p = sub.add_parser("inspect", help="show a saved discrepancy distribution")
    p.add_argument("qdiff", help="directory written by `deft qdiff` or a DEFT cache directory")
    p.add_argument("--tokenizer", default=None, help="tokenizer to decode with (default: the one recorded)")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--out", default=None, help="where to write top_tokens.json/png (default: the qdiff directory)")
    p.set_defaults(func=cmd_inspect)

    for name, helptext in (("score", "score every pair"), ("filter", "keep the top pairs")):
        p = sub.add_parser(name, help=helptext)
        _data_args(p)
        _model_args(p)
        p.add_argument("--out", required=True, help="output directory")
        p.add_argument("--score", default="delta", help="filtering score variant: delta or chosen")
        p.add_argument("--norm", default="maxabs", choices=["maxabs", "l2", "none"])
        p.add_argument("--qdiff", default=None, help="use this saved discrepancy distribution")
        p.add_argument("--batch-size", type=int, default=8)
        if name == "filter":
            p.add_argument("--ratio", type=float, default=None, help="fraction to keep (default 0.05)")
            p.add_argument("--count", type=int, default=None, help="number of pairs to keep")
            p.add_argument("--select", choices=("top", "random", "bottom"), default="top",
                           help="top by the score (DEFT), or a control of the same size: random or bottom")
            p.add_argument("--seed", type=int, default=0, help="seed of --select random")
            p.add_argument("--by", choices=("deft", "logp_margin", "length_ratio"), default="deft",
                           help="what top and bottom rank by: deft (the score), or a baseline: logp_margin (the "
                                "model's mean-token log-prob margin) or length_ratio (tokens of y+ over y-)")
            p.set_defaults(func=cmd_filter)
        else:
            p.set_defaults(func=cmd_score)

    p = sub.add_parser("formats", help="list dataset formats and filtering scores")
    p.set_defaults(func=cmd_formats)

    from deft_plugin.cli.demo import add_demo_args
    from deft_plugin.registry import commands

    p = sub.add_parser("demo", help="DEFT-DPO end to end on SmolLM2-135M-Instruct (CPU)")
    add_demo_args(p)
    p.set_defaults(func=cmd_demo)

    for command in commands().values():  # `deft study` and any other plugin's commands
        if command.name in sub.choices:
            raise ValueError(f"deft command {command.name!r} is registered twice")
        p = sub.add_parser(command.name, help=command.help)
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    return parser


def show_filter_log() -> None:
    """The filter's own notices (under a launch, each rank's line of what it scored) on stderr, as
    Axolotl shows them when the plugin runs inside it."""
    import logging

    logger = logging.getLogger("axolotl.integrations.deft")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv=None) -> int:
    from deft_plugin.utils.quiet import keep_dependency_noise_in

    args = build_parser().parse_args(argv)
    keep_dependency_noise_in(getattr(args, "out", None) or getattr(args, "run_dir", None))
    show_filter_log()
    return run_reporting_usage_errors(f"deft {args.command}", lambda: args.func(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
