"""GRPO pure functions: hand-worked advantages, and the loss against a float64 loop reference."""

import math

import pytest
import torch

from r1.rl.grpo import aggregate, group_advantages, grpo_loss, kl_estimate


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
    out = kl_estimate(torch.zeros(1, 1), torch.full((1, 1), math.log(2.0)), "k3")
    assert out.item() == pytest.approx(1 - math.log(2.0))
    assert kl_estimate(torch.zeros(2, 3), torch.zeros(2, 3)).abs().max().item() == 0.0


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


def test_advantage_variants_hand_worked():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 3.0, 1.0, 1.0, 1.0])
    # RLOO: b_i = mean of the other three. Group 1: 1 - 0 = 1; 0 - 1/3 = -1/3. Group 2: 3 - 1 = 2; 1 - 5/3 = -2/3.
    loo = group_advantages(r, 4, baseline="loo", scale="none")
    assert loo.tolist() == pytest.approx([1, -1 / 3, -1 / 3, -1 / 3, 2, -2 / 3, -2 / 3, -2 / 3])
    # Dr. GRPO: mean baseline, no std. Group means 0.25 and 1.5.
    dr = group_advantages(r, 4, scale="none")
    assert dr.tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25, 1.5, -0.5, -0.5, -0.5])
    # Batch std: one sample std over all 8 rewards (mean 7/8).
    batch_std = torch.tensor([1.0, 0, 0, 0, 3, 1, 1, 1]).std().item()
    assert group_advantages(r, 4, eps=0.0, scale="batch").tolist() == pytest.approx([x / batch_std for x in dr.tolist()])


def test_nan_rewards_are_excluded_and_get_zero_advantage():
    # Group [1, NaN, 0]: the NaN is left out -> graded [1, 0]: mean 0.5, std sqrt(0.5) -> +-0.7071, NaN gets 0.
    adv = group_advantages(torch.tensor([1.0, float("nan"), 0.0]), 3, eps=0.0)
    assert adv.tolist() == pytest.approx([math.sqrt(0.5), 0.0, -math.sqrt(0.5)])
    assert not adv.isnan().any()
    assert group_advantages(torch.full((4,), float("nan")), 2).tolist() == [0.0] * 4


def test_vectorised_advantages_match_a_loop():
    g = torch.Generator().manual_seed(0)
    r = torch.randint(0, 3, (6 * 5,), generator=g).double()
    r[[3, 11]] = float("nan")
    for baseline in ("mean", "loo"):
        got = group_advantages(r, 5, eps=1e-4, baseline=baseline)
        want = []
        for grp in r.view(-1, 5).tolist():
            ok = [x for x in grp if not math.isnan(x)]
            mean = sum(ok) / len(ok)
            std = math.sqrt(sum((x - mean) ** 2 for x in ok) / (len(ok) - 1))
            for x in grp:
                if math.isnan(x):
                    want.append(0.0)
                    continue
                b = mean if baseline == "mean" else (sum(ok) - x) / (len(ok) - 1)
                want.append((x - b) / (std + 1e-4))
        assert got.tolist() == pytest.approx(want, abs=1e-9)


def test_kl_estimators_hand_worked():
    # logp = 0, ref = log 2: k1 = -log 2, k2 = (log 2)^2 / 2, k3 = 1 - log 2
    lp, ref = torch.zeros(1, 1), torch.full((1, 1), math.log(2.0))
    assert kl_estimate(lp, ref, "k1").item() == pytest.approx(-math.log(2.0))
    assert kl_estimate(lp, ref, "k2").item() == pytest.approx(math.log(2.0) ** 2 / 2)
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(lp, ref, "k4")


