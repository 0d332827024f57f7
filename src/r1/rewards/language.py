"""Language-consistency reward (DeepSeek-R1, arXiv 2501.12948, §2.3.2) and a readability stand-in.

R1 adds to the accuracy reward, during reasoning-oriented RL, "the proportion of target language
words in the CoT", because R1-Zero's chains of thought mixed languages (mostly Chinese and English).
The paper does not say how words or languages are detected; here it is computed as follows.

**Thinking only.** The text scored is the chain of thought (:func:`thinking_of`): inside
``<think>...</think>``; or before ``</think>`` when the prompt opened ``<think>`` (R1-distill); or
after an unclosed ``<think>``; '' when there is no think tag at all. The answer is never scored.

**Words, by script** (:func:`words`). Each character's script is the first word of its Unicode name
(``unicodedata.name``): ``LATIN SMALL LETTER A`` is LATIN, ``CJK UNIFIED IDEOGRAPH-4E2D`` is CJK,
``CYRILLIC ...``, ``GREEK ...``, ``HIRAGANA``, ``HANGUL``, ``ARABIC`` ...; ``FULLWIDTH LATIN ...`` is
LATIN. Only letters (Unicode category ``L*``) belong to a script; digits, punctuation, symbols,
mathematical operators and whitespace are neutral and belong to no word. A word is then

* one character for the scripts written without spaces between words (CJK ideographs, Hiragana,
  Katakana, Thai: ``SCRIPTS_PER_CHARACTER``): ``中文`` is two words, as CJK word counts usually go;
* otherwise a maximal run of letters of the same script: ``hello`` is one word, ``x2y`` two
  (the digit splits it), ``abcабв`` two (Latin then Cyrillic).

**Share** (:func:`language_share`): words whose script is one of the target language's scripts
(``LANGUAGE_SCRIPTS``: ``en`` = LATIN, ``zh`` = CJK, ``ja`` = CJK + kana, ``ru`` = CYRILLIC, ...),
divided by all words. Worked example: ``"so 答案 is 42"`` has the words ``so``, ``答``, ``案``,
``is`` (42 is neutral): the English share is 2/4 = 0.5 and the Chinese share 2/4 = 0.5.

Limits, by construction: the script, not the language, is detected, so French inside English CoT
counts as English; a Greek letter used as a symbol (``θ``, ``π``) counts as a non-Latin word.

:func:`language_reward` is the share on the thinking, 1.0 when the thinking holds no word at all
(nothing is mixed; accuracy and format judge the rest), and 1.0 for an empty thinking as a measurement. As an
RL reward that last 1.0 would pay for skipping the
chain of thought (a policy that answers directly earns it with no reasoning at all), so the trainer asks
for 0.0 there (``empty=0.0``): consistency credit needs a chain of thought. R1 sums it with the accuracy reward
(weight 1 in the paper, "directly summing"); see the module docstring of ``r1.sample`` for its use
as the mixed-language filter of rejection sampling.

**Readability stand-in for the tiny CPU demo** (:func:`readability_reward`). A character-level
model of 1M parameters on ``47*38`` writes no natural language to mix, so its readability is
measured by the multiplication trace grammar (``r1.tasks.multiplication``): the share of the
non-empty thinking lines that are a partial product ``47*30=1200+210=1410`` (or ``47*3=141`` when
``a`` has one digit) or a place-value addition ``1410+300=1710``. Only the form is checked, not the
arithmetic (accuracy is rewarded separately). Empty thinking scores 1.0, as above. This is a
stand-in, not R1's reward: it asks "is the CoT written in the task's readable format".
"""

from __future__ import annotations

import re
import unicodedata

