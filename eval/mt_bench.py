"""MT-Bench through FastChat: the 80 questions answered by a model in FastChat's answer
format (two turns; FastChat's per-category temperatures), resumable.

Questions come from a data directory holding FastChat's question.jsonl (the fschat wheel
does not ship it). The dialogue is written with the model's own chat template: FastChat
0.2.36 has no template for newer models such as Llama-3."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from deft_eval.generate import append_lines, read_done
from deft_plugin.core.answers import generate_batch

LOG = logging.getLogger(__name__)
DEFAULT_TEMPERATURE = 0.7  # FastChat's value for a category it has no entry for


def question_file(data_dir: str | Path) -> Path:
    path = Path(data_dir) / "question.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: give --mt-bench-dir, a folder with FastChat's MT-Bench "
                                "question.jsonl (and judge_prompts.jsonl, reference_answer/ for judging)")
    return path


def load_mt_questions(data_dir: str | Path) -> list[dict]:
    from fastchat.llm_judge.common import load_questions

    return load_questions(str(question_file(data_dir)), None, None)


def temperature_of(question: dict) -> float:
    from fastchat.llm_judge.common import temperature_config

    return temperature_config.get(question["category"], DEFAULT_TEMPERATURE)


def _prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"])


def answer_questions(model, tokenizer, questions: list[dict], out_path: str | Path, model_id: str,
                     max_new_tokens: int = 1024, batch_size: int = 8, seed: int = 0,
                     progress: bool = True) -> list[dict]:
    """Answer every question not yet in out_path, turn by turn, in batches of questions that
    share a temperature; returns the answers in question order (FastChat's answer records)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("MT-Bench answers need a chat model: the tokenizer has no chat template")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = read_done(out_path, key="question_id")
    todo = [q for q in questions if q["question_id"] not in done]
    torch.manual_seed(seed)
    groups: dict[float, list[dict]] = {}
    for q in todo:
        groups.setdefault(temperature_of(q), []).append(q)
    model.eval()
    with tqdm(total=len(questions), initial=len(questions) - len(todo), desc="MT-Bench answers", unit="question",
              disable=not progress) as bar:
        for temperature, group in groups.items():
            for start in range(0, len(group), batch_size):
                batch = group[start:start + batch_size]
                dialogues = [[] for _ in batch]
                for turn in range(max(len(q["turns"]) for q in batch)):
                    active = [i for i, q in enumerate(batch) if turn < len(q["turns"])]
                    for i in active:
                        dialogues[i].append({"role": "user", "content": batch[i]["turns"][turn]})
                    texts = generate_batch(model, tokenizer, [_prompt_ids(tokenizer, dialogues[i]) for i in active],
                                           max_new_tokens, temperature)
                    for i, text in zip(active, texts):
                        dialogues[i].append({"role": "assistant", "content": text.strip()})
                records = [{"question_id": q["question_id"], "answer_id": uuid.uuid4().hex, "model_id": model_id,
                            "choices": [{"index": 0, "turns": [m["content"] for m in d if m["role"] == "assistant"]}],
                            "tstamp": time.time()} for q, d in zip(batch, dialogues)]
                append_lines(out_path, records)
                done.update((r["question_id"], r) for r in records)
                bar.update(len(batch))
    return [done[q["question_id"]] for q in questions]


# ----------------------------------------------------------------------------- judging


@dataclass(frozen=True)
class JudgeEndpoint:
    """Any OpenAI-compatible chat endpoint used as the MT-Bench judge."""

    base_url: str
    model: str
    api_key: str = "EMPTY"
    timeout_s: float = 120.0
    retries: int = 3
    retry_sleep_s: float = 2.0
    parallel: int = 4


def install_openai_judge(endpoint: JudgeEndpoint) -> None:
    """FastChat's judge calls `openai.ChatCompletion` (openai < 1). Give its common module a
    chat_completion_openai that uses an openai >= 1 client on the endpoint, and let the
    judge's model name through FastChat's OpenAI model list (which also gives the judge the
    plain chatgpt conversation template)."""
    import openai
    from fastchat.llm_judge import common
    from fastchat.model import model_adapter

    client = openai.OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, timeout=endpoint.timeout_s,
                           max_retries=0)

    def chat_completion_openai(model, conv, temperature, max_tokens, api_dict=None):
        messages = conv.to_openai_api_messages()
        for attempt in range(endpoint.retries):
            try:
                response = client.chat.completions.create(model=model, messages=messages, n=1,
                                                          temperature=temperature, max_tokens=max_tokens)
                return response.choices[0].message.content or ""
            except openai.OpenAIError as err:
                LOG.warning("judge call failed (attempt %d of %d): %s", attempt + 1, endpoint.retries, err)
                if attempt + 1 < endpoint.retries:
                    time.sleep(endpoint.retry_sleep_s * 2 ** attempt)
        return common.API_ERROR_OUTPUT

    common.chat_completion_openai = chat_completion_openai
    for module in (common, model_adapter):
        if endpoint.model not in module.OPENAI_MODEL_LIST:
            module.OPENAI_MODEL_LIST = tuple(module.OPENAI_MODEL_LIST) + (endpoint.model,)


