"""Scoring pairs with the starting model (ReplyScorer), the filter built on it (run_filter)
and its resumable cache, on the tiny Llama and real HH-RLHF pairs.

The reference for every reward is a naive computation: one full forward of the whole
causal LM on the unpadded sequence, a float64 softmax over the full logits, dotted with
Qn, averaged over the positions that predict a non-special reply token.

The random tiny model's next-token distributions are nearly uniform, which makes every
reward about 1e-4; its LM head is scaled up here ("sharp" model) so that rewards are of
order 0.1 and a tolerance of 1e-6 says something."""

from __future__ import annotations

import dataclasses
import json
import logging
import math

import pytest
import torch

from deft_plugin.core.selection import keep_count, select_top
from deft_plugin.data.encoding import encode_rows
from deft_plugin.data.parsing import parse_rows
from deft_plugin.filtering.pipeline import FilterSettings, build_qdiff, run_filter
from deft_plugin.filtering.scorer import ReplyScorer

from builders import HH_PAIRS, KEPT, PROMPT_FILLS_SEQUENCE, RATIO, SCORED, SEQUENCE_LEN, hh_rows, sharpened

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def rows():
    """The HH_PAIRS real HH-RLHF pairs as chat-message preference rows."""
    parsed = parse_rows(hh_rows(HH_PAIRS), "hh_rlhf", "chat_template")
    assert parsed.read == HH_PAIRS and len(parsed.rows) == HH_PAIRS
    return parsed.rows


@pytest.fixture(scope="module")
def pairs(rows, tiny_tokenizer):
    pairs, _ = encode_rows(rows, tiny_tokenizer, SEQUENCE_LEN)
    return pairs


@pytest.fixture(scope="module")
def qdiff(pairs, tiny_tokenizer):
    return build_qdiff(pairs, tiny_tokenizer, "maxabs")


@pytest.fixture(scope="module")
def sharp_model(tiny_model):
    return sharpened(tiny_model, 100.0).eval()


@pytest.fixture(scope="module")
def special(tiny_tokenizer):
    return set(tiny_tokenizer.all_special_ids)


def naive_reward(model, qn: torch.Tensor, special: set[int], prompt, reply) -> float:
    seq = list(prompt) + list(reply)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([seq])).logits[0].double()
    positions = [t - 1 for t in range(len(prompt), len(seq)) if seq[t] not in special]
    assert positions, "a scored reply has no non-special token"
    r = torch.softmax(logits[positions], dim=-1) @ qn.double()
    return float(r.mean())


def naive_logprob(model, prompt, reply) -> float:
    """DPO's sequence log-probability: log p of every reply token summed, special tokens included."""
    seq = list(prompt) + list(reply)
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([seq])).logits[0].double().log_softmax(-1)
    return float(sum(logp[t - 1, seq[t]] for t in range(len(prompt), len(seq))))


@pytest.fixture(scope="module")
def naive(pairs, qdiff, sharp_model, special):
    """index -> (R chosen, R rejected), computed naively for every usable pair."""
    return {p.index: (naive_reward(sharp_model, qdiff.qn, special, p.prompt_ids, p.chosen_ids),
                      naive_reward(sharp_model, qdiff.qn, special, p.prompt_ids, p.rejected_ids))
            for p in pairs}


def make_scorer(model, qdiff, tokenizer, batch_size, share_prompt=True):
    return ReplyScorer(model, qdiff.qn, tokenizer.all_special_ids, tokenizer.pad_token_id, batch_size,
                       share_prompt=share_prompt)


class NeverLoad:
    """A model loader that fails the test when called."""

    calls = 0

    def __call__(self):
        self.calls += 1
        raise AssertionError("the model loader must not be called")


class CountingLoader:
    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self):
        self.calls += 1
        return self.model


@pytest.fixture
def count_batches(monkeypatch):
    """Wraps ReplyScorer.score_batch: records the pair indices of every batch scored."""
    original = ReplyScorer.score_batch
    seen: list[list[int]] = []

    def counting(self, batch):
        seen.append([p.index for p in batch])
        return original(self, batch)

    monkeypatch.setattr(ReplyScorer, "score_batch", counting)
    return seen


# --------------------------------------------------------------------------- ReplyScorer


