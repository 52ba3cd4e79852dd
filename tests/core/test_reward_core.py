"""The distribution reward against a naive reference: values, float64 gradients, memory."""

import os
import subprocess
import sys
import textwrap

import torch

from deft_plugin.core.chunked import shift_completion_mask
from deft_plugin.core.losses import deft_dpo_term
from deft_plugin.core.reward import distribution_reward

from builders import TESTS
from reference import naive_distribution_reward


def _case(batch=3, time=9, vocab=17, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, time, vocab, generator=g, dtype=dtype) * 3
    q = torch.randn(vocab, generator=g, dtype=dtype)
    q = q / q.abs().max()
    mask = torch.rand(batch, time, generator=g) > 0.4
    mask[-1] = False  # a sequence with no reply positions
    return logits, q, mask


def test_values_match_naive_and_hand_formula():
    logits, q, mask = _case()
    got = distribution_reward(logits, q, mask, chunk_elements=2 * logits.shape[-1])
    assert torch.allclose(got, naive_distribution_reward(logits, q, mask), atol=1e-12)
    p = torch.softmax(logits[0], -1)
    by_hand = sum(float(p[t] @ q) for t in range(logits.shape[1]) if mask[0, t]) / int(mask[0].sum())
    assert abs(float(got[0]) - by_hand) < 1e-12
    assert float(got[-1]) == 0.0


def test_float64_gradcheck_and_analytic_gradient():
    logits, q, mask = _case()
    logits.requires_grad_(True)
    fn = lambda z: distribution_reward(z, q, mask, chunk_elements=3 * z.shape[-1])  # noqa: E731
    assert torch.autograd.gradcheck(fn, (logits,))
    fn(logits)[0].backward()
    p = torch.softmax(logits.detach()[0], -1)
    r = p @ q
    expected = p * (q - r[:, None]) * mask[0, :, None] / mask[0].sum()
    assert torch.allclose(logits.grad[0], expected, atol=1e-12)
    assert torch.count_nonzero(logits.grad[1:][~mask[1:]]) == 0


def test_deft_term_and_completion_shift():
    assert abs(float(deft_dpo_term(torch.tensor([0.3, 0.1]), torch.tensor([0.1, 0.2]))) - 0.05) < 1e-7
    assert abs(float(deft_dpo_term(torch.tensor([0.3, 0.1]), torch.tensor([0.1, 0.2]), "chosen")) - 0.2) < 1e-7
    completion = torch.tensor([[0, 0, 1, 1, 0]])
    assert shift_completion_mask(completion).tolist() == [[False, True, True, False, False]]


MEMORY_PROBE = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, sys.argv[2])
    from deft_plugin.core.reward import distribution_reward
    from reference import naive_distribution_reward
    def status(key):
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key))
    torch.manual_seed(0)
    logits = torch.randn(4, 256, 32768, requires_grad=True)
    q = torch.randn(32768); mask = torch.ones(4, 256, dtype=torch.bool)
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS (VmHWM) to the current RSS
    base = status("VmRSS:")
    if sys.argv[1] == "chunked":
        distribution_reward(logits, q, mask, chunk_elements=1 << 22).sum().backward()
    else:
        naive_distribution_reward(logits, q, mask).sum().backward()
    print(status("VmHWM:") - base)
""")


def _peak_kib(mode: str) -> int:
    # Large blocks straight from mmap, so that freed chunks leave the peak RSS and it tracks
    # the tensors alive at once rather than the allocator's heap growth.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, mode, str(TESTS)],
                         capture_output=True, text=True, check=True,
                         env=env)
    return int(out.stdout.strip().splitlines()[-1])


def test_chunked_peak_memory_below_naive():
    """Logits are 128 MiB; the naive path holds softmax copies of that size, the chunked one
    only the gradient plus one 16 MiB chunk."""
    chunked, naive = _peak_kib("chunked"), _peak_kib("naive")
    assert chunked < 0.75 * naive, (chunked, naive)
