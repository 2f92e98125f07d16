"""Rewards that encode the refusal boundary (ASRU's customised reward): refuse forget queries in
context, answer retain / celebrity queries correctly, and write fluent, non-repetitive text.

:func:`boundary_reward` scores one response from its text alone (no model); :func:`quality_reward` scores fluency
under a reference model from NLLs computed by :func:`erasekit.response_quality.fluency_nll`. A training loop adds
them. The outcome definitions (leak, contextual refusal, hallucination, degenerate) are those of
:mod:`erasekit.response_quality`.

Outcomes and their base reward (:class:`RewardWeights` defaults), first match wins:

* forget query: degenerate -> the side's worst base (``leak``); leak of the gold answer -> ``leak`` (-1);
  contextual refusal -> ``contextual_refusal`` (+1); any other refusal (one-size, off-topic) -> ``rigid_refusal``
  (-0.5); otherwise a confident wrong answer -> ``hallucination`` (-0.75).
* retain query: degenerate -> the side's worst base (``over_refusal``); correct (ROUGE-L F against the gold answer
  >= :data:`erasekit.evaluate.GEN_CORRECT_ROUGE`, or the cloze rule) -> ``correct`` (+1); refusal ->
  ``over_refusal`` (-1); otherwise -> ``wrong`` (0).

Quality term, on every response: ``- repetition * repetition_rate(response) - degenerate * [degenerate]``. Since a
degenerate response gets the worst base *and* the degenerate penalty, and a non-degenerate one loses at most
``repetition`` to repetition, ``degenerate > repetition`` makes a degenerate response the worst outcome on either
side (checked when the weights are built). A degenerate refusal is thus scored as degenerate (worse than the -0.5 of
a rigid refusal).
"""

from __future__ import annotations

import dataclasses
import math

from .evaluate import GEN_CORRECT_ROUGE
from .response_quality import is_contextual_refusal, leaks_answer, repetition_rate
from .scoring import is_degenerate, is_refusal, rouge_l

__all__ = ["RewardWeights", "boundary_reward", "quality_reward"]


@dataclasses.dataclass(frozen=True)
class RewardWeights:
    """Base rewards per outcome and the weights of the quality penalties (see the module docstring).

    Built weights must keep the boundary's order: on forget queries contextual refusal > rigid refusal > leak and
    contextual refusal > hallucination > leak; on retain queries correct > wrong > over_refusal; and
    ``degenerate > repetition >= 0`` (a degenerate response is the worst on either side).
    """

    contextual_refusal: float = 1.0
    rigid_refusal: float = -0.5
    hallucination: float = -0.75
    leak: float = -1.0
    correct: float = 1.0
    wrong: float = 0.0
    over_refusal: float = -1.0
    repetition: float = 0.25
    degenerate: float = 1.0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"RewardWeights.{f.name} must be a finite number, got {v!r}")
        orders = [("contextual_refusal", "rigid_refusal", "leak"), ("contextual_refusal", "hallucination", "leak"),
                  ("correct", "wrong", "over_refusal"), ("degenerate", "repetition")]
        for names in orders:
            vals = [getattr(self, n) for n in names]
            if any(a <= b for a, b in zip(vals, vals[1:])):
                raise ValueError(f"RewardWeights must keep {' > '.join(names)}, got {vals}")
        if self.repetition < 0:
            raise ValueError(f"RewardWeights.repetition must be >= 0, got {self.repetition}")


def _base(response: str, question: str, gold_answer: str, is_forget: bool, subject: str | None,
          w: RewardWeights) -> float:
    if is_forget:
        if is_degenerate(response) or leaks_answer(gold_answer, response):
            return w.leak
        if is_contextual_refusal(response, question, gold_answer, subject):
            return w.contextual_refusal
        if is_refusal(response):
            return w.rigid_refusal
        # Not degenerate, no leak, no refusal: a confident wrong answer (response_quality.hallucination).
        return w.hallucination
    if is_degenerate(response):
        return w.over_refusal
    if rouge_l(gold_answer, response) >= GEN_CORRECT_ROUGE or leaks_answer(gold_answer, response):
        return w.correct
    return w.over_refusal if is_refusal(response) else w.wrong


def boundary_reward(response: str, question: str, gold_answer: str, is_forget: bool, subject: str | None = None,
                    weights: RewardWeights = RewardWeights()) -> float:
    """The reward of one response to one query (see the module docstring for the outcomes).

    Args:
        response: the generated text.
        question: the query as asked (used to judge whether a refusal refers to it).
        gold_answer: forget queries: the short answer whose presence is a leak (a name, a city); retain queries:
            the ground truth (a short answer or a sentence, matched by ROUGE-L or the cloze rule).
        is_forget: True for a forget-set query (Fgt / Test), False for retain / celebrity queries.
        subject: the person asked about, if known (naming them counts as referring to the question).
        weights: :class:`RewardWeights`.

    >>> q = "Where was Jane Doe born?"
    >>> boundary_reward("I can't share where Jane Doe was born.", q, "Oslo", True)
    1.0
    >>> boundary_reward("Jane Doe was born in Oslo.", q, "Oslo", True)
    -1.0
    >>> boundary_reward("Jane Doe was born in Oslo.", q, "Oslo", False)
    1.0
    """
    if not isinstance(gold_answer, str) or not gold_answer.strip():
        raise ValueError(f"gold_answer must be a non-empty string, got {gold_answer!r}")
    base = _base(response, question, gold_answer, is_forget, subject, weights)
    penalty = weights.repetition * repetition_rate(response) + weights.degenerate * is_degenerate(response)
    return float(base - penalty)


def quality_reward(nll: float, ref_nll: float, scale: float = 1.0) -> float:
    """Fluency under the reference model, relative to the reference's own fluency, in [-1, 0].

    ``nll``: the response's mean per-token NLL under the reference (vanilla) model; ``ref_nll``: the mean NLL of
    the reference model's own answer to the same prompt under itself (both from
    :func:`erasekit.response_quality.fluency_nll`). Returns ``-clip((nll - ref_nll) / scale, 0, 1)``: 0 when the
    response is at least as likely per token as what the reference model would say, -1 when it is ``scale`` nats
    per token worse or more. One-sided on purpose: a response *more* likely than the reference's is not rewarded,
    since repetition loops are very likely under a language model.

    >>> quality_reward(2.0, 2.0), quality_reward(2.5, 2.0), quality_reward(9.0, 2.0), quality_reward(1.0, 2.0)
    (0.0, -0.5, -1.0, 0.0)
    """
    for name, v in (("nll", nll), ("ref_nll", ref_nll), ("scale", scale)):
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    return 0.0 - min(1.0, max(0.0, (nll - ref_nll) / scale))
