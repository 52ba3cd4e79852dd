"""The head pass: reply log-probabilities and the distribution reward from hidden states and
the LM head, a chunk of positions at a time with a recomputing backward. Values and gradients
against the naive full-logits computation (float64, several chunks, a bias, a padded Q),
gradcheck, the subset rule of the two masks, and that the autograd graph keeps no block of
logits (only the chunks' inputs are saved)."""

import pytest
import torch

from deft_plugin.core.head_pass import head_logps_and_rewards, sequence_head_pass

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


def test_gradcheck_over_several_chunks():
    g = torch.Generator().manual_seed(1)
    rows, hidden, vocab = 7, 4, 9
    h = torch.randn(rows, hidden, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(vocab, hidden, generator=g, dtype=torch.float64, requires_grad=True)
    q = torch.randn(vocab, generator=g, dtype=torch.float64)
    targets = torch.randint(0, vocab, (rows,), generator=g)

    def f(h, w):
        return head_logps_and_rewards(h, FunctionalHead(w), targets, q, chunk_elements=2 * vocab)

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
        logp, r = head_logps_and_rewards(h, head, targets, q, chunk_elements=chunk * vocab)
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
