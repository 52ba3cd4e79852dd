"""The distribution reward R = mean over reply positions of sum_v softmax(z_t)_v * Qn_v as
training computes it (the head pass of core/head_pass.py, fed given logits through an
identity head): values against a naive reference and a hand formula, float64 gradients
(gradcheck and the analytic p_v * (Qn_v - r_t) / |y|), low precision, q padding; the
hidden-state path used in scoring; the completion-mask shift."""

import math

import pytest
import torch

from deft_plugin.core.chunked import DEFAULT_CHUNK_ELEMENTS, shift_completion_mask
from deft_plugin.core.head_pass import head_logps_and_rewards, sequence_head_pass

from reference import naive_distribution_reward


class LogitsHead(torch.nn.Identity):
    """A head whose input already is the logits."""

    def __init__(self, vocab):
        super().__init__()
        self.out_features = vocab


def distribution_reward(logits, q, mask, chunk_elements=DEFAULT_CHUNK_ELEMENTS):
    """R per sequence from the head pass over [batch, time, vocab] logits."""
    batch, time, vocab = logits.shape
    targets = torch.zeros(batch, time, dtype=torch.long)
    return sequence_head_pass(logits, LogitsHead(vocab), targets, mask, mask, q, chunk_elements).rewards


@torch.no_grad()
def reward_from_hidden(hidden, head, q, chunk_elements=DEFAULT_CHUNK_ELEMENTS):
    """r_t per row of [rows, hidden] states through the head pass, as scoring runs it (no gradient)."""
    targets = torch.zeros(hidden.shape[0], dtype=torch.long)
    return head_logps_and_rewards(hidden, head, targets, q, chunk_elements).rewards


def _case(batch=4, time=7, vocab=13, seed=0, dtype=torch.float64, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, time, vocab, generator=g, dtype=torch.float64) * scale
    q = torch.randn(vocab, generator=g, dtype=torch.float64)
    q = q / q.abs().max()
    mask = torch.rand(batch, time, generator=g) > 0.45
    mask[1] = False  # a sequence without reply positions
    mask[0, 0] = True  # at least one position in the first
    mask[-1, -1] = True
    return logits.to(dtype), q, mask


def _hand_reward(logits, q, mask):
    """Per-position formula written out with math.exp, averaged over the masked positions."""
    out = []
    for b in range(logits.shape[0]):
        rs = []
        for t in range(logits.shape[1]):
            if not mask[b, t]:
                continue
            z = [float(x) for x in logits[b, t]]
            m = max(z)
            e = [math.exp(v - m) for v in z]
            s = sum(e)
            rs.append(sum(ev / s * float(qv) for ev, qv in zip(e, q)))
        out.append(sum(rs) / len(rs) if rs else 0.0)
    return out


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("chunk_rows", [1, 2, 5, 1000])
def test_values_equal_naive_and_hand_formula(chunk_rows):
    logits, q, mask = _case()
    vocab = logits.shape[-1]
    got = distribution_reward(logits, q, mask, chunk_elements=chunk_rows * vocab)
    assert got.dtype == torch.float64 and got.shape == (logits.shape[0],)
    torch.testing.assert_close(got, naive_distribution_reward(logits, q, mask), rtol=0, atol=1e-12)
    hand = torch.tensor(_hand_reward(logits, q, mask), dtype=torch.float64)
    torch.testing.assert_close(got, hand, rtol=0, atol=1e-12)
    assert float(got[1]) == 0.0  # no reply positions -> 0, not NaN


def test_reward_is_bounded_by_q_and_uniform_logits_give_mean_q():
    logits, q, mask = _case(seed=3, scale=8.0)
    r = distribution_reward(logits, q, mask, chunk_elements=2 * logits.shape[-1])
    assert bool((r <= q.max()).all()) and bool((r >= q.min()).all())
    # equal logits: the model's distribution is uniform, r_t = mean(q) at every position
    flat = torch.zeros(2, 5, q.numel(), dtype=torch.float64)
    m = torch.ones(2, 5, dtype=torch.bool)
    torch.testing.assert_close(distribution_reward(flat, q, m), q.mean().expand(2), rtol=0, atol=1e-12)
    # a one-hot-like distribution picks q at that token
    peaked = torch.full((1, 1, q.numel()), -1e4, dtype=torch.float64)
    peaked[0, 0, 4] = 0.0
    assert abs(float(distribution_reward(peaked, q, torch.ones(1, 1, dtype=torch.bool))[0]) - float(q[4])) < 1e-12


