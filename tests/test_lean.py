"""r1's lean forward (r1.models.lean) against transformers: the same log-probabilities and gradients,
the same greedy tokens as ``generate``, the same sampling distributions, and the cases it must refuse."""

import threading

import pytest
import torch
from transformers import GenerationConfig

from r1.models import lean
from r1.models.tiny import build_tiny
from r1.rl.logprobs import token_logprobs
from r1.rollout.engine import _bare_generation_config, completion_mask, generate_rollouts

FAMILIES = ["llama3", "qwen2", "qwen3"]


pytestmark = pytest.mark.usefixtures("one_thread")


def model_for(family, seed=0, peaky=1.0, dtype=torch.float32):
    """A tiny ``family`` model; ``peaky`` scales the (tied) embeddings so next-token distributions are
    far from uniform, as in a trained model."""
    model, tok = build_tiny(family, seed=seed)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(peaky)
    return model.to(dtype), tok


def batch(seed=0, V=384, groups=((5, 3), (9, 2), (2, 3)), L=12, pad=0):
    """Left-padded prompts of different lengths, each repeated for its group, and completions of varied
    lengths: (prompt_ids, prompt_mask, completion_ids, completion_mask) with rows grouped prompt-major."""
    g = torch.Generator().manual_seed(seed)
    P = max(p for p, _ in groups)
    pids, pm, cids, lens = [], [], [], []
    for plen, n in groups:
        ids = torch.full((P,), pad)
        ids[P - plen:] = torch.randint(10, V, (plen,), generator=g)
        m = torch.zeros(P, dtype=torch.long)
        m[P - plen:] = 1
        for _ in range(n):
            pids.append(ids)
            pm.append(m)
            cids.append(torch.randint(10, V, (L,), generator=g))
            lens.append(int(torch.randint(1, L + 1, (1,), generator=g)))
    cm = torch.tensor([[1.0] * n + [0.0] * (L - n) for n in lens])
    return torch.stack(pids), torch.stack(pm), torch.stack(cids) * cm.long(), cm


