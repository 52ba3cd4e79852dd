"""The head pass: reply log-probabilities and the distribution reward from hidden states and
the LM head, a chunk of positions at a time with a recomputing backward. Values and gradients
against the naive full-logits computation (float64, several chunks, a bias, a padded Q),
gradcheck, the subset rule of the two masks, packed rows (sums per segment), that the
autograd graph keeps no block of logits (only the chunks' inputs are saved), and a training
step's peak memory on a large-vocabulary model against the full-logits step."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from deft_plugin.core.head_pass import head_logps_and_rewards, sequence_head_pass

from builders import TESTS
from reference import naive_distribution_reward, naive_sequence_logprobs


class FunctionalHead(torch.nn.Module):
    """z = h W^T + b with W, b given as plain tensors, so gradcheck can vary them."""

    def __init__(self, weight, bias=None):
        super().__init__()
        self.w, self.b, self.out_features = weight, bias, weight.shape[0]

    def forward(self, h):
        z = h @ self.w.T
        return z if self.b is None else z + self.b


def _case(batch=3, time=6, hidden=5, vocab=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, time, hidden, generator=g, dtype=torch.float64)
    w = torch.randn(vocab, hidden, generator=g, dtype=torch.float64)
    b = torch.randn(vocab, generator=g, dtype=torch.float64)
    q = torch.randn(vocab, generator=g, dtype=torch.float64)
    q = q / q.abs().max()
    targets = torch.randint(0, vocab, (batch, time), generator=g)
    logp_mask = torch.rand(batch, time, generator=g) > 0.3
    logp_mask[1] = False  # a sequence with no reply positions
    logp_mask[0, :2] = True
    reward_mask = logp_mask & (targets != 3)  # the reward skips a "special" token
    return h, w, b, q, targets, logp_mask, reward_mask


@pytest.mark.parametrize("chunk_rows", [1, 3, 1000])
def test_sequence_values_and_gradients_equal_the_full_logits(chunk_rows):
    h, w, b, q, targets, logp_mask, reward_mask = _case()
    vocab = w.shape[0]

    def run(fused):
        hh, ww, bb = (t.clone().requires_grad_() for t in (h, w, b))
        if fused:
            out = sequence_head_pass(hh, FunctionalHead(ww, bb), targets, logp_mask, reward_mask, q,
                                     chunk_elements=chunk_rows * vocab)
            logps, rewards = out.logps, out.rewards
        else:
            logits = hh @ ww.T + bb
            logps = naive_sequence_logprobs(logits, targets, logp_mask)
            rewards = naive_distribution_reward(logits, q, reward_mask)
        (logps * torch.tensor([0.7, -1.1, 0.4], dtype=torch.float64)).sum().backward(retain_graph=True)
        grads = [t.grad.clone() for t in (hh, ww, bb)]
        for t in (hh, ww, bb):
            t.grad = None
        (rewards * torch.tensor([1.3, 0.2, -0.9], dtype=torch.float64)).sum().backward()
        return logps.detach(), rewards.detach(), grads, [t.grad for t in (hh, ww, bb)]

    got, want = run(True), run(False)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-12)
    for a, e in zip(got[2] + got[3], want[2] + want[3]):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-12)
    assert got[1][1] == 0 and got[0][1] == 0  # no reply positions: 0, not NaN


@pytest.mark.parametrize("chunk_rows", [1, 4])
def test_token_statistics_equal_the_full_logits_and_leave_the_rest_alone(chunk_rows):
    """Summed per sequence over the log-probability positions: the mean logit over the
    vocabulary, the entropy -sum p log p, and whether the argmax is the target."""
    h, w, b, q, targets, logp_mask, _ = _case()
    logits = h @ w.T + b
    targets = targets.clone()
    targets[0, :2] = logits[0, :2].argmax(-1)  # two positions the model predicts right
    reward_mask = logp_mask & (targets != 3)
    head = FunctionalHead(w, b)
    plain = sequence_head_pass(h, head, targets, logp_mask, reward_mask, q, chunk_elements=chunk_rows * w.shape[0])
    out = sequence_head_pass(h, head, targets, logp_mask, reward_mask, q, chunk_elements=chunk_rows * w.shape[0],
                             with_stats=True)
    assert plain.stats is None and out.stats.shape == (3, 3) and not out.stats.requires_grad
    p = torch.softmax(logits, -1)
    per_position = torch.stack([logits.mean(-1), -(p * torch.log_softmax(logits, -1)).sum(-1),
                                (logits.argmax(-1) == targets).double()], dim=-1)
    want = (per_position * logp_mask[..., None]).sum(1)
    torch.testing.assert_close(out.stats, want, rtol=0, atol=1e-12)
    assert out.stats[1].abs().sum() == 0  # no reply positions
    assert 0 < want[0, 2] < logp_mask[0].sum()  # the accuracy column is neither all right nor all wrong here
    torch.testing.assert_close(out.logps, plain.logps, rtol=0, atol=0)
    torch.testing.assert_close(out.rewards, plain.rewards, rtol=0, atol=0)


def test_gradcheck_over_several_chunks():
    g = torch.Generator().manual_seed(1)
    rows, hidden, vocab = 7, 4, 9
    h = torch.randn(rows, hidden, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(vocab, hidden, generator=g, dtype=torch.float64, requires_grad=True)
    q = torch.randn(vocab, generator=g, dtype=torch.float64)
    targets = torch.randint(0, vocab, (rows,), generator=g)

    def f(h, w):
        return head_logps_and_rewards(h, FunctionalHead(w), targets, q, chunk_elements=2 * vocab)[:2]

    assert torch.autograd.gradcheck(f, (h, w))


def test_q_shorter_than_the_head_is_zero_padded():
    h, w, b, q, targets, logp_mask, reward_mask = _case(vocab=11)
    short = q[:8]
    out = sequence_head_pass(h, FunctionalHead(w, b), targets, logp_mask, reward_mask, short)
    want = naive_distribution_reward(h @ w.T + b, torch.cat([short, torch.zeros(3, dtype=q.dtype)]), reward_mask)
    torch.testing.assert_close(out.rewards, want, rtol=0, atol=1e-12)


def test_reward_positions_outside_the_logp_positions_are_refused():
    h, w, b, q, targets, logp_mask, reward_mask = _case()
    bad = reward_mask.clone()
    bad[1, 0] = True  # sequence 1 has no log-prob positions
    with pytest.raises(ValueError, match="subset"):
        sequence_head_pass(h, FunctionalHead(w, b), targets, logp_mask, bad, q)


def test_no_block_of_logits_is_kept_for_the_backward():
    """Everything autograd saves between forward and backward is smaller than one chunk of
    logits: the chunks keep only their inputs and recompute the rest."""
    g = torch.Generator().manual_seed(2)
    rows, hidden, vocab, chunk = 64, 8, 512, 4
    h = torch.randn(rows, hidden, generator=g, requires_grad=True)
    head = torch.nn.Linear(hidden, vocab)
    q = torch.randn(vocab, generator=g)
    targets = torch.randint(0, vocab, (rows,), generator=g)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logp, r, _, _ = head_logps_and_rewards(h, head, targets, q, chunk_elements=chunk * vocab, with_stats=True)
    (logp.sum() + r.sum()).backward()
    assert saved, "the hooks saw nothing: the test would pass vacuously"
    assert max(saved) < chunk * vocab, max(saved)
    assert head.weight.grad is not None and h.grad.abs().sum() > 0


def test_without_gradients_nothing_is_checkpointed_and_values_agree():
    h, w, b, q, targets, logp_mask, reward_mask = _case()
    head = FunctionalHead(w, b)
    with torch.no_grad():
        a = sequence_head_pass(h, head, targets, logp_mask, reward_mask, q, chunk_elements=2 * w.shape[0])
    torch.testing.assert_close(a.logps, naive_sequence_logprobs(h @ w.T + b, targets, logp_mask), rtol=0, atol=1e-12)
    assert a.lengths.tolist() == logp_mask.sum(1).tolist()



def test_a_packed_row_sums_per_segment_as_separate_rows_do():
    """Every row's positions laid end to end in one row, sequence_ids naming the row each came
    from: the same sums, rewards, lengths and statistics per sequence as one sequence per row."""
    h, w, b, q, targets, logp_mask, reward_mask = _case()
    head = FunctionalHead(w, b)
    batch, time = logp_mask.shape
    rows = torch.arange(batch)[:, None].expand(batch, time)
    flat = lambda t: t.reshape(1, batch * time, *t.shape[2:])  # noqa: E731
    with torch.no_grad():
        plain = sequence_head_pass(h, head, targets, logp_mask, reward_mask, q, with_stats=True)
        packed = sequence_head_pass(flat(h), head, flat(targets), flat(logp_mask), flat(reward_mask), q,
                                    with_stats=True, sequence_ids=flat(rows), sequences=batch + 1)
    for got, want in zip((packed.logps, packed.rewards, packed.lengths, packed.stats),
                         (plain.logps, plain.rewards, plain.lengths, plain.stats)):
        assert got.shape[0] == batch + 1 and not got[-1].any()  # a sequence with no positions sums to 0
        torch.testing.assert_close(got[:batch], want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="together"):
        sequence_head_pass(flat(h), head, flat(targets), flat(logp_mask), None, None, sequence_ids=flat(rows))

STEP_MEMORY_PROBE = textwrap.dedent("""
    import sys, torch, transformers
    sys.path.insert(0, sys.argv[2])
    from deft_plugin.core.head_pass import sequence_head_pass
    from reference import naive_distribution_reward, naive_sequence_logprobs

    def status(key):
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key))

    torch.manual_seed(0)
    vocab, batch, time = 32000, 4, 256
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=1)
    model = transformers.LlamaForCausalLM(config)
    ids = torch.randint(3, vocab, (batch, time))
    mask = torch.zeros(batch, time - 1, dtype=torch.bool)
    mask[:, 64:] = True  # the reply: the last 192 positions of each sequence
    q = torch.randn(vocab)
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS (VmHWM) to the current RSS
    base = status("VmRSS:")
    if sys.argv[1] == "head_pass":
        hidden = model.model(input_ids=ids).last_hidden_state[:, :-1]
        out = sequence_head_pass(hidden, model.lm_head, ids[:, 1:], mask, mask, q, chunk_elements=1 << 22)
        logps, rewards = out.logps, out.rewards
    else:
        logits = model(input_ids=ids).logits[:, :-1].float()
        logps = naive_sequence_logprobs(logits, ids[:, 1:], mask)
        rewards = naive_distribution_reward(logits, q, mask)
    (lc, lr), (rc, rr) = logps.chunk(2), rewards.chunk(2)
    loss = -torch.nn.functional.logsigmoid(0.1 * (lc - lr)).mean() - (rc - rr).mean()
    loss.backward()
    print(status("VmHWM:") - base)
""")


def _step_peak_kib(mode: str) -> int:
    # Large blocks straight from mmap, so that freed chunks leave the peak RSS and it tracks
    # the tensors alive at once rather than the allocator's heap growth.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", STEP_MEMORY_PROBE, mode, str(TESTS)],
                         capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])


def test_step_peak_memory_on_a_large_vocabulary_is_below_the_full_logits():
    """A 32k-vocabulary model with a short hidden size, where the logits (4 x 255 x 32,000
    floats, 125 MiB) dominate a DPO + DEFT step: the full-logits step holds them, their
    log-softmax and softmax and their gradients; the head pass holds one 16 MiB chunk at a
    time (1 << 22 elements here; the trainer's default chunk is 128 MiB, which long sequences
    of a large vocabulary exceed many times over). The step's peak RSS above the model."""
    head_pass, logits = _step_peak_kib("head_pass"), _step_peak_kib("logits")
    assert head_pass < 0.5 * logits, (head_pass, logits)

