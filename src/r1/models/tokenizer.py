"""A character-level tokenizer built locally with `tokenizers`, saved as a HF fast tokenizer.

Every printable ASCII character, the newline and the two CJK operator words of the
multiplication corpus's second notation (``乘`` times, ``加`` plus) is one token; the reasoning tags
are single special tokens so that a 1M-parameter policy can emit them reliably.
The chat template is the R1-Zero template (DeepSeek-R1, arXiv 2501.12948, Table 1)
shortened to fit a character-level model: ``User: {question}\\nAssistant: `` and
the completion starts with ``<think>``.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, EOS = "<pad>", "<eos>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
SPECIAL_TOKENS = [PAD, EOS, THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE]
UNK = "<unk>"
SECOND_NOTATION = ["乘", "加"]  # "times", "plus": r1.tasks.multiplication writes mixed-language lines with them

# Jinja chat template: the R1-Zero prompt, shortened. The assistant turn ends with EOS.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}User: {{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}Assistant: {{ message['content'] }}{{ eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Return the character-level fast tokenizer (vocabulary of 105 tokens).

    Ids 0..5 are the special tokens in ``SPECIAL_TOKENS`` order, then ``<unk>``,
    newline, the 95 printable ASCII characters and ``SECOND_NOTATION`` (``乘``, ``加``). ``decode`` is lossless for
    text made of those characters.
    """
    chars = ["\n"] + [c for c in string.printable if c.isprintable()] + SECOND_NOTATION
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + [UNK] + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens(SPECIAL_TOKENS + [UNK])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=[THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE],
        clean_up_tokenization_spaces=False,
        padding_side="left",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def prompt_text(tokenizer: PreTrainedTokenizerFast, question: str) -> str:
    """The R1-Zero prompt for ``question``, rendered by the tokenizer's chat template."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