@pytest.mark.parametrize("family", FAMILIES)
def test_logprobs_and_gradients_equal_transformers(family, monkeypatch):
    monkeypatch.setattr(lean, "BUCKET_COST", 0)  # several length buckets even for this small batch
    model, _ = model_for(family, peaky=5.0)
    args = batch()
    lengths = sorted(args[3].sum(-1).long().tolist(), reverse=True)
    assert len(lean._buckets(lengths, 4)) > 1
    mask = args[3]
    for temperature in (1.0, 0.7):
        with torch.no_grad():
            want, want_ent = token_logprobs(model, *args, temperature)
            got, got_ent = lean.token_logprobs(model, *args, temperature)
        assert ((got - want) * mask).abs().max() < 2e-5
        assert ((got_ent - want_ent) * mask).abs().max() < 2e-5
        assert (got * (1 - mask)).abs().max() == 0  # nothing on padding
    grads = []
    for fn in (token_logprobs, lean.token_logprobs):
        model.zero_grad()
        logp, ent = fn(model, *args, 0.7, entropy_grad=True)
        ((logp * mask).sum() + 0.1 * (ent * mask).sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert (grads[1][name] - g).norm() <= 1e-5 * g.norm() + 1e-9, name


def test_shared_prompts_and_buckets_do_not_change_values(monkeypatch):
    """Rows sharing a prompt (detected from equal consecutive rows) and length buckets give the values
    of rows computed one by one."""
    monkeypatch.setattr(lean, "BUCKET_COST", 0)
    model, _ = model_for("qwen2", peaky=5.0)
    pids, pm, cids, cm = batch(seed=3, groups=((4, 4), (7, 4)), L=10)
    assert len(lean._buckets(sorted(cm.sum(-1).long().tolist(), reverse=True), 4)) == 4
    with torch.no_grad():
        together, _ = lean.token_logprobs(model, pids, pm, cids, cm, buckets=4)
        alone = torch.cat([lean.token_logprobs(model, pids[i:i + 1], pm[i:i + 1], cids[i:i + 1], cm[i:i + 1])[0]
                           for i in range(len(pids))])
    assert (together - alone).abs().max() < 1e-5


def test_buckets_hand_worked():
    """Optimal cuts at BUCKET_COST = 128 tokens per extra bucket, areas worked by hand."""
    assert lean.BUCKET_COST == 128
    assert lean._buckets([], 4) == []
    assert lean._buckets([10, 10, 10, 10], 4) == [(0, 4)]  # equal lengths: one bucket
    assert lean._buckets([5, 4, 3, 2, 1], 4) == [(0, 5)]  # one bucket 25; the best cut, {5,4}|{3,2,1}: 19 + 128
    # two long, six short: one bucket 8*64 = 512; cut after row 2: 2*64 + 6*4 + 128 = 280
    assert lean._buckets([64, 64, 4, 4, 4, 4, 4, 4], 4) == [(0, 2), (2, 8)]
    # 35 rows at the limit, 29 at 20 (two equal halves cannot separate them: 32 + 32 rows is still 4096):
    # one bucket 64*64 = 4096; cut after row 35: 35*64 + 29*20 + 128 = 2948
    assert lean._buckets([64] * 35 + [20] * 29, 4) == [(0, 35), (35, 64)]
    # three lengths, two buckets best: one 12*64 = 768; {64, 60} | {10}: 8*64 + 4*10 + 128 = 680;
    # {64} | {60, 10}: 4*64 + 8*60 + 128 = 864; three buckets: 256 + 240 + 40 + 256 = 792
    assert lean._buckets([64] * 4 + [60] * 4 + [10] * 4, 4) == [(0, 8), (8, 12)]
    assert lean._buckets([64] * 4 + [60] * 4 + [10] * 4, 1) == [(0, 12)]  # ``most`` bounds k


@pytest.mark.parametrize("transposed", [True, False])
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_equals_generate(family, transposed, monkeypatch):
    """Greedy decoding, left-padded prompts of different lengths, rows stopping at different steps
    (stop ids taken from the greedy outputs themselves): token for token what generate returns, with the
    decode step's float32 matmuls on transposed copies of the matrices (the default on CPU for small models)
    and on the model's own [out, in] weights (``TRANSPOSED_BYTES = 0``)."""
    if not transposed:
        monkeypatch.setattr(lean, "TRANSPOSED_BYTES", 0)
    model, tok = model_for(family, peaky=5.0)
    model.eval()
    pids, pm, _, _ = batch(seed=1, groups=((3, 1), (8, 1), (5, 1), (6, 1)))
    model.generation_config = GenerationConfig()  # no repetition penalty from the checkpoint's defaults
    cfg = GenerationConfig(do_sample=False, max_new_tokens=16, pad_token_id=0, eos_token_id=[], bos_token_id=None)
    free = model.generate(input_ids=pids, attention_mask=pm, generation_config=cfg)[:, pids.shape[1]:]
    stops = [int(free[0, 4]), int(free[2, 9])]  # rows 0 and 2 stop early (others maybe too)
    cfg = GenerationConfig(do_sample=False, max_new_tokens=16, pad_token_id=0, eos_token_id=stops, bos_token_id=None)
    want = model.generate(input_ids=pids, attention_mask=pm, generation_config=cfg)[:, pids.shape[1]:]
    got, logp = lean.sample(model, pids, pm, 1, 16, stop_ids=stops, pad_id=0, greedy=True)
    assert got.shape == want.shape
    assert torch.equal(got, want)
    mask, _ = completion_mask(got, stops)
    assert mask[0].sum() <= 5 and mask[2].sum() <= 10
    with torch.no_grad():
        ref, _ = token_logprobs(model, pids, pm, got, mask)
    assert ((logp - ref) * mask).abs().max() < 2e-5
    assert (logp * (1 - mask)).abs().max() == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_lanes_and_the_eager_loop_sample_what_one_compiled_lane_samples(family, monkeypatch):
    """The same seed gives the same completions whether the decode loop runs compiled in one lane, in two
    lanes on two threads (the noise is drawn before the split), or eagerly; the thread count and grad mode
    are restored, and the lanes really ran on two threads of one intra-op thread each, without autograd."""
    model, tok = model_for(family, peaky=5.0)
    pids, pm, _, _ = batch(seed=2, groups=((3, 1), (8, 1), (5, 1), (6, 1)))

    def run(stops):
        torch.manual_seed(7)
        return lean.sample(model, pids, pm, 6, 10, 0.9, top_p=0.95, stop_ids=stops, pad_id=0)

    torch.set_num_threads(2)
    monkeypatch.setattr(lean, "LANE_FLOPS", 0)  # one lane
    free, _ = run([])
    stops = [int(free[0, 3]), int(free[13, 5])]  # rows stop at different steps, in both lanes
    one = run(stops)
    lengths = completion_mask(one[0], stops)[0].sum(-1)
    assert (lengths[:12] < 10).any() and (lengths[12:] < 10).any()
    compiled = lean._compiled(lean._sample_loop)
    assert compiled is not lean._sample_loop  # TorchScript compiled it
    threads = []

    def spy(*args):  # each lane: its thread, grad mode (thread-local) and intra-op threads
        threads.append((threading.get_ident(), torch.is_grad_enabled(), torch.get_num_threads()))
        return compiled(*args)

    monkeypatch.setitem(lean._COMPILED, lean._sample_loop, spy)
    monkeypatch.setattr(lean, "LANE_FLOPS", float("inf"))
    two = run(stops)
    assert len({t for t, _, _ in threads}) == 2 and [(g, n) for _, g, n in threads] == [(False, 1)] * 2  # 2 lanes of 12 rows
    assert torch.equal(one[0], two[0])
    assert (one[1] - two[1]).abs().max() < 1e-5  # matmuls on 12 rows instead of 24 may round differently
    assert torch.get_num_threads() == 2 and torch.is_grad_enabled() and not two[1].requires_grad
    monkeypatch.setitem(lean._COMPILED, lean._sample_loop, lean._sample_loop)  # eager (and so one lane)
    eager = run(stops)
    assert torch.equal(one[0], eager[0])
    assert (one[1] - eager[1]).abs().max() < 1e-5


def test_a_loop_torchscript_cannot_compile_runs_eagerly_with_a_warning(monkeypatch):
    """Where TorchScript fails (no source files, a future torch without it), sampling still works, eagerly."""
    model, tok = model_for("qwen2", peaky=5.0)
    pids, pm, _, _ = batch(seed=2)

    def broken(fn):
        raise RuntimeError("no TorchScript here")

    torch.manual_seed(3)
    want = lean.sample(model, pids, pm, 2, 6, stop_ids=[], pad_id=0)
    monkeypatch.setattr(lean, "_COMPILED", {})
    monkeypatch.setattr(torch.jit, "script", broken)
    torch.manual_seed(3)
    with pytest.warns(UserWarning, match="TorchScript could not compile _sample_loop"):
        got = lean.sample(model, pids, pm, 2, 6, stop_ids=[], pad_id=0)
    assert lean._COMPILED[lean._sample_loop] is lean._sample_loop
    assert torch.equal(want[0], got[0]) and (want[1] - got[1]).abs().max() < 1e-6


@pytest.mark.parametrize("bad, match", [
    (dict(temperature=0.0), "temperature=0.0"), (dict(temperature=float("nan")), "temperature=nan"),
    (dict(top_p=0.0), "top_p=0.0"), (dict(top_p=1.5), "top_p=1.5"), (dict(num_samples=0), "num_samples=0"),
    (dict(max_new_tokens=-1), "max_new_tokens=-1"), (dict(prompt_ids="1-D"), r"prompt_ids \(9,\)"),
    (dict(prompt_mask="short"), r"prompt_mask \(3, 8\)"), (dict(prompt_ids="none"), r"prompt_ids \(0, 9\)"),
    (dict(prompt_ids="empty"), r"prompt_ids \(3, 0\)"), (dict(prompt_mask="float"), "prompt_mask torch.float32"),
    (dict(num_samples=2.5), "num_samples=2.5"), (dict(num_samples=True), "num_samples=True"),
    (dict(max_new_tokens=float("inf")), "max_new_tokens=inf"), (dict(temperature=float("inf")), "temperature=inf"),
    (dict(prompt_mask="right"), r"prompt_mask row 1 is \[1, 1, 1, 1, 1, 1, 1, 0\]; expected left padding"),
    (dict(prompt_mask="zero"), r"prompt_mask row 2 is \[0, 0, 0, 0, 0, 0, 0, 0\]"),
    (dict(prompt_mask="two"), r"prompt_mask row 0 is \[0, 0, 0, 2, 1, 1, 1, 1\]"),
    (dict(prompt_ids="oov"), r"token id VOCAB at prompt row 0, position 7; expected ids in \[0, VOCAB\)"),
    (dict(prompt_ids="negative"), r"token id -1 at prompt row 1, position 7")])
def test_bad_sampling_arguments_are_refused_in_one_line(bad, match):
    """Each bad argument: a ValueError naming the value and what was expected (temperature 0 used to return
    padding and NaN log-probabilities; num_samples 0 a TorchScript division by zero)."""
    model, _ = model_for("qwen2")
    pids, pm, _, _ = batch(seed=2)
    args = dict(prompt_ids=pids[:3], prompt_mask=pm[:3], num_samples=2, max_new_tokens=4, temperature=1.0, top_p=1.0)
    args.update(bad)
    vocab = model.get_input_embeddings().weight.shape[0]
    match = match.replace("VOCAB", str(vocab))
    left = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 1]])
    ids = torch.randint(3, 100, (3, 8))
    shapes = {"1-D": (pids[0], pm[0]), "none": (pids[:0], pm[:0]), "short": (pids[:3], pm[:3, 1:]),
              "empty": (pids[:3, :0], pm[:3, :0]), "float": (pids[:3], pm[:3].float()),
              "right": (ids, torch.cat([left[:1], left[1:2].flip(-1), left[2:]])),
              "zero": (ids, torch.cat([left[:2], torch.zeros(1, 8, dtype=torch.long)])),
              "two": (ids, torch.cat([left[:1].index_fill(1, torch.tensor([3]), 2), left[1:]])),
              "oov": (ids.index_fill(1, torch.tensor([7]), vocab), left),
              "negative": (torch.cat([ids[:1], ids[1:].index_fill(1, torch.tensor([7]), -1)]), left)}
    for key in ("prompt_ids", "prompt_mask"):
        if isinstance(args[key], str):
            args["prompt_ids"], args["prompt_mask"] = shapes[args[key]]
    with pytest.raises(ValueError, match=match) as e:
        lean.sample(model, **args)
    assert "\n" not in str(e.value) and "expected" in str(e.value)


