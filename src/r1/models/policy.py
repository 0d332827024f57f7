"""Tiny decoder policies built from Hugging Face configs with random initialisation."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel


def build_policy(cfg, tokenizer, seed: int) -> PreTrainedModel:
    """A randomly initialised Llama-class causal LM sized by ``cfg``.

    Why Llama and not Qwen2: transformers 5 maps every ``qwen2`` checkpoint to
    ``Qwen2Tokenizer`` in ``AutoTokenizer`` (MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS),
    which rebuilds a byte-level pipeline and silently drops the spaces and
    newlines of our character-level tokenizer. A ``llama`` checkpoint keeps the
    saved tokenizer, so it reloads exactly with plain ``AutoTokenizer``.

    The defaults (hidden 128, 4 layers, MLP 384, vocabulary 105) give ~0.8M
    parameters, which trains at ~15k tokens/s on 2 CPU cores (measured with torch 2.13).
    Input and output embeddings are tied, as in small Qwen2 models.
    """
    kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    config = LlamaConfig(**kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
