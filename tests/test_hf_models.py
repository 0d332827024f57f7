"""Tiny checkpoints of each family through the path users take: save_pretrained -> load_policy ->
render a prompt -> generate_rollouts -> GRPO steps; LoRA, chunked log-probabilities, dtypes, errors."""

import dataclasses

import pytest
import torch

from r1.config import RunConfig
from r1.models.hf import LoraSpec, ModelLoadError, load_policy, save_policy
from r1.models.prompts import BOXED, render_prompt
from r1.models.tiny import FAMILIES, save_tiny
from r1.rl.grpo import group_advantages
from r1.rl.logprobs import reference_logprobs, token_logprobs
from r1.rl.trainer import policy_update
from r1.rollout.engine import eos_ids, generate_rollouts

QUESTIONS = ["What is 2+3?", "Compute 7*8."]
G, MAX_NEW = 4, 10


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and with another job on the cores every
    parallel region of a LoRA layer waits for a descheduled thread (100x slower, measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> directory of a saved tiny checkpoint (what a user has after a download)."""
    return {f: save_tiny(f, tmp_path_factory.mktemp(f), seed=0) for f in FAMILIES}


def cfg_for(**overrides):
    return dataclasses.replace(RunConfig(), group_size=G, prompts_per_step=len(QUESTIONS), max_new_tokens=MAX_NEW,
                               lr=1e-2, beta=0.04, **overrides)


def rollouts(model, tok, fmt="chat", seed=0):
    prompts = [render_prompt(tok, q, fmt, instruction=None if fmt == "r1_zero" else BOXED).text for q in QUESTIONS]
    torch.manual_seed(seed)
    return generate_rollouts(model, tok, prompts, G, MAX_NEW)


def logps(model, batch, **kw):
    return token_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask,
                          **kw)


def bias_toward_eos(model, ids, amount=4.0):
    """Add ``amount`` to the logits of ``ids`` (a forward hook on the output head), so that
    sampled completions end within a few tokens."""
    def hook(_module, _inputs, output):
        output = output.clone()
        output[..., ids] += amount
        return output
    return model.get_output_embeddings().register_forward_hook(hook)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_loads_samples_and_trains(checkpoints, family):
    policy, tok = load_policy(checkpoints[family])
    reference, _ = load_policy(checkpoints[family], trainable=False)
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    batch = rollouts(policy, tok, "r1_zero" if family == "qwen2" else "chat")
    N = len(QUESTIONS) * G
    assert batch.completion_ids.shape[0] == N and len(batch.texts) == N
    if tok.bos_token_id is not None:  # one BOS per row, after the left padding
        assert (batch.prompt_ids == tok.bos_token_id).sum(-1).tolist() == [1] * N
    cfg = cfg_for()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    for step in range(2):
        advantages = group_advantages(torch.arange(N, dtype=torch.float) % 3, G)
        stats = policy_update(policy, reference, optimizer, batch, advantages, cfg)
        assert torch.isfinite(torch.tensor(stats["loss"])), stats
        if step == 0:  # the trainer's forward reproduces the sampler's log-probabilities
            assert stats["sampler_ratio_max_dev"] < 1e-4 and stats["kl"] == 0.0
    unchanged = [n for n, p in policy.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []


@pytest.mark.parametrize("family", ["qwen2", "llama3"])
def test_first_eos_is_a_target_with_several_eos_ids(checkpoints, family):
    """Qwen: <|im_end|> and <|endoftext|> (= pad) end a completion; Llama 3 has no pad, so pad = eos."""
    model, tok = load_policy(checkpoints[family])
    stop = eos_ids(model, tok)
    assert len(stop) >= 2 and tok.pad_token_id in stop
    handle = bias_toward_eos(model, stop)
    batch = rollouts(model, tok)
    first = [(row[:, None] == torch.tensor(stop)).any(-1).nonzero() for row in batch.completion_ids]
    for row, mask, trunc, text, pos in zip(batch.completion_ids, batch.completion_mask, batch.truncated,
                                           batch.texts, first):
        if trunc:
            assert mask.sum() == len(row) and len(pos) == 0
            continue
        end = pos[0].item()
        assert row[end].item() in stop and mask[:end + 1].sum() == end + 1 and mask[end + 1:].sum() == 0
        assert (row[end + 1:] == tok.pad_token_id).all()
        assert not any(tok.decode([s]) in text for s in stop)  # texts carry no end-of-sequence token
    assert (~batch.truncated).sum() >= 4  # the bias made most rows end
    lp, _ = logps(model, batch)
    assert ((lp - batch.sampler_logp) * batch.completion_mask).abs().max() < 1e-4
    handle.remove()


def test_sampling_ignores_the_checkpoints_generation_defaults(checkpoints):
    """generation_config.json's sampling settings (here no_repeat_ngram_size=1, top_k=20) would make
    the sampler differ from the policy; generate_rollouts samples the full distribution."""
    model, tok = load_policy(checkpoints["qwen2"])
    model.generation_config.no_repeat_ngram_size = 1
    assert model.generation_config.top_k == 20
    prompts = [render_prompt(tok, "q", "chat").text]
    torch.manual_seed(0)
    batch = generate_rollouts(model, tok, prompts, 8, 40, eos_token_id=[])
    repeats = [len(set(row.tolist())) < len(row) for row in batch.completion_ids]
    assert any(repeats)  # a near-uniform 387-token policy repeats a token within 40 draws
    assert model.generation_config.no_repeat_ngram_size == 1  # the checkpoint's config is restored


@pytest.mark.parametrize("family", ["llama3", "deepseek_v3"])
def test_lora_trains_adapters_only_and_reference_is_the_base(checkpoints, tmp_path, family):
    path = checkpoints[family]
    policy, tok = load_policy(path, lora=LoraSpec(r=4, alpha=8))
    base, _ = load_policy(path, trainable=False)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    batch = rollouts(policy, tok)
    args = (batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask)
    base_logp = logps(base, batch)[0]
    assert torch.allclose(reference_logprobs(policy, None, *args), base_logp, atol=1e-6)
    assert torch.allclose(logps(policy, batch)[0], base_logp, atol=1e-6)  # B = 0 at init: policy = base

    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    cfg = cfg_for()
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr)
    for _ in range(2):
        stats = policy_update(policy, None, optimizer, batch, group_advantages(torch.randn(len(args[0])), G), cfg)
        assert torch.isfinite(torch.tensor(stats["loss"]))
    assert stats["kl"] > 0  # the reference (adapters off) no longer equals the policy
    for n, p in policy.named_parameters():
        assert torch.equal(p, before[n]) != (n in trainable), n  # adapters moved, base bit-identical
    assert torch.allclose(reference_logprobs(policy, None, *args), base_logp, atol=1e-6)
    trained = logps(policy, batch)[0]
    assert not torch.allclose(trained, base_logp, atol=1e-4)
    assert policy.training  # reference_logprobs restored the mode

    adapters = save_policy(policy, tok, tmp_path / "adapters")
    assert (adapters / "adapter_model.safetensors").is_file() and not (adapters / "model.safetensors").exists()
    merged = save_policy(policy, tok, tmp_path / "merged", merged=True)
    for directory in (adapters, merged):
        again, _ = load_policy(directory, trainable=False)
        assert torch.allclose(logps(again, batch)[0], trained, atol=1e-5), directory
    with pytest.raises(ValueError, match="LoRA"):
        reference_logprobs(base, None, *args)


@pytest.mark.parametrize("family", ["llama3", "deepseek_v3"])
def test_chunked_logprobs_equal_unchunked_with_gradients(checkpoints, family):
    model, tok = load_policy(checkpoints[family])
    batch = rollouts(model, tok)
    results = {}
    for chunk in (0, 3):  # 10 positions in chunks of 3, 3, 3, 1
        model.zero_grad()
        lp, ent = logps(model, batch, temperature=0.7, entropy_grad=True, chunk_size=chunk)
        ((lp + 0.1 * ent) * batch.completion_mask).sum().backward()
        results[chunk] = lp.detach(), ent.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                     if p.grad is not None}
    (lp0, ent0, g0), (lp3, ent3, g3) = results[0], results[3]
    assert torch.allclose(lp0, lp3, atol=1e-6) and torch.allclose(ent0, ent3, atol=1e-6)
    assert g0.keys() == g3.keys() and len(g0) > 0
    for n in g0:
        assert torch.allclose(g0[n], g3[n], atol=1e-6), n
    with torch.no_grad():  # the reference path (no autograd) too
        assert torch.allclose(logps(model, batch, chunk_size=4)[0], logps(model, batch)[0], atol=1e-6)


@pytest.mark.parametrize("family", ["llama3", "deepseek_v3"])
def test_logprobs_without_entropy_are_the_same_logprobs(checkpoints, family, monkeypatch):
    """``entropy=False`` (the reference's and the old policy's forwards) returns the same log-probabilities and
    None for the entropies on every path (lean, transformers, chunked; with and without gradients), and never
    exponentiates the [N, L, V] log-probabilities for them."""
    model, tok = load_policy(checkpoints[family])
    batch = rollouts(model, tok)
    for lean in (False, True):
        for chunk in (0, 3):
            for grad in (False, True):
                with torch.set_grad_enabled(grad):
                    want, _ = logps(model, batch, chunk_size=chunk, lean=lean)
                    exps = []
                    real_exp = torch.Tensor.exp
                    monkeypatch.setattr(torch.Tensor, "exp", lambda t: exps.append(t.dim()) or real_exp(t))
                    got, ent = logps(model, batch, chunk_size=chunk, lean=lean, entropy=False)
                    monkeypatch.setattr(torch.Tensor, "exp", real_exp)
                assert ent is None and torch.equal(got, want), (lean, chunk, grad)
                assert 3 not in exps, (lean, chunk, grad)


def test_chunked_policy_update_and_lora_reference(checkpoints):
    """policy_update with cfg.logprob_chunk_size gives the same step as without; with a LoRA policy the
    disabled-adapter reference is chunked too."""
    path = checkpoints["qwen3"]
    results = []
    for chunk in (0, 4):
        torch.manual_seed(0)  # the same LoRA initialisation both times
        policy, tok = load_policy(path, lora={"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]})
        batch = rollouts(policy, tok)
        cfg = cfg_for(num_iterations=2, logprob_chunk_size=chunk)
        optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr)
        advantages = group_advantages(torch.arange(len(batch.texts), dtype=torch.float) % 2, G)
        stats = policy_update(policy, None, optimizer, batch, advantages, cfg)
        results.append((stats, {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}))
    (s0, p0), (s4, p4) = results
    assert abs(s0["loss"] - s4["loss"]) < 1e-6 and abs(s0["kl"] - s4["kl"]) < 1e-6
    assert all(torch.allclose(p0[n], p4[n], atol=1e-6) for n in p0)


def test_gradient_checkpointing_gives_the_same_gradients(checkpoints):
    path = checkpoints["qwen2"]
    grads = []
    for gc in (False, True):
        model, tok = load_policy(path, gradient_checkpointing=gc)
        batch = rollouts(model, tok)
        model.train()
        (logps(model, batch)[0] * batch.completion_mask).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])
    lora, tok = load_policy(path, gradient_checkpointing=True, lora=LoraSpec(r=2))  # frozen embeddings
    (logps(lora, batch)[0] * batch.completion_mask).sum().backward()
    assert all(p.grad is not None for p in lora.parameters() if p.requires_grad)


def test_bfloat16_on_cpu_and_float16_refused(checkpoints):
    model, tok = load_policy(checkpoints["deepseek_v3"], dtype="bfloat16", device="cpu")
    fp32 = {n for n, p in model.named_parameters() if p.dtype != torch.bfloat16}
    assert fp32 == {"model.layers.1.mlp.gate.weight"}  # DeepSeek-V3 keeps its router in float32 by design
    batch = rollouts(model, tok)
    lp, ent = logps(model, batch)
    assert lp.dtype == torch.float32 and torch.isfinite(lp).all() and torch.isfinite(ent).all()
    with pytest.raises(ModelLoadError, match="float16' on CPU"):
        load_policy(checkpoints["deepseek_v3"], dtype="float16", device="cpu")
    with pytest.raises(ModelLoadError, match="expected one of float32, bfloat16, float16"):
        load_policy(checkpoints["deepseek_v3"], dtype="fp8")


def test_load_errors_are_one_line(checkpoints, tmp_path):
    cases = {tmp_path / "missing": "does not exist", tmp_path / "empty": "has no config.json"}
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    cases[tmp_path / "file.txt"] = "is a file"
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((checkpoints["qwen2"] / "config.json").read_text())
    cases[no_weights] = "has no weights"
    for path, message in cases.items():
        with pytest.raises(ModelLoadError, match=message) as info:
            load_policy(path)
        assert "\n" not in str(info.value)
    with pytest.raises(ModelLoadError, match="lora"):
        load_policy(checkpoints["qwen2"], lora={"rank": 4})