def test_a_compute_dtype_a_bf16_model_cannot_take_is_named_once():
    model, _ = model_for("llama3", dtype=torch.bfloat16)
    pids, pm, _, _ = batch(seed=2)
    with pytest.raises(ValueError, match=r"compute dtype torch.float32 on torch.bfloat16 weights; expected None, "
                                         r"torch.bfloat16$"):
        lean.sample(model, pids[:2], pm[:2], 2, 3, dtype=torch.float32)


def _first_token_frequencies(sample_fn, V, n):
    counts = torch.zeros(V)
    ids = sample_fn(n)
    counts.index_add_(0, ids, torch.ones(len(ids)))
    return counts / counts.sum()


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_sampling_distribution_equals_the_model_and_generate(top_p):
    """Frequencies of the second sampled token (after one decode step with the KV cache) over 6,000
    rows: lean and generate both match the exact softmax(logits / T) after top-p, within sampling
    noise (total variation < 0.05), and never draw outside the nucleus."""
    model, tok = model_for("qwen2", peaky=12.0)
    model.eval()
    V, T, n = model.config.vocab_size, 0.9, 6000
    prompt = torch.randint(10, V, (1, 5), generator=torch.Generator().manual_seed(0))
    first = 42  # condition on a fixed first token: force it by sampling, then look at the next one
    with torch.no_grad():
        logits = model(input_ids=torch.cat([prompt, torch.tensor([[first]])], 1)).logits[0, -1].float()
    exact = torch.softmax(logits / T, -1)
    if top_p < 1:
        exact = lean._top_p(exact[None], top_p)[0]
        exact = exact / exact.sum()

    def lean_second(k):
        torch.manual_seed(1)
        ids = torch.cat([prompt, torch.tensor([[first]])], 1).expand(k, -1)
        out, _ = lean.sample(model, ids[:1], torch.ones_like(ids[:1]), k, 1, T, top_p, stop_ids=[], pad_id=0)
        return out[:, 0]

    def generate_second(k):
        torch.manual_seed(2)
        ids = torch.cat([prompt, torch.tensor([[first]])], 1).expand(k, -1)
        cfg = GenerationConfig(do_sample=True, temperature=T, top_p=top_p, top_k=0, max_new_tokens=1,
                               pad_token_id=0, eos_token_id=[], bos_token_id=None)
        with _bare_generation_config(model):  # not the checkpoint's repetition penalty / top-k
            return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg)[:, -1]

    for fn in (lean_second, generate_second):
        freq = _first_token_frequencies(fn, V, n)
        assert 0.5 * (freq - exact).abs().sum() < 0.05, fn.__name__
        assert freq[exact == 0].sum() == 0
    # the decode step (not the prefill) is what drew these: the same check one step later
    torch.manual_seed(3)
    out, logp = lean.sample(model, prompt, torch.ones_like(prompt), n, 2, T, top_p, stop_ids=[], pad_id=0)
    rows = out[:, 0] == out[:, 0].mode().values
    ctx = torch.cat([prompt, out[rows][:1, :1]], 1)
    with torch.no_grad():
        p2 = torch.softmax(model(input_ids=ctx).logits[0, -1].float() / T, -1)
    if top_p < 1:
        p2 = lean._top_p(p2[None], top_p)[0]
        p2 = p2 / p2.sum()
    freq2 = torch.bincount(out[rows, 1], minlength=V).float()
    freq2 = freq2 / freq2.sum()
    assert 0.5 * (freq2 - p2).abs().sum() < 0.08 + 2 / rows.sum().sqrt()


