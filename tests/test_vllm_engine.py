"""The vLLM rollout engine (r1.rollout.vllm_engine).

Everywhere: a fake ``vllm`` module (monkeypatched into ``sys.modules``) with the attribute structure of
vLLM's ``LLM`` / ``SamplingParams`` / ``RequestOutput`` / ``CompletionOutput`` / ``Logprob`` records what
the engine asks for and returns canned completions, so the checks are on exact values: what goes into
vLLM (token ids, sampling parameters, ``LLM`` arguments), the RolloutBatch built from vLLM's answer
(hand-worked ids, masks, truncation flags, texts, log-probabilities), the weights ``sync_weights`` pushes
(plain and LoRA-merged; the checkpoint's format, against ``save_pretrained`` for the four tiny families,
DeepSeek-V3's fused experts among them), what the CPU build refuses, and the error messages.

With vLLM on a CUDA GPU, or with vLLM's CPU build (``make test-vllm-cpu``): the real engine on a tiny
Qwen2 checkpoint (layout, log-probabilities against r1's own ``token_logprobs``, reproducibility, weight
sync, tied word embeddings, LoRA, 64 prompts in one call), and tiny Llama 3 and Qwen3 checkpoints (weight
sync). Skipped elsewhere.
"""

import ast
import copy
import dataclasses
import inspect
import os
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from r1.config import RunConfig
from r1.models.hf import LoraSpec, load_policy
from r1.models.tiny import build_tiny, save_tiny
from r1.rollout import vllm_engine
from r1.rollout.vllm_engine import VLLMEngine, policy_weights

IM_START, IM_END, ENDOFTEXT = 385, 386, 384  # tiny qwen2 tokenizer: <|im_start|>, <|im_end|>, <|endoftext|> (= pad)
T4, T2, TX, TEQ, T1 = 19, 17, 87, 28, 16  # "4", "2", "x", "=", "1"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    """A random tiny Qwen2 policy (CPU) and its tokenizer."""
    return build_tiny("qwen2", seed=0, hidden_size=32)


# --------------------------------------------------------------------------------------------------
# The fake vllm module
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Logprob:  # vllm.logprobs.Logprob
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclasses.dataclass
class CompletionOutput:  # vllm.outputs.CompletionOutput
    index: int
    text: str
    token_ids: list
    cumulative_logprob: float | None
    logprobs: list | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclasses.dataclass
class RequestOutput:  # vllm.outputs.RequestOutput
    request_id: str
    prompt: str | None
    prompt_token_ids: list
    prompt_logprobs: list | None
    outputs: list
    finished: bool = True


class FakeVllmModel:
    """A vLLM model as load_weights sees it: records every (name, tensor) it receives, returns the
    names it loaded (those it has)."""

    def __init__(self, names, log):
        self.names, self.log, self.received = list(names), log, []

    def named_parameters(self):
        return [(n, None) for n in self.names]

    def modules(self):  # no layers to re-process after a reload
        return iter(())

    def load_weights(self, weights):
        weights = list(weights)
        self.log.append(("load", len(weights)))
        self.received += [(n, t.detach().clone()) for n, t in weights]
        return {n for n, _ in weights if n in self.names}


class FakeReloadingRunner:
    """A model runner with vLLM's in-place reload (``reload_weights(weights_iterator=...,
    is_checkpoint_format=True)``): logs the restore to checkpoint layout, calls the model's
    ``load_weights`` once with the whole iterator, logs the repack; returns None, as vLLM's does."""

    def __init__(self, model, log):
        self.model, self.log = model, log

    def reload_weights(self, weights_iterator=None, weights_path=None, is_checkpoint_format=True):
        assert is_checkpoint_format and weights_path is None
        self.log.append(("restore",))
        self.model.load_weights(weights_iterator)
        self.log.append(("repack",))