def test_integer_mask_and_float32_output_dtype():
    logits, q, mask = _case(dtype=torch.float32)
    r_bool = distribution_reward(logits, q.float(), mask, chunk_elements=3 * logits.shape[-1])
    r_int = distribution_reward(logits, q.float(), mask.long(), chunk_elements=3 * logits.shape[-1])
    assert r_bool.dtype == torch.float32
    torch.testing.assert_close(r_bool, r_int, rtol=0, atol=0)
    torch.testing.assert_close(r_bool.double(), torch.tensor(_hand_reward(logits, q, mask), dtype=torch.float64),
                               rtol=0, atol=1e-6)


def test_non_contiguous_logits():
    logits, q, mask = _case()
    base = logits.transpose(0, 1).contiguous().requires_grad_(True)  # [time, batch, vocab]
    view = base.transpose(0, 1)  # non-contiguous [batch, time, vocab]
    assert not view.is_contiguous()
    got = distribution_reward(view, q, mask, chunk_elements=2 * logits.shape[-1])
    torch.testing.assert_close(got, naive_distribution_reward(logits, q, mask), rtol=0, atol=1e-12)
    w = torch.arange(1.0, logits.shape[0] + 1, dtype=torch.float64)
    (grad,) = torch.autograd.grad((got * w).sum(), base)
    ref_logits = logits.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad((naive_distribution_reward(ref_logits, q, mask) * w).sum(), ref_logits)
    torch.testing.assert_close(grad.transpose(0, 1), ref, rtol=0, atol=1e-12)


def test_all_positions_masked_out():
    logits, q, _ = _case()
    logits.requires_grad_(True)
    none = torch.zeros(logits.shape[:2], dtype=torch.bool)
    r = distribution_reward(logits, q, none, chunk_elements=2 * logits.shape[-1])
    assert r.tolist() == [0.0] * logits.shape[0]
    r.sum().backward()
    assert torch.count_nonzero(logits.grad) == 0


# ----------------------------------------------------------------------------- gradients


@pytest.fixture
def one_thread():
    # Hundreds of tiny evaluations: on a loaded machine each OpenMP region can wait a
    # scheduler tick, so run them on one thread.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_float64_gradcheck_over_several_chunks(one_thread):
    logits, q, mask = _case(batch=3, time=5, vocab=7)
    assert int(mask.sum()) > 4  # with chunks of 2 rows there are several chunks
    assert not mask[1].any()  # and an empty sequence
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: distribution_reward(z, q, mask, chunk_elements=2 * z.shape[-1]),
                                    (logits,), eps=1e-6, atol=1e-8)


def test_analytic_gradient():
    """dR/dz_{t,v} = p_v * (Qn_v - r_t) / |y| at reply positions, 0 elsewhere."""
    logits, q, mask = _case()
    logits.requires_grad_(True)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)  # upstream weights per sequence
    (distribution_reward(logits, q, mask, chunk_elements=3 * logits.shape[-1]) * w).sum().backward()
    p = torch.softmax(logits.detach(), -1)
    r = p @ q  # [batch, time]
    n = mask.sum(1).clamp_min(1).to(torch.float64)
    expected = p * (q - r[..., None]) * mask[..., None] / n[:, None, None] * w[:, None, None]
    torch.testing.assert_close(logits.grad, expected, rtol=0, atol=1e-13)
    assert torch.count_nonzero(logits.grad[~mask]) == 0
    # softmax invariance: each position's gradient sums to 0 over the vocabulary
    torch.testing.assert_close(logits.grad.sum(-1), torch.zeros(mask.shape, dtype=torch.float64), rtol=0, atol=1e-13)


def test_gradient_does_not_flow_into_q():
    logits, q, mask = _case()
    q = q.clone().requires_grad_(True)
    logits.requires_grad_(True)
    distribution_reward(logits, q, mask).sum().backward()
    assert q.grad is None
    assert logits.grad is not None


# ----------------------------------------------------------------------------- dtypes and q shape


def test_bfloat16_logits_close_to_float32():
    logits, q, mask = _case(batch=3, time=16, vocab=257, seed=1, dtype=torch.float32)
    q = q.float()
    low = logits.to(torch.bfloat16).requires_grad_(True)
    r_low = distribution_reward(low, q, mask, chunk_elements=4 * 257)
    assert r_low.dtype == torch.float32  # work in float32, not bf16
    # same as float32 on the rounded logits (softmax runs in float32 on the upcast values)
    torch.testing.assert_close(r_low, distribution_reward(low.detach().float(), q, mask), rtol=0, atol=1e-6)
    # and close to float32 on the original logits
    torch.testing.assert_close(r_low, distribution_reward(logits, q, mask), rtol=0, atol=2e-2)
    r_low.sum().backward()
    assert low.grad.dtype == torch.bfloat16
    ref = logits.clone().requires_grad_(True)
    distribution_reward(ref, q, mask).sum().backward()
    torch.testing.assert_close(low.grad.float(), ref.grad, rtol=0, atol=2e-3)