@pytest.mark.parametrize("sampler", ["lean", "generate"])
@pytest.mark.parametrize("bad, match", [
    (dict(prompts=[]), "0 prompts"), (dict(num_samples=0), "num_samples=0"),
    (dict(max_new_tokens=-1), "max_new_tokens=-1"), (dict(top_p=2.0), "top_p=2.0"),
    (dict(temperature=0.0), "temperature=0.0")])
def test_generate_rollouts_refuses_bad_arguments_whichever_sampler(sampler, bad, match):
    """The same one-line refusals on both samplers (top_p=2 used to run under generate and fail under lean;
    num_samples=0 was a ZeroDivisionError)."""
    model, tok = model_for("qwen2")
    args = dict(prompts=["What is 2+3?"], num_samples=2, max_new_tokens=4, temperature=1.0, top_p=1.0)
    args.update(bad)
    with pytest.raises(ValueError, match=match) as e:
        generate_rollouts(model, tok, args.pop("prompts"), args.pop("num_samples"), args.pop("max_new_tokens"),
                          sampler=sampler, **args)
    assert "\n" not in str(e.value)


def test_generate_rollouts_lean_and_generate_agree_on_layout():
    """generate_rollouts with sampler=lean and sampler=generate: same shapes and layout rules; the
    sampler log-probs equal the trainer's, which is what on-policy GRPO needs."""
    model, tok = model_for("qwen2", peaky=8.0)
    prompts = ["What is 2+3?", "Compute 7*8 now please"]
    for sampler in ("lean", "generate"):
        torch.manual_seed(0)
        b = generate_rollouts(model, tok, prompts, 3, 12, temperature=0.8, sampler=sampler)
        assert b.prompt_ids.shape[0] == 6 and b.completion_ids.shape[0] == 6
        assert torch.equal(b.prompt_ids[0], b.prompt_ids[2]) and not torch.equal(b.prompt_ids[0], b.prompt_ids[3])
        with torch.no_grad():
            ref, _ = token_logprobs(model, b.prompt_ids, b.prompt_mask, b.completion_ids, b.completion_mask, 0.8)
        assert ((ref - b.sampler_logp) * b.completion_mask).abs().max() < 2e-5
        assert (b.completion_ids[b.completion_mask == 0] == tok.pad_token_id).all()


