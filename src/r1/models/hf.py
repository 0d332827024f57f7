"""Load any local Hugging Face causal-LM directory as policy, reference or teacher.

A directory is what ``save_pretrained`` writes (and what a Hub download holds): ``config.json``,
``*.safetensors``, the tokenizer files with the chat template, optionally ``generation_config.json``.
A LoRA checkpoint written by :func:`save_policy` (``adapter_config.json`` +
``adapter_model.safetensors``) loads the same way: its base is read from the adapter config.

Decisions:

* ``float16`` is refused on CPU: PyTorch CPU kernels for half matmuls are slow or missing and
  nothing rescales the loss; ``bfloat16`` works on CPU (and on CUDA from Ampere on).
* A tokenizer without a pad token gets ``pad = eos`` (Llama 3). The completion mask keeps the first
  end-of-sequence token as a target all the same (``r1.rollout.engine.completion_mask`` looks for
  the first EOS, not for the first pad).
* Padding is on the left, as batched generation needs, whatever ``tokenizer_config.json`` says.
* LoRA (peft): the reference is the same module with its adapters disabled
  (``r1.rl.logprobs.reference_logprobs(policy, None, ...)``), so no second copy is held.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(ValueError):
    """A model directory or a loading option is unusable; the message is one line."""


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters (Hu et al., arXiv 2106.09685): ``W + alpha/r * B A`` on ``target_modules``.

    ``target_modules="all-linear"`` means every linear layer of the decoder but the output head,
    which covers the attention of every family here (DeepSeek-V3's MLA projections included)
    without naming them.
    """

    r: int = 16  # rank of B A
    alpha: float = 32.0  # scale numerator: the update is alpha / r * B A
    dropout: float = 0.0  # dropout on the adapter input
    target_modules: str | tuple[str, ...] = "all-linear"  # module names, or "all-linear"


def resolve_device(device: str | None) -> torch.device:
    """``device``, or CUDA when available and ``device`` is None or 'auto', else the CPU."""
    return torch.device(device if device not in (None, "auto") else ("cuda" if torch.cuda.is_available() else "cpu"))


def _check_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
    if dtype == "float16" and device.type == "cpu":
        raise ModelLoadError("dtype='float16' on CPU: not supported here (slow or missing half kernels, "
                             "no loss scaling); use 'bfloat16' or 'float32'")
    if dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ModelLoadError(f"dtype='bfloat16' on {torch.cuda.get_device_name(device)}: not supported "
                             "by this GPU; use 'float16' or 'float32'")
    return DTYPES[dtype]


def _check_dir(path: Path) -> None:
    if not path.exists():
        raise ModelLoadError(f"model path {str(path)!r} does not exist: expected a local model directory")
    if not path.is_dir():
        raise ModelLoadError(f"model path {str(path)!r} is a file: expected a directory holding config.json")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model path {str(path)!r} has no config.json: expected a Hugging Face "
                             "model directory (save_pretrained output)")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelLoadError(f"model path {str(path)!r} has no weights (*.safetensors)")


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The directory's tokenizer, left-padded, with ``pad = eos`` when it has no pad token.

    Raises:
        ModelLoadError: no tokenizer files, or no pad and no EOS token.
    """
    path = Path(path)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise ModelLoadError(f"model path {str(path)!r} has no tokenizer.json or tokenizer_config.json")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"tokenizer in {str(path)!r} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token  # the usual choice; the first EOS stays a target
    tokenizer.padding_side = "left"
    return tokenizer


def load_policy(path: str | Path, dtype: str = "float32", gradient_checkpointing: bool = False,
                lora: LoraSpec | dict | None = None, device: str | None = None,
                trainable: bool = True) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local directory.

    Args:
        path: a model directory (``config.json`` + safetensors + tokenizer), or a LoRA checkpoint
            written by :func:`save_policy` (``adapter_config.json``; its base path is read there).
        dtype: "float32", "bfloat16" or "float16" (not on CPU), for the weights and the forward.
        gradient_checkpointing: recompute activations in the backward pass (non-reentrant, so it
            also works when only LoRA adapters train).
        lora: a :class:`LoraSpec` (or its fields as a dict) to wrap the model in fresh adapters;
            only the adapters then train, the base weights are frozen.
        device: "cpu", "cuda", ...; None picks CUDA when available.
        trainable: False for a reference or teacher: eval mode, no gradients.
    Returns:
        (model, tokenizer); the model is a ``peft.PeftModel`` with ``lora`` or for a LoRA checkpoint.
    Raises:
        ModelLoadError: missing path, config or weights, unknown dtype or one the device does not
            support, a config that is not a causal LM, a bad LoRA spec.
    """
    path = Path(path)
    dev = resolve_device(device)
    torch_dtype = _check_dtype(dtype, dev)
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        if lora is not None:
            raise ModelLoadError(f"lora={lora!r} with LoRA checkpoint {str(path)!r}: its adapters are loaded "
                                 "from there; expected lora=None")
        return _load_adapter_checkpoint(path, dtype, gradient_checkpointing, device, trainable)
    _check_dir(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, device_map=str(dev))
    except ValueError as exc:  # e.g. "Unrecognized configuration class ... for AutoModelForCausalLM"
        raise ModelLoadError(f"model path {str(path)!r}: not loadable as a causal LM "
                             f"({str(exc).splitlines()[0][:200]})") from None
    tokenizer = load_tokenizer(path)
    if gradient_checkpointing:
        # transformers 5.2x renamed it (activation_*); the old name stays until v6
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora is not None:
        model = _wrap_lora(model, lora)
    model.train(trainable)
    if not trainable:
        model.requires_grad_(False)
    return model, tokenizer


