import pytest
import torch

from coldstart.hints import DEFAULT_HINTS, hint_point, hinted_prefix, hinted_prefixes, insertion_points

TRACE = "<think>4+7=11 c1 1\nWait, 4+7=11. Alternatively 7+4=11\n2+3+1=6 61</think><answer>61</answer>"


def test_insertion_points_are_reflection_words_then_the_end_of_thinking():
    # offsets counted by hand: "<think>" is 7 chars, "4+7=11 c1 1\n" 12 more -> "Wait" at 19;
    # "Wait, 4+7=11. " is 14 chars -> "Alternatively" at 33; "Alternatively 7+4=11\n" is 21 and
    # "2+3+1=6 61" 10 more -> "</think>" at 33 + 21 + 10 = 64
    assert insertion_points(TRACE) == [19, 33, 64]
    assert TRACE[64:72] == "</think>"
    assert insertion_points(TRACE, words=()) == [64]
    assert insertion_points(TRACE, words=("Wait",)) == [19, 64]


def test_reflection_words_after_the_think_block_or_inside_words_do_not_count():
    assert insertion_points("<think>Waiter</think> Wait") == [13]
    assert insertion_points("<think>wait</think>") == [11]  # case-sensitive, as the paper's "Wait"
    assert insertion_points("<think>Wait 1+1") == []  # no </think>: truncated, nothing to continue


def test_hint_point_is_the_first_insertion_point():
    assert hint_point(TRACE) == 19
    assert hint_point("<think>2+2=4</think><answer>4</answer>") == 12
    assert hint_point("<answer>4</answer>") is None


def test_hinted_prefix_cuts_there_and_appends_the_hint_on_its_own_line():
    assert hinted_prefix(TRACE, "Wait, let me check.") == "<think>4+7=11 c1 1\nWait, let me check.\n"
    assert hinted_prefix("<think>2+2=4</think><answer>4</answer>", "H.") == "<think>2+2=4\nH.\n"
    assert hinted_prefix("<think></think><answer>4</answer>", "H.") == "<think>H.\n"  # after a tag: no newline
    assert hinted_prefix("<answer>4</answer>", "H.") is None


def test_hinted_prefixes_draw_hints_from_the_library_with_the_generator():
    texts = ["<think>a</think>", "no tags", "<think>b</think>"]
    gen = torch.Generator().manual_seed(3)
    picks = torch.randint(2, (3,), generator=torch.Generator().manual_seed(3)).tolist()
    out = hinted_prefixes(texts, ["H0", "H1"], gen)
    assert out == [f"<think>a\nH{picks[0]}\n", None, f"<think>b\nH{picks[2]}\n"]
    with pytest.raises(ValueError, match="empty"):
        hinted_prefixes(texts, [])
    assert all(h.startswith(("Wait", "Alternatively")) for h in DEFAULT_HINTS)
