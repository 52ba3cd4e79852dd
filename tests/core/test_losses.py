"""PRO's listwise ranking loss and SFT term, the DEFT ranking term and TRL's DPO loss types, against values
worked out by hand with plain `math`."""

import math

import pytest
import torch

from deft_plugin.core.losses import (
    LINEAR_FORMS,
    deft_dpo_term,
    deft_ranking_term,
    dpo_loss,
    pro_rank_loss,
    pro_sft_loss,
)

NAN = float("nan")


def _t(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


def _mask(sizes, n_max):
    return torch.tensor([[i < n for i in range(n_max)] for n in sizes])


def _close(value, expected, tol=1e-9):
    assert value.item() == pytest.approx(expected, rel=tol, abs=tol)


# ----------------------------------------------------------------------------- without rewards (tau = 1)


def test_n2_without_rewards_is_mean_of_logistic_losses():
    scores = _t([[1.5, -0.5], [0.2, 0.7]])
    # row 0: -log(e^1.5 / (e^1.5 + e^-0.5)) = log(1 + e^-2); row 1: log(1 + e^0.5)
    row0 = -math.log(math.exp(1.5) / (math.exp(1.5) + math.exp(-0.5)))
    row1 = -math.log(math.exp(0.2) / (math.exp(0.2) + math.exp(0.7)))
    assert row0 == pytest.approx(math.log(1 + math.exp(-2.0)))
    _close(pro_rank_loss(scores, _mask([2, 2], 2)), (row0 + row1) / 2)
    _close(pro_rank_loss(scores, _mask([2, 2], 2), rewards=None), (row0 + row1) / 2)


def test_n3_without_rewards_sums_both_ranks():
    s1, s2, s3 = 2.0, 0.5, -1.0
    k1 = -s1 + math.log(math.exp(s1) + math.exp(s2) + math.exp(s3))
    k2 = -s2 + math.log(math.exp(s2) + math.exp(s3))
    _close(pro_rank_loss(_t([[s1, s2, s3]]), _mask([3], 3)), k1 + k2)


def test_nan_rewards_mean_tau_one():
    scores = _t([[2.0, 0.5, -1.0]])
    expected = pro_rank_loss(scores, _mask([3], 3)).item()
    _close(pro_rank_loss(scores, _mask([3], 3), _t([[NAN, NAN, NAN]])), expected)


# ----------------------------------------------------------------------------- with rewards


def test_n2_with_rewards_scales_scores_by_reward_gap():
    s1, s2 = 0.4, 0.1
    r1, r2 = 3.0, 1.0
    tau = r1 - r2  # tau_12 = 2, tau_11 = max_{i>1} tau_1i = 2
    expected = -math.log(math.exp(s1 * tau) / (math.exp(s1 * tau) + math.exp(s2 * tau)))
    _close(pro_rank_loss(_t([[s1, s2]]), _mask([2], 2), _t([[r1, r2]])), expected)
    # and it differs from the tau = 1 value, so the rewards really were used
    assert abs(expected - math.log(1 + math.exp(-(s1 - s2)))) > 0.05


def test_n3_with_rewards():
    s1, s2, s3 = 0.3, 0.1, -0.2
    r1, r2, r3 = 5.0, 2.0, 1.0
    # k = 1: tau_12 = 3, tau_13 = 4, tau_11 = 4
    k1 = -(s1 * 4) + math.log(math.exp(s1 * 4) + math.exp(s2 * 3) + math.exp(s3 * 4))
    # k = 2: tau_23 = 1, tau_22 = 1
    k2 = -(s2 * 1) + math.log(math.exp(s2 * 1) + math.exp(s3 * 1))
    _close(pro_rank_loss(_t([[s1, s2, s3]]), _mask([3], 3), _t([[r1, r2, r3]])), k1 + k2)


def test_reward_ties_give_tau_zero():
    # r = [2, 2]: tau_12 = 0 = tau_11, all logits 0: loss ln 2 whatever the scores, no gradient
    scores = _t([[5.0, -3.0]]).requires_grad_()
    loss = pro_rank_loss(scores, _mask([2], 2), _t([[2.0, 2.0]]))
    _close(loss, math.log(2))
    loss.backward()
    assert scores.grad.tolist() == [[0.0, 0.0]]

    # r = [3, 3, 1]: k = 1: tau_12 = 0, tau_13 = 2, tau_11 = 2; k = 2: tau_23 = 2 = tau_22
    s1, s2, s3 = 0.5, 1.0, -0.25
    k1 = -(s1 * 2) + math.log(math.exp(s1 * 2) + math.exp(s2 * 0) + math.exp(s3 * 2))
    k2 = -(s2 * 2) + math.log(math.exp(s2 * 2) + math.exp(s3 * 2))
    _close(pro_rank_loss(_t([[s1, s2, s3]]), _mask([3], 3), _t([[3.0, 3.0, 1.0]])), k1 + k2)

    # r = [1, 0, 0]: tau_23 = 0 and tau_22 = 0 -> rank 2 contributes ln 2
    k1 = -(s1 * 1) + math.log(math.exp(s1 * 1) + math.exp(s2 * 1) + math.exp(s3 * 1))
    _close(pro_rank_loss(_t([[s1, s2, s3]]), _mask([3], 3), _t([[1.0, 0.0, 0.0]])), k1 + math.log(2))


# ----------------------------------------------------------------------------- ragged batches


def _ragged_by_hand(a, b, tau_a=None, tau_b=None):
    """Row a has 3 candidates, row b has 2. tau_x: {(k, i): tau} (1-based), None for tau = 1."""
    def tau(t, k, i):
        return 1.0 if t is None else t[(k, i)]

    a1 = -(a[0] * tau(tau_a, 1, 1)) + math.log(
        math.exp(a[0] * tau(tau_a, 1, 1)) + math.exp(a[1] * tau(tau_a, 1, 2)) + math.exp(a[2] * tau(tau_a, 1, 3)))
    a2 = -(a[1] * tau(tau_a, 2, 2)) + math.log(math.exp(a[1] * tau(tau_a, 2, 2)) + math.exp(a[2] * tau(tau_a, 2, 3)))
    b1 = -(b[0] * tau(tau_b, 1, 1)) + math.log(math.exp(b[0] * tau(tau_b, 1, 1)) + math.exp(b[1] * tau(tau_b, 1, 2)))
    # rank 1: both rows in the mean; rank 2: only row a has a candidate after it
    return (a1 + b1) / 2 + a2


A, B = [1.0, 0.25, -0.5], [-0.3, 0.6]
RA, RB = [4.0, 1.5, 1.0], [2.0, 0.5]
TAU_A = {(1, 2): 2.5, (1, 3): 3.0, (1, 1): 3.0, (2, 3): 0.5, (2, 2): 0.5}
TAU_B = {(1, 2): 1.5, (1, 1): 1.5}


@pytest.mark.parametrize("junk", [NAN, 1e4, -7.0])
def test_ragged_batch_without_rewards(junk):
    scores = _t([A, B + [junk]])
    _close(pro_rank_loss(scores, _mask([3, 2], 3)), _ragged_by_hand(A, B))
    # the row order does not matter
    _close(pro_rank_loss(_t([B + [junk], A]), _mask([2, 3], 3)), _ragged_by_hand(A, B))


@pytest.mark.parametrize("junk", [NAN, 1e4, -7.0])
def test_ragged_batch_with_rewards(junk):
    scores = _t([A, B + [junk]])
    rewards = _t([RA, RB + [junk]])
    _close(pro_rank_loss(scores, _mask([3, 2], 3), rewards), _ragged_by_hand(A, B, TAU_A, TAU_B))


def test_batch_mixing_rows_with_and_without_rewards():
    scores = _t([A, B + [NAN]])
    mask = _mask([3, 2], 3)
    _close(pro_rank_loss(scores, mask, _t([RA, [NAN, NAN, NAN]])), _ragged_by_hand(A, B, TAU_A, None))
    _close(pro_rank_loss(_t([B + [0.0], A]), _mask([2, 3], 3), _t([RB + [NAN], [NAN] * 3])),
           _ragged_by_hand(A, B, None, TAU_B))


# ----------------------------------------------------------------------------- equal scores


@pytest.mark.parametrize("n", [2, 3, 5])
def test_equal_scores_give_sum_of_log_counts(n):
    expected = sum(math.log(n - k + 1) for k in range(1, n))
    _close(pro_rank_loss(torch.full((1, n), 0.7, dtype=torch.float64), _mask([n], n)), expected)
    # with rewards, zero scores make every logit 0 whatever tau is
    rewards = _t([[float(n - i) for i in range(n)]])
    _close(pro_rank_loss(torch.zeros(1, n, dtype=torch.float64), _mask([n], n), rewards), expected)


def test_equal_scores_n3_is_ln3_plus_ln2():
    _close(pro_rank_loss(_t([[1.0, 1.0, 1.0]]), _mask([3], 3)), math.log(3) + math.log(2))


# ----------------------------------------------------------------------------- gradients


def test_n2_gradient_is_sigmoid_form():
    rows = [[1.5, -0.5], [0.2, 0.7], [-1.0, -1.0]]
    scores = _t(rows).requires_grad_()
    pro_rank_loss(scores, _mask([2, 2, 2], 2)).backward()
    for (s1, s2), (g1, g2) in zip(rows, scores.grad.tolist()):
        # L = mean_b log(1 + e^-(s1 - s2)): dL/ds1 = -sigmoid(s2 - s1) / B, dL/ds2 = +sigmoid(s2 - s1) / B
        sig = 1 / (1 + math.exp(-(s2 - s1)))
        assert g1 == pytest.approx(-sig / 3, rel=1e-12)
        assert g2 == pytest.approx(sig / 3, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ragged_gradients_are_finite_and_zero_on_padding(dtype):
    scores = _t([A, B + [NAN], [0.1, NAN, NAN]], dtype)
    scores[2, 1] = 0.9
    scores.requires_grad_()
    rewards = _t([RA, RB + [NAN], [NAN, NAN, NAN]], dtype)
    loss = pro_rank_loss(scores, _mask([3, 2, 2], 3), rewards)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(scores.grad).all(), scores.grad
    assert scores.grad[1, 2].item() == 0.0 and scores.grad[2, 2].item() == 0.0
    # each rank's softmax-minus-onehot sums to zero across a row, times tau: check row b (tau 1.5)
    assert scores.grad[1, 0].item() == pytest.approx(-scores.grad[1, 1].item(), rel=1e-5)


def test_gradcheck_ragged_float64():
    scores = _t([[0.4, -0.2, 0.9], [0.3, -0.6, 0.37], [0.1, 0.5, -0.8]]).requires_grad_()
    mask = _mask([3, 2, 3], 3)
    rewards = _t([[2.0, 1.0, 0.5], [NAN, NAN, NAN], [1.0, 1.0, -0.5]])
    assert torch.autograd.gradcheck(lambda s: pro_rank_loss(s, mask, rewards), (scores,))
    assert torch.autograd.gradcheck(lambda s: pro_rank_loss(s, mask), (scores,))


# ----------------------------------------------------------------------------- SFT term


def test_pro_sft_loss_by_hand():
    nll = _t([2.0, 3.0, 5.0])
    n = torch.tensor([2, 4, 3])
    # mean[0.05 * (n - 1)^2 * nll] = (0.05*1*2 + 0.05*9*3 + 0.05*4*5) / 3
    expected = (0.05 * 1 * 2.0 + 0.05 * 9 * 3.0 + 0.05 * 4 * 5.0) / 3
    _close(pro_sft_loss(nll, n, 0.05), expected)
    _close(pro_sft_loss(nll, n, 0.0), 0.0)


def test_pro_sft_loss_gradient():
    nll = _t([2.0, 3.0]).requires_grad_()
    pro_sft_loss(nll, torch.tensor([3, 2]), 0.5).backward()
    assert nll.grad.tolist() == pytest.approx([0.5 * 4 / 2, 0.5 * 1 / 2])


# ----------------------------------------------------------------------------- DEFT ranking term


@pytest.mark.parametrize("junk", [NAN, 100.0])
def test_deft_ranking_term_ragged_by_hand(junk):
    rewards = _t([[3.0, 1.0, -2.0], [2.0, 0.5, junk]])  # padding, must be ignored
    mask = _mask([3, 2], 3)
    # pair: row 0: 3 - (1 - 2) / 2 = 3.5; row 1: 2 - 0.5 = 1.5; mean 2.5
    _close(deft_ranking_term(rewards, mask, "pair"), (3.5 + 1.5) / 2)
    # chosen: mean of the best = (3 + 2) / 2
    _close(deft_ranking_term(rewards, mask, "chosen"), 2.5)
    _close(deft_ranking_term(_t([[3.0, 1.0, -2.0]]), _mask([3], 3), "pair"), 3.5)
    with pytest.raises(ValueError, match="deft_loss_form"):
        deft_ranking_term(rewards, mask, "both")


@pytest.mark.parametrize("form", ["pair", "chosen"])
def test_deft_ranking_term_equals_dpo_term_for_pairs(form):
    rewards = _t([[0.8, 0.1], [-0.4, 0.3], [1.2, 1.2]]).requires_grad_()
    mask = _mask([2, 2, 2], 2)
    term = deft_ranking_term(rewards, mask, form)
    ref = deft_dpo_term(rewards[:, 0], rewards[:, 1], form)
    _close(term, ref.item(), tol=1e-12)
    _close(term, (0.7 - 0.7 + 0.0) / 3 if form == "pair" else (0.8 - 0.4 + 1.2) / 3)
    (g,) = torch.autograd.grad(term, rewards)
    (g_ref,) = torch.autograd.grad(ref, rewards)
    assert torch.equal(g, g_ref)


# ----------------------------------------------------------------------------- DEFT-DPO term


def test_deft_dpo_term_values():
    rc = torch.tensor([0.30, 0.10, -0.20, 0.40], dtype=torch.float64)
    rr = torch.tensor([0.10, 0.20, -0.50, 0.00], dtype=torch.float64)
    # pair: mean(rc - rr) = (0.2 - 0.1 + 0.3 + 0.4) / 4 = 0.2
    assert abs(float(deft_dpo_term(rc, rr)) - 0.2) < 1e-15
    assert abs(float(deft_dpo_term(rc, rr, "pair")) - 0.2) < 1e-15
    # chosen: mean(rc) = 0.6 / 4 = 0.15
    assert abs(float(deft_dpo_term(rc, rr, "chosen")) - 0.15) < 1e-15
    assert deft_dpo_term(rc, rr).shape == ()


def test_deft_dpo_term_gradients():
    rc = torch.tensor([0.3, 0.1], requires_grad=True)
    rr = torch.tensor([0.1, 0.2], requires_grad=True)
    deft_dpo_term(rc, rr, "pair").backward()
    assert rc.grad.tolist() == [0.5, 0.5] and rr.grad.tolist() == [-0.5, -0.5]
    rc.grad = rr.grad = None
    deft_dpo_term(rc, rr, "chosen").backward()
    assert rc.grad.tolist() == [0.5, 0.5] and rr.grad is None


def test_deft_dpo_term_forms():
    for form in LINEAR_FORMS:  # the linear forms; tests/core/test_loss_forms.py has every form the key offers
        assert deft_dpo_term(torch.ones(2), torch.zeros(2), form).item() == 1.0
    with pytest.raises(ValueError, match="deft_loss_form.*'listwise'"):
        deft_dpo_term(torch.zeros(2), torch.zeros(2), "listwise")


# ----------------------------------------------------------------------------- DPO (TRL's loss types)


def test_dpo_loss_types_by_hand():
    chosen, rejected = torch.tensor([0.4, -1.0], dtype=torch.float64), torch.tensor([-0.6, 2.0], dtype=torch.float64)
    lengths_c, lengths_r = torch.tensor([4, 10]), torch.tensor([5, 1])
    beta = 0.1
    d = [1.0, -3.0]
    sigmoid = sum(math.log1p(math.exp(-beta * x)) for x in d) / 2
    hinge = sum(max(0.0, 1 - beta * x) for x in d) / 2
    ipo = ((0.4 / 4 + 0.6 / 5 - 5) ** 2 + (-1.0 / 10 - 2.0 / 1 - 5) ** 2) / 2
    assert dpo_loss(chosen, rejected, beta).item() == pytest.approx(sigmoid, rel=1e-12)
    assert dpo_loss(chosen, rejected, beta, ["hinge"]).item() == pytest.approx(hinge, rel=1e-12)
    assert dpo_loss(chosen, rejected, beta, ["ipo"], None, lengths_c, lengths_r).item() == pytest.approx(ipo, rel=1e-12)
    mixed = dpo_loss(chosen, rejected, beta, ["sigmoid", "hinge", "ipo"], [1.0, 0.5, 0.01], lengths_c, lengths_r)
    assert mixed.item() == pytest.approx(sigmoid + 0.5 * hinge + 0.01 * ipo, rel=1e-12)


def test_dpo_loss_at_the_start_is_ln2_and_refuses_unknown_types():
    zero = torch.zeros(3)
    assert dpo_loss(zero, zero, 0.1).item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="dpo_loss_type: 'robust'"):
        dpo_loss(zero, zero, 0.1, ["robust"])
    with pytest.raises(ValueError, match="lengths"):
        dpo_loss(zero, zero, 0.1, ["ipo"])
    with pytest.raises(ValueError):
        dpo_loss(zero, zero, 0.1, ["sigmoid", "hinge"], [1.0])  # one weight per type