def fake_vllm(version="0.11.0", top_k_disabled=0, names=(), respond=None, rpc=True, logprobs_mode_arg=True,
              reload=False):
    """A ``vllm`` module: ``LLM`` records its arguments and calls, ``generate`` answers with
    ``respond(prompts, params)``, ``collective_rpc`` calls ``fn(worker, *args)`` on one worker whose
    ``model_runner.model`` is a :class:`FakeVllmModel` with parameter ``names`` (``reload``: the model
    runner is a :class:`FakeReloadingRunner`)."""
    mod = types.ModuleType("vllm")
    mod.__version__ = version
    mod.log, mod.inits, mod.generate_calls = [], [], []
    fields = ["model", "tokenizer", "dtype", "gpu_memory_utilization", "seed", "max_model_len",
              "enable_prefix_caching", "generation_config", "enforce_eager", "enable_chunked_prefill"]
    if logprobs_mode_arg:  # an EngineArgs field from vLLM 0.10 on
        fields.append("logprobs_mode")
    mod.EngineArgs = dataclasses.make_dataclass("EngineArgs",
                                                [(f, object, dataclasses.field(default=None)) for f in fields])

    class SamplingParams:
        top_k = top_k_disabled

        def __init__(self, n=1, presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0,
                     temperature=1.0, top_p=1.0, top_k=top_k_disabled, min_p=0.0, seed=None, stop_token_ids=None,
                     max_tokens=16, logprobs=None, detokenize=True):
            self.__dict__.update(n=n, presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                                 repetition_penalty=repetition_penalty, temperature=temperature, top_p=top_p,
                                 top_k=top_k, min_p=min_p, seed=seed, stop_token_ids=stop_token_ids,
                                 max_tokens=max_tokens, logprobs=logprobs, detokenize=detokenize)

    class LLM:
        def __init__(self, **kwargs):
            unknown = set(kwargs) - {f.name for f in dataclasses.fields(mod.EngineArgs)}
            if unknown:
                raise TypeError(f"EngineArgs got unexpected keyword arguments {sorted(unknown)}")
            mod.inits.append(dict(kwargs, _files=sorted(p.name for p in Path(kwargs["model"]).iterdir())))
            self.model = FakeVllmModel(names, mod.log)
            runner = FakeReloadingRunner(self.model, mod.log) if reload else SimpleNamespace(model=self.model)
            self.worker = SimpleNamespace(model_runner=runner)
            if not rpc:
                self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=self.worker))
            self.reset_result = True

        def generate(self, prompts, sampling_params=None, use_tqdm=True):
            mod.generate_calls.append((prompts, sampling_params, use_tqdm))
            return respond(prompts, sampling_params)

        def reset_prefix_cache(self):
            mod.log.append(("reset",))
            return self.reset_result

    if rpc:
        def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
            return [method(self.worker, *args, **(kwargs or {}))]
        LLM.collective_rpc = collective_rpc

    mod.LLM, mod.SamplingParams = LLM, SamplingParams
    mod.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    return mod


def completion(index, ids, logps, finish):
    steps = None if logps is None else [{t: Logprob(lp, 1)} for t, lp in zip(ids, logps)]
    return CompletionOutput(index, "", list(ids), None if logps is None else sum(logps), steps, finish)


def canned():
    """Prompt 0: "2" + <|im_end|> (stop) and "x=12" (length 4). Prompt 1: <|im_end|> at once, and
    "<|im_start|>4" + <|endoftext|> (the second stop id, which is also the pad id). Completions listed
    out of index order, as vLLM may finish them; log-probabilities only when the request asks for them."""
    def respond(prompts, params):
        lp = (lambda v: v) if params[0].logprobs is not None else (lambda v: None)
        row0 = completion(0, [T2, IM_END], lp([-0.5, -0.25]), "stop")
        if row0.logprobs:  # a more likely token listed before the sampled one: read by token id, not position
            row0.logprobs[0] = {T4: Logprob(-0.3, 1, "4"), T2: Logprob(-0.5, 2, "2")}
        return [RequestOutput("0", None, prompts[0]["prompt_token_ids"], None,
                              [completion(1, [TX, TEQ, T1, T2], lp([-1.0, -2.0, -3.0, -4.0]), "length"), row0]),
                RequestOutput("1", None, prompts[1]["prompt_token_ids"], None,
                              [completion(0, [IM_END], lp([-0.125]), "stop"),
                               completion(1, [IM_START, T4, ENDOFTEXT], lp([-0.75, -0.5, -0.0625]), "stop")])]
    return respond


PROMPTS = ["4", "<|im_start|>x=1"]  # token ids [19] and [385, 87, 28, 16]


def engine_with(mod, monkeypatch, tok, **kw):
    monkeypatch.setitem(sys.modules, "vllm", mod)
    return VLLMEngine(mod.LLM(model=".", **kw.pop("llm", {})), tok, [IM_END, ENDOFTEXT], "cpu", 512, **kw)


# --------------------------------------------------------------------------------------------------
# generate: what goes into vLLM, what comes out
# --------------------------------------------------------------------------------------------------