def test_fixture_counts_follow_from_the_token_ids(rows, tiny_tokenizer):
    """PROMPT_FILLS_SEQUENCE (and so SCORED and KEPT), which filter tests across the suite rely
    on, counted from the prompts' own token ids rather than through encode_rows."""
    lengths = [len(tiny_tokenizer.apply_chat_template(r["prompt"], tokenize=True, add_generation_prompt=True,
                                                       return_dict=True)["input_ids"]) for r in rows]
    assert sum(n >= SEQUENCE_LEN for n in lengths) == PROMPT_FILLS_SEQUENCE


def test_fixture_pairs_are_varied(pairs):
    """The pairs used below differ in prompt and reply lengths, so batches are padded."""
    assert len(pairs) == SCORED
    lengths = {len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs}
    assert len(lengths) > 20
    assert any(len(p.chosen_ids) != len(p.rejected_ids) for p in pairs)


@pytest.mark.parametrize("share_prompt", [True, False], ids=["shared-prompt", "unshared"])
def test_rewards_equal_naive_computation(pairs, qdiff, sharp_model, tiny_tokenizer, special, naive, share_prompt):
    """A handful of real pairs of very different lengths, scored together in one padded
    batch and one by one, against full-model full-softmax rewards and log-probabilities,
    with each prompt run once per row (the default) and once per reply."""
    chosen = sorted(pairs, key=lambda p: len(p.prompt_ids) + len(p.chosen_ids))
    handful = [chosen[0], chosen[1], chosen[len(chosen) // 2], chosen[-2], chosen[-1]]
    handful += [p for p in pairs[:4] if p not in handful][:1]
    assert len({p.index for p in handful}) == 6
    widths = {len(p.prompt_ids) + len(p.rejected_ids) for p in handful} | \
             {len(p.prompt_ids) + len(p.chosen_ids) for p in handful}
    assert max(widths) - min(widths) > 100  # real padding inside the batch
    scorer = make_scorer(sharp_model, qdiff, tiny_tokenizer, len(handful), share_prompt)
    assert scorer.share_prompt is share_prompt  # the tiny Llama runs SDPA, which takes the block mask
    together = scorer.score_batch(handful)
    for p in handful:
        alone = scorer.score_batch([p])[p.index]
        logps = [naive_logprob(sharp_model, p.prompt_ids, reply) for reply in p.completions]
        for got in (together[p.index], alone):
            assert got.rewards == pytest.approx(naive[p.index], abs=1e-6)
            assert got.logps == pytest.approx(logps, rel=1e-6, abs=1e-4)  # float32 sums of up to ~8,000
    # the rewards are not trivially equal: chosen and rejected differ, pairs differ
    values = [v for p in handful for v in naive[p.index]]
    assert len({round(v, 6) for v in values}) == len(values)
    assert max(abs(v) for v in values) > 0.01
    assert all(-1.0 <= v <= 1.0 for v in values)  # expectation of Qn, |Qn| <= 1


def test_all_pairs_match_naive(pairs, qdiff, sharp_model, tiny_tokenizer, naive):
    rewards = make_scorer(sharp_model, qdiff, tiny_tokenizer, batch_size=8).score(pairs, progress=False)
    assert set(rewards) == {p.index for p in pairs}
    for i, scores in rewards.items():
        rc, rr = scores.rewards
        assert rc == pytest.approx(naive[i][0], abs=1e-6)
        assert rr == pytest.approx(naive[i][1], abs=1e-6)


@pytest.mark.parametrize("batch_size", [1, 3, 16, 64])
def test_batch_size_does_not_change_rewards(pairs, qdiff, sharp_model, tiny_tokenizer, batch_size):
    reference = make_scorer(sharp_model, qdiff, tiny_tokenizer, batch_size=8).score(pairs, progress=False)
    got = make_scorer(sharp_model, qdiff, tiny_tokenizer, batch_size=batch_size).score(pairs, progress=False)
    assert set(got) == set(reference)
    for i in reference:
        assert got[i].rewards == pytest.approx(reference[i].rewards, abs=1e-6)
        assert got[i].logps == pytest.approx(reference[i].logps, rel=1e-6, abs=1e-4)


def test_lm_head_runs_on_reply_positions_only(pairs, qdiff, sharp_model, tiny_tokenizer, special):
    """The full causal-LM forward (which would run the LM head on every position) is never
    called; the decoder runs once per batch, over fewer positions than the unshared sequences,
    and the LM head sees exactly one row per reply token (special ones give DPO's log-probs)."""
    batch = pairs[:6]
    calls = {"model": 0, "decoder": 0, "head_rows": 0, "decoder_positions": 0}

    def on_model(*_):
        calls["model"] += 1

    def on_decoder(_module, _args, kwargs, _out):
        calls["decoder"] += 1
        calls["decoder_positions"] += kwargs["input_ids"].numel()

    def on_head(_module, args, _out):
        calls["head_rows"] += args[0].shape[0]
        assert args[0].dim() == 2  # [rows, hidden]: gathered positions, not [batch, time, hidden]

    handles = [sharp_model.register_forward_hook(on_model),
               sharp_model.get_decoder().register_forward_hook(on_decoder, with_kwargs=True),
               sharp_model.get_output_embeddings().register_forward_hook(on_head)]
    try:
        make_scorer(sharp_model, qdiff, tiny_tokenizer, batch_size=len(batch)).score_batch(batch)
    finally:
        for h in handles:
            h.remove()
    expected = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in batch)
    total_positions = sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in batch)
    assert calls["model"] == 0 and calls["decoder"] == 1 and calls["head_rows"] == expected
    assert expected < total_positions / 2
    assert calls["decoder_positions"] < total_positions  # each prompt once, padding included


