"""One GRPO step on a tiny policy moves probability toward the higher-reward completion."""

import torch

from r1.config import RunConfig
from r1.models.policy import build_policy
from r1.models.tokenizer import build_tokenizer, prompt_text
from r1.rl.grpo import group_advantages
from r1.rl.logprobs import token_logprobs
from r1.rl.trainer import policy_update
from r1.rollout.engine import RolloutBatch, completion_mask, concat_rollouts, generate_rollouts


def make_batch(tok, prompt, completions):
    enc = tok([prompt] * len(completions), return_tensors="pt", add_special_tokens=False)
    ids = [tok(c, add_special_tokens=False).input_ids + [tok.eos_token_id] for c in completions]
    width = max(map(len, ids))
    comp = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x in ids])
    mask, truncated = completion_mask(comp, tok.eos_token_id)
    return RolloutBatch(enc.input_ids, enc.attention_mask, comp, mask, truncated, completions)


def seq_logp(model, batch):
    with torch.no_grad():
        logp, _ = token_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                 batch.completion_mask)
    return (logp * batch.completion_mask).sum(-1)


def test_one_step_raises_logp_of_better_completion():
    cfg = RunConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64,
                    lr=1e-2, beta=0.04)
    tok = build_tokenizer()
    policy = build_policy(cfg, tok, seed=0)
    reference = build_policy(cfg, tok, seed=0).requires_grad_(False)
    prompt = prompt_text(tok, "12*34")
    good = "<think>\n12*4=48\n12*30=360\n48+360=408\n</think>\n<answer>408</answer>"
    bad = "<think>\n</think>\n<answer>480</answer>"
    batch = make_batch(tok, prompt, [good, bad])
    advantages = group_advantages(torch.tensor([2.0, 1.0]), group_size=2)  # [+0.707, -0.707]
    before = seq_logp(policy, batch)
    params = {n: p.detach().clone() for n, p in policy.named_parameters()}
    stats = policy_update(policy, reference, torch.optim.AdamW(policy.parameters(), lr=cfg.lr), batch,
                          advantages, cfg)
    after = seq_logp(policy, batch)
    assert after[0] > before[0] + 0.1, (before, after)
    assert after[1] < before[1] - 0.1, (before, after)
    assert stats["ratio_max_dev"] == 0.0 and stats["kl"] == 0.0  # policy == reference before the step
    unchanged = [n for n, p in policy.named_parameters() if torch.equal(p, params[n])]
    assert unchanged == []


def test_sampler_masks_after_eos_and_flags_truncation():
    cfg = RunConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    tok = build_tokenizer()
    model = build_policy(cfg, tok, seed=0)
    torch.manual_seed(0)
    batch = generate_rollouts(model, tok, [prompt_text(tok, "1*2"), prompt_text(tok, "12*3")], 4, 20)
    assert batch.completion_ids.shape[0] == 8 and len(batch.texts) == 8
    for row, mask, trunc in zip(batch.completion_ids, batch.completion_mask, batch.truncated):
        n = int(mask.sum())
        eos_at = (row == tok.eos_token_id).nonzero()
        if trunc:
            assert len(eos_at) == 0 and n == row.shape[0]
        else:
            assert eos_at[0].item() == n - 1  # mask covers up to and including the first EOS
            assert (row[n:] == tok.pad_token_id).all()


def test_sampler_logprobs_match_the_trainer_forward():
    # Left-padded prompts of different lengths, T = 0.7: the trainer's forward (position ids from the mask)
    # must give the sampler's log-probabilities, so that on-policy the importance ratio is 1.
    cfg = RunConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
    tok = build_tokenizer()
    model = build_policy(cfg, tok, seed=1)
    torch.manual_seed(0)
    prompts = [prompt_text(tok, "1 2 3 -> 6"), prompt_text(tok, "12 34 56 78 -> 100")]
    batch = generate_rollouts(model, tok, prompts, 3, 16, temperature=0.7)
    assert batch.prompt_mask[0].sum() < batch.prompt_mask[-1].sum()  # the first prompt is left-padded
    logp, _ = token_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                             batch.completion_mask, temperature=0.7)
    diff = ((logp - batch.sampler_logp) * batch.completion_mask).abs().max().item()
    assert diff < 1e-4
    assert (batch.sampler_logp * batch.completion_mask).sum() < 0  # real log-probabilities, not zeros