def test_generate_feeds_token_ids_and_builds_the_batch(tiny, monkeypatch):
    _, tok = tiny
    mod = fake_vllm(respond=canned())
    engine = engine_with(mod, monkeypatch, tok)
    torch.manual_seed(123)
    batch = engine.generate(PROMPTS, num_samples=2, max_new_tokens=4, temperature=0.7, top_p=1.0)
    torch.manual_seed(123)
    base = int(torch.randint(0, 2**31 - 1 - 4, (1,)).item())

    prompts, params, use_tqdm = mod.generate_calls[0]
    assert prompts == [{"prompt_token_ids": [T4]}, {"prompt_token_ids": [IM_START, TX, TEQ, T1]}]
    assert use_tqdm is False and len(params) == 2
    for i, p in enumerate(params):
        assert vars(p) == dict(n=2, temperature=0.7, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0,
                               presence_penalty=0.0, frequency_penalty=0.0, max_tokens=4,
                               stop_token_ids=[IM_END, ENDOFTEXT], logprobs=0, seed=base + 2 * i, detokenize=False)

    P = ENDOFTEXT
    assert batch.prompt_ids.tolist() == [[P, P, P, T4]] * 2 + [[IM_START, TX, TEQ, T1]] * 2
    assert batch.prompt_mask.tolist() == [[0, 0, 0, 1]] * 2 + [[1, 1, 1, 1]] * 2
    assert batch.completion_ids.tolist() == [[T2, IM_END, P, P], [TX, TEQ, T1, T2], [IM_END, P, P, P],
                                             [IM_START, T4, ENDOFTEXT, P]]
    assert batch.completion_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]]
    assert batch.completion_mask.dtype == torch.float32
    assert batch.truncated.tolist() == [False, True, False, False]
    assert batch.texts == ["2", "x=12", "", "<|im_start|>4"]
    assert batch.sampler_logp.dtype == torch.float32
    assert batch.sampler_logp.tolist() == [[-0.5, -0.25, 0, 0], [-1, -2, -3, -4], [-0.125, 0, 0, 0],
                                           [-0.75, -0.5, -0.0625, 0]]
    assert batch.lengths.tolist() == [2, 4, 1, 3]


def test_generate_seeds_come_from_torch(tiny, monkeypatch):
    _, tok = tiny
    mod = fake_vllm(respond=canned())
    engine = engine_with(mod, monkeypatch, tok)
    seeds = []
    for s in (5, 5, 6):
        torch.manual_seed(s)
        engine.generate(PROMPTS, 2, 4)
        seeds.append([p.seed for p in mod.generate_calls[-1][1]])
    assert seeds[0] == seeds[1] != seeds[2]
    assert seeds[0][1] == seeds[0][0] + 2  # prompt 1's children: base+2, base+3; prompt 0's: base, base+1


def test_top_p_below_one_returns_no_sampler_logp(tiny, monkeypatch):
    """processed_logprobs are renormalised over the nucleus: not the number the trainer compares with."""
    _, tok = tiny
    mod = fake_vllm(respond=canned())
    engine = engine_with(mod, monkeypatch, tok)
    with pytest.warns(UserWarning, match="sampler_logp is None at temperature=1.0, top_p=0.9"):
        batch = engine.generate(PROMPTS, 2, 4, temperature=1.0, top_p=0.9)
    assert mod.generate_calls[0][1][0].logprobs is None and mod.generate_calls[0][1][0].top_p == 0.9
    assert batch.sampler_logp is None
    assert batch.completion_ids.tolist()[1] == [TX, TEQ, T1, T2] and batch.truncated.tolist() == [False, True, False,
                                                                                                  False]


def test_old_vllm_raw_logprobs_only_at_temperature_one(tiny, monkeypatch):
    """Before 0.10.2 vLLM's log-probabilities are before the temperature; top_k's 'off' is -1 there."""
    policy, tok = tiny
    mod = fake_vllm(version="0.9.2", top_k_disabled=-1, names=[n for n, _ in policy.named_parameters()],
                    respond=canned(), logprobs_mode_arg=False)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    engine = VLLMEngine.from_config(RunConfig(), policy, tok)
    assert "logprobs_mode" not in mod.inits[0] and engine.logprobs_mode == "raw_logprobs"
    batch = engine.generate(PROMPTS, 2, 4, temperature=1.0)
    assert mod.generate_calls[-1][1][0].logprobs == 0 and mod.generate_calls[-1][1][0].top_k == -1
    assert batch.sampler_logp[0].tolist() == [-0.5, -0.25, 0, 0]
    with pytest.warns(UserWarning, match="logprobs_mode=raw_logprobs"):
        batch = engine.generate(PROMPTS, 2, 4, temperature=0.7)
    assert mod.generate_calls[-1][1][0].logprobs is None and batch.sampler_logp is None


def test_version_rule():
    have = lambda v: vllm_engine.processed_logprobs_have_temperature(SimpleNamespace(__version__=v))  # noqa: E731
    assert [have(v) for v in ("0.10.2", "0.11.1.dev12+gabc", "0.10.2rc1", "0.10.1.1", "0.9.2", "nonsense")] == \
        [True, True, False, False, False, False]


def test_generate_errors(tiny, monkeypatch):
    _, tok = tiny
    engine = engine_with(fake_vllm(respond=canned()), monkeypatch, tok)
    engine.max_model_len = 7
    with pytest.raises(ValueError, match="a prompt of 4 tokens \\+ max_new_tokens=4 exceeds .*max_model_len=7"):
        engine.generate(PROMPTS, 2, 4)
    with pytest.raises(ValueError, match="temperature=0: .*>= 0.01"):
        engine.generate(PROMPTS, 2, 3, temperature=0)
    engine.max_model_len = 512
    with pytest.raises(RuntimeError, match="vLLM returned 2 completions for prompt 0, expected 3"):
        engine.generate(PROMPTS, 3, 4)