def _wrap_lora(model: PreTrainedModel, lora: LoraSpec | dict):
    from peft import LoraConfig, get_peft_model

    try:
        spec = lora if isinstance(lora, LoraSpec) else LoraSpec(**lora)
    except TypeError as exc:
        raise ModelLoadError(f"lora={lora!r}: {exc}; expected fields r, alpha, dropout, target_modules") from None
    if spec.r < 1 or spec.alpha <= 0 or not 0 <= spec.dropout < 1:
        raise ModelLoadError(f"lora={spec}: expected r >= 1, alpha > 0, 0 <= dropout < 1")
    targets = spec.target_modules if isinstance(spec.target_modules, str) else list(spec.target_modules)
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets,
                        bias="none", task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # e.g. target modules not found in the model
        raise ModelLoadError(f"lora target_modules={targets!r}: {str(exc).splitlines()[0][:200]}") from None


def _load_adapter_checkpoint(path: Path, dtype: str, gradient_checkpointing: bool, device: str | None,
                             trainable: bool):
    """A LoRA checkpoint: its base model (by the path recorded in adapter_config.json) + adapters."""
    from peft import PeftModel

    base_path = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base_path or not Path(base_path).is_dir():
        raise ModelLoadError(f"LoRA checkpoint {str(path)!r}: base model {base_path!r} not found; expected "
                             "adapter_config.json's base_model_name_or_path to be a local model directory")
    base, tokenizer = load_policy(base_path, dtype, gradient_checkpointing, None, device, trainable)
    model = PeftModel.from_pretrained(base, path, is_trainable=trainable)
    if (path / "tokenizer_config.json").is_file():
        tokenizer = load_tokenizer(path)
    model.train(trainable)
    return model, tokenizer


def is_lora(model) -> bool:
    """True for a peft model whose adapters can be switched off (``disable_adapter``)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def save_policy(model, tokenizer, directory: str | Path, merged: bool = False) -> Path:
    """Save a policy so that :func:`load_policy` reads it back.

    A plain model: ``save_pretrained`` (safetensors) + tokenizer. A LoRA model: the adapters only
    (``adapter_config.json`` + ``adapter_model.safetensors``, a few MB; ``load_policy`` finds the base
    through the absolute path recorded in the adapter config), or with ``merged=True`` a full
    model with ``W + alpha/r * B A`` folded in, loadable by anything that reads HF checkpoints;
    merging works on a copy, so it briefly needs memory for a second set of weights.
    """
    directory = Path(directory)
    if is_lora(model):
        if merged:
            copy.deepcopy(model).merge_and_unload().save_pretrained(directory)
        else:
            base = model.get_base_model().config._name_or_path
            for cfg in model.peft_config.values():  # record the base by absolute path
                cfg.base_model_name_or_path = str(Path(base).resolve()) if Path(base).is_dir() else base
            model.save_pretrained(directory)
    else:
        model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