# --------------------------------------------------------------------------- run_filter


def test_run_filter_counts_and_selection(rows, tiny_tokenizer, sharp_model, naive):
    degenerate_rows = [
        {**rows[9], "rejected": rows[9]["chosen"]},  # identical replies
        {"prompt": rows[9]["prompt"], "chosen": rows[12]["chosen"], "rejected": rows[12]["chosen"]},
    ]
    all_rows = rows + degenerate_rows
    loader = CountingLoader(sharp_model)
    names = [f"data.jsonl:{n}" for n in range(1, len(all_rows) + 1)]
    result = run_filter(all_rows, tiny_tokenizer, loader,
                        FilterSettings(ratio=RATIO, batch_size=8, max_length=SEQUENCE_LEN),
                        progress=False, row_names=names)
    report = result.report
    assert loader.calls == 1
    assert report["rows"] == 66
    assert report["degenerate_reasons"] == {"reply cut off: prompt fills sequence_len": PROMPT_FILLS_SEQUENCE,
                                            "chosen and rejected identical": 2}
    assert report["degenerate"] == 20 == sum(report["degenerate_reasons"].values())
    # the degenerate rows are named too, the first few of each reason
    assert report["degenerate_examples"]["chosen and rejected identical"] == [names[-2], names[-1]]
    cut_off = report["degenerate_examples"]["reply cut off: prompt fills sequence_len"]
    assert len(cut_off) == 5 and all(n in names[:HH_PAIRS] for n in cut_off)
    assert report["scored"] == SCORED == len(result.scores) == len(result.rewards)
    assert report["rows"] == report["degenerate"] + report["scored"]
    # every degenerate row, not only the first few, is in the rejected records with its place and reason
    assert report["rejected"] == len(result.rejected) == 20 and report["rejected_file"] == "rejected.jsonl"
    assert [r["where"] for r in result.rejected] == sorted(
        (n for n in names if n not in {names[i] for i in result.scores}), key=names.index)
    assert {r["stage"] for r in result.rejected} == {"degenerate"}
    identical = {"stage": "degenerate", "reason": "chosen and rejected identical"}
    assert result.rejected[-2:] == [{"where": names[-2], **identical}, {"where": names[-1], **identical}]
    assert report["kept"] == len(result.kept) == keep_count(SCORED, RATIO) == math.ceil(RATIO * SCORED) == KEPT
    assert set(result.scores) == set(naive)  # the degenerate rows were not scored

    # scores are R(y+) - R(y-), equal to the naive rewards' difference
    for i, s in result.scores.items():
        assert s == pytest.approx(result.rewards[i][0] - result.rewards[i][1], abs=1e-6)
        assert s == pytest.approx(naive[i][0] - naive[i][1], abs=1e-6)
    # kept equals select_top of the scores, mapped back to dataset order
    order = sorted(result.scores)
    assert result.kept == [order[j] for j in select_top([result.scores[i] for i in order], RATIO)]
    assert result.kept == sorted(result.kept)
    # ... and is the top KEPT by the naive scores too (the threshold is not a near tie)
    ranked = sorted(naive, key=lambda i: -(naive[i][0] - naive[i][1]))
    margin = ((naive[ranked[KEPT - 1]][0] - naive[ranked[KEPT - 1]][1])
              - (naive[ranked[KEPT]][0] - naive[ranked[KEPT]][1]))
    assert margin > 1e-3
    assert result.kept == sorted(ranked[:KEPT])
    assert report["score_stats"]["threshold"] == pytest.approx(min(result.scores[i] for i in result.kept))
    assert report["score_stats"]["max"] == pytest.approx(max(result.scores.values()))