def _reference_answers(data_dir: Path, judge_model: str) -> dict:
    """FastChat keys reference answers by the judge's name; the shipped ones are GPT-4's."""
    from fastchat.llm_judge.common import load_model_answers

    refs = load_model_answers(str(data_dir / "reference_answer"))
    if not refs:
        raise FileNotFoundError(f"{data_dir / 'reference_answer'}: no reference answers (math, reasoning, coding)")
    return {judge_model: refs.get(judge_model) or refs.get("gpt-4") or next(iter(refs.values()))}


API_ERROR = "$ERROR$"  # FastChat's judgment text when the judge call failed: judged again on a rerun


def _single_key(model: str, question_id, turn: int) -> tuple:
    return model, question_id, turn


def _pair_key(model_1: str, model_2: str, question_id, turn: int) -> tuple:
    return model_1, model_2, question_id, turn


def done_judgments(path: str | Path, key) -> dict[tuple, dict]:
    """Judgments already in a FastChat judgment file, by key; failed judge calls are left out
    (judged again), a line cut off by a killed run is skipped."""
    from deft_plugin.data.sources import read_json_lines

    path = Path(path)
    if not path.is_file():
        return {}
    failed = lambda j: API_ERROR in (j.get("judgment"), j.get("g1_judgment"), j.get("g2_judgment"))  # noqa: E731
    return {key(j): j for j in read_json_lines(path) if not failed(j)}


def _play_new(matches, play, out_file: Path, done: dict, key, parallel: int) -> list[dict]:
    """Judge the matches not yet in `done` (appending to out_file, as FastChat does); return the
    judgments of every match, the earlier ones read back, so a rerun never pays the judge twice."""
    from concurrent.futures import ThreadPoolExecutor

    todo = [m for m in matches if key(m) not in done]
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        new = list(pool.map(lambda m: play(m, output_file=str(out_file)), todo))
    return [done[key(m)] for m in matches if key(m) in done] + new


def judge_single(questions: list[dict], model_answers: dict[str, dict], data_dir: str | Path,
                 endpoint: JudgeEndpoint, out_file: str | Path) -> list[dict]:
    """FastChat's single-answer grading (1-10) of every model's two turns; math, reasoning and
    coding with reference answers. Returns FastChat's judgment records (score -1: unparseable)."""
    from fastchat.llm_judge.common import NEED_REF_CATS, load_judge_prompts, play_a_match_single
    from fastchat.llm_judge.gen_judgment import make_judge_single, make_match_single

    data_dir = Path(data_dir)
    install_openai_judge(endpoint)
    judges = make_judge_single(endpoint.model, load_judge_prompts(str(data_dir / "judge_prompts.jsonl")))
    refs = _reference_answers(data_dir, endpoint.model)
    models = sorted(model_answers)
    plain = [q for q in questions if q["category"] not in NEED_REF_CATS]
    with_ref = [q for q in questions if q["category"] in NEED_REF_CATS]
    matches = (make_match_single(plain, models, model_answers, judges["default"])
               + make_match_single(with_ref, models, model_answers, judges["math"], ref_answers=refs)
               + make_match_single(plain, models, model_answers, judges["default-mt"], multi_turn=True)
               + make_match_single(with_ref, models, model_answers, judges["math-mt"], ref_answers=refs,
                                   multi_turn=True))
    done = done_judgments(out_file, lambda j: _single_key(j["model"], j["question_id"], j["turn"]))
    return _play_new(matches, play_a_match_single, Path(out_file), done,
                     lambda m: _single_key(m.model, m.question["question_id"], 2 if m.multi_turn else 1),
                     endpoint.parallel)


