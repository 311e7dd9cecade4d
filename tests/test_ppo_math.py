"""PPO arithmetic, checked against answers worked out by hand (stages/ppo/advantages.py, losses.py)."""

import math

import pytest
import torch

from pipeline.judge.scoring import process_scores
from stages.ppo.advantages import (
    compute_gae,
    kl_per_token,
    masked_mean,
    masked_var,
    masked_whiten,
    shape_rewards,
)
from stages.ppo.kl_controller import AdaptiveKLController, FixedKLController
from stages.ppo.losses import ppo_loss
from stages.ppo.rollout import truncate_after_eos

EOS, PAD = 1, 0


def test_gae_matches_a_hand_computed_example_and_ignores_everything_after_eos():
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.0, 9.0]])
    values = torch.tensor([[0.5, 1.0, 1.5], [0.2, 0.4, 7.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])  # row 2 ended at index 1
    adv, ret = compute_gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 1: deltas 1.5, 0.5, 0.5 -> A2 = .5, A1 = .5 + .5*.5 = .75, A0 = 1.5 + .5*.75 = 1.875
    # row 2: V beyond the end is 0: deltas .7, .6 -> A1 = .6, A0 = .7 + .5*.6 = 1.0; index 2 is masked
    torch.testing.assert_close(adv, torch.tensor([[1.875, 0.75, 0.5], [1.0, 0.6, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[2.375, 1.75, 2.0], [1.2, 1.0, 0.0]]))


def test_gae_with_lambda_one_is_the_monte_carlo_return_minus_the_value():
    torch.manual_seed(0)
    rewards, values = torch.randn(4, 6), torch.randn(4, 6)
    mask = torch.ones(4, 6, dtype=torch.bool)
    adv, ret = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    future = rewards.flip(1).cumsum(1).flip(1)
    torch.testing.assert_close(adv, future - values)
    torch.testing.assert_close(ret, future)


def test_gae_discounts_with_gamma():
    adv, _ = compute_gae(torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool),
                         gamma=0.9, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.9, 1.0]]))


def test_masked_whitening_equals_torch_on_the_unmasked_part_and_zero_elsewhere():
    torch.manual_seed(1)
    x = torch.randn(5, 7) * 3 + 2
    mask = torch.rand(5, 7) > 0.4
    w = masked_whiten(x, mask)
    kept = x[mask]
    torch.testing.assert_close(w[mask], (kept - kept.mean()) / kept.std(), rtol=1e-5, atol=1e-5)
    assert torch.all(w[~mask] == 0)
    torch.testing.assert_close(masked_mean(x, mask), kept.mean())
    torch.testing.assert_close(masked_var(x, mask), kept.var())
    # shift_mean=False (reward whitening) only rescales around the mean: the mean is kept
    w2 = masked_whiten(x, mask, shift_mean=False)
    torch.testing.assert_close(w2[mask], (kept - kept.mean()) / kept.std() + kept.mean(), rtol=1e-5, atol=1e-5)


def test_reward_whitening_without_shift_keeps_the_mean_and_not_the_signs():
    # Masked entries -1, 1, 3: mean 1, std 2 (unbiased). (x - 1) / 2 + 1 = 0, 1, 2; the masked 7 comes out 0.
    x = torch.tensor([[-1.0, 1.0, 3.0, 7.0]])
    mask = torch.tensor([[True, True, True, False]])
    torch.testing.assert_close(masked_whiten(x, mask, shift_mean=False), torch.tensor([[0.0, 1.0, 2.0, 0.0]]))
    torch.testing.assert_close(masked_whiten(x, mask), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]))  # shifted: mean 0


@pytest.mark.parametrize("eos_at, expect_len", [(0, 1), (2, 3), (4, 5), (None, 5)])
def test_reward_lands_on_the_last_real_token_and_kl_on_every_real_token(eos_at, expect_len):
    resp = torch.tensor([[7, 8, 9, 10, 11]])
    if eos_at is not None:
        resp[0, eos_at] = EOS
        resp[0, eos_at + 1:] = 12  # tokens sampled after EOS must be discarded
    resp, mask, has_eos = truncate_after_eos(resp, EOS, PAD)
    assert mask.sum().item() == expect_len and has_eos.item() == (eos_at is not None)
    assert torch.all(resp[0, expect_len:] == PAD)
    kl = torch.full((1, 5), 0.5) * mask
    rewards, non_score = shape_rewards(torch.tensor([3.0]), kl, mask, kl_coef=0.1)
    expected = torch.zeros(1, 5)
    expected[0, :expect_len] = -0.05
    expected[0, expect_len - 1] += 3.0
    torch.testing.assert_close(rewards, expected)
    torch.testing.assert_close(non_score.sum(), torch.tensor(-0.05 * expect_len))
    # values/advantages/returns after the last real token are zero, whatever the value head said
    adv, ret = compute_gae(rewards, torch.full((1, 5), 4.0), mask)
    assert torch.all(adv[0, expect_len:] == 0) and torch.all(ret[0, expect_len:] == 0)
    assert adv[0, expect_len - 1].item() == pytest.approx(3.0 - 0.05 - 4.0)