# --------------------------------------------------------------------------------------------------
# from_config
# --------------------------------------------------------------------------------------------------

def test_from_config_builds_llm_from_the_policy(tiny, monkeypatch):
    policy, tok = tiny
    names = [n for n, _ in policy.named_parameters()]
    mod = fake_vllm(names=names, respond=canned())
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    cfg = dataclasses.replace(RunConfig(), seed=7, max_new_tokens=64, vllm_gpu_memory_utilization=0.25)
    engine = VLLMEngine.from_config(cfg, policy, tok, enforce_eager=True)
    init = mod.inits[0]
    files = init.pop("_files")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    assert init == dict(model=engine._workdir.name, tokenizer=engine._workdir.name, dtype="float32",
                        gpu_memory_utilization=0.25, seed=7, max_model_len=512,  # the model's 512 positions
                        enable_prefix_caching=True, generation_config="vllm", logprobs_mode="processed_logprobs",
                        enforce_eager=True)
    assert engine.logprobs_mode == "processed_logprobs" and engine.stop_ids == [IM_END, ENDOFTEXT]
    assert engine.device == torch.device("cpu") and engine.max_model_len == 512
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    # the policy's weights were pushed once at construction, then the prefix cache reset
    assert [n for n, _ in engine.llm.model.received] == names and mod.log[-1] == ("reset",)


def test_from_config_with_model_path(tiny, monkeypatch, tmp_path):
    policy, tok = tiny
    path = save_tiny("qwen2", tmp_path / "ckpt", seed=0, hidden_size=32)
    mod = fake_vllm(names=[n for n, _ in policy.named_parameters()], respond=canned())
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = dataclasses.replace(RunConfig(), model_path=str(path), max_position=256, max_new_tokens=32)
    engine = VLLMEngine.from_config(cfg, policy, tok)
    assert mod.inits[0]["model"] == str(path) and engine._workdir is None
    assert mod.inits[0]["max_model_len"] == 512  # min(model limit 512, max(256, 32 + 2048))


def test_make_engine_routes_to_vllm(tiny, monkeypatch):
    from r1.rollout.engine import make_engine

    policy, tok = tiny
    mod = fake_vllm(names=[n for n, _ in policy.named_parameters()], respond=canned())
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    engine = make_engine(dataclasses.replace(RunConfig(), rollout_engine="vllm"), policy, tok)
    assert isinstance(engine, VLLMEngine) and engine.name == "vllm"


def test_missing_vllm_is_an_import_error(tiny, monkeypatch):
    policy, tok = tiny
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ImportError, match=r"^rollout_engine=vllm needs vLLM: pip install -e '\.\[vllm\]'"):
        VLLMEngine.from_config(RunConfig(), policy, tok)


def test_no_cuda_is_a_value_error(tiny, monkeypatch):
    policy, tok = tiny
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(vllm_engine, "vllm_build", lambda: "gpu")
    with pytest.raises(ValueError, match="rollout_engine=vllm needs a CUDA GPU"):
        VLLMEngine.from_config(RunConfig(), policy, tok)


