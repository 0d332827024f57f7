"""Language-consistency reward (R1 §2.3.2) and the readability stand-in, on hand-worked cases."""

import pytest
import torch

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


def test_language_weight_is_summed_into_the_total_and_zero_weight_changes_nothing():
    from r1.rl.trainer import score
    from r1.tasks.multiplication import MultiplicationTask
    task = MultiplicationTask(2, 2)
    texts = ["<think>\n12*4=48\n</think>\n<answer>48</answer>",  # right, well-formed, English script
             "<think>\n我想 12*4=48\n</think>\n<answer>48</answer>",  # right, but the thinking is in Chinese
             "<think>\n</think>\n<answer>48</answer>"]  # right, empty thinking: no consistency credit in RL
    answers = ["48", "48", "48"]
    plain = score(task, texts, answers, 1.0)
    assert plain.language is None and plain.total.tolist() == [2.0, 2.0, 2.0]
    weighted = score(task, texts, answers, 1.0, language_weight=0.5)
    # thinking of text 2: words "我", "想" (CJK, one word per character) -> 0 of 2 Latin words; digits are not letters
    assert weighted.language.tolist() == [1.0, 0.0, 0.0]  # skipping the thinking does not pay (as a metric: 1.0)
    assert weighted.total.tolist() == [2.5, 2.0, 2.0]
    assert language_reward(texts[2]) == 1.0 and readability_reward(texts[2]) == 1.0
    readable = score(task, texts, answers, 1.0, language_weight=0.5, consistency="readability")
    assert readable.language.tolist() == [1.0, 0.0, 0.0]  # line 2 "我想 12*4=48" is not in the trace grammar
    assert torch.equal(weighted.accuracy, plain.accuracy) and torch.equal(weighted.format, plain.format)


def test_rl_run_logs_the_consistency_reward(tmp_path):
    import json

    from r1.cli import main
    from test_run import MICRO
    assert main(["run", *MICRO, "rl_steps=2", "language_weight=0.5", "consistency_reward=readability",
                 f"runs_dir={tmp_path}", "name=lang"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "lang" / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["reward/language"] <= 1.0 for r in rows)
    assert main(["run", *MICRO, "language=xx", f"runs_dir={tmp_path}"]) == 2
