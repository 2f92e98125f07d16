"""Choosing a baseline's hyperparameters: cheap teacher-forced answer metrics, a grid sweep, the pick rule."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..models import ModelAdapter
from .configs import MANUConfig, TrainConfig
from .data import Example, collate, subsample
from .losses import answer_logprobs, forward_logits
from .run import unlearn

__all__ = ["answer_nll", "answer_accuracy", "sweep", "pick_config"]


@torch.no_grad()
def _answer_stats(adapter: ModelAdapter, examples: Sequence[Example], batch_size: int) -> tuple[float, float]:
    model = adapter.model
    was_training = model.training
    model.eval()
    nll_sum, tokens, exact = 0.0, 0, 0
    for s in range(0, len(examples), batch_size):
        batch = collate(adapter, examples[s : s + batch_size])
        logits = forward_logits(model, batch)
        logp, mask = answer_logprobs(logits, batch["labels"])
        nll_sum -= float(logp.sum())
        tokens += int(mask.sum())
        pred = logits[:, :-1].argmax(-1)
        tgt = batch["labels"][:, 1:]
        exact += int(((pred == tgt) | ~mask).all(-1).sum())
    model.train(was_training)
    return nll_sum / max(tokens, 1), exact / max(len(examples), 1)


def answer_nll(adapter: ModelAdapter, examples: Sequence[Example], batch_size: int = 16) -> float:
    """Mean NLL per answer token (teacher forced) over ``examples``."""
    return _answer_stats(adapter, examples, batch_size)[0]


def answer_accuracy(adapter: ModelAdapter, examples: Sequence[Example], batch_size: int = 16) -> float:
    """Fraction of examples whose whole answer (+ eos) is the argmax at every position (teacher forced).

    A cheap proxy for the harness's greedy-decoding scores, used by :func:`sweep`.
    """
    return _answer_stats(adapter, examples, batch_size)[1]


def sweep(adapter: ModelAdapter, forget: Sequence[Example], retain: Sequence[Example], base: TrainConfig | MANUConfig,
          grid: Mapping[str, Sequence[Any]], *, eval_forget: Sequence[Example] | None = None,
          eval_retain: Sequence[Example] | None = None,
          score: Callable[[ModelAdapter], Mapping[str, float]] | None = None) -> list[dict]:
    """Run ``base`` with every combination of ``grid`` values; one row per run (plus a "Vanilla" row first).

    Each row: the grid values, seconds, peak_memory_mb, and ``score(adapter)`` -- by default teacher-forced
    ``forget_acc``/``retain_acc``/``forget_nll``/``retain_nll`` on ``eval_forget`` (default: ``forget``) and
    ``eval_retain`` (default: 64 seeded retain examples). Pass ``score`` to use the evaluation harness instead.

    Example::

        rows = sweep(vanilla, forget, retain, GAConfig(progress=False), {"lr": [1e-4, 3e-4], "epochs": [1, 3]})
        best = pick_config(rows, max_retain_drop=0.05)
    """
    eval_forget = list(forget) if eval_forget is None else list(eval_forget)
    eval_retain = subsample(retain, 64, "sweep-retain") if eval_retain is None else list(eval_retain)

    def default_score(a: ModelAdapter) -> dict[str, float]:
        fn, fa = _answer_stats(a, eval_forget, 16)
        rn, ra = _answer_stats(a, eval_retain, 16)
        return {"forget_acc": fa, "retain_acc": ra, "forget_nll": fn, "retain_nll": rn}

    score = score or default_score
    rows = [{"method": "Vanilla", **score(adapter)}]
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        combo = dict(zip(keys, values))
        res = unlearn(adapter, forget, retain, dataclasses.replace(base, **combo))
        rows.append({"method": res.method, **combo, "seconds": round(res.seconds, 2),
                     "peak_memory_mb": round(res.peak_memory_mb, 1), **score(res.adapter)})
        del res
    return rows


def pick_config(rows: Sequence[Mapping[str, Any]], max_retain_drop: float = 0.05, forget_key: str = "forget_acc",
                retain_key: str = "retain_acc") -> dict:
    """The swept row that forgets most while keeping retain accuracy within ``max_retain_drop`` of Vanilla.

    Ties (equal forget score) go to the higher retain score; if no row keeps utility, the one with the best retain
    score is returned (and ``"within_budget": False``).
    """
    vanilla = next((r for r in rows if r.get("method") == "Vanilla"), None)
    runs = [dict(r) for r in rows if r.get("method") != "Vanilla"]
    if not runs:
        raise ValueError("no swept runs in rows")
    floor = (vanilla[retain_key] - max_retain_drop) if vanilla is not None else -math.inf
    ok = [r for r in runs if r[retain_key] >= floor]
    if ok:
        best = min(ok, key=lambda r: (r[forget_key], -r[retain_key]))
        return {**best, "within_budget": True}
    return {**max(runs, key=lambda r: r[retain_key]), "within_budget": False}

