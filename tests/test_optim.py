"""r1.optim.adamw: torch's AdamW, fused where torch has the kernel, against a float64 reference of the update."""

import pytest
import torch

from r1.optim import adamw


def _reference(p0, grads, lr, betas, wd, eps=1e-8):
    """AdamW (Loshchilov & Hutter 2019, Algorithm 2, bias-corrected moments) in float64."""
    p, m, v = p0.double().clone(), torch.zeros_like(p0, dtype=torch.float64), torch.zeros_like(p0, dtype=torch.float64)
    b1, b2 = betas
    for t, g in enumerate(grads, 1):
        g = g.double()
        p = p * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
    return p


def test_fused_on_cpu_and_the_update_matches_a_float64_reference():
    torch.manual_seed(0)
    p0 = torch.randn(7, 5)
    grads = [torch.randn(7, 5) * s for s in (1.0, 0.1, 3.0)]
    w = torch.nn.Parameter(p0.clone())
    opt = adamw([w], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    assert opt.param_groups[0]["fused"] is True
    for g in grads:
        w.grad = g.clone()
        opt.step()
    ref = _reference(p0, grads, 1e-2, (0.9, 0.95), 0.1)
    assert (w.detach().double() - p0.double()).abs().max() > 1e-2  # it moved
    torch.testing.assert_close(w.detach().double(), ref, rtol=0, atol=1e-6)


def test_first_step_hand_worked():
    # t = 1: m_hat = g, v_hat = g^2, so the step is -lr * g / (|g| + eps) = -lr * sign(g) (up to eps), after the
    # decay p (1 - lr wd): 2 * (1 - 0.1 * 0.5) - 0.1 = 1.8; -1 * 0.95 + 0.1 = -0.85
    w = torch.nn.Parameter(torch.tensor([2.0, -1.0]))
    opt = adamw([w], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    w.grad = torch.tensor([3.0, -0.25])
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([1.8, -0.85]), rtol=0, atol=1e-6)


def test_parameter_groups_keep_their_own_settings_and_are_fused():
    # torch-style groups: decay on the matrix only, a generator as a group's params; each group against the reference
    torch.manual_seed(1)
    m0, b0 = torch.randn(4, 3), torch.randn(3)
    grads = [(torch.randn(4, 3), torch.randn(3)) for _ in range(3)]
    m, b = torch.nn.Parameter(m0.clone()), torch.nn.Parameter(b0.clone())
    opt = adamw([{"params": (p for p in [m])}, {"params": b, "weight_decay": 0.0, "lr": 5e-3}], lr=1e-2,
                betas=(0.9, 0.95), weight_decay=0.1)
    assert [(g["fused"], g["weight_decay"], g["lr"], len(g["params"])) for g in opt.param_groups] == [
        (True, 0.1, 1e-2, 1), (True, 0.0, 5e-3, 1)]
    for gm, gb in grads:
        m.grad, b.grad = gm.clone(), gb.clone()
        opt.step()
    torch.testing.assert_close(m.detach().double(), _reference(m0, [g for g, _ in grads], 1e-2, (0.9, 0.95), 0.1),
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(b.detach().double(), _reference(b0, [g for _, g in grads], 5e-3, (0.9, 0.95), 0.0),
                               rtol=0, atol=1e-6)


def test_a_group_torch_cannot_fuse_leaves_the_whole_optimizer_unfused():
    on_cpu, on_meta = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3, device="meta"))
    opt = adamw([{"params": [on_cpu]}, {"params": [on_meta]}], lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0)
    assert [g["fused"] for g in opt.param_groups] == [False, False]


def test_named_parameters_are_fused_and_groups_stay_the_callers_dicts():
    w = torch.nn.Parameter(torch.ones(2))
    assert adamw([("w", w)], lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0).param_groups[0]["fused"] is True
    group = {"params": iter([w])}
    opt = adamw([group], lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0)
    assert opt.param_groups[0] is group and group["params"] == [w] and group["fused"] is True


@pytest.mark.parametrize("params, error", [
    (torch.zeros(3, 2), TypeError),  # one tensor, not a list of them (iterated, it would be 3 rows)
    ([{"params": {torch.nn.Parameter(torch.ones(2))}}], TypeError),  # a set: its order changes between runs
    ([{"lr": 1e-3}], KeyError),  # a group without "params"
    ([torch.nn.Parameter(torch.ones(2)), {"params": [torch.nn.Parameter(torch.ones(2))]}], TypeError),
    ([], ValueError),
])
def test_malformed_params_get_torchs_error(params, error):
    with pytest.raises(error):
        adamw(params, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0)


def test_unfused_where_torch_has_no_fused_kernel():
    w = torch.nn.Parameter(torch.zeros(3, device="meta"))
    assert not adamw([w], lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0).param_groups[0]["fused"]


def test_the_implementation_travels_with_the_state_dict():
    w = torch.nn.Parameter(torch.ones(4))
    old = torch.optim.AdamW([w], lr=1e-3)  # an optimizer of an earlier r1 (unfused)
    w.grad = torch.ones(4)
    old.step()
    resumed = adamw([w], lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01)
    resumed.load_state_dict(old.state_dict())
    assert not resumed.param_groups[0]["fused"]
    again = adamw([w], lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01)
    again.load_state_dict(adamw([w], lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01).state_dict())
    assert again.param_groups[0]["fused"] is True


def test_pretraining_builds_its_optimizer_with_adamw(monkeypatch):
    import r1.pretrain
    from r1.config import load_config
    from r1.models.policy import build_policy
    from r1.models.tokenizer import build_tokenizer
    from r1.tasks import make_task

    made = []

    def spy(params, **kw):
        made.append(adamw(params, **kw))
        return made[-1]
    monkeypatch.setattr(r1.pretrain, "adamw", spy)
    cfg = load_config(None, ["hidden_size=32", "num_layers=1", "num_heads=2", "num_kv_heads=1", "intermediate_size=64",
                             "pretrain_steps=2", "pretrain_batch_size=4", "pretrain_warmup_steps=1"])
    tok = build_tokenizer()
    model = build_policy(cfg, tok, 0)
    before = [p.detach().clone() for p in model.parameters()]
    r1.pretrain.pretrain(model, tok, make_task(cfg), set(), cfg)
    (opt,) = made
    group = opt.param_groups[0]
    assert (group["fused"], group["betas"], group["weight_decay"]) == (True, (0.9, 0.95), 0.01)
    assert len(group["params"]) == len(before) and opt.state[group["params"][0]]["step"].item() == 2
    assert all(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