def test_unsupported_models_fall_back_or_raise():
    ds, tok = build_tiny("deepseek_v3")
    assert "DeepseekV3ForCausalLM" in lean.unsupported(ds)
    with pytest.raises(ValueError, match="sampler=lean: DeepseekV3ForCausalLM"):
        generate_rollouts(ds, tok, ["hi"], 2, 4, sampler="lean")
    torch.manual_seed(0)
    assert generate_rollouts(ds, tok, ["hi"], 2, 4).completion_ids.shape[0] == 2  # auto: generate
    with pytest.raises(ValueError, match="sampler='fast'"):
        generate_rollouts(ds, tok, ["hi"], 2, 4, sampler="fast")
    model, tok = build_tiny("qwen2")
    handle = model.get_output_embeddings().register_forward_hook(lambda m, i, o: o)
    assert "hooks" in lean.unsupported(model)
    handle.remove()
    assert lean.unsupported(model) is None
    model.gradient_checkpointing_enable()
    assert lean.unsupported(model, training=True) == "gradient checkpointing is on"
    assert lean.unsupported(model) is None  # sampling never needs it
    args = batch()
    with torch.no_grad():  # token_logprobs(lean=True) quietly uses the transformers forward when refused
        a, _ = token_logprobs(ds, *args, lean=True)
        b, _ = token_logprobs(ds, *args)
    assert torch.equal(a, b)


