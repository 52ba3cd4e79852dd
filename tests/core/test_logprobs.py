"""sequence_logprobs (chunked, custom backward) against the full log_softmax reference:
values, gradients, dtypes and masked positions."""

import math

import pytest
import torch

from deft_plugin.core.logprobs import sequence_logprobs

from reference import naive_sequence_logprobs

BATCH, TIME, VOCAB = 3, 7, 11


def _case(dtype=torch.float32, seed=0, batch=BATCH, time=TIME, vocab=VOCAB):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, time, vocab, generator=g) * 3).to(dtype)
    targets = torch.randint(0, vocab, (batch, time), generator=g)
    mask = torch.rand(batch, time, generator=g) < 0.6
    mask[0, 0] = True
    mask[1] = False  # a sequence without any predicted positions: sum 0
    return logits, targets, mask


# chunk_elements -> rows per chunk with VOCAB = 11: 1 (a chunk smaller than one row), 1, 2 and 4 (neither
# divides the 9 masked positions of _case()), everything at once
CHUNKS = [5, 11, 22, 44, 10**6]


def test_matches_hand_computed_value():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [3.0, 0.0, -1.0]]])
    targets = torch.tensor([[2, 1]])
    mask = torch.tensor([[True, True]])
    lp0 = 2.0 - math.log(math.exp(0.0) + math.exp(1.0) + math.exp(2.0))
    lp1 = 0.0 - math.log(math.exp(3.0) + math.exp(0.0) + math.exp(-1.0))
    out = sequence_logprobs(logits, targets, mask, chunk_elements=3)
    assert out.shape == (1,) and out.dtype == torch.float32
    assert out.item() == pytest.approx(lp0 + lp1, rel=1e-6)
    # masking the second position drops its term
    out = sequence_logprobs(logits, targets, torch.tensor([[True, False]]), chunk_elements=3)
    assert out.item() == pytest.approx(lp0, rel=1e-6)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("chunk", CHUNKS)
def test_values_and_gradients_match_naive(dtype, tol, chunk):
    logits, targets, mask = _case(dtype)
    assert mask.sum().item() == 9
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    out = sequence_logprobs(a, targets, mask, chunk_elements=chunk)
    ref = naive_sequence_logprobs(b, targets, mask)
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    assert out[1].item() == 0.0
    w = torch.tensor([0.7, -1.3, 2.0], dtype=dtype)  # a non-uniform upstream gradient
    (out * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=tol, atol=tol)


def test_chunks_not_dividing_positions():
    logits, targets, _ = _case(torch.float64, seed=3, batch=2, time=5)
    mask = torch.ones(2, 5, dtype=torch.bool)  # 10 positions; chunks of 3 and 4 rows leave a remainder
    ref = naive_sequence_logprobs(logits, targets, mask)
    for rows in (3, 4, 7):
        torch.testing.assert_close(sequence_logprobs(logits, targets, mask, chunk_elements=rows * VOCAB), ref)


def test_gradcheck_float64_tiny_chunks():
    logits, targets, mask = _case(torch.float64, seed=1, batch=2, time=4, vocab=5)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda z: sequence_logprobs(z, targets, mask, chunk_elements=1), (logits,))
    assert torch.autograd.gradcheck(lambda z: sequence_logprobs(z, targets, mask, chunk_elements=10), (logits,))


def test_bfloat16_logits_give_float32_close_to_reference():
    logits, targets, mask = _case(torch.bfloat16, seed=2)
    z = logits.clone().requires_grad_()
    out = sequence_logprobs(z, targets, mask, chunk_elements=22)
    assert out.dtype == torch.float32
    ref_logits = logits.float().requires_grad_()  # the same (bf16-rounded) values, in float32
    ref = naive_sequence_logprobs(ref_logits, targets, mask)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    ref.sum().backward()
    assert z.grad.dtype == torch.bfloat16
    torch.testing.assert_close(z.grad.float(), ref_logits.grad, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("chunk", [5, 44])
def test_masked_positions_get_exactly_zero_gradient(chunk):
    logits, targets, mask = _case(torch.float32, seed=4)
    z = logits.clone().requires_grad_()
    sequence_logprobs(z, targets, mask, chunk_elements=chunk).sum().backward()
    assert torch.all(z.grad[~mask] == 0)
    assert torch.all(z.grad[1] == 0)  # the sequence with nothing masked in
    # every predicted position gets onehot - softmax: nonzero, and summing to 0 over the vocabulary
    picked = z.grad[mask]
    assert (picked.abs().sum(-1) > 0).all()
    torch.testing.assert_close(picked.sum(-1), torch.zeros(picked.shape[0]), atol=1e-5, rtol=0)