def test_completion_mask_hand_worked():
    eos = 1
    ids = torch.tensor([[5, 6, 1, 7, 1], [5, 5, 5, 5, 5], [1, 5, 5, 5, 5]])
    mask, truncated = completion_mask(ids, eos)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def test_select_and_concat_rollouts_round_trip():
    cfg = RunConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    tok = build_tokenizer()
    model = build_policy(cfg, tok, seed=0)
    torch.manual_seed(0)
    a = generate_rollouts(model, tok, [prompt_text(tok, "1 2 -> 3")], 2, 6)
    b = generate_rollouts(model, tok, [prompt_text(tok, "10 20 30 -> 60")], 2, 9)
    both = concat_rollouts([a, b], tok.pad_token_id)
    assert both.prompt_ids.shape[1] == b.prompt_ids.shape[1] and both.completion_ids.shape[1] == b.completion_ids.shape[1]
    assert both.texts == a.texts + b.texts
    assert both.lengths.tolist() == a.lengths.tolist() + b.lengths.tolist()
    # the short prompt is re-padded on the left: its tokens end where the long prompt's do
    n = int(a.prompt_mask[0].sum())
    assert both.prompt_ids[0, -n:].tolist() == a.prompt_ids[0, -n:].tolist()
    assert both.select([3, 0]).texts == [b.texts[1], a.texts[0]]
    logp, _ = token_logprobs(model, both.prompt_ids, both.prompt_mask, both.completion_ids, both.completion_mask)
    assert ((logp - both.sampler_logp) * both.completion_mask).abs().max() < 1e-4


def test_merge_rounds_keeps_informative_groups_in_order():
    from r1.rl.trainer import Scores, _informative_groups, _merge_rounds

    tok = build_tokenizer()
    p = prompt_text(tok, "1*2")
    # Round 1: group 0 all right (dropped), group 1 mixed (kept). Round 2: group 0 mixed (kept), group 1 mixed.
    r1 = make_batch(tok, p, ["a", "b", "c", "d"])
    r2 = make_batch(tok, p, ["e", "f", "g", "h"])
    s1 = Scores(torch.tensor([1.0, 1, 1, 0]), torch.ones(4), torch.tensor([2.0, 2, 2, 1]), torch.zeros(4))
    s2 = Scores(torch.tensor([0.0, 1, 1, 0]), torch.ones(4), torch.tensor([1.0, 2, 2, 1]), torch.zeros(4))
    assert _informative_groups(s1, 2) == [1] and _informative_groups(s2, 2) == [0, 1]
    kept = [(["q0", "q1"], ["x0", "x0", "x1", "x1"], r1, s1, [1]),
            (["q2", "q3"], ["x2", "x2", "x3", "x3"], r2, s2, [0, 1])]
    prompts, answers, batch, scores = _merge_rounds(kept, G=2, B=2, pad_id=tok.pad_token_id)
    assert prompts == ["q1", "q2"] and answers == ["x1", "x1", "x2", "x2"]
    assert batch.texts == ["c", "d", "e", "f"]
    assert scores.accuracy.tolist() == [1.0, 0.0, 0.0, 1.0] and scores.total.tolist() == [2.0, 1.0, 1.0, 2.0]


class _CaptureGrads:
    """An optimizer stand-in that records the gradient of every step and changes nothing."""

    def __init__(self, model):
        self.model, self.grads = model, []

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)

    def step(self):
        self.grads.append({n: p.grad.clone() for n, p in self.model.named_parameters()})


def test_micro_batches_give_the_whole_batch_gradient_and_statistics():
    """Gradient accumulation over micro-batches of whole groups (update_micro_batch_tokens) equals one
    pass over the batch, for each loss aggregation, with KL to a different reference, an overlong-masked
    truncated completion and two iterations; the statistics are the same weighted means."""
    import dataclasses
    from r1.rl.trainer import micro_batches
    base = RunConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64, beta=0.04,
                     group_size=2, max_grad_norm=1e9, num_iterations=2, overlong="mask", max_new_tokens=40)
    tok = build_tokenizer()
    policy = build_policy(base, tok, seed=0)
    reference = build_policy(base, tok, seed=1).requires_grad_(False)
    groups = [("12*34", ["<think>\n12*4=48\n</think>\n<answer>408</answer>", "<answer>480</answer>"]),
              ("7*8", ["<answer>56</answer>", "<think>\n7*8=56\n7*8=56\n7*8=56\n</think>\n<answer>56</answer>"]),
              ("123*45", ["<think>\n</think>", "<answer>5535</answer>"])]
    parts = [make_batch(tok, prompt_text(tok, q), cs) for q, cs in groups]
    batch = concat_rollouts(parts, tok.pad_token_id)
    batch.truncated[3] = True  # masked out of the loss by overlong="mask"
    advantages = torch.tensor([0.7, -0.7, 0.3, -0.3, 1.0, -1.0])
    assert micro_batches(batch, 2, 0) == [[0, 1, 2, 3, 4, 5]]
    assert [len(m) for m in micro_batches(batch, 2, 1)] == [2, 2, 2]  # at least one group each
    sizes = [int(batch.prompt_mask[g * 2].sum() + batch.completion_mask[g * 2:g * 2 + 2].sum()) for g in range(3)]
    # a budget one token short of the whole batch: the third group gets its own micro-batch, unless it
    # holds at most a quarter of the budget; then it joins the second
    budget = sum(sizes) - 1
    assert sizes[2] > budget / 4
    assert micro_batches(batch, 2, budget) == [[0, 1, 2, 3], [4, 5]]
    short = dataclasses.replace(batch, completion_mask=batch.completion_mask.clone())
    short.completion_mask[4:, 1:] = 0  # the third group cut to 1 completion token per row
    small = int(short.prompt_mask[4].sum() + short.completion_mask[4:].sum())
    budget = sizes[0] + sizes[1] + small - 1
    assert small <= budget / 4
    assert micro_batches(short, 2, budget) == [[0, 1, 2, 3, 4, 5]]
    for aggregation in ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"):
        results = []
        for budget in (10**9, 1, 60):
            cfg = dataclasses.replace(base, loss_aggregation=aggregation, update_micro_batch_tokens=budget)
            opt = _CaptureGrads(policy)
            stats = policy_update(policy, reference, opt, batch, advantages, cfg)
            results.append((opt.grads, stats))
        (want, want_stats), *others = results
        for grads, stats in others:
            for step_want, step_got in zip(want, grads):
                for name, g in step_want.items():
                    assert (step_got[name] - g).norm() <= 1e-5 * g.norm() + 1e-8, (aggregation, name)
            for key in ("loss", "kl", "clipfrac", "entropy", "ratio_max_dev", "grad_norm"):
                assert abs(stats[key] - want_stats[key]) <= 1e-5 * abs(want_stats[key]) + 1e-7, (aggregation, key)
        assert want_stats["kl"] > 0