def test_bfloat16_close_to_transformers():
    model, _ = model_for("llama3", peaky=5.0, dtype=torch.bfloat16)
    args = batch()
    with torch.no_grad():
        want, _ = token_logprobs(model, *args)
        got, _ = lean.token_logprobs(model, *args)
    assert ((got - want) * args[3]).abs().max() < 0.1  # bf16 rounding of different kernel orders
    assert ((got - want) * args[3]).abs().mean() < 0.01


def test_sampler_lean_on_an_unsupported_checkpoint_is_refused_before_the_run(tmp_path):
    """sampler=lean names what it cannot run in one line at config time (auto would fall back)."""
    from r1.config import ConfigError, load_config
    from r1.models.tiny import save_tiny
    ds = save_tiny("deepseek_v3", tmp_path / "ds")
    with pytest.raises(ConfigError, match="sampler='lean': model_path is a DeepseekV3ForCausalLM"):
        load_config(None, [f"model_path={ds}", "sampler=lean"])
    qwen = save_tiny("qwen2", tmp_path / "qwen")
    with pytest.raises(ConfigError, match="sampler='lean' with lora_r=4"):
        load_config(None, [f"model_path={qwen}", "sampler=lean", "lora_r=4"])
    assert load_config(None, [f"model_path={qwen}", "sampler=lean"]).sampler == "lean"
    assert load_config(None, [f"model_path={ds}"]).sampler == "auto"