@pytest.mark.parametrize("dists,env,expected", [
    ({}, {}, None),
    ({"vllm": "0.11.0"}, {}, "gpu"),
    ({"vllm": "0.11.0+cpu"}, {}, "cpu"),
    ({"vllm-cpu": "0.32.0"}, {}, "cpu"),
    ({"vllm": "0.11.0"}, {"VLLM_TARGET_DEVICE": "cpu"}, "cpu"),
])
def test_vllm_build_from_package_metadata(monkeypatch, dists, env, expected):
    import importlib.metadata

    def version(name):
        if name not in dists:
            raise importlib.metadata.PackageNotFoundError(name)
        return dists[name]

    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.delenv("VLLM_TARGET_DEVICE", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert vllm_engine.vllm_build() == expected


def test_cpu_build_runs_without_cuda(monkeypatch, tmp_path):
    """vLLM's CPU build: no CUDA needed, for from_config and for the config check before a run; a head size
    its CPU attention does not run, and an MoE model (whose experts it would not re-pack after a weight
    push), are refused before anything starts."""
    from r1.config import ConfigError, _check_vllm

    policy, tok = build_tiny("qwen2", hidden_size=128)  # 4 heads of 32
    mod = fake_vllm(names=[n for n, _ in policy.named_parameters()], respond=canned())
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(vllm_engine, "vllm_build", lambda: "cpu")
    engine = VLLMEngine.from_config(RunConfig(), policy, tok)
    assert engine.device == torch.device("cpu")
    assert mod.inits[-1]["enable_chunked_prefill"] is False  # a prompt split between steps fails on the CPU build
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())
    _check_vllm(RunConfig(rollout_engine="vllm"))  # no error: the main job's policy has heads of 128 / 4 = 32
    small, _ = build_tiny("qwen2", hidden_size=64)  # heads of 16
    with pytest.raises(ValueError, match="^rollout_engine=vllm on vLLM's CPU build: attention head size 16: vLLM's "
                                         "CPU attention takes 32, 64, 80"):
        VLLMEngine.from_config(RunConfig(), small, tok)
    with pytest.raises(ConfigError, match="on vLLM's CPU build: attention head size 16: "):
        _check_vllm(RunConfig(rollout_engine="vllm", hidden_size=64))
    path = save_tiny("qwen2", tmp_path / "small", seed=0, hidden_size=64)
    with pytest.raises(ConfigError, match="on vLLM's CPU build: attention head size 16: "):
        _check_vllm(RunConfig(rollout_engine="vllm", model_path=str(path)))
    moe = "an MoE model: vLLM's CPU build packs the experts' weights only at the first load"
    ds_path = save_tiny("deepseek_v3", tmp_path / "ds", seed=0, hidden_size=128)  # heads of 32, 4 routed experts
    ds, ds_tok = load_policy(ds_path, device="cpu")
    with pytest.raises(ValueError, match=f"^rollout_engine=vllm on vLLM's CPU build: {moe}.*; and an MLA model"):
        VLLMEngine.from_config(RunConfig(), ds, ds_tok)  # DeepSeek-V3 is both: both reasons named
    with pytest.raises(ConfigError, match=f"on vLLM's CPU build: {moe}"):
        _check_vllm(RunConfig(rollout_engine="vllm", model_path=str(ds_path)))
    heads = {"hidden_size": 128, "num_attention_heads": 4}
    assert vllm_engine.cpu_model_error({**heads, "num_local_experts": 8}).startswith("an MoE model")  # Mixtral
    assert vllm_engine.cpu_model_error({**heads, "num_experts": 128}).startswith("an MoE model")  # Qwen3-MoE
    assert vllm_engine.cpu_model_error({**heads, "num_experts": 1}) is None  # one expert: a dense MLP
    assert vllm_engine.cpu_model_error({**heads, "num_experts": None}) is None
    mla = {**heads, "n_routed_experts": 1, "kv_lora_rank": 512, "qk_rope_head_dim": 64}  # MLA, no MoE
    assert vllm_engine.cpu_model_error(mla).startswith("an MLA model (kv_lora_rank): vLLM's CPU build frees")
    assert vllm_engine.cpu_model_error({**heads, "kv_lora_rank": None}) is None  # the key unset: no MLA
    monkeypatch.setattr(vllm_engine, "vllm_build", lambda: "gpu")
    with pytest.raises(ValueError, match="needs a CUDA GPU .* or vLLM's CPU build"):
        VLLMEngine.from_config(RunConfig(), policy, tok)
    with pytest.raises(ValueError, match="no CUDA GPU is visible; expected a GPU \\(or vLLM's CPU build"):
        _check_vllm(RunConfig(rollout_engine="vllm"))


def test_the_module_imports_vllm_lazily():
    """No module-level import of vllm: ``import r1`` works without it."""
    tree = ast.parse(inspect.getsource(vllm_engine))
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names] + \
        [n.module for n in top if isinstance(n, ast.ImportFrom)]
    assert "torch" in names and not any(m.split(".")[0] == "vllm" for m in names)


# --------------------------------------------------------------------------------------------------
# sync_weights
# --------------------------------------------------------------------------------------------------

def test_sync_weights_pushes_every_parameter_then_resets_the_cache(tiny, monkeypatch):
    policy, tok = tiny
    policy = copy.deepcopy(policy)
    names = [n for n, _ in policy.named_parameters()]
    mod = fake_vllm(names=names)
    engine = engine_with(mod, monkeypatch, tok)
    engine.sync_weights(policy)
    got = engine.llm.model.received
    assert [n for n, _ in got] == names and "lm_head.weight" not in names  # tied: embed_tokens carries it
    assert all(torch.equal(t, p) for (_, t), (_, p) in zip(got, policy.named_parameters()))
    assert mod.log == [("load", len(names)), ("reset",)]
    with torch.no_grad():  # an optimizer step: the next push carries the new values
        policy.model.norm.weight.add_(1.0)
    engine.llm.model.received.clear()
    engine.sync_weights(policy)
    pushed = dict(engine.llm.model.received)
    assert torch.equal(pushed["model.norm.weight"], torch.full_like(pushed["model.norm.weight"], 2.0))


def test_sync_weights_through_vllms_reload_in_one_pass(tiny, monkeypatch):
    """Where the model runner has reload_weights(weights_iterator=...): the whole model goes through one
    reload (restore, load, repack), lazily, and the names the model reports loaded are still checked."""
    policy, tok = tiny
    names = [n for n, _ in policy.named_parameters()]
    mod = fake_vllm(names=names, reload=True)
    engine = engine_with(mod, monkeypatch, tok)
    engine.sync_weights(policy)
    assert mod.log == [("restore",), ("load", len(names)), ("repack",), ("reset",)]
    assert [n for n, _ in engine.llm.model.received] == names
    assert "load_weights" not in vars(engine.llm.model)  # the recording wrapper is gone again
    mod = fake_vllm(names=names + ["model.extra.weight"], reload=True)
    engine = engine_with(mod, monkeypatch, tok)
    with pytest.raises(RuntimeError, match="1 vLLM parameters received no weights \\(e.g. model.extra.weight\\)"):
        engine.sync_weights(policy)


