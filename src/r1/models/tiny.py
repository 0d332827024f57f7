"""Tiny random-initialised checkpoints of real model families, built offline, for tests.

Each family is the architecture class that transformers loads for the public checkpoints, at a
toy size, with a byte-level BPE tokenizer trained in memory on ``CORPUS`` and carrying that
family's special tokens, chat template and ``generation_config.json`` (eos ids, sampling
defaults). ``save_tiny`` writes what a user has on disk after downloading a checkpoint, so the
tests go through the same loading path (:func:`r1.models.hf.load_policy`).

==================  ==================  =========================================================
family              architecture        tokenizer and template (as the public checkpoints)
==================  ==================  =========================================================
``qwen2``           Qwen2ForCausalLM    Qwen2.5-Instruct: ChatML ``<|im_start|>``/``<|im_end|>``,
                                        default system prompt, pad ``<|endoftext|>``, no BOS
``qwen3``           Qwen3ForCausalLM    Qwen3: ChatML, ``<think>`` tokens, ``enable_thinking``
``llama3``          LlamaForCausalLM    Llama 3.1/3.2-Instruct: ``<|begin_of_text|>``, headers,
                                        ``<|eot_id|>``, no pad token
``deepseek_v3``     DeepseekV3ForCaus.  DeepSeek-V3: ``<｜User｜>``/``<｜Assistant｜>``, BOS, MLA + MoE
``r1_distill_qwen`` Qwen2ForCausalLM    DeepSeek-R1-Distill-Qwen: DeepSeek tokens on a Qwen2 body,
                                        generation prompt ends with ``<think>\\n``
==================  ==================  =========================================================

The templates are written here from the structure of the public ones (they are not copies):
tool calls, dates and multimodal parts are left out. Real vocabularies have 128k-152k entries;
these have ~400, which is what keeps a GRPO step on them within a second on a CPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers
from transformers import (AutoModelForCausalLM, DeepseekV3Config, GenerationConfig, LlamaConfig,
                          PreTrainedModel, PreTrainedTokenizerBase, Qwen2Config, Qwen3Config,
                          TokenizersBackend)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN_PATTERN
from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

# Llama 3 / DeepSeek split digits in runs of up to three (Qwen: one digit per token).
GROUPED_DIGITS_PATTERN = QWEN_PATTERN.replace(r"\p{N}|", r"\p{N}{1,3}|")

# Training text for the BPE merges: prose, arithmetic and LaTeX, as in math RL prompts.
CORPUS = [
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it.",
    "The assistant first thinks about the reasoning process in the mind and then provides the answer.",
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May? #### 72",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
    "How much did she earn? 12/60 = 0.2 per minute, 0.2 * 50 = 10. The answer is 10.",
    "Let x be a real number such that x^2 + 3x - 10 = 0. Then (x + 5)(x - 2) = 0, so x = 2 or x = -5.",
    "The sum of the first n positive integers is \\frac{n(n+1)}{2}, so the answer is \\boxed{5050}.",
    "Compute \\sqrt{16} + \\left(\\frac{1}{2}\\right)^2 = 4 + \\frac{1}{4} = \\dfrac{17}{4}.",
    "If the angle is 30^\\circ then \\sin(30^\\circ) = \\frac{1}{2} and \\cos(60^\\circ) = 0.5.",
    "<think>\nFirst, multiply 12 by 34: 12 * 30 = 360 and 12 * 4 = 48, so 360 + 48 = 408.\n</think>\n"
    "<answer>408</answer>",
    "We need to find the number of ways to choose 2 items from 5, which is \\binom{5}{2} = 10.",
    "Therefore, the final answer is $\\boxed{42}$. I hope it is correct.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    "Wait, let me check that again. 7 times 8 is 56, not 54. So the total is 56 + 4 = 60.",
]

QWEN_CHAT = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}{%- if message['role'] != 'system' %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

QWEN3_CHAT = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- set content = message['content'].split('</think>')[-1].lstrip('\\n') %}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

LLAMA3_CHAT = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def _deepseek_chat(think: bool) -> str:
    """DeepSeek-V3 layout; with ``think`` the R1 one: history answers lose their thinking and
    the generation prompt opens ``<think>`` (DeepSeek-R1 model card, usage recommendations)."""
    content = "message['content'].split('</think>')[-1]" if think else "message['content']"
    return (
        "{%- set ns = namespace(system='') %}"
        "{%- for message in messages %}{%- if message['role'] == 'system' %}"
        "{%- set ns.system = message['content'] %}{%- endif %}{%- endfor %}"
        "{{- bos_token + ns.system }}"
        "{%- for message in messages %}"
        "{%- if message['role'] == 'user' %}{{- '<｜User｜>' + message['content'] }}"
        "{%- elif message['role'] == 'assistant' %}{{- '<｜Assistant｜>' + " + content + " + '<｜end▁of▁sentence｜>' }}"
        "{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<｜Assistant｜>" + ("<think>\\n" if think else "") + "' }}{%- endif %}"
    )


@dataclass(frozen=True)
class Family:
    """One model family: its config class and how its tokenizer looks."""

    config_cls: type
    specials: tuple[str, ...]  # special tokens, appended after the BPE vocabulary in this order
    bos: str | None
    eos: str  # tokenizer.eos_token (end of an assistant turn for instruct models)
    pad: str | None  # None: the checkpoint has no pad token (Llama 3)
    eos_ids: tuple[str, ...]  # generation_config.eos_token_id, as tokens
    chat_template: str
    pattern: str = GROUPED_DIGITS_PATTERN
    qwen_tokenizer: bool = False  # transformers 5 rebuilds qwen2/qwen3 tokenizers as Qwen2Tokenizer
    tokenizer_class: str = "PreTrainedTokenizerFast"  # what tokenizer_config.json declares
    added: tuple[str, ...] = ()  # added non-special tokens (``<think>`` in Qwen3 and DeepSeek)
    sampling: dict = field(default_factory=dict)  # sampling defaults shipped in generation_config.json


_QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_DS_SPECIALS = ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>")

FAMILIES: dict[str, Family] = {
    "qwen2": Family(Qwen2Config, _QWEN_SPECIALS, None, "<|im_end|>", "<|endoftext|>",
                    ("<|im_end|>", "<|endoftext|>"), QWEN_CHAT, QWEN_PATTERN, True, "Qwen2Tokenizer",
                    sampling=dict(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05)),
    "qwen3": Family(Qwen3Config, _QWEN_SPECIALS, None, "<|im_end|>", "<|endoftext|>",
                    ("<|im_end|>", "<|endoftext|>"), QWEN3_CHAT, QWEN_PATTERN, True, "Qwen2Tokenizer",
                    added=("<think>", "</think>"),
                    sampling=dict(do_sample=True, temperature=0.6, top_p=0.95, top_k=20)),
    "llama3": Family(LlamaConfig, ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                   "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>"),
                     "<|begin_of_text|>", "<|eot_id|>", None, ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
                     LLAMA3_CHAT, sampling=dict(do_sample=True, temperature=0.6, top_p=0.9)),
    "deepseek_v3": Family(DeepseekV3Config, _DS_SPECIALS, _DS_SPECIALS[0], _DS_SPECIALS[1], _DS_SPECIALS[1],
                          (_DS_SPECIALS[1],), _deepseek_chat(think=False), tokenizer_class="LlamaTokenizerFast",
                          added=("<think>", "</think>"), sampling=dict(do_sample=True, temperature=0.6, top_p=0.95)),
    "r1_distill_qwen": Family(Qwen2Config, _DS_SPECIALS, _DS_SPECIALS[0], _DS_SPECIALS[1], _DS_SPECIALS[1],
                              (_DS_SPECIALS[1],), _deepseek_chat(think=True), QWEN_PATTERN, True,
                              "LlamaTokenizerFast", added=("<think>", "</think>"),
                              sampling=dict(do_sample=True, temperature=0.6, top_p=0.95)),
}


def _bpe(pattern: str, vocab_size: int) -> Tokenizer:
    """A byte-level BPE trained on ``CORPUS`` with the pre-tokenisation Qwen2Tokenizer rebuilds
    (NFC, regex split, byte-level), so that a reload through Qwen2Tokenizer is exact."""
    core = Tokenizer(models.BPE())
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    core.train_from_iterator(CORPUS, trainer)
    return core


def build_tokenizer(family: str, vocab_size: int = 384) -> PreTrainedTokenizerBase:
    """The family's tokenizer: byte-level BPE (``vocab_size`` before special tokens) + specials +
    chat template, padding on the left (generation). Reloads exactly through AutoTokenizer."""
    fam = FAMILIES[family]
    core = _bpe(fam.pattern, vocab_size)
    specials = dict(bos_token=fam.bos, eos_token=fam.eos, pad_token=fam.pad)
    if fam.qwen_tokenizer:
        model_json = json.loads(core.to_str())["model"]  # the trained vocab and merges
        merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model_json["merges"]]
        vocab = dict(model_json["vocab"])
        vocab.update({t: len(vocab) + i for i, t in enumerate(fam.specials)})  # family order of special ids
        tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, **specials)
    else:
        core.add_special_tokens(list(fam.specials))
        tok = TokenizersBackend(tokenizer_object=core, **specials)
    tok.add_special_tokens({"additional_special_tokens": [t for t in fam.specials if t not in specials.values()]})
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in fam.added])
    if fam.bos is not None:  # the public Llama 3 and DeepSeek tokenizers put BOS in front themselves
        bos_id = tok.convert_tokens_to_ids(fam.bos)
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{fam.bos} $A", pair=f"{fam.bos} $A {fam.bos} $B", special_tokens=[(fam.bos, bos_id)])
    tok.chat_template = fam.chat_template
    tok.padding_side = "left"
    return tok


def build_tiny(family: str, seed: int = 0, hidden_size: int = 32, num_layers: int = 2,
               vocab_size: int = 384) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A random-initialised ``family`` model (fp32, ~30-50k parameters) and its tokenizer.

    ``num_layers`` >= 2 for ``deepseek_v3``: layer 0 is dense (``first_k_dense_replace=1``),
    the others MoE (4 routed experts, 2 per token, 1 shared; sigmoid router in 2 groups, 1 kept, with a
    bias: ``topk_method="noaux_tc"``, ``scoring_func="sigmoid"`` in its config, as DeepSeek-V3's has).
    Raises KeyError for an unknown family (see ``FAMILIES``).
    """
    if family not in FAMILIES:
        raise KeyError(f"family {family!r}: expected one of {', '.join(FAMILIES)}")
    fam = FAMILIES[family]
    tok = build_tokenizer(family, vocab_size)
    ids = dict(bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
               eos_token_id=[tok.convert_tokens_to_ids(t) for t in fam.eos_ids])
    heads = 4
    sizes = dict(vocab_size=len(tok), hidden_size=hidden_size, num_hidden_layers=num_layers,
                 num_attention_heads=heads, intermediate_size=2 * hidden_size, max_position_embeddings=512,
                 attention_dropout=0.0)
    if fam.config_cls is DeepseekV3Config:  # MLA: low-rank q and kv, rope on a head slice (V3 report §2.1.1)
        head = hidden_size // heads
        sizes.update(num_key_value_heads=heads, q_lora_rank=hidden_size // 2, kv_lora_rank=hidden_size // 2,
                     qk_nope_head_dim=head, qk_rope_head_dim=head, v_head_dim=head, head_dim=head,
                     first_k_dense_replace=1, n_routed_experts=4, num_experts_per_tok=2, n_group=2, topk_group=1,
                     n_shared_experts=1, moe_intermediate_size=hidden_size // 2, tie_word_embeddings=False,
                     # what transformers' DeepseekV3 always computes, written out as the public config.json
                     # does: vLLM reads them (without them it routes by softmax and has no router bias)
                     topk_method="noaux_tc", scoring_func="sigmoid")
    else:
        sizes.update(num_key_value_heads=heads // 2, head_dim=hidden_size // heads, tie_word_embeddings=True)
    config = fam.config_cls(**sizes, **ids)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(**ids, **fam.sampling)
    return model, tok


def save_tiny(family: str, directory: str | Path, seed: int = 0, **sizes) -> Path:
    """Write a tiny ``family`` checkpoint as a download looks: config.json, model.safetensors,
    generation_config.json, tokenizer.json, tokenizer_config.json (with the class the public
    checkpoints declare) and chat_template.jinja. Returns the directory."""
    directory = Path(directory)
    model, tok = build_tiny(family, seed, **sizes)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    cfg_path = directory / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg["tokenizer_class"] = FAMILIES[family].tokenizer_class
    tok_cfg.pop("padding_side", None)  # public checkpoints leave it to the default (right)
    cfg_path.write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False))
    return directory