def test_forwards_without_gradients_run_on_their_own_larger_micro_batches(monkeypatch):
    """The reference's (and, with two iterations, the old policy's) forward keeps no activations, so it runs on
    micro-batches of ``auto_no_grad_micro_batch_tokens``, not of the update's budget: with the update cut into
    one micro-batch per group, the reference still runs once over all rows, and the gradients are those of a
    whole-batch update. The budget's rule, hand-worked for a 4 x 128 model (intermediate 384, 4 heads,
    105 tokens) at context 120: 4 x (4 x 384 + 8 x 128 + 3 x 4 x 120) + 16 x 105 + 16,384 = 34,064 bytes
    per token -> 256 MiB / 34,064 = 7,880 tokens."""
    import dataclasses

    import r1.rl.trainer as trainer
    from transformers import Qwen2Config, Qwen2ForCausalLM
    base = RunConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64, beta=0.04,
                     group_size=2, max_grad_norm=1e9, num_iterations=2, max_new_tokens=40)
    tok = build_tokenizer()
    policy = build_policy(base, tok, seed=0)
    reference = build_policy(base, tok, seed=1).requires_grad_(False)
    groups = [("12*34", ["<think>\n12*4=48\n</think>\n<answer>408</answer>", "<answer>480</answer>"]),
              ("7*8", ["<answer>56</answer>", "<think>\n7*8=56\n</think>\n<answer>56</answer>"]),
              ("123*45", ["<think>\n</think>", "<answer>5535</answer>"])]
    batch = concat_rollouts([make_batch(tok, prompt_text(tok, q), cs) for q, cs in groups], tok.pad_token_id)
    advantages = torch.tensor([0.7, -0.7, 0.3, -0.3, 1.0, -1.0])
    rows_seen = []
    real = trainer.reference_logprobs
    monkeypatch.setattr(trainer, "reference_logprobs",
                        lambda p, r, ids, *a, **k: rows_seen.append(ids.shape[0]) or real(p, r, ids, *a, **k))
    want = _CaptureGrads(policy)
    policy_update(policy, reference, want, batch, advantages, dataclasses.replace(base, update_micro_batch_tokens=10**9))
    assert rows_seen == [6]
    monkeypatch.setattr(trainer, "auto_micro_batch_tokens", lambda *a, **k: 1)  # one group per micro-batch
    rows_seen.clear()
    got = _CaptureGrads(policy)
    policy_update(policy, reference, got, batch, advantages, base)
    assert rows_seen == [6]
    for step_want, step_got in zip(want.grads, got.grads):
        for name, g in step_want.items():
            assert (step_got[name] - g).norm() <= 1e-5 * g.norm() + 1e-8, name
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=105, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=384))
    assert trainer.auto_no_grad_micro_batch_tokens(model, 120) == 7880
    assert trainer.auto_no_grad_micro_batch_tokens(model, 10**6) == 256  # the floor