class PackingMethod:
    """A quant method that, like vLLM's CPU build for unquantized linear layers, packs a copy of the
    weight for its matmul when processed."""

    def process_weights_after_loading(self, layer):
        layer.packed = layer.weight.detach().clone()


def test_tied_layers_are_reprocessed_after_a_reload():
    embed = torch.nn.Embedding(5, 3)
    head = torch.nn.Linear(3, 5, bias=False)
    head.weight = embed.weight  # tied word embeddings: the lm_head holds the embedding's parameter
    other = torch.nn.Linear(3, 3, bias=False)
    for m in (embed, head, other):
        m.quant_method = PackingMethod()
        m.quant_method.process_weights_after_loading(m)
    model = torch.nn.ModuleDict(dict(embed_tokens=embed, lm_head=head, proj=other))
    with torch.no_grad():  # the reload writes new values into the shared parameter (and re-processes embed)
        embed.weight.add_(1.0)
        other.weight.add_(1.0)
    stale_other = other.packed.clone()
    assert not torch.equal(head.packed, embed.weight)
    assert vllm_engine._reprocess_tied_layers(model) == 1
    assert torch.equal(head.packed, embed.weight)  # rebuilt from the new weight
    assert torch.equal(other.packed, stale_other)  # untied layers are the reload's business, left alone


def randomize_lora_b(model, std: float) -> None:
    """LoRA B matrices start at zero (the adapters change nothing); give them seeded N(0, std) values."""
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, std)


def test_sync_weights_lora_merges_into_a_copy(tmp_path, monkeypatch):
    path = save_tiny("qwen2", tmp_path / "ckpt", seed=0, hidden_size=32)
    base, tok = load_policy(path, device="cpu")
    policy, _ = load_policy(path, lora=LoraSpec(r=4, alpha=8.0), device="cpu")
    randomize_lora_b(policy, 0.1)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    names = [n for n, _ in base.named_parameters()]
    mod = fake_vllm(names=names)
    engine = engine_with(mod, monkeypatch, tok)
    engine.sync_weights(policy)
    pushed = dict(engine.llm.model.received)
    assert sorted(pushed) == sorted(names)  # HF names: no base_model.model., no .base_layer, no lora_ tensors
    merged = copy.deepcopy(policy).merge_and_unload().state_dict()
    for n in names:
        assert torch.allclose(pushed[n], merged[n], atol=1e-6), n
    q = "model.layers.0.self_attn.q_proj.weight"
    assert (pushed[q] - dict(base.named_parameters())[q]).abs().max() > 1e-3  # the adapter is in
    assert all(torch.equal(p, before[n]) for n, p in policy.named_parameters())  # the policy is untouched
    with policy.disable_adapter():  # adapters off: the base weights
        plain = dict(policy_weights(policy))
    assert torch.equal(plain[q], dict(base.named_parameters())[q])


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama3", "deepseek_v3"])
def test_policy_weights_are_the_checkpoint_format(family, tmp_path):
    """What the push sends is what save_pretrained writes (so what vLLM loaded at start), after training
    moved every weight: the same names and the same values. DeepSeek-V3's routed experts are one fused
    [experts, 2 x intermediate, hidden] tensor in transformers' memory and one matrix per expert on disk;
    its router bias is a buffer."""
    from safetensors.torch import load_file

    policy, _ = load_policy(save_tiny(family, tmp_path / "start", seed=0, hidden_size=64), device="cpu")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for b in policy.buffers():
            if b.is_floating_point():
                b.add_(0.1 * torch.randn_like(b))
    policy.save_pretrained(tmp_path / "moved")
    on_disk = load_file(tmp_path / "moved" / "model.safetensors")
    pushed = dict(policy_weights(policy))
    assert sorted(pushed) == sorted(on_disk)
    for name, value in on_disk.items():
        assert torch.equal(pushed[name], value), name
    in_memory = dict(policy.named_parameters())
    if family == "deepseek_v3":
        fused = in_memory["model.layers.1.mlp.experts.gate_up_proj"]  # [4 experts, 2 x 32, 64]
        assert fused.shape == (4, 64, 64) and "model.layers.1.mlp.experts.gate_up_proj" not in pushed
        assert torch.equal(pushed["model.layers.1.mlp.experts.2.up_proj.weight"], fused[2, 32:])
        assert "model.layers.1.mlp.gate.e_score_correction_bias" in pushed
    else:
        assert sorted(pushed) == sorted(in_memory)  # tied lm_head once, no conversion


