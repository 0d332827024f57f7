"""Prompt formats and tokenizers of the tiny model families: round trips, one BOS, the think convention."""

import pytest
import torch
from transformers import AutoTokenizer

from r1.models.prompts import (BOXED, FORMATS, R1_ZERO_TEMPLATE, Prompt, PromptFormatError, grading_text,
                               prompt_ids, render_prompt, with_bos)
from r1.models.tiny import FAMILIES, build_tokenizer
from r1.rollout.engine import completion_mask

SAMPLES = [
    "Natalia sold 48 clips in April and half as many in May: 48 + 24 = 72.\n\n  indented\tand tabbed",
    "naïve café — \\boxed{\\frac{1}{2}} and 30^\\circ, 1234567 × 89",
    "<think>\nreasoning\n</think>\n<answer>408</answer>",
]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """Each family's tokenizer as built and as reloaded by plain AutoTokenizer from a saved checkpoint."""
    from r1.models.tiny import save_tiny

    out = {}
    for family in FAMILIES:
        path = save_tiny(family, tmp_path_factory.mktemp(family))
        out[family] = (build_tokenizer(family), AutoTokenizer.from_pretrained(path))
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tokenizer_reloads_exactly_through_autotokenizer(tokenizers, family):
    built, loaded = tokenizers[family]
    fam = FAMILIES[family]
    if fam.qwen_tokenizer:  # transformers 5 rebuilds qwen2 checkpoints' tokenizers as Qwen2Tokenizer
        assert type(loaded).__name__ == "Qwen2Tokenizer"
    assert len(loaded) == len(built)
    for token in fam.specials + fam.added:
        assert loaded.convert_tokens_to_ids(token) == built.convert_tokens_to_ids(token), token
    chat = built.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], tokenize=False,
                                     add_generation_prompt=True)
    for text in SAMPLES + [chat]:
        ids = loaded(text, add_special_tokens=False).input_ids
        assert ids == built(text, add_special_tokens=False).input_ids
        assert loaded.decode(ids) == text  # byte-level: lossless
    for token in fam.specials:  # a special token in the text is one id, never split into bytes
        assert loaded(token, add_special_tokens=False).input_ids == [loaded.convert_tokens_to_ids(token)]
    assert loaded.eos_token == fam.eos and loaded.bos_token == fam.bos and loaded.pad_token == fam.pad


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("fmt", FORMATS)
def test_exactly_one_bos_in_every_format(tokenizers, family, fmt):
    _, tok = tokenizers[family]
    prompt = render_prompt(tok, "What is 2+3?", fmt, instruction=BOXED)
    ids = prompt_ids(tok, prompt.text)
    plain = tok(prompt.text, add_special_tokens=False).input_ids  # what generate_rollouts does
    assert ids == plain
    if tok.bos_token is None:  # Qwen: no BOS at all
        assert FAMILIES[family].bos is None
    else:
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
        if fmt != "r1_zero":  # the template writes BOS itself: the tokenizer's own one would be a second
            assert tok(prompt.text).input_ids[:2] == [tok.bos_token_id] * 2


def test_with_bos_adds_once_and_never_twice(tokenizers):
    _, tok = tokenizers["llama3"]
    bos = tok.bos_token
    assert with_bos(tok, "x") == bos + "x"
    assert with_bos(tok, bos + "x") == bos + "x"
    assert with_bos(tok, bos + bos + "x") == bos + "x"
    _, qwen = tokenizers["qwen2"]
    assert with_bos(qwen, "x") == "x"


def test_r1_zero_is_the_paper_template(tokenizers):
    _, tok = tokenizers["qwen2"]
    prompt = render_prompt(tok, "What is 2+3?", "r1_zero")
    assert prompt.text == R1_ZERO_TEMPLATE.format(question="What is 2+3?")
    assert prompt.text.startswith("A conversation between User and Assistant.")
    assert "<think> </think> and <answer> </answer> tags" in prompt.text
    assert prompt.text.endswith("User: What is 2+3?. Assistant:") and not prompt.opens_think
    with pytest.raises(PromptFormatError, match="no system prompt"):
        render_prompt(tok, "q", "r1_zero", system="You are helpful.")


def test_chat_formats_and_the_think_convention(tokenizers):
    _, qwen = tokenizers["qwen2"]
    chat = render_prompt(qwen, "What is 2+3?", "chat", instruction=BOXED)
    assert chat.text.endswith("<|im_start|>user\nWhat is 2+3?\n" + BOXED + "<|im_end|>\n<|im_start|>assistant\n")
    assert "You are Qwen" in chat.text and not chat.opens_think  # Qwen2.5's default system prompt
    own = render_prompt(qwen, "q", "chat", system="Answer briefly.")
    assert own.text.startswith("<|im_start|>system\nAnswer briefly.<|im_end|>") and "You are Qwen" not in own.text
    think = render_prompt(qwen, "q", "chat_think")
    assert think.text == render_prompt(qwen, "q", "chat").text + "<think>\n" and think.opens_think

    _, distill = tokenizers["r1_distill_qwen"]  # the R1-distill template opens <think> by itself
    for fmt in ("chat", "chat_think"):
        p = render_prompt(distill, "q", fmt)
        assert p.opens_think and p.text == "<｜begin▁of▁sentence｜><｜User｜>q<｜Assistant｜><think>\n"
    assert grading_text(p, "2+3=5\n</think>\n\\boxed{5}") == "<think>\n2+3=5\n</think>\n\\boxed{5}"
    assert grading_text(Prompt("x"), "done") == "done"

    _, qwen3 = tokenizers["qwen3"]
    off = render_prompt(qwen3, "q", "chat", enable_thinking=False)  # Qwen3's switch: an empty think block
    assert off.text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") and not off.opens_think
    _, ds = tokenizers["deepseek_v3"]
    assert render_prompt(ds, "q", "chat", system="S").text == "<｜begin▁of▁sentence｜>S<｜User｜>q<｜Assistant｜>"


def test_format_errors(tokenizers):
    _, tok = tokenizers["llama3"]
    with pytest.raises(PromptFormatError, match="expected one of r1_zero, chat, chat_think"):
        render_prompt(tok, "q", "alpaca")
    bare = build_tokenizer("llama3")
    bare.chat_template = None
    with pytest.raises(PromptFormatError, match="no chat template"):
        render_prompt(bare, "q", "chat")
    assert render_prompt(bare, "q", "r1_zero").text.startswith("<|begin_of_text|>A conversation")


def test_completion_mask_several_eos_and_pad_equal_to_eos():
    # Qwen-like: EOS ids {3 (<|im_end|>), 4 (<|endoftext|>)}, pad = 4 = an EOS id.
    E1, E2, PAD = 3, 4, 4
    ids = torch.tensor([[5, 7, E1, PAD, PAD],   # ends at <|im_end|>, then padding
                        [5, E2, 9, E1, PAD],    # ends at the first EOS, whichever it is
                        [PAD, 6, 7, 8, 9],      # the pad id first: it is an EOS id, so the row ends there
                        [5, 6, 7, 8, 9]])       # no EOS: truncated, every token a target
    mask, truncated = completion_mask(ids, [E1, E2])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert truncated.tolist() == [False, False, False, True]
    single, _ = completion_mask(ids, E1)  # one id, as before
    assert single.tolist()[1] == [1, 1, 1, 1, 0]
