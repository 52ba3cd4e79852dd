"""The DEFT term's forms (deft_loss_form), for pairs (DEFT-DPO) and ranked lists (DEFT-PRO):
each against a hand computation with plain `math`, the saturating ones' gradient vanishing once
a pair is separated while the linear one's never does, and `pair` exactly the loss it always was."""

import math

import pytest
import torch

from deft_plugin.core.losses import (
    LOSS_FORMS,
    LossSettings,
    anchored_term,
    deft_dpo_objective,
    deft_dpo_term,
    deft_pro_objective,
    dpo_loss,
    pro_rank_loss,
    term_form,
)

BETA, LAMBDA, SCALE = 0.1, 2.0, 0.05


def settings(form, weight=LAMBDA):
    return LossSettings(reward_weight=weight, form=form, pro_sft_weight=0.0, reward_scale=SCALE)


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


# two pairs: policy log-ratios, policy rewards, starting rewards
CHOSEN, REJECTED = t(1.5, -0.4), t(0.5, 0.6)  # d = 1.0, -1.0
RC, RR = t(0.30, 0.10), t(0.05, 0.20)  # g = 0.25, -0.10
R0C, R0R = t(0.20, 0.12), t(0.10, 0.10)  # g0 = 0.10, 0.02


def test_margin_puts_the_gap_move_inside_dpos_sigmoid_and_hinge():
    # sigmoid: -log sigmoid(beta d + lambda (g - g0)): 0.1 + 2 * 0.15 = 0.4; -0.1 + 2 * (-0.12) = -0.34
    expected = -(logsigmoid(0.4) + logsigmoid(-0.34)) / 2
    out = deft_dpo_objective(CHOSEN, REJECTED, RC, RR, settings("margin"), BETA, start=(R0C, R0R))
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    assert out.preference.item() == pytest.approx(-(logsigmoid(0.1) + logsigmoid(-0.1)) / 2, abs=1e-12)
    assert out.term.item() == pytest.approx((0.15 - 0.12) / 2, abs=1e-12)
    hinge = deft_dpo_objective(CHOSEN, REJECTED, RC, RR, settings("margin"), BETA, ("hinge",), start=(R0C, R0R))
    assert hinge.loss.item() == pytest.approx((max(0, 1 - 0.4) + max(0, 1 + 0.34)) / 2, abs=1e-12)


def test_anchored_adds_minus_log_sigmoid_of_the_gap_move_over_its_spread():
    term = (logsigmoid(0.15 / SCALE) + logsigmoid(-0.12 / SCALE)) / 2
    dpo = -(logsigmoid(0.1) + logsigmoid(-0.1)) / 2
    out = deft_dpo_objective(CHOSEN, REJECTED, RC, RR, settings("anchored"), BETA, start=(R0C, R0R))
    assert out.term.item() == pytest.approx(term, abs=1e-12)
    assert out.loss.item() == pytest.approx(dpo - LAMBDA * term, abs=1e-12)
    assert anchored_term(t(0.3), t(0.3), 1.0).item() == pytest.approx(math.log(0.5))


def test_pair_is_exactly_the_loss_it_was():
    out = deft_dpo_objective(CHOSEN.float(), REJECTED.float(), RC.float(), RR.float(), settings("pair"), BETA)
    old = dpo_loss(CHOSEN.float(), REJECTED.float(), BETA) - LAMBDA * deft_dpo_term(RC.float(), RR.float())
    assert torch.equal(out.loss, old)
    zero = deft_dpo_objective(CHOSEN, REJECTED, RC, RR, settings("margin", 0.0), BETA, start=(R0C, R0R))
    assert torch.equal(zero.loss, dpo_loss(CHOSEN, REJECTED, BETA))  # lambda 0: plain DPO for every form


def reward_grad(form, separated: bool, **kw):
    """d loss / d R(y+) of one pair, far from or right at the start."""
    rc = t(1.0 if separated else 0.2).requires_grad_()
    d = 200.0 if separated else 0.0  # beta * d = 20: DPO has separated the pair
    out = deft_dpo_objective(t(d), t(0.0), rc, t(0.1), settings(form, **kw), BETA, start=(t(0.2), t(0.1)))
    (grad,) = torch.autograd.grad(out.loss, rc)
    return grad.item()


@pytest.mark.parametrize("form", ["margin", "anchored"])
def test_the_saturating_forms_stop_pushing_a_separated_pair(form):
    at_start = reward_grad(form, separated=False)
    assert at_start < -0.1  # at the start the term pushes R(y+) up (the loss falls as R(y+) rises)
    assert abs(reward_grad(form, separated=True)) < 1e-6 * abs(at_start)


def test_the_linear_form_never_stops_pushing():
    assert reward_grad("pair", separated=True) == pytest.approx(-LAMBDA) == reward_grad("pair", separated=False)