def test_sync_weights_refuses_dora(tmp_path):
    from peft import LoraConfig, get_peft_model

    model, _ = build_tiny("qwen2", hidden_size=32)
    dora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    with pytest.raises(ValueError, match="LoRA variant \\(e.g. DoRA\\)"):
        list(policy_weights(dora))


def test_sync_weights_fallback_and_errors(tiny, monkeypatch):
    policy, tok = tiny
    names = [n for n, _ in policy.named_parameters()]
    # no collective_rpc: TRL's llm_engine.model_executor.driver_worker path
    mod = fake_vllm(names=names, rpc=False)
    engine = engine_with(mod, monkeypatch, tok)
    engine.sync_weights(policy)
    assert [n for n, _ in engine.llm.model.received] == names
    # neither way in
    del engine.llm.llm_engine
    with pytest.raises(RuntimeError, match="neither LLM.collective_rpc nor"):
        engine.sync_weights(policy)
    # a vLLM parameter nothing was pushed to
    mod = fake_vllm(names=names + ["model.extra.weight"])
    engine = engine_with(mod, monkeypatch, tok)
    with pytest.raises(RuntimeError, match="1 vLLM parameters received no weights \\(e.g. model.extra.weight\\)"):
        engine.sync_weights(policy)
    # prefix cache not reset
    mod = fake_vllm(names=names)
    engine = engine_with(mod, monkeypatch, tok)
    engine.llm.reset_result = False
    with pytest.raises(RuntimeError, match="could not reset its prefix cache"):
        engine.sync_weights(policy)


# --------------------------------------------------------------------------------------------------
# Real vLLM (CUDA + vllm installed only)
# --------------------------------------------------------------------------------------------------

QUESTIONS = ["What is 2+3?", "Compute 7*8."]
G, MAX_NEW = 4, 12


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """(path, policy, tokenizer, engine, prompts): the real engine on a CUDA GPU, or on the CPU with vLLM's
    CPU build; a tiny Qwen2 checkpoint in float32 (head size 32: vLLM's CPU attention takes 32 and up)."""
    pytest.importorskip("vllm")
    if torch.cuda.is_available():
        device = "cuda"
    elif vllm_engine.vllm_build() == "cpu":
        device = "cpu"
    else:
        pytest.skip("the real vLLM engine needs a CUDA GPU or vLLM's CPU build")
    return real_engine("qwen2", tmp_path_factory.mktemp("qwen2-vllm"), device)


def real_engine(family, directory, device):
    """(path, policy, tokenizer, engine, prompts) for a tiny ``family`` checkpoint (float32, head size 32:
    vLLM's CPU attention takes 32 and up). The KV cache is set to 256 MiB where vLLM takes that argument, so
    that several engines fit in one test process (vLLM's CPU build otherwise sizes it from the share of
    memory less this process's whole RSS)."""
    from r1.models.prompts import BOXED, render_prompt

    path = save_tiny(family, directory, seed=0, hidden_size=128)
    policy, tok = load_policy(path, device=device)
    cfg = dataclasses.replace(RunConfig(), model_path=str(path), max_new_tokens=MAX_NEW,
                              vllm_gpu_memory_utilization=0.2, seed=0)
    known = vllm_engine._engine_arg_names(vllm_engine._import_vllm()) or set()
    kv = {"kv_cache_memory_bytes": 256 << 20} if "kv_cache_memory_bytes" in known else {}
    engine = VLLMEngine.from_config(cfg, policy, tok, enforce_eager=True, **kv)
    prompts = [render_prompt(tok, q, "chat", instruction=BOXED).text for q in QUESTIONS]
    return path, policy, tok, engine, prompts


def trainer_logp(model, batch, temperature):
    from r1.rl.logprobs import token_logprobs

    with torch.no_grad():
        logp, _ = token_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                 batch.completion_mask, temperature=temperature)
    return logp * batch.completion_mask


def test_real_vllm_layout_logprobs_and_seeds(real):
    _, policy, tok, engine, prompts = real
    engine.sync_weights(policy)
    torch.manual_seed(0)
    batch = engine.generate(prompts, G, MAX_NEW, temperature=0.7)
    N = len(prompts) * G
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left")
    assert torch.equal(batch.prompt_ids.cpu(), enc.input_ids.repeat_interleave(G, 0))
    assert torch.equal(batch.prompt_mask.cpu(), enc.attention_mask.repeat_interleave(G, 0))
    ids, mask = batch.completion_ids.cpu(), batch.completion_mask.cpu()
    assert ids.shape[0] == N and ids.shape[1] <= MAX_NEW and len(batch.texts) == N
    assert (mask[:, 1:] <= mask[:, :-1]).all()  # ones, then zeros
    assert (ids[mask == 0] == tok.pad_token_id).all()
    stop = torch.tensor(engine.stop_ids)
    assert torch.equal(batch.truncated.cpu(), ~torch.isin(ids, stop).any(-1))
    assert ((batch.lengths.cpu() == MAX_NEW) | ~batch.truncated.cpu()).all()
    assert (batch.sampler_logp.cpu()[mask == 0] == 0).all()
    ours = trainer_logp(policy, batch, 0.7)
    assert (ours - batch.sampler_logp).abs().max().item() < 1e-3
    torch.manual_seed(0)
    again = engine.generate(prompts, G, MAX_NEW, temperature=0.7)
    assert torch.equal(again.completion_ids, batch.completion_ids) and again.texts == batch.texts
    torch.manual_seed(1)
    other = engine.generate(prompts, G, MAX_NEW, temperature=0.7)
    assert not torch.equal(other.completion_ids[:, :1], batch.completion_ids[:, :1])


