"""GRPO pure functions: hand-worked advantages, and the loss against a float64 loop reference."""

import math

import pytest
import torch

from r1.rl.grpo import group_advantages, grpo_loss, kl_k3


def test_equal_rewards_give_zero_advantages_not_nan():
    adv = group_advantages(torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]), group_size=4)
    assert torch.equal(adv, torch.zeros(8))


def test_hand_worked_advantages():
    # group [1, 0, 0, 0]: mean 0.25; sample std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    # -> A = (0.75 / 0.5, -0.25 / 0.5, ...) = (1.5, -0.5, -0.5, -0.5) (eps = 0)
    # group [2, 0]: mean 1, std sqrt(2) -> A = (1/sqrt 2, -1/sqrt 2)
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4, eps=0.0)
    assert adv.tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5])
    adv = group_advantages(torch.tensor([2.0, 0.0, 0.0, 2.0]), 2, eps=0.0)
    assert adv.tolist() == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2), -1 / math.sqrt(2), 1 / math.sqrt(2)])


def test_advantages_reject_bad_group_size():
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.zeros(8), 3)


def test_kl_k3_hand_worked():
    # logp = 0, ref = log 2: exp(log 2) - log 2 - 1 = 1 - log 2
    out = kl_k3(torch.zeros(1, 1), torch.full((1, 1), math.log(2.0)))
    assert out.item() == pytest.approx(1 - math.log(2.0))
    assert kl_k3(torch.zeros(2, 3), torch.zeros(2, 3)).abs().max().item() == 0.0


def test_ratio_clipping_hand_worked():
    # one token, ratio = e (logp 1, old 0), A = +1: unclipped e, clipped 1.2 -> min 1.2, loss -1.2
    # A = -1: unclipped -e, clipped -1.2 -> min -e, loss +e (the pessimistic bound keeps the larger penalty)
    logp, old, mask = torch.ones(1, 1), torch.zeros(1, 1), torch.ones(1, 1)
    loss, stats = grpo_loss(logp, old, None, torch.tensor([1.0]), mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(-1.2)
    assert stats["clipfrac"] == 1.0
    loss, stats = grpo_loss(logp, old, None, torch.tensor([-1.0]), mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(math.e)
    assert stats["clipfrac"] == 0.0


def reference_loss(logp, old, ref, adv, mask, eps, beta):
    """Plain float64 loops over completions and tokens (R1 Eq. 1-2, DeepSeekMath Eq. 3)."""
    total = 0.0
    for i in range(len(logp)):
        acc, n = 0.0, 0
        for t in range(len(logp[i])):
            if mask[i][t] == 0:
                continue
            ratio = math.exp(logp[i][t] - old[i][t])
            surrogate = min(ratio * adv[i], min(max(ratio, 1 - eps), 1 + eps) * adv[i])
            kl = math.exp(ref[i][t] - logp[i][t]) - (ref[i][t] - logp[i][t]) - 1
            acc += -surrogate + beta * kl
            n += 1
        total += acc / max(n, 1)
    return total / len(logp)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_matches_float64_reference(seed):
    g = torch.Generator().manual_seed(seed)
    n, length = 12, 7
    logp = -torch.rand(n, length, generator=g, dtype=torch.float64) * 3
    old = logp + torch.randn(n, length, generator=g, dtype=torch.float64) * 0.3
    ref = logp + torch.randn(n, length, generator=g, dtype=torch.float64) * 0.5
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, length + 1, (n,), generator=g)
    mask = (torch.arange(length)[None] < lengths[:, None]).double()
    want = reference_loss(logp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.04)
    got, _ = grpo_loss(logp.float(), old.float(), ref.float(), adv.float(), mask.float(), clip_eps=0.2, beta=0.04)
    assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-6)
    got64, _ = grpo_loss(logp, old, ref, adv, mask, clip_eps=0.2, beta=0.04)
    assert got64.item() == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_on_policy_ratio_is_one_and_gradient_is_advantage_weighted():
    # At mu = 1 old = logp.detach(): ratio exactly 1, and d loss / d logp_t = -A_i / |o_i| / N.
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    loss, stats = grpo_loss(logp, logp.detach(), None, torch.tensor([1.0, -2.0]), mask)
    loss.backward()
    assert stats["ratio_max_dev"] == 0.0
    expected = torch.tensor([[-1 / 2 / 2, -1 / 2 / 2, 0.0], [2 / 3 / 2, 2 / 3 / 2, 2 / 3 / 2]])
    assert torch.allclose(logp.grad, expected)


def test_beta_without_reference_is_an_error():
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(torch.zeros(1, 1), torch.zeros(1, 1), None, torch.zeros(1), torch.ones(1, 1), beta=0.1)
