"""How well a steerer separates forget from retain queries, measured inside the model (paper Fig. 4 and 8).

:func:`steering_norms` / :func:`separability`: the steering norm ‖λ f_l(h)‖ per layer and its AUC (forget >
retain); :func:`steered_activations`: a layer's input with and without steering (the embedding figures);
:func:`gate_reads`: the gate value each steered layer reads during a steered prefill (the cascade, METHOD.md §8).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence

import pandas as pd
from torch import Tensor

from erasekit.generation import prefill_gate_values
from erasekit.hooks import check_layers, collect_activations
from erasekit.steering import InputAwareSteerer
from erasekit.strengths import TaskSteering
from erasekit.tuning import auc

from .pipeline import group_items
from .session import Session

__all__ = ["steering_norms", "separability", "steered_activations", "gate_reads"]


def steering_norms(steerer: InputAwareSteerer, acts: Mapping[int, Tensor], strength: float) -> dict[int, Tensor]:
    """‖λ f_l(h)‖ per layer for activations ``{layer: (N, d)}`` (rank one: λ |g·h| ‖d_l‖)."""
    out = {}
    for l in steerer.layers:
        if l in acts:
            out[l] = (strength * steerer[l](acts[l].double())).norm(dim=-1).float()
    return out


def separability(steerer: InputAwareSteerer, forget: Mapping[int, Tensor], retain: Mapping[int, Tensor],
                 strength: float = 1.0) -> pd.DataFrame:
    """Per layer: median ‖λ f(h)‖ on forget and retain queries, their ratio, and the AUC (forget > retain).

    AUC = 1: every forget query gets a larger push than every retain query; 0.5: no separation.
    """
    nf, nr = steering_norms(steerer, forget, strength), steering_norms(steerer, retain, strength)
    recs = []
    for l in nf:
        mf, mr = float(nf[l].median()), float(nr[l].median())
        recs.append({"layer": l, "median forget": mf, "median retain": mr,
                     "ratio": mf / mr if mr > 0 else float("inf"), "AUC": auc(nf[l], nr[l])})
    return pd.DataFrame(recs).set_index("layer")


def steered_activations(session: Session, forget_pct: int, steering: TaskSteering | None, layer: int,
                        groups: Sequence[str] = ("Fgt", "Ret"), task: str = "generation", n: int | None = 20,
                        mode: str = "VQA", batch_size: int = 16, progress: bool = True) -> dict[str, Tensor]:
    """Last-token input of ``layer`` for the ``mode`` ``task`` prompts of each group (``n`` profiles), with the
    steering active (its prefill rule; the captured input includes the push at ``layer`` itself) or without."""
    check_layers(session.adapter, [layer])
    items = group_items(session, forget_pct, groups, n, n, (mode,), (task,))
    ops = None if steering is None else steering.operators(task, session.num_layers)
    out = {}
    for g, its in items.items():
        with (steering.context(session.adapter, ops) if ops is not None else contextlib.nullcontext()):
            ims = None if mode == "QA" else [it.image for it in its]
            acts = collect_activations(session.adapter, [it.prompt for it in its], ims, layers=[layer],
                                       batch_size=batch_size, progress=progress)
        out[g] = acts[layer]
    return out


def gate_reads(
    session: Session,
    forget_pct: int,
    steering: TaskSteering,
    groups: Sequence[str] = ("Fgt", "Ret", "Cele"),
    task: str = "cloze",
    mode: str = "QA",
    n: int | None = None,
    read: str | None = None,
    batch_size: int = 16,
) -> dict[str, dict[int, Tensor]]:
    """The gate value each steered layer reads during one steered prefill of the ``task`` prompts per group.

    With the authors' reading (``read="steered"``) a layer reads a state that earlier layers already pushed, so
    its gate can leave the range it was fitted on (the cascade, METHOD.md §8); ``"frozen"`` reads the unsteered
    pass. ``read`` overrides the steering's own. Returns ``{group: {layer: (N,) raw gate values}}`` (eval profiles).
    """
    items = group_items(session, forget_pct, groups, n, n, (mode,), (task,))
    ops = steering.operators(task, session.num_layers)
    how = dataclasses.replace(steering, read=read) if read is not None else steering
    return {g: prefill_gate_values(session.adapter, [it.prompt for it in its],
                                   None if mode == "QA" else [it.image for it in its],
                                   lambda rec: how.context(session.adapter, ops, record=rec), batch_size)
            for g, its in items.items()}