def test_real_vllm_follows_synced_weights(real):
    _, policy, tok, engine, prompts = real
    changed = copy.deepcopy(policy)
    with torch.no_grad():
        changed.model.norm.weight.mul_(3.0)  # sharper logits, same architecture
        torch.manual_seed(3)  # and new word embeddings, tied to the output projection (lm_head)
        changed.model.embed_tokens.weight.add_(0.5 * torch.randn_like(changed.model.embed_tokens.weight))
    assert changed.lm_head.weight is changed.model.embed_tokens.weight
    engine.sync_weights(changed)
    torch.manual_seed(0)
    batch = engine.generate(prompts, G, MAX_NEW, temperature=1.0)
    assert (trainer_logp(changed, batch, 1.0) - batch.sampler_logp).abs().max().item() < 1e-3
    assert (trainer_logp(policy, batch, 1.0) - batch.sampler_logp).abs().max().item() > 1e-2  # not the old weights
    sharp = copy.deepcopy(policy)
    with torch.no_grad():
        sharp.model.norm.weight.mul_(1000.0)  # logit gaps of tens of nats: sampling is argmax
    engine.sync_weights(sharp)
    torch.manual_seed(0)
    greedy = engine.generate(prompts, G, MAX_NEW, temperature=0.1)
    rows = greedy.completion_ids.view(len(prompts), G, -1)
    assert (rows == rows[:, :1]).all()  # every sample of a prompt is the same (greedy) completion
    assert greedy.sampler_logp.min().item() > -1e-2
    engine.sync_weights(policy)


def test_real_vllm_lora_policy(real):
    path, policy, tok, engine, prompts = real
    lora, _ = load_policy(path, lora=LoraSpec(r=4, alpha=8.0), device=policy.device.type)
    randomize_lora_b(lora, 0.5)
    engine.sync_weights(lora)
    torch.manual_seed(0)
    batch = engine.generate(prompts, G, MAX_NEW, temperature=1.0)
    assert (trainer_logp(lora, batch, 1.0) - batch.sampler_logp).abs().max().item() < 1e-3
    engine.sync_weights(policy)


def test_real_vllm_many_prompts_in_one_call(real):
    """More prompt tokens in one call than vLLM's scheduler takes in a step (64 prompts x G): with chunked
    prefill, a prompt split between two steps made vLLM's CPU build rewind a seeded CPU generator and
    fail; the engine turns chunking off there. Every row still has the trainer's log-probabilities."""
    from r1.models.prompts import BOXED, render_prompt

    _, policy, tok, engine, _ = real
    engine.sync_weights(policy)
    many = [render_prompt(tok, f"What is {i} + {2 * i}?", "chat", instruction=BOXED).text for i in range(64)]
    torch.manual_seed(0)
    batch = engine.generate(many, G, MAX_NEW, temperature=1.0)
    assert batch.completion_ids.shape[0] == len(many) * G
    assert (trainer_logp(policy, batch, 1.0) - batch.sampler_logp).abs().max().item() < 1e-3


# Last in the file: these build engines of their own, and when one is freed vLLM's process-wide parallel
# state goes with it, so the module's `real` engine cannot run after them.
@pytest.mark.parametrize("family", ["llama3", "qwen3"])
def test_real_vllm_follows_synced_weights_of_other_families(real, family, tmp_path):
    """Llama 3 (the main job's policy class) and Qwen3 (q/k norms): every parameter moved by noise, then
    synced; vLLM samples from the new weights (its log-probabilities are the trainer's, not the old ones')."""
    device = real[1].device.type
    _, policy, tok, engine, prompts = real_engine(family, tmp_path / family, device)
    changed = copy.deepcopy(policy)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in changed.parameters():
            p.add_(0.1 * torch.randn_like(p))
    engine.sync_weights(changed)
    torch.manual_seed(0)
    batch = engine.generate(prompts, G, MAX_NEW, temperature=1.0)
    assert (trainer_logp(changed, batch, 1.0) - batch.sampler_logp).abs().max().item() < 1e-3
    assert (trainer_logp(policy, batch, 1.0) - batch.sampler_logp).abs().max().item() > 1e-2
