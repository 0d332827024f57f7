"""Prompt formats: how a question becomes the text the policy continues.

==============  ==========================================================================
format          what the policy sees
==============  ==========================================================================
``r1_zero``     the plain R1-Zero template (DeepSeek-R1, arXiv 2501.12948, Table 1), for
                base models: no chat template, the completion is expected to open
                ``<think>`` itself and answer in ``<answer> </answer>``.
``chat``        the tokenizer's own chat template (instruct models), optional system
                prompt and an instruction after the question, e.g. :data:`BOXED`.
``chat_think``  the chat template with the prompt ending inside an open ``<think>``: the
                R1-distill convention (their template already ends with ``<think>\\n``;
                for other templates it is appended), so the completion starts in the thinking.
==============  ==========================================================================

Two invariants, for every family:

* Exactly one BOS. A rendered template that already starts with BOS is kept as is; a text without
  it gets one when the tokenizer has a BOS token (Llama 3, DeepSeek); Qwen has none. The text is
  then tokenised with ``add_special_tokens=False`` (as ``generate_rollouts`` does), so the
  tokenizer never adds a second one.
* A grader sees the whole answer: when the prompt opened ``<think>``, ``Prompt.completion_prefix``
  holds that opening and :func:`grading_text` puts it back in front of the completion before the
  answer after ``</think>`` is extracted.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

FORMATS = ("r1_zero", "chat", "chat_think")

# DeepSeek-R1 (arXiv 2501.12948) Table 1, with {question} for the paper's "prompt".
R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
    "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
    "User: {question}. Assistant:")

# The instruction DeepSeek recommends for math (DeepSeek-R1 model card, usage recommendations).
BOXED = "Please reason step by step, and put your final answer within \\boxed{}."

THINK_OPEN = "<think>\n"


class PromptFormatError(ValueError):
    """A prompt format cannot be rendered with this tokenizer; the message is one line."""


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt and what a grader must know about it."""

    text: str  # the prompt, BOS included exactly once when the tokenizer has one
    completion_prefix: str = ""  # text the prompt opened that belongs to the answer ("<think>\n" or "")

    @property
    def opens_think(self) -> bool:
        """True when the completion starts inside ``<think>`` (prepend ``completion_prefix`` to grade)."""
        return bool(self.completion_prefix)


def render_prompt(tokenizer: PreTrainedTokenizerBase, question: str, fmt: str = "chat", system: str | None = None,
                  instruction: str | None = None, **template_kwargs) -> Prompt:
    """The prompt for ``question`` in format ``fmt`` (one of :data:`FORMATS`).

    Args:
        system: a system message (chat formats only; DeepSeek recommends none for R1).
        instruction: appended to the question after a newline, e.g. :data:`BOXED`.
        template_kwargs: passed to the chat template, e.g. ``enable_thinking=False`` for Qwen3.
    Raises:
        PromptFormatError: unknown format, a chat format on a tokenizer without a chat template,
            or a system prompt with ``r1_zero``.
    """
    if fmt not in FORMATS:
        raise PromptFormatError(f"prompt format {fmt!r}: expected one of {', '.join(FORMATS)}")
    content = question if not instruction else f"{question}\n{instruction}"
    if fmt == "r1_zero":
        if system is not None:
            raise PromptFormatError("prompt format 'r1_zero' takes no system prompt (it is plain text)")
        return Prompt(with_bos(tokenizer, R1_ZERO_TEMPLATE.format(question=content)))
    if not getattr(tokenizer, "chat_template", None):
        raise PromptFormatError(f"prompt format {fmt!r}: the tokenizer has no chat template "
                                "(a base model?); use 'r1_zero'")
    messages = ([{"role": "system", "content": system}] if system is not None else []) + \
        [{"role": "user", "content": content}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **template_kwargs)
    if fmt == "chat_think" and not text.endswith(THINK_OPEN):
        text += THINK_OPEN
    prefix = THINK_OPEN if text.endswith(THINK_OPEN) else ""  # R1-distill templates open it even in "chat"
    return Prompt(with_bos(tokenizer, text), prefix)


def with_bos(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    """``text`` starting with exactly one BOS when the tokenizer has one, else unchanged."""
    bos = tokenizer.bos_token
    if not bos:
        return text
    while text.startswith(bos + bos):  # a template that adds BOS on top of a BOS already in the text
        text = text[len(bos):]
    return text if text.startswith(bos) else bos + text


def prompt_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a prompt with exactly one leading BOS (when the tokenizer has one)."""
    return tokenizer(with_bos(tokenizer, text), add_special_tokens=False).input_ids


def grading_text(prompt: Prompt, completion: str) -> str:
    """The completion as a grader should read it: with the ``<think>`` the prompt opened."""
    return prompt.completion_prefix + completion


def prompt_for(tokenizer: PreTrainedTokenizerBase, question: str, cfg) -> Prompt:
    """The prompt for ``question`` as a run's config asks (``prompt_format``, ``system_prompt``, ``instruction``).

    ``prompt_format="auto"`` is ``chat`` when the tokenizer has a chat template (the tiny policy's
    shortened R1-Zero template, an instruct model's own) and ``r1_zero`` otherwise (a base model).
    Raises:
        PromptFormatError: as :func:`render_prompt`.
    """
    fmt = cfg.prompt_format
    if fmt == "auto":
        fmt = "chat" if getattr(tokenizer, "chat_template", None) else "r1_zero"
    return render_prompt(tokenizer, question, fmt, system=cfg.system_prompt or None,
                         instruction=cfg.instruction or None)