def test_run_filter_count_and_chosen_variant(rows, tiny_tokenizer, sharp_model, naive):
    result = run_filter(rows, tiny_tokenizer, CountingLoader(sharp_model),
                        FilterSettings(ratio=None, count=5, score="chosen", max_length=SEQUENCE_LEN), progress=False)
    assert len(result.kept) == result.report["kept"] == 5
    by_chosen = sorted(naive, key=lambda i: -naive[i][0])
    assert result.kept == sorted(by_chosen[:5])
    for i, s in result.scores.items():
        assert s == pytest.approx(result.rewards[i][0], abs=1e-6)


def test_bottom_selection_keeps_the_lowest_scores(rows, tiny_tokenizer, sharp_model, naive):
    top = run_filter(rows, tiny_tokenizer, CountingLoader(sharp_model),
                     FilterSettings(ratio=RATIO, max_length=SEQUENCE_LEN), progress=False)
    bottom = run_filter(rows, tiny_tokenizer, CountingLoader(sharp_model),
                        FilterSettings(ratio=RATIO, max_length=SEQUENCE_LEN, select="bottom"), progress=False)
    assert len(bottom.kept) == len(top.kept) == KEPT and set(bottom.kept).isdisjoint(top.kept)
    by_delta = sorted(naive, key=lambda i: naive[i][0] - naive[i][1])
    assert bottom.kept == sorted(by_delta[:KEPT])
    stats = bottom.report["score_stats"]
    assert stats["threshold"] == pytest.approx(max(bottom.scores[i] for i in bottom.kept))
    assert stats["kept_mean"] < top.report["score_stats"]["kept_mean"]


def test_random_selection_needs_no_model_and_follows_its_seed(rows, tiny_tokenizer, sharp_model, pairs, tmp_path):
    def draw(seed, cache=None):
        loader = NeverLoad()
        result = run_filter(rows, tiny_tokenizer, loader, FilterSettings(ratio=RATIO, max_length=SEQUENCE_LEN,
                                                                         select="random", seed=seed),
                            cache_dir=cache, progress=False)
        assert loader.calls == 0
        return result

    first, again, other = draw(0), draw(0), draw(1)
    usable = {p.index for p in pairs}
    assert len(first.kept) == KEPT and set(first.kept) <= usable and first.kept == sorted(first.kept)
    assert first.kept == again.kept and first.kept != other.kept
    assert first.scores == {} and first.report["scored"] == 0
    # with every reply already scored (by a top run sharing the cache), the random subset reports its scores
    cache = tmp_path / "shared"
    run_filter(rows, tiny_tokenizer, CountingLoader(sharp_model), FilterSettings(ratio=RATIO, max_length=SEQUENCE_LEN),
               cache_dir=cache, progress=False)
    cached = draw(0, cache)
    assert cached.kept == first.kept and set(cached.scores) == usable
    assert cached.report["score_stats"]["threshold"] is None


def test_filter_off_keeps_every_usable_pair_without_a_model(rows, tiny_tokenizer, pairs, tmp_path):
    loader = NeverLoad()
    result = run_filter(rows, tiny_tokenizer, loader, FilterSettings(filter=False, max_length=SEQUENCE_LEN),
                        cache_dir=tmp_path / "c", progress=False)
    assert loader.calls == 0
    assert result.kept == [p.index for p in pairs]
    assert result.scores == {} and result.rewards == {}
    assert result.report["kept"] == SCORED and result.report["scored"] == 0
    assert result.report["degenerate"] == PROMPT_FILLS_SEQUENCE
    assert not (tmp_path / "c" / "parts").exists()