def test_a_saturating_form_needs_the_starting_rewards_and_ipo_takes_no_margin():
    with pytest.raises(ValueError, match="deft_loss_form: margin measures the reward gap against the starting"):
        deft_dpo_objective(CHOSEN, REJECTED, RC, RR, settings("margin"), BETA)
    with pytest.raises(ValueError, match="ipo .* takes no margin"):
        deft_dpo_objective(CHOSEN, REJECTED, RC, RR, settings("margin"), BETA, ("ipo",), None, t(3, 3), t(4, 4),
                           start=(R0C, R0R))


# ----------------------------------------------------------------------------- ranked lists (DEFT-PRO)

SCORES = t(-1.0, -1.5, -2.5).reshape(1, 3)  # one row of three candidates, best first
R = t(0.4, 0.1, 0.0).reshape(1, 3)
R0 = t(0.3, 0.2, 0.1).reshape(1, 3)
MASK = torch.ones(1, 3, dtype=torch.bool)


def pro(form, scores=SCORES, rewards=R, start=R0, weight=LAMBDA):
    rank = pro_rank_loss(scores, MASK)
    return deft_pro_objective(rank, torch.zeros(()), scores, MASK, None, rewards, settings(form, weight), start)


def test_pro_margin_shifts_every_candidate_inside_the_ranking_softmax():
    moved = [-1.0 + 2 * 0.1, -1.5 + 2 * -0.1, -2.5 + 2 * -0.1]  # s_k + lambda (R_k - R0_k)
    rank1 = -(moved[0] - math.log(sum(math.exp(v) for v in moved)))
    rank2 = -(moved[1] - math.log(math.exp(moved[1]) + math.exp(moved[2])))
    out = pro("margin")
    assert out.loss.item() == pytest.approx(rank1 + rank2, abs=1e-12)
    assert out.term.item() == pytest.approx(0.1 - (-0.1 - 0.1) / 2, abs=1e-12)  # the gap's move


def test_pro_anchored_and_pair_by_hand():
    plain = pro_rank_loss(SCORES, MASK).item()
    move = (0.4 - 0.05) - (0.3 - 0.15)  # gap (best minus mean of the rest) now, minus at the start
    out = pro("anchored")
    assert out.term.item() == pytest.approx(logsigmoid(move / SCALE), abs=1e-12)
    assert out.loss.item() == pytest.approx(plain - LAMBDA * logsigmoid(move / SCALE), abs=1e-12)
    assert pro("pair").loss.item() == pytest.approx(plain - LAMBDA * (0.4 - 0.05), abs=1e-12)


def test_pro_with_two_candidates_is_the_dpo_margin_form():
    scores, rewards, start = t(0.7, 0.2).reshape(1, 2), t(0.3, 0.1).reshape(1, 2), t(0.2, 0.15).reshape(1, 2)
    mask = torch.ones(1, 2, dtype=torch.bool)
    out = deft_pro_objective(pro_rank_loss(scores, mask), torch.zeros(()), scores, mask, None, rewards,
                             settings("margin"), start)
    dpo = deft_dpo_objective(t(0.7), t(0.2), t(0.3), t(0.1), settings("margin"), 1.0, start=(t(0.2), t(0.15)))
    assert out.loss.item() == pytest.approx(dpo.loss.item(), abs=1e-12)


@pytest.mark.parametrize("form", ["margin", "anchored"])
def test_pro_saturating_forms_stop_pushing_a_separated_list(form):
    def grad(separated):
        rewards = (t(1.0, -0.5, -0.5) if separated else R[0].clone()).reshape(1, 3).requires_grad_()
        scores = t(0.0, -30.0, -60.0).reshape(1, 3) if separated else SCORES
        (g,) = torch.autograd.grad(pro(form, scores, rewards).loss, rewards)
        return g.abs().max().item()

    assert grad(False) > 0.1 and grad(True) < 1e-6 * grad(False)


def test_every_form_the_key_offers_is_computed():
    from deft_plugin.integration.args import DEFTArgs

    assert set(DEFTArgs.model_fields["deft_loss_form"].annotation.__args__) == set(LOSS_FORMS)
    for form in LOSS_FORMS:
        assert torch.isfinite(deft_dpo_objective(CHOSEN, REJECTED, RC, RR, settings(form), BETA,
                                                 start=(R0C, R0R)).loss)
        assert torch.isfinite(pro(form).loss)


@pytest.mark.parametrize("form, weight, gets", [
    (None, None, "margin"), (None, 4.0, "margin"), ("anchored", 0.1, "anchored"), ("pair", None, "pair"),
    ("margin", 0, "pair"), (None, 0.0, "pair"), ("anchored", 0, "pair"),
])
def test_the_form_a_config_gets(form, weight, gets):
    """Its own form, else the default (margin); at lambda 0 no term, so pair, which asks for nothing."""
    assert term_form(form, weight) == gets