def test_gradients_are_bit_identical_across_calls():
    """The same batch twice (with other allocations in between), on 2 threads, gives bit-identical
    gradients: a seed's rerun must reproduce the run. Advanced indexing (x[idx]) in the forward broke this
    on CPU: its backward accumulates with a parallel index_put in a varying order (a rerun of the main job
    diverged after ~80 steps). Sizes as the main job's policy, where the backward runs in parallel."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.set_num_threads(2)  # the fixture restores it
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=105, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=384, tie_word_embeddings=True))
    prompt = torch.randint(3, 105, (16, 23))
    pids, pm = prompt.repeat_interleave(8, 0), torch.ones(128, 23, dtype=torch.long)
    cids = torch.randint(3, 105, (128, 48))
    lengths = torch.randint(1, 49, (128, 1))
    cm = (torch.arange(48) < lengths).float()
    grads, junk = [], []
    for i in range(3):
        junk.append(torch.empty(1000 + 7919 * i))  # move the heap between calls
        model.zero_grad()
        logp, _ = lean.token_logprobs(model, pids, pm, cids, cm)
        (logp * cm).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for other in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads[0], other))


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_reused_weights_give_the_same_gradients_and_follow_optimizer_steps(dtype):
    """``reuse_weights``: micro-batches backpropagated one after the other through weight matrices built once
    give bit for bit the gradients of matrices built per call (float32 and bf16 mixed precision); after an
    AdamW step the matrices are rebuilt (the log-probabilities are those of fresh weights, not the cached)."""
    pids, pm, cids, cm = batch(seed=3)
    parts = [slice(0, 3), slice(3, 5), slice(5, 8)]

    def grads(reuse):
        model, _ = model_for("qwen2", peaky=3.0)
        with lean.reuse_weights() if reuse else torch.enable_grad():
            for s in parts:
                logp, _ = lean.token_logprobs(model, pids[s], pm[s], cids[s], cm[s], dtype=dtype)
                logp.sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    fresh, reused = grads(False), grads(True)
    assert all(torch.equal(a, b) for a, b in zip(fresh, reused))
    assert sum(g.abs().sum() for g in fresh) > 0

    model, _ = model_for("qwen2", peaky=3.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with lean.reuse_weights():
        before, _ = lean.token_logprobs(model, pids, pm, cids, cm, dtype=dtype)
        before.sum().backward()
        opt.step()
        after, _ = lean.token_logprobs(model, pids, pm, cids, cm, dtype=dtype)
    want, _ = lean.token_logprobs(model, pids, pm, cids, cm, dtype=dtype)
    assert torch.equal(after, want) and not torch.equal(after, before)


def test_swiglu_down_equals_autograd_and_saves_only_gate_up():
    """``_SwiGLUDown`` (x + (silu(g) * u) @ wd^T with a hand-written backward): forward and all three gradients
    equal autograd's on the same operations (float64: to 1e-12 relative), and the tensors it keeps for the
    backward are gate | up and the matrix alone, [m, 2I] + [D, I], where autograd keeps silu(g) and the product
    too, [m, I] each (the memory the micro-batch rule counts on)."""
    torch.manual_seed(0)
    m, D, inter = 37, 12, 20
    x = torch.randn(m, D, dtype=torch.float64, requires_grad=True)
    gu = torch.randn(m, 2 * inter, dtype=torch.float64, requires_grad=True)
    wd = torch.randn(D, inter, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(m, D, dtype=torch.float64)

    def run(fn):
        saved = {}

        def pack(t):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = fn()
        grads = torch.autograd.grad(y, (x, gu, wd), upstream)
        return y, grads, sum(saved.values())

    def by_autograd():
        g, u = gu.chunk(2, -1)
        return torch.addmm(x, torch.nn.functional.silu(g) * u, wd.t())

    want, want_grads, want_bytes = run(by_autograd)
    got, got_grads, got_bytes = run(lambda: lean._SwiGLUDown.apply(x, gu, wd))
    assert torch.allclose(got, want, rtol=1e-12, atol=0)
    for a, b in zip(got_grads, want_grads):
        assert (a - b).abs().max() <= 1e-12 * b.abs().max()
    assert got_bytes == 8 * (m * 2 * inter + D * inter)
    assert want_bytes == got_bytes + 8 * 2 * m * inter


@pytest.mark.parametrize("setting", ["float32", "bf16 mixed precision", "bf16 model"])
def test_training_forward_uses_the_memory_saving_mlp_in_float32_only(setting, monkeypatch):
    """With gradients in float32 compute every layer's MLP runs through ``_SwiGLUDown``; under bf16 mixed
    precision or on a bf16 model (where its recomputation is slower on CPU), and without gradients, it does
    not."""
    calls = []
    real = lean._SwiGLUDown.apply
    monkeypatch.setattr(lean._SwiGLUDown, "apply", lambda *a: calls.append(1) or real(*a))
    model, _ = model_for("qwen2", peaky=3.0, dtype=torch.bfloat16 if setting == "bf16 model" else torch.float32)
    dtype = torch.bfloat16 if setting == "bf16 mixed precision" else None
    args = batch()
    lean.token_logprobs(model, *args, dtype=dtype)
    layers, passes = model.config.num_hidden_layers, len(calls)
    with torch.no_grad():
        lean.token_logprobs(model, *args, dtype=dtype)
    assert len(calls) == passes
    widths = sorted(args[3].sum(-1).long().tolist(), reverse=True)
    assert passes == (layers * (1 + len(lean._buckets(widths, 4))) if setting == "float32" else 0)


def test_qkv_rope_equals_the_module_arithmetic_and_its_gradient():
    """``_QKVRope`` (the projection output split into heads, rotary on q and k, a hand-written backward): q, k, v
    equal transformers' ``apply_rotary_pos_emb`` on the split heads (float64: to 1e-12 relative), and the gradient
    of the projection output equals autograd's through the module arithmetic, with all three upstream gradients and
    with v's missing (its part of the gradient then 0). The outputs are contiguous (the attention's reshapes are
    views)."""
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

    torch.manual_seed(0)
    n, q_len, H, KH, hd = 3, 5, 4, 2, 6
    qkv = torch.randn(n, q_len, (H + 2 * KH) * hd, dtype=torch.float64, requires_grad=True)
    angle = torch.randn(n, 1, q_len, hd // 2, dtype=torch.float64)
    cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
    signed = torch.cat([-sin[..., :hd // 2], sin[..., hd // 2:]], -1)  # _Weights.rope's layout

    def by_module():
        q, k, v = qkv.view(n, q_len, H + 2 * KH, hd).transpose(1, 2).split([H, KH, KH], 1)
        q, k = apply_rotary_pos_emb(q, k, cos[:, 0], sin[:, 0], unsqueeze_dim=1)  # [n, q, hd] -> [n, 1, q, hd]
        return q, k, v

    want = by_module()
    got = lean._QKVRope.apply(qkv, cos, signed, H, KH, hd)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.is_contiguous()
        assert (a - b).abs().max() <= 1e-12 * b.abs().max()
    up = [torch.randn_like(t) for t in want]
    for ups in (up, up[:2]):
        (want_grad,) = torch.autograd.grad(by_module()[:len(ups)], qkv, ups)
        (got_grad,) = torch.autograd.grad(lean._QKVRope.apply(qkv, cos, signed, H, KH, hd)[:len(ups)], qkv, ups)
        assert (got_grad - want_grad).abs().max() <= 1e-12 * want_grad.abs().max()
    assert got_grad.view(n, q_len, H + 2 * KH, hd)[:, :, H + KH:].abs().max() == 0  # v had no gradient


@pytest.mark.parametrize("family, setting", [("qwen2", "float32"), ("llama3", "float32"), ("qwen3", "float32"),
                                             ("qwen2", "bf16 mixed precision")])
def test_fused_rotary_in_float32_without_qk_norms_only(family, setting, monkeypatch):
    """Every layer's projection output goes through ``_QKVRope`` in float32 compute for Llama and Qwen2, with and
    without gradients (sampler prefill, reference, policy); Qwen3 (per-head q/k norms before the rotary) and bf16
    mixed precision keep the module arithmetic. The log-probabilities stay those of the transformers forward."""
    calls = []
    real = lean._QKVRope.apply
    monkeypatch.setattr(lean._QKVRope, "apply", lambda *a: calls.append(1) or real(*a))
    model, _ = model_for(family, peaky=3.0)
    dtype = torch.bfloat16 if setting != "float32" else None
    args = batch()
    got, _ = lean.token_logprobs(model, *args, dtype=dtype)
    widths = sorted(args[3].sum(-1).long().tolist(), reverse=True)
    fused = family != "qwen3" and setting == "float32"
    layers = model.config.num_hidden_layers
    passes = layers * (1 + len(lean._buckets(widths, 4)))  # the prompts' pass and one per length bucket
    assert len(calls) == (passes if fused else 0)
    with torch.no_grad():  # the reference's forward
        lean.token_logprobs(model, *args, dtype=dtype, entropy=False)
    if setting == "float32":  # the sampler's prefill (bf16 mixed precision samples this small model in float32)
        lean.sample(model, args[0][:2], args[1][:2], 2, 3)
    assert len(calls) == (2 * passes + layers if fused else 0)
    if fused:
        with torch.no_grad():
            want, _ = token_logprobs(model, *args)
        assert ((got - want) * args[3]).abs().max() < 2e-5  # on the completion tokens (lean: 0 past them)