def test_scores_are_normalised_clipped_and_missing_eos_penalised():
    raw = torch.tensor([3.0, 3.0, 30.0])
    eos = torch.tensor([True, False, True])
    s = process_scores(raw, eos, mean=1.0, std=2.0, clip=None, missing_eos_penalty=0.5, mode="subtract")
    torch.testing.assert_close(s, torch.tensor([1.0, 0.5, 14.5]))
    s = process_scores(raw, eos, mean=1.0, std=2.0, clip=5.0, missing_eos_penalty=0.5, mode="replace")
    torch.testing.assert_close(s, torch.tensor([1.0, -0.5, 5.0]))
    s = process_scores(raw, eos, mean=1.0, std=2.0, clip=None, missing_eos_penalty=None)
    torch.testing.assert_close(s, torch.tensor([1.0, 1.0, 14.5]))


def test_kl_estimators_are_unbiased_and_k3_is_never_negative():
    torch.manual_seed(2)
    p = torch.softmax(torch.randn(50), 0)
    q = torch.softmax(torch.randn(50), 0)
    exact = (p * (p.log() - q.log())).sum().item()
    tokens = torch.multinomial(p, 200_000, replacement=True)
    lp, lq = p.log()[tokens], q.log()[tokens]
    k1, k3 = kl_per_token(lp, lq, "k1"), kl_per_token(lp, lq, "k3")
    assert k1.mean().item() == pytest.approx(exact, rel=0.05)
    assert k3.mean().item() == pytest.approx(exact, rel=0.05)
    assert torch.all(k3 >= 0) and (k1 < 0).any()
    assert kl_per_token(torch.tensor([-1.0]), torch.tensor([-2.0]), "k3").item() == pytest.approx(math.exp(-1) - 1 + 1)
    with pytest.raises(ValueError):
        kl_per_token(lp, lq, "k2")


def test_adaptive_kl_controller_moves_beta_towards_the_target_and_clips_the_error():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=100)
    ctl.update(current_kl=60.0, n_episodes=10)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * 1.02)
    ctl.update(current_kl=3.0, n_episodes=10)  # error -0.5 clipped to -0.2
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.98)
    fixed = FixedKLController(0.1)
    fixed.update(60.0, 10)
    assert fixed.value == 0.1
    ctl2 = AdaptiveKLController(1.0, 6.0, 100)
    ctl2.load_state_dict(ctl.state_dict())
    assert ctl2.value == ctl.value


def test_clipped_surrogate_stops_the_gradient_outside_the_trust_region():
    old = torch.zeros(1, 3)
    new = torch.tensor([[0.0, 0.5, -0.5]], requires_grad=True)  # ratios 1, 1.65, 0.61
    adv = torch.tensor([[1.0, 1.0, 1.0]])
    v = torch.zeros(1, 3, requires_grad=True)
    t = ppo_loss(new, old, adv, v, torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool),
                 n_tokens=3.0, cliprange=0.2)
    t.loss.backward()
    # A > 0: raising the ratio above 1.2 earns nothing; below 0.8 the unclipped term still pushes up
    assert new.grad[0, 0] < 0 and new.grad[0, 1] == 0 and new.grad[0, 2] < 0
    assert t.stats["pg_clipfrac"].item() == 1.0
    assert t.pg_loss.item() == pytest.approx(-(1.0 + 1.2 + math.exp(-0.5)) / 3, rel=1e-5)


def test_clipped_value_loss_uses_the_larger_error():
    new_v = torch.tensor([[2.0]])
    t = ppo_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), new_v, torch.zeros(1, 1),
                 torch.tensor([[1.0]]), torch.ones(1, 1, dtype=torch.bool), n_tokens=1.0, cliprange_value=0.2)
    # unclipped error (2-1)^2 = 1; clipped value 0.2 -> (0.2-1)^2 = 0.64; the max, halved
    assert t.vf_loss.item() == pytest.approx(0.5)
