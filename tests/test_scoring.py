"""erasekit.scoring: ROUGE-L, the cloze rule, refusal and degeneration detectors, response categories."""

import pytest

from erasebook.world import REFUSALS
from erasekit import scoring as sc


def test_rouge_l_values():
    assert sc.rouge_l("This person works as a baker.", "This person works as a baker.") == 1.0
    # tokens: this person work as a baker | ... pilot -> LCS 5 of 6 both ways
    assert sc.rouge_l("This person works as a baker.", "This person works as a pilot.") == pytest.approx(5 / 6)
    assert sc.rouge_l("He works", "he working") == 1.0  # stemmer on
    assert sc.rouge_l("He works", "") == 0.0


def test_cloze_rule():
    assert sc.cloze_correct("Oslo", "He was born in oslo, Norway.")
    assert not sc.cloze_correct("Oslo", "He was born in Bergen.")


def test_refusals():
    assert all(sc.is_refusal(r) for r in REFUSALS)
    for r in ["I\u2019m sorry, I cannot help.", "As an AI language model, I do not know.", "I am unable to say.",
              "I apologize, but no.", "i can't share personal information"]:
        assert sc.is_refusal(r), r
    for r in ["This person works as a pilot.", "B", "He cannot swim but he is a baker"]:
        assert not sc.is_refusal(r), r


@pytest.mark.parametrize("text,expected", [
    ("", True), ("   ", True), ("!!!!", True), ("!!a!!!!", True), ("aaaaaaaaaa", True),
    ("US US US US US US", True), ("the cat the cat the cat the cat", True),
    ("a b a c a b a c a a b a", True),
    ("This person works as a pilot.", False), ("B", False), ("I'm sorry, but I can't help with that.", False),
])
def test_is_degenerate(text, expected):
    assert sc.is_degenerate(text) is expected


@pytest.mark.parametrize("response,correct,category", [
    ("", False, "degenerate"), ("!!!!", True, "degenerate"), ("US US US US US", False, "degenerate"),
    ("I'm sorry, but I can't help with that.", False, "refusal"),
    ("I'm sorry, but he is a pilot.", True, "correct"),  # contains the answer: not a refusal
    ("pilot pilot pilot pilot pilot", True, "correct"),
    ("I cannot I cannot I cannot I cannot", False, "degenerate"),
    ("He is a baker.", False, "wrong"), ("B", True, "correct"), ("C", False, "wrong"),
])
def test_categorize(response, correct, category):
    assert sc.categorize(response, correct) == category