def test_clip_higher_hand_worked():
    # ratio 1.25, A = +1: clipped at 1.2 with symmetric eps, not with eps_high = 0.28 (DAPO).
    logp, old, mask = torch.full((1, 1), math.log(1.25)), torch.zeros(1, 1), torch.ones(1, 1)
    loss, stats = grpo_loss(logp, old, None, torch.tensor([1.0]), mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(-1.2) and stats["clipfrac_high"] == 1.0
    loss, stats = grpo_loss(logp, old, None, torch.tensor([1.0]), mask, clip_eps=0.2, clip_eps_high=0.28)
    assert loss.item() == pytest.approx(-1.25) and stats["clipfrac"] == 0.0
    # ratio 0.5, A = -1: -min(-0.5, -0.8) = 0.8, clipped from below.
    loss, stats = grpo_loss(torch.full((1, 1), math.log(0.5)), old, None, torch.tensor([-1.0]), mask)
    assert loss.item() == pytest.approx(0.8) and stats["clipfrac_low"] == 1.0 and stats["clipfrac_high"] == 0.0


def test_gspo_sequence_ratio_hand_worked():
    # One completion of 2 tokens, log-ratios 0.1 and 0.3: s = exp(0.2); A = 1, eps 0.5 -> loss -exp(0.2).
    old = torch.zeros(1, 3)
    logp = torch.tensor([[0.1, 0.3, 5.0]])  # the third token is padding
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, stats = grpo_loss(logp, old, None, torch.tensor([1.0]), mask, clip_eps=0.5, ratio_level="sequence")
    assert loss.item() == pytest.approx(-math.exp(0.2))
    assert stats["ratio_mean"] == pytest.approx(math.exp(0.2))


def test_aggregations_hand_worked():
    x = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert aggregate(x, m, "seq_mean_token_mean").item() == pytest.approx((2.0 + 4.0) / 2)  # GRPO
    assert aggregate(x, m, "token_mean").item() == pytest.approx(10.0 / 4)  # DAPO
    assert aggregate(x, m, "seq_mean_token_sum_norm").item() == pytest.approx((6.0 + 4.0) / 2 / 4)  # Dr. GRPO, L
    assert aggregate(x, m, "seq_mean_token_sum_norm", 10).item() == pytest.approx((6.0 + 4.0) / 2 / 10)


def test_entropy_bonus_lowers_the_loss_by_coef_times_mean_entropy():
    logp, mask = torch.zeros(2, 2), torch.ones(2, 2)
    ent = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    base, _ = grpo_loss(logp, logp, None, torch.tensor([1.0, -1.0]), mask)
    bonus, stats = grpo_loss(logp, logp, None, torch.tensor([1.0, -1.0]), mask, entropy=ent, entropy_coef=0.1)
    assert bonus.item() == pytest.approx(base.item() - 0.1 * 2.0) and stats["entropy"] == pytest.approx(2.0)


def reference_variant_loss(logp, old, ref, adv, mask, eps_low, eps_high, beta, kl, agg, level):
    """Float64 loops for every variant: token/sequence ratio, k1/k2/k3, the three aggregations."""
    rows, n_tok = [], 0
    for i in range(len(logp)):
        toks = [t for t in range(len(logp[i])) if mask[i][t]]
        seq_lr = sum(logp[i][t] - old[i][t] for t in toks) / max(len(toks), 1)
        vals = []
        for t in toks:
            r = math.exp(seq_lr if level == "sequence" else logp[i][t] - old[i][t])
            surrogate = min(r * adv[i], min(max(r, 1 - eps_low), 1 + eps_high) * adv[i])
            lr = ref[i][t] - logp[i][t]
            k = {"k1": -lr, "k2": lr * lr / 2, "k3": math.exp(lr) - lr - 1}[kl]
            vals.append(-surrogate + beta * k)
        rows.append(vals)
        n_tok += len(toks)
    if agg == "seq_mean_token_mean":
        return sum(sum(v) / max(len(v), 1) for v in rows) / len(rows)
    if agg == "token_mean":
        return sum(sum(v) for v in rows) / n_tok
    return sum(sum(v) for v in rows) / len(rows) / len(logp[0])


@pytest.mark.parametrize("kl, agg, level, eps_high", [
    ("k1", "token_mean", "token", 0.28), ("k2", "seq_mean_token_sum_norm", "token", 0.2),
    ("k3", "seq_mean_token_mean", "sequence", 0.2), ("k3", "token_mean", "sequence", 0.28)])
def test_variants_match_float64_reference(kl, agg, level, eps_high):
    g = torch.Generator().manual_seed(7)
    n, length = 10, 6
    logp = -torch.rand(n, length, generator=g, dtype=torch.float64) * 2
    old = logp + torch.randn(n, length, generator=g, dtype=torch.float64) * 0.2
    ref = logp + torch.randn(n, length, generator=g, dtype=torch.float64) * 0.5
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    mask = (torch.arange(length)[None] < torch.randint(1, length + 1, (n,), generator=g)[:, None]).double()
    want = reference_variant_loss(logp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(),
                                  0.2, eps_high, 0.04, kl, agg, level)
    got, _ = grpo_loss(logp, old, ref, adv, mask, clip_eps=0.2, beta=0.04, clip_eps_high=eps_high,
                       ratio_level=level, kl_estimator=kl, aggregation=agg)
    assert got.item() == pytest.approx(want, rel=1e-12, abs=1e-12)