LANGUAGE_SCRIPTS = {  # target language -> the scripts its words are written in
    "en": ("LATIN",), "fr": ("LATIN",), "de": ("LATIN",), "es": ("LATIN",),
    "zh": ("CJK",), "ja": ("CJK", "HIRAGANA", "KATAKANA"), "ko": ("HANGUL", "CJK"),
    "ru": ("CYRILLIC",), "el": ("GREEK",), "ar": ("ARABIC",), "he": ("HEBREW",), "hi": ("DEVANAGARI",),
    "th": ("THAI",),
}
SCRIPTS_PER_CHARACTER = ("CJK", "HIRAGANA", "KATAKANA", "THAI")  # written without spaces: one character = one word
_LINE_PRODUCT = re.compile(r"\d+\*\d+=(?:\d+(?:\+\d+)+=)?\d+")  # 47*30=1200+210=1410, 47*3=141
_LINE_SUM = re.compile(r"\d+\+\d+=\d+")  # 1410+300=1710


def script(ch: str) -> str | None:
    """The script of one character (first word of its Unicode name; FULLWIDTH/HALFWIDTH forms map to the
    script they widen), or None for a non-letter (digit, punctuation, symbol, space) or an unnamed one."""
    if not unicodedata.category(ch).startswith("L"):
        return None
    name = unicodedata.name(ch, "")
    if not name:
        return None
    first, _, rest = name.partition(" ")
    if first in ("FULLWIDTH", "HALFWIDTH") and rest:
        first = rest.split(" ", 1)[0]
    return first


def words(text: str) -> list[tuple[str, str]]:
    """``(word, script)`` pairs of ``text``, in order (rules in the module docstring)."""
    out: list[tuple[str, str]] = []
    current, current_script = "", None
    for ch in text:
        s = script(ch)
        if current and (s != current_script or s in SCRIPTS_PER_CHARACTER):
            out.append((current, current_script))
            current, current_script = "", None
        if s is not None:
            current, current_script = current + ch, s
    if current:
        out.append((current, current_script))
    return out


def language_share(text: str, target: str = "en") -> float | None:
    """Share of the words of ``text`` written in a script of ``target`` (a key of ``LANGUAGE_SCRIPTS``, or a
    script name such as ``"LATIN"``); None when ``text`` holds no word.

    Raises:
        ValueError: ``target`` is neither a known language nor a script name in capitals.
    """
    scripts = _scripts(target)
    found = words(text)
    if not found:
        return None
    return sum(s in scripts for _, s in found) / len(found)


def thinking_of(completion: str) -> str:
    """The chain of thought of ``completion`` (rules in the module docstring)."""
    if "</think>" in completion:
        head = completion.split("</think>", 1)[0]
        return head.split("<think>", 1)[1] if "<think>" in head else head
    return completion.split("<think>", 1)[1] if "<think>" in completion else ""


def language_reward(completion: str, target: str = "en", empty: float = 1.0) -> float:
    """R1 §2.3.2 language consistency: the share of target-language words in the thinking, in [0, 1];
    1.0 when the thinking holds no word (``12*4=48``: nothing is mixed); ``empty`` when there is no thinking
    at all (1.0 as a measurement; the RL reward passes 0.0, so that skipping the chain of thought cannot
    earn it). ``completion`` is the decoded text without EOS (as graded).

    Raises:
        ValueError: unknown ``target``.
    """
    thought = thinking_of(completion)
    if not thought.strip():
        _scripts(target)  # still refuse an unknown target
        return empty
    share = language_share(thought, target)
    return 1.0 if share is None else share


def readability_reward(completion: str, empty: float = 1.0) -> float:
    """Tiny-demo stand-in for readability: the share of non-empty thinking lines in the multiplication trace
    grammar (module docstring), in [0, 1]; ``empty`` when the thinking has no non-empty line (1.0 as a
    measurement; 0.0 as the RL reward, see :func:`language_reward`)."""
    lines = [line.strip() for line in thinking_of(completion).splitlines() if line.strip()]
    if not lines:
        return empty
    return sum(bool(_LINE_PRODUCT.fullmatch(x) or _LINE_SUM.fullmatch(x)) for x in lines) / len(lines)


def _scripts(target: str) -> tuple[str, ...]:
    if target in LANGUAGE_SCRIPTS:
        return LANGUAGE_SCRIPTS[target]
    if target.isupper() and target.isalpha():
        return (target,)
    raise ValueError(f"language {target!r}: expected one of {', '.join(LANGUAGE_SCRIPTS)} or a Unicode script "
                     "name in capitals such as 'LATIN'")