def test_training_micro_batch_rule_hand_worked(monkeypatch):
    """``auto_micro_batch_tokens`` for 4 x 128 (intermediate 384) and 8 x 320 (intermediate 1,024) Qwen2 shapes
    with a 105-token vocabulary. float32, lean MLP: 4 bytes x layers x (12 hidden + 3 intermediate) + 40 KB per
    token for 1 GiB: 4 x (1,536 + 1,152) x 4 + 40,960 = 83,968 bytes -> 12,787 tokens; 8 x (3,840 + 3,072) x 4 +
    40,960 = 262,144 -> 4,096. The transformers forward keeps 5 intermediate values: 96,256 bytes -> 11,155.
    bf16 mixed precision, 256 MiB: values x 3.75 + 16 x 105 + 16,384: 69,904 -> 3,840 and 286,864 -> 935. A bf16
    model, 256 MiB, 2 bytes per value and 5 intermediate: 68,608 -> 3,912. The forwards without gradients never
    take smaller micro-batches than the training ones."""
    import dataclasses

    import r1.rl.trainer as trainer
    from transformers import Qwen2Config, Qwen2ForCausalLM

    def qwen2(layers, hidden, inter):
        return Qwen2ForCausalLM(Qwen2Config(vocab_size=105, hidden_size=hidden, num_hidden_layers=layers,
                                            num_attention_heads=4, num_key_value_heads=2, intermediate_size=inter))
    small, large = qwen2(4, 128, 384), qwen2(8, 320, 1024)
    assert trainer.auto_micro_batch_tokens(small) == 12787
    assert trainer.auto_micro_batch_tokens(large) == 4096
    assert trainer.auto_micro_batch_tokens(small, lean=False) == 11155
    assert trainer.auto_micro_batch_tokens(small, torch.bfloat16) == 3840
    assert trainer.auto_micro_batch_tokens(large, torch.bfloat16) == 935
    assert trainer.auto_micro_batch_tokens(small.to(torch.bfloat16)) == 3912

    base = RunConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64, beta=0.04,
                     group_size=2, max_new_tokens=40)
    tok = build_tokenizer()
    policy = build_policy(base, tok, seed=0)
    reference = build_policy(base, tok, seed=1).requires_grad_(False)
    groups = [("12*34", ["<answer>408</answer>", "<answer>480</answer>"]), ("7*8", ["<answer>56</answer>", "5"])]
    batch = concat_rollouts([make_batch(tok, prompt_text(tok, q), cs) for q, cs in groups], tok.pad_token_id)
    rows_seen = []
    real = trainer.reference_logprobs
    monkeypatch.setattr(trainer, "reference_logprobs",
                        lambda p, r, ids, *a, **k: rows_seen.append(ids.shape[0]) or real(p, r, ids, *a, **k))
    monkeypatch.setattr(trainer, "auto_no_grad_micro_batch_tokens", lambda *a, **k: 1)  # one group per pass
    policy_update(policy, reference, torch.optim.SGD(policy.parameters(), lr=0.0), batch,
                  torch.tensor([1.0, -1.0, 0.5, -0.5]), dataclasses.replace(base))
    assert rows_seen == [4]  # the training micro-batch (the whole batch) bounds the reference's pass


def test_rl_step_samples_through_the_engine_and_syncs_weights_after_the_update():
    """rl_step asks its rollout engine for B prompts x G completions with the config's length and
    temperature, and hands it the updated policy once per step, after the optimizer step."""
    import dataclasses
    from r1.rl.trainer import rl_step
    from r1.rollout.engine import TransformersEngine, make_engine
    from r1.tasks.multiplication import MultiplicationTask

    cfg = dataclasses.replace(RunConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                        intermediate_size=64), prompts_per_step=3, group_size=2, max_new_tokens=9,
                              temperature=0.8, lr=1e-2)
    tok = build_tokenizer()
    policy = build_policy(cfg, tok, seed=0)
    reference = build_policy(cfg, tok, seed=0).requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr)
    events = []

    class Recording(TransformersEngine):
        def generate(self, prompts, num_samples, max_new_tokens, temperature=1.0, top_p=1.0):
            events.append(("generate", len(prompts), num_samples, max_new_tokens, temperature))
            return super().generate(prompts, num_samples, max_new_tokens, temperature, top_p)

        def sync_weights(self, p):
            events.append(("sync", p is policy, opt.state_dict()["state"] != {}))  # after the optimizer step
            super().sync_weights(p)

    row, samples = rl_step(0, policy, reference, opt, tok, MultiplicationTask(2, 2), set(), cfg,
                           engine=Recording(policy, tok))
    assert events == [("generate", 3, 2, 9, 0.8), ("sync", True, True)]
    assert len(samples) == 6 and row["train/sampler_ratio_max_dev"] < 1e-4
    assert isinstance(make_engine(cfg, policy, tok), TransformersEngine)
    import pytest
    with pytest.raises(ValueError, match="samples from the module it was built with"):
        TransformersEngine(policy, tok).sync_weights(reference)
