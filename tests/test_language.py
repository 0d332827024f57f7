"""Language-consistency reward (R1 §2.3.2) and the readability stand-in, on hand-worked cases."""

import pytest

from r1.rewards.language import language_reward, language_share, readability_reward, script, thinking_of, words


def test_scripts_of_characters():
    assert [script(c) for c in "aЖ中あア한αﾀＡ"] == ["LATIN", "CYRILLIC", "CJK", "HIRAGANA", "KATAKANA", "HANGUL",
                                                   "GREEK", "KATAKANA", "LATIN"]
    assert [script(c) for c in "7 .+=，"] == [None] * 6  # digits, space, punctuation, symbols: neutral


def test_words_split_by_script_and_cjk_per_character():
    assert words("so 答案 is 42") == [("so", "LATIN"), ("答", "CJK"), ("案", "CJK"), ("is", "LATIN")]
    assert words("x2y abcабв") == [("x", "LATIN"), ("y", "LATIN"), ("abc", "LATIN"), ("абв", "CYRILLIC")]
    # "so 答案 is 42": words so, 答, 案, is (42 is neutral) -> 2/4 English, 2/4 Chinese
    assert language_share("so 答案 is 42", "en") == 0.5
    assert language_share("so 答案 is 42", "zh") == 0.5
    assert language_share("47*8=376", "en") is None  # no word at all


def test_language_reward_on_mixed_thinking_only():
    # thinking words: First, we, compute, the, 乘, 积, now -> 5 Latin of 7; 2 CJK of 7
    text = "<think>\nFirst we compute the 乘积 now\n</think>\n<answer>答案 5</answer>"
    assert language_reward(text) == pytest.approx(5 / 7)
    assert language_reward(text, "zh") == pytest.approx(2 / 7)
    # the answer is never scored; no thinking words -> 1.0
    assert language_reward("<think>\nwe add\n</think>\n<answer>五</answer>") == 1.0
    assert language_reward("<think>\n47*8=376\n</think>\n<answer>376</answer>") == 1.0
    # prompt-opened <think> (R1-distill): the text before </think> is the thinking; привет world -> 1/2
    assert language_reward("привет world</think>\\boxed{5}") == 0.5
    assert thinking_of("<think>\nunclosed 中") == "\nunclosed 中"
    assert language_reward("no tags at all 中文") == 1.0  # no thinking: nothing scored
    with pytest.raises(ValueError, match="language 'xx'"):
        language_share("abc", "xx")
    assert language_share("abc ЖЖ", "CYRILLIC") == 0.5  # a script name works as a target


def test_readability_stand_in_counts_trace_grammar_lines():
    good = "<think>\n47*8=320+56=376\n47*30=1200+210=1410\n1410+300=1710\n1710+70=1780\n1780+6=1786\n</think>\n" \
           "<answer>1786</answer>"
    assert readability_reward(good) == 1.0
    # 4 non-empty lines, one not in the grammar -> 3/4
    bad = "<think>\n7*38=266\nhmm 47 times 38\n47*30=1410\n1410+266=1676\n</think>\n<answer>1676</answer>"
    assert readability_reward(bad) == 0.75
    assert readability_reward("<think>\n</think>\n<answer>1786</answer>") == 1.0  # nothing to read
    assert readability_reward("<think>\n47*8=320+=376\n</think>") == 0.0
