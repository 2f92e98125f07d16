"""erasekit.rewards: the boundary reward orders hand-written responses as the issue asks; weights and fluency."""

from __future__ import annotations

import dataclasses
import doctest

import pytest

from erasekit import rewards
from erasekit.rewards import RewardWeights, boundary_reward, quality_reward

Q = "Where was Jane Doe born?"
DEGENERATE = ["Oslo Oslo Oslo Oslo Oslo", "!!!!", "", "I'm sorry I'm sorry I'm sorry I'm sorry",
              "born born born born born born"]


def test_doctests():
    assert doctest.testmod(rewards).failed == 0


def _r(response, is_forget, gold="Oslo", **kw):
    return boundary_reward(response, Q, gold, is_forget, **kw)


def test_forget_ordering():
    contextual = _r("I can't share where Jane Doe was born.", True)
    rigid = _r("I'm sorry, but I can't help with that.", True)
    hallucinated = _r("Jane Doe was born in Lima.", True)
    leak = _r("Jane Doe was born in Oslo.", True)
    assert contextual > rigid > hallucinated > leak > max(_r(d, True) for d in DEGENERATE)
    assert (contextual, rigid, hallucinated, leak) == (1.0, -0.5, -0.75, -1.0)
    # a refusal that leaks is a leak; a refusal naming the subject (VQA question) is contextual
    assert _r("I'm sorry, I can't say Jane Doe was born in Oslo.", True) == leak
    vqa = boundary_reward("I'm sorry, I can't discuss Jane Doe.", "Where was the person in the image born?",
                          "Oslo", True, subject="Jane Doe")
    assert vqa == contextual


def test_retain_ordering():
    correct = _r("Jane Doe was born in Oslo.", False)
    wrong = _r("Jane Doe was born in Lima.", False)
    refusal = _r("I'm sorry, but I can't help with that.", False)
    contextual_refusal = _r("I can't share where Jane Doe was born.", False)
    assert correct > wrong > refusal == contextual_refusal > max(_r(d, False) for d in DEGENERATE)
    # correct by ROUGE-L against a ground-truth sentence, too
    assert _r("She was born in Oslo, Norway.", False, gold="Jane Doe was born in Oslo.") == correct


def test_quality_term():
    clean = _r("Jane Doe was born in Oslo.", False)
    repetitive = _r("Jane Doe was born in Oslo and born in Oslo and born in Oslo.", False)
    assert repetitive < clean
    no_rep = RewardWeights(repetition=0.0)
    assert _r("Jane Doe was born in Oslo and born in Oslo and born in Oslo.", False, weights=no_rep) == clean
    # degenerate: the worst base of the side minus the degenerate weight minus repetition
    assert _r("!!!!", True) == -1.0 - 1.0
    assert _r("US US US US US", False) == pytest.approx(-1.0 - 1.0 - 0.25 * 2 / 3)


def test_weights_are_frozen_and_checked():
    w = RewardWeights()
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.leak = 0.0
    with pytest.raises(ValueError, match="degenerate > repetition"):
        RewardWeights(degenerate=0.1, repetition=0.2)
    with pytest.raises(ValueError, match="contextual_refusal > rigid_refusal > leak"):
        RewardWeights(rigid_refusal=2.0)
    with pytest.raises(ValueError, match="correct > wrong > over_refusal"):
        RewardWeights(wrong=-2.0)
    with pytest.raises(ValueError, match="finite"):
        RewardWeights(leak=float("nan"))
    with pytest.raises(ValueError, match="non-empty string"):
        _r("I can't say.", True, gold=" ")


def test_quality_reward():
    assert quality_reward(3.0, 3.0) == 0.0
    assert quality_reward(3.5, 3.0, scale=2.0) == -0.25
    assert quality_reward(30.0, 3.0) == -1.0
    assert quality_reward(0.5, 3.0) == 0.0  # more likely than the reference's own answer: no bonus
    assert quality_reward(3.2, 3.0) > quality_reward(3.8, 3.0)
    with pytest.raises(ValueError, match="scale must be > 0"):
        quality_reward(1.0, 1.0, scale=0.0)
    with pytest.raises(ValueError, match="nll must be a finite"):
        quality_reward(float("inf"), 1.0)