def judge_pairwise(questions: list[dict], model_answers: dict[str, dict], baseline: str, data_dir: str | Path,
                   endpoint: JudgeEndpoint, out_file: str | Path) -> list[dict]:
    """FastChat's pairwise judging of every model against `baseline`, each pair judged in both
    orders (g1, g2); math, reasoning and coding with reference answers."""
    from fastchat.llm_judge.common import NEED_REF_CATS, load_judge_prompts, play_a_match_pair
    from fastchat.llm_judge.gen_judgment import make_judge_pairwise, make_match

    if baseline not in model_answers:
        raise ValueError(f"baseline {baseline!r} has no answers; models with answers: {sorted(model_answers)}")
    data_dir = Path(data_dir)
    install_openai_judge(endpoint)
    judges = make_judge_pairwise(endpoint.model, load_judge_prompts(str(data_dir / "judge_prompts.jsonl")))
    refs = _reference_answers(data_dir, endpoint.model)
    models = sorted(m for m in model_answers if m != baseline)
    plain = [q for q in questions if q["category"] not in NEED_REF_CATS]
    with_ref = [q for q in questions if q["category"] in NEED_REF_CATS]
    matches = (make_match(plain, models, model_answers, judges["default"], baseline)
               + make_match(with_ref, models, model_answers, judges["math"], baseline, ref_answers=refs)
               + make_match(plain, models, model_answers, judges["default-mt"], baseline, multi_turn=True)
               + make_match(with_ref, models, model_answers, judges["math-mt"], baseline, ref_answers=refs,
                            multi_turn=True))
    done = done_judgments(out_file, lambda j: _pair_key(j["model_1"], j["model_2"], j["question_id"], j["turn"]))
    return _play_new(matches, play_a_match_pair, Path(out_file), done,
                     lambda m: _pair_key(m.model_1, m.model_2, m.question["question_id"], 2 if m.multi_turn else 1),
                     endpoint.parallel)


def summarise_pairwise(judgments: list[dict]) -> dict:
    """Per model against the baseline: wins, losses, ties and win rate. As in FastChat, a pair
    whose two orders disagree counts as a tie (and is reported as inconsistent); a pair with an
    unparseable verdict in either order is counted, not scored."""
    out: dict[str, dict] = {}
    for j in judgments:
        row = out.setdefault(j["model_1"], {"baseline": j["model_2"], "win": 0, "loss": 0, "tie": 0,
                                            "inconsistent": 0, "unparseable": 0})
        g1, g2 = j["g1_winner"], j["g2_winner"]
        if "error" in (g1, g2):
            row["unparseable"] += 1
        elif g1 != g2:
            row["tie"] += 1
            row["inconsistent"] += 1
        else:
            row[{"model_1": "win", "model_2": "loss", "tie": "tie"}[g1]] += 1
    for row in out.values():
        n = row["win"] + row["loss"] + row["tie"]
        # None, not nan, where no pair had a verdict: results.json stays JSON (null, not NaN)
        row["win_rate"] = row["win"] / n if n else None
        row["win_rate_ties_half"] = (row["win"] + row["tie"] / 2) / n if n else None
    return out


def summarise_judgments(judgments: list[dict], questions: list[dict]) -> dict:
    """Mean scores per model: overall, per turn and per category, over parseable judgments;
    unparseable ones (score -1) counted, never averaged in. A model with no parseable
    judgment has the score None."""
    category = {q["question_id"]: q["category"] for q in questions}
    out: dict[str, dict] = {}
    for j in judgments:
        row = out.setdefault(j["model"], {"scores": [], "turn": {}, "category": {}, "unparseable": 0})
        if j["score"] == -1:
            row["unparseable"] += 1
            continue
        row["scores"].append(j["score"])
        row["turn"].setdefault(j["turn"], []).append(j["score"])
        row["category"].setdefault(category[j["question_id"]], []).append(j["score"])
    # None where nothing was parseable: null in results.json (NaN, json's default, is not JSON)
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {model: {"score": mean(r["scores"]), "judged": len(r["scores"]), "unparseable": r["unparseable"],
                    "turn": {t: mean(v) for t, v in sorted(r["turn"].items())},
                    "category": {c: mean(v) for c, v in sorted(r["category"].items())}}
            for model, r in out.items()}