def test_short_q_is_zero_padded_and_long_q_raises():
    logits, q, mask = _case(vocab=13)
    short = q[:10]
    padded = torch.cat([short, torch.zeros(3, dtype=q.dtype)])
    got = distribution_reward(logits, short, mask, chunk_elements=2 * 13)
    torch.testing.assert_close(got, distribution_reward(logits, padded, mask, chunk_elements=2 * 13), rtol=0, atol=0)
    torch.testing.assert_close(got, naive_distribution_reward(logits, short, mask), rtol=0, atol=1e-12)
    # differs from the full q unless the last entries were zero already
    assert not torch.allclose(got, distribution_reward(logits, q, mask))
    with pytest.raises(ValueError, match="14 entries.*vocabulary is 13"):
        distribution_reward(logits, torch.zeros(14, dtype=q.dtype), mask)
    with pytest.raises(ValueError, match="vocabulary"):
        reward_from_hidden(torch.zeros(2, 4), torch.nn.Linear(4, 13), torch.zeros(14))


# ----------------------------------------------------------------------------- hidden-state path


@pytest.mark.parametrize("q_len", [29, 26])
def test_from_hidden_equals_reward_on_full_logits(q_len):
    torch.manual_seed(0)
    batch, time, hidden, vocab = 3, 8, 6, 29
    head = torch.nn.Linear(hidden, vocab, bias=True)
    h = torch.randn(batch, time, hidden) * 2
    q = torch.randn(q_len)
    q = q / q.abs().max()
    mask = torch.rand(batch, time) > 0.5
    mask[1] = False
    mask[0, 3] = True
    rows = reward_from_hidden(h[mask], head, q, chunk_elements=3 * vocab)  # chunks of 3 rows
    assert rows.shape == (int(mask.sum()),) and rows.dtype == torch.float32 and not rows.requires_grad
    # per position: expected q under softmax(head(h))
    q_full = torch.nn.functional.pad(q, (0, vocab - q_len))
    torch.testing.assert_close(rows, torch.softmax(head(h[mask]), -1).detach() @ q_full, rtol=0, atol=1e-6)
    # per sequence: the mean of the rows equals distribution_reward on the full logits
    seq = mask.nonzero()[:, 0]
    per_seq = torch.zeros(batch).index_add(0, seq, rows) / mask.sum(1).clamp_min(1)
    with torch.no_grad():
        full = distribution_reward(head(h), q, mask)
    torch.testing.assert_close(per_seq, full, rtol=0, atol=1e-6)
    assert float(per_seq[1]) == 0.0


def test_from_hidden_bfloat16_head():
    torch.manual_seed(1)
    head = torch.nn.Linear(8, 40, bias=False)
    h = torch.randn(10, 8)
    q = torch.randn(40)
    ref = reward_from_hidden(h, head, q)
    low = reward_from_hidden(h.bfloat16(), head.to(torch.bfloat16), q, chunk_elements=40 * 4)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, ref, rtol=0, atol=3e-2)


# ----------------------------------------------------------------------------- completion mask shift


def test_shift_completion_mask():
    completion = torch.tensor([[0, 0, 1, 1, 0, 0],
                               [0, 1, 1, 1, 1, 1],
                               [0, 0, 0, 0, 0, 0],
                               [1, 1, 0, 0, 0, 1]])
    pred = shift_completion_mask(completion)
    assert pred.dtype == torch.bool
    assert pred.tolist() == [[False, True, True, False, False, False],
                             [True, True, True, True, True, False],
                             [False] * 6,
                             [True, False, False, False, True, False]]
    assert completion.tolist()[0] == [0, 0, 1, 1, 0, 0]  # input untouched
    # the shifted mask selects exactly the logits that predict reply tokens
    assert int(pred.sum()) == int(completion[:, 1:].sum())


def test_shift_mask_with_reward_selects_reply_predictions():
    """R from the shifted mask = mean over reply tokens y_t of sum_v p(v | y_<t) Qn_v."""
    logits, q, _ = _case(batch=2, time=6, vocab=9)
    completion = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]])
    got = distribution_reward(logits, q, shift_completion_mask(completion))
    p = torch.softmax(logits, -1)
    expected = torch.stack([(p[0, 1:4] @ q).mean(), (p[1, 2:5] @ q).mean()])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