# --------------------------------------------------------------------------- cache / resume


def _tree(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _assert_no_temp_files(directory):
    leftovers = [p for p in directory.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []


def _settings(batch_size=4):
    return FilterSettings(ratio=RATIO, batch_size=batch_size, max_length=SEQUENCE_LEN)


def test_cache_artifacts_and_full_reuse(rows, tiny_tokenizer, sharp_model, tmp_path, count_batches):
    cache = tmp_path / "cache"
    first = run_filter(rows, tiny_tokenizer, CountingLoader(sharp_model), _settings(), cache, progress=False)
    assert len(count_batches) == math.ceil(SCORED / 4)

    names = {p.name for p in cache.iterdir()}
    assert {"parts", "scores.jsonl", "report.json", "qdiff.safetensors", "qdiff.json"} <= names
    parts = sorted((cache / "parts").glob("part-*.json"))
    assert len(parts) == len(count_batches)
    cached = {int(k): v for part in parts for k, v in json.loads(part.read_text())["rows"].items()}
    assert set(cached) == set(first.rewards)
    for i, (rc, rr) in first.rewards.items():
        assert cached[i]["rewards"] == [rc, rr]
        assert all(v < 0 for v in cached[i]["logps"])  # log-probabilities of two non-empty replies

    lines = [json.loads(line) for line in (cache / "scores.jsonl").read_text().splitlines()]
    assert [r["index"] for r in lines] == sorted(first.scores)
    assert sorted(r["index"] for r in lines if r["kept"]) == first.kept
    for r in lines:
        assert r["score"] == first.scores[r["index"]]
        assert (r["reward_chosen"], r["reward_rejected"]) == first.rewards[r["index"]]
    report = json.loads((cache / "report.json").read_text())
    assert report == json.loads(json.dumps(first.report))
    assert report["rows"] == HH_PAIRS and report["scored"] == SCORED and report["kept"] == KEPT
    meta = json.loads((cache / "qdiff.json").read_text())
    assert meta["pairs"] == SCORED and meta["norm"] == "maxabs" and meta["vocab_size"] == len(tiny_tokenizer)
    _assert_no_temp_files(cache)

    # second run: everything cached, the model is never loaded, nothing is scored again
    before = _tree(cache / "parts")
    count_batches.clear()
    loader = NeverLoad()
    second = run_filter(rows, tiny_tokenizer, loader, _settings(), cache, progress=False)
    assert loader.calls == 0 and count_batches == []
    assert second.kept == first.kept and second.scores == first.scores and second.rewards == first.rewards
    assert torch.equal(second.qdiff.qn, first.qdiff.qn)
    assert _tree(cache / "parts") == before

    # another ratio chooses among the cached rewards, still without a model
    third = run_filter(rows, tiny_tokenizer, loader, FilterSettings(ratio=0.5, max_length=SEQUENCE_LEN), cache,
                       progress=False)
    assert loader.calls == 0 and len(third.kept) == SCORED // 2
    assert set(first.kept) < set(third.kept)
    assert json.loads((cache / "report.json").read_text())["kept"] == SCORED // 2
    _assert_no_temp_files(cache)


class Killed(RuntimeError):
    pass


@pytest.mark.parametrize("finished", [1, 5])
def test_killed_run_resumes_without_recomputing(rows, tiny_tokenizer, sharp_model, tmp_path, monkeypatch, finished):
    """The scorer dies in its (finished+1)-th batch; the rerun scores only what is missing
    and ends with the same scores and selection as an uninterrupted run."""
    uninterrupted = run_filter(rows, tiny_tokenizer, CountingLoader(sharp_model), _settings(), tmp_path / "clean",
                               progress=False)

    original = ReplyScorer.score_batch
    first_run: list[list[int]] = []

    def dying(self, batch):
        if len(first_run) == finished:
            raise Killed("scorer killed")
        first_run.append([p.index for p in batch])
        return original(self, batch)

    cache = tmp_path / "cache"
    monkeypatch.setattr(ReplyScorer, "score_batch", dying)
    with pytest.raises(Killed):
        run_filter(rows, tiny_tokenizer, CountingLoader(sharp_model), _settings(), cache, progress=False)
    assert len(first_run) == finished
    assert len(list((cache / "parts").glob("part-*.json"))) == finished
    assert not (cache / "scores.jsonl").exists() and not (cache / "report.json").exists()
    _assert_no_temp_files(cache)

    second_run: list[list[int]] = []

    def counting(self, batch):
        second_run.append([p.index for p in batch])
        return original(self, batch)

    monkeypatch.setattr(ReplyScorer, "score_batch", counting)
    loader = CountingLoader(sharp_model)
    resumed = run_filter(rows, tiny_tokenizer, loader, _settings(), cache, progress=False)
    done_before = {i for batch in first_run for i in batch}
    done_after = [i for batch in second_run for i in batch]
    assert loader.calls == 1
    assert len(done_before) == 4 * finished
    assert len(done_after) == len(set(done_after)) == SCORED - 4 * finished  # nothing scored twice
    assert done_before.isdisjoint(done_after)
    assert len(second_run) == math.ceil((SCORED - 4 * finished) / 4)
    assert done_before | set(done_after) == set(uninterrupted.scores)

    assert resumed.kept == uninterrupted.kept
    assert resumed.report["scored"] == SCORED and resumed.report["kept"] == KEPT
    for i, s in uninterrupted.scores.items():
        assert resumed.scores[i] == pytest.approx(s, abs=1e-6)
        assert resumed.rewards[i][0] == pytest.approx(uninterrupted.rewards[i][0], abs=1e-6)
        assert resumed.rewards[i][1] == pytest.approx(uninterrupted.rewards[i][1], abs=1e-6)
    _assert_no_temp_files(cache)
    assert json.loads((cache / "report.json").read_text())["kept"] == KEPT


def test_part_files_are_atomic_and_unique(tmp_path):
    from deft_plugin.filtering.score_cache import ReplyScores, ScoreCache

    cache = ScoreCache(tmp_path)
    assert cache.done() == {}
    cache.write_part({3: ReplyScores((0.25, -0.5), (-3.0, -4.0))})
    cache.write_part({4: ReplyScores((1.0, 2.0), (-1.0, -2.0)), 5: ReplyScores((0.125, 0.0), (-5.0, -6.0))})
    cache.write_part({})
    assert len(list((tmp_path / "parts").iterdir())) == 2
    assert cache.done() == {3: (0.25, -0.5), 4: (1.0, 2.0), 5: (0.125, 0.0)}
    assert cache.scores()[5].logps == (-5.0, -6.0)
    _assert_no_temp_files(tmp_path)



def test_run_killed_between_the_two_qdiff_files_resumes(rows, tiny_tokenizer, sharp_model, tmp_path, count_batches):
    """qdiff.safetensors is written before qdiff.json: a run killed (or a second rank looking)
    between the two must not make the cache unusable."""
    cache = tmp_path / "cache"
    first = run_filter(rows, tiny_tokenizer, CountingLoader(sharp_model), _settings(), cache, progress=False)
    (cache / "qdiff.json").unlink()
    count_batches.clear()
    again = run_filter(rows, tiny_tokenizer, NeverLoad(), _settings(), cache, progress=False)
    assert count_batches == [] and again.kept == first.kept
    assert torch.equal(again.qdiff.qn, first.qdiff.qn)
    assert (cache / "qdiff.json").is_file()


def test_mean_distributions_give_the_rewards_under_any_q(pairs, qdiff, sharp_model, tiny_tokenizer):
    """R under a Q is the reply's mean next-token distribution times Qn: for the pool's Q and for
    another (Q of half the pairs, l2 norm), equal to scoring with that Q."""
    from deft_plugin.filtering.pipeline import build_qdiff
    from deft_plugin.filtering.scorer import mean_distributions

    rows = pairs[:10]
    dists = mean_distributions(sharp_model, rows, tiny_tokenizer.all_special_ids, tiny_tokenizer.pad_token_id,
                               batch_size=4, progress=False)
    assert set(dists) == {p.index for p in rows}
    assert all(d.shape == (2, len(tiny_tokenizer)) for d in dists.values())
    assert all(torch.allclose(d.sum(1), torch.ones(2), atol=1e-5) for d in dists.values())
    other = build_qdiff(pairs[::2], tiny_tokenizer, "l2")
    for q in (qdiff, other):
        scored = make_scorer(sharp_model, q, tiny_tokenizer, batch_size=4).score(rows, progress=False)
        for p in rows:
            assert (dists[p.index] @ q.qn).tolist() == pytest.approx(list(scored[p.index].rewards), abs=1e-6)


# --------------------------------------------------------------------------- reference log-probabilities


def test_a_cache_without_logprobs_is_extended_not_reused(rows, tiny_tokenizer, sharp_model, tmp_path, count_batches):
    """Parts written before log-probabilities were recorded (rewards only): a run that needs
    DPO's reference scores every row again and records it; the rewards stay the same."""
    cache = tmp_path / "cache"
    first = run_filter(rows, tiny_tokenizer, CountingLoader(sharp_model), _settings(), cache, progress=False)
    for part in (cache / "parts").glob("part-*.json"):  # rewrite the parts in the old format
        old = {k: v["rewards"] for k, v in json.loads(part.read_text())["rows"].items()}
        part.write_text(json.dumps(old))
    count_batches.clear()
    loader = CountingLoader(sharp_model)
    rewards_only = run_filter(rows, tiny_tokenizer, NeverLoad(), _settings(), cache, progress=False)
    assert rewards_only.rewards == first.rewards and rewards_only.logps == {}  # rewards are read, nothing scored
    extended = run_filter(rows, tiny_tokenizer, loader, dataclasses.replace(_settings(), reference=True), cache,
                          progress=False)
    assert loader.calls == 1 and sum(map(len, count_batches)) == SCORED
    assert set(extended.logps) == set(extended.kept) == set(first.kept)
    for i in first.rewards:
        assert extended.rewards[i] == pytest.approx(first.rewards[i], abs=1e-6)
    p = extended.encoded[extended.kept[0]]
    assert extended.logps[p.index] == pytest.approx(
        [naive_logprob(sharp_model, p.prompt_ids, reply) for reply in p.completions], rel=1e-6, abs=1e-4)
    again = run_filter(rows, tiny_tokenizer, NeverLoad(), dataclasses.replace(_settings(), reference=True), cache,
                       progress=False)
    assert again.logps == extended.logps  # now read from the cache


def test_random_subset_scores_only_the_rows_it_keeps(rows, tiny_tokenizer, sharp_model, tmp_path, count_batches):
    """A random selection needs no rewards: with the reference it scores the kept rows only;
    without filtering, every usable row."""
    settings = dataclasses.replace(_settings(), select="random", seed=3, reference=True)
    result = run_filter(rows, tiny_tokenizer, CountingLoader(sharp_model), settings, tmp_path / "a", progress=False)
    assert len(result.kept) == KEPT and set(result.logps) == set(result.kept)
    assert sorted(i for batch in count_batches for i in batch) == sorted(result.kept)
    count_batches.clear()
    settings = dataclasses.replace(_settings(), filter=False, reference=True)
    result = run_filter(rows, tiny_tokenizer, CountingLoader(sharp_model), settings, tmp_path / "b", progress=False)
    assert len(result.kept) == SCORED and set(result.logps) == set(result.kept)
    assert sum(map(len, count_batches)) == SCORED


def test_backends_without_a_block_mask_score_each_prompt_per_reply(sharp_model, qdiff, tiny_tokenizer, caplog):
    """Flash attention takes no 4D mask: the scorer says so once and runs the unshared pass."""
    saved = sharp_model.config._attn_implementation
    sharp_model.config._attn_implementation = "flash_attention_2"
    try:
        with caplog.at_level(logging.INFO, logger="axolotl.integrations.deft"):
            scorer = make_scorer(sharp_model, qdiff, tiny_tokenizer, 4)
    finally:
        sharp_model.config._attn_implementation = saved
    assert scorer.share_prompt is False
    notes = [r.getMessage() for r in caplog.records if "block mask" in r.getMessage()]
    assert notes == ["DEFT scoring: attention backend 'flash_attention_2' takes no block mask; "
                     "each prompt runs once per reply"]
    assert make_scorer(sharp_model, qdiff, tiny_tokenizer, 4).share_prompt is True  # SDPA takes it