NO_SCORE = "no parseable judgment"


def _missing(value) -> bool:
    """A mean with nothing behind it (no parseable judgment): absent, None, or nan as older
    summaries hold."""
    return value is None or value != value


def score_text(value, digits: int) -> str:
    """A mean as table text: a dash where it is missing, never "nan"."""
    return "–" if _missing(value) else f"{value:.{digits}f}"


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table from cell lists, one cell per header column in every row, so it stays
    valid whatever the columns are (no category column at all when nothing was parseable)."""
    lines = [header, ["---"] * len(header), *rows]
    text = "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in lines) + "\n"
    if any("–" in row for row in rows):  # say what the dash means
        text += f"\n(–: {NO_SCORE})\n"
    return text


def results_markdown(summary: dict) -> str:
    """Per model: overall, per turn and per category means, and the unparseable count."""
    categories = sorted({c for r in summary.values() for c in r["category"]})
    rows = [[model, score_text(r["score"], 3), score_text(r["turn"].get(1), 3), score_text(r["turn"].get(2), 3),
             r["judged"], r["unparseable"], *(score_text(r["category"].get(c), 2) for c in categories)]
            for model, r in sorted(summary.items())]
    return markdown_table(["model", "score", "turn 1", "turn 2", "judged", "unparseable", *categories], rows)


def pairwise_markdown(pairwise: dict) -> str:
    """Per model against the baseline: wins, losses, ties, inconsistent and unparseable pairs,
    and the win rate (a dash when no pair had a parseable verdict)."""
    rows = [[m, r["baseline"], r["win"], r["loss"], r["tie"], r["inconsistent"], r["unparseable"],
             score_text(r["win_rate"], 3)] for m, r in sorted(pairwise.items())]
    return markdown_table(["model", "baseline", "win", "loss", "tie", "inconsistent", "unparseable", "win rate"],
                          rows)


def legend_label(model: str, row: dict) -> str:
    """The model and its overall score, in words where it has none."""
    return f"{model} ({NO_SCORE if _missing(row['score']) else format(row['score'], '.2f')})"


def plot_results(summary: dict, path: str | Path) -> Path:
    """MT-Bench score per category, one bar group per model; a missing score is written where
    its bar would be."""
    from deft_plugin.utils.plots import save_figure, subplots

    categories = sorted({c for r in summary.values() for c in r["category"]})
    fig, ax = subplots(figsize=(max(5.0, 0.8 * len(categories) + 2), 3.6))
    width = 0.8 / max(1, len(summary))
    for k, (model, r) in enumerate(sorted(summary.items())):
        bars = [(i + k * width, r["category"].get(c)) for i, c in enumerate(categories)]
        shown = [(x, h) for x, h in bars if not _missing(h)]
        ax.bar([x for x, _ in shown], [h for _, h in shown], width, label=legend_label(model, r))
        for x, h in bars:
            if _missing(h):  # in words: a bar of 0 would read as a score
                ax.text(x, 0.2, NO_SCORE, rotation=90, ha="center", va="bottom", fontsize=7)
    if not categories:  # nothing parseable at all: say so rather than leave the axes empty
        unparseable = sum(r["unparseable"] for r in summary.values())
        ax.text(0.5, 0.5, f"{NO_SCORE}\n({unparseable} unparseable)", transform=ax.transAxes, ha="center",
                va="center")
    centres = [i + 0.4 - width / 2 for i in range(len(categories))]
    ax.set_xticks(centres, categories, rotation=30, ha="right")
    if categories:  # room for every model's slot, drawn or not (autoscaling sees only the bars)
        ax.set_xlim(centres[0] - 0.5, centres[-1] + 0.5)
    ax.set_ylim(0, 10)
    ax.set_ylabel("MT-Bench score (1-10)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)
