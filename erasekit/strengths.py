"""Steering with a strength per task (paper Eq. 13 with the authors' per-task λ): what to add, how strongly for
each MLLMU-Bench task, at which layers, and the hook context that applies it.

:class:`TaskSteering` wraps either a fitted :class:`erasekit.steering.InputAwareSteerer` (input-aware, Eq. 13) or
an :class:`erasekit.directions.ErasureDirection` (the input-unaware push λ d_l, Eq. 4). The evaluation harness asks
it for one intervention per task; :meth:`TaskSteering.context` is the :func:`erasekit.hooks.steer` context.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .cache_keys import cache_key, key_of
from .directions import ErasureDirection
from .evaluate import TASKS
from .hooks import steer
from .steering import InputAwareSteerer, constant_operators

__all__ = ["PAPER_STRENGTHS", "TaskSteering"]

# λ per task from the authors' LLaVA-1.5 script (classification / generation / cloze); METHOD.md §3.
PAPER_STRENGTHS = {"classification": 0.25, "generation": 0.35, "cloze": 0.25}


@dataclasses.dataclass
class TaskSteering:
    """An intervention for the evaluation harness: what to add, how strongly per task, and where.

    Attributes:
        steerer: a fitted :class:`InputAwareSteerer` (input-aware, Eq. 13), or
        direction: an :class:`ErasureDirection` for the input-unaware ablation (Eq. 4: λ d_l at every layer);
            exactly one of the two.
        strengths: λ per task (classification / generation / cloze) or one float for all.
        mode: :func:`erasekit.hooks.steer` mode ("prefill": the authors' rule).
        layers: restrict to these layers (default: all of the steerer's; for a direction 1..L-1).
        read: which state the gates read (:func:`erasekit.hooks.steer`): "steered" (the authors: each layer's
            upstream-steered input), "frozen" (the unsteered stream, forked at the first steered layer) or
            "anchor" (the first steered layer's gate for all).
    """

    steerer: InputAwareSteerer | None = None
    direction: ErasureDirection | None = None
    strengths: Mapping[str, float] | float = dataclasses.field(default_factory=lambda: dict(PAPER_STRENGTHS))
    mode: str = "prefill"
    layers: Sequence[int] | None = None
    read: str = "steered"

    def __post_init__(self):
        if (self.steerer is None) == (self.direction is None):
            raise ValueError("TaskSteering needs exactly one of steerer= (input-aware) or direction= (input-unaware)")
        if isinstance(self.strengths, Mapping):
            missing = set(TASKS) - set(self.strengths)
            if missing:
                raise ValueError(f"strengths has no λ for tasks {sorted(missing)}; give all of {TASKS} or one float")

    @classmethod
    def from_eraser(cls, eraser: Any, strengths: Mapping[str, float] | float | None = None) -> TaskSteering:
        """The evaluation harness's view of a fitted :class:`erasekit.eraser.Eraser`: its steerer and gate reading,
        at ``strengths`` (λ per task, or one λ; default the eraser's own). The hooks are those of
        :meth:`erasekit.eraser.Eraser.context` at each task's λ."""
        return cls(steerer=eraser.steerer, strengths=eraser.strength if strengths is None else strengths,
                   read=eraser.read)

    def strength(self, task: str) -> float:
        return float(self.strengths if not isinstance(self.strengths, Mapping) else self.strengths[task])

    def operators(self, task: str, num_layers: int) -> dict:
        """``{layer: operator}`` for ``task`` (λ applied), for a model with ``num_layers`` decoder layers."""
        lam = self.strength(task)
        if self.steerer is not None:
            ops = self.steerer.operators(lam)
            keep = ops.keys() if self.layers is None else self.layers
            return {l: ops[l] for l in keep}
        layers = list(range(1, num_layers)) if self.layers is None else list(self.layers)
        return constant_operators(self.direction, lam, layers)

    def interventions(self, adapter: Any) -> dict[str, Callable[[], Any]]:
        """``{task: context-manager factory}`` for :func:`erasekit.evaluate.evaluate`."""
        ops = {t: self.operators(t, adapter.num_layers) for t in TASKS}
        return {t: (lambda o=ops[t]: self.context(adapter, o)) for t in TASKS}

    def context(self, adapter: Any, ops: Mapping[int, Any], record: dict | None = None):
        """The :func:`erasekit.hooks.steer` context for these operators with this steering's mode and reading
        (``record``: see :func:`erasekit.hooks.steer`)."""
        read = self.read if self.steerer is not None else "steered"
        return steer(adapter, ops, mode=self.mode, read=read, anchor=min(ops) if read == "anchor" else None,
                     record=record)

    def key(self) -> str:
        """Cache key of this intervention (what is pushed, λ per task, mode, layers, reading)."""
        what = key_of(self.steerer) if self.steerer is not None else key_of(self.direction)
        strengths = dict(self.strengths) if isinstance(self.strengths, Mapping) else float(self.strengths)
        return cache_key(what=what, kind="input_aware" if self.steerer is not None else "constant",
                         strengths=strengths, mode=self.mode, layers=None if self.layers is None else
                         [int(l) for l in self.layers], **({} if self.read == "steered" else {"read": self.read}))
