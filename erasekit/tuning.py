"""Hyperparameter rules that read tuning data only: held-out gate AUC per layer and layer selection.

The paper steers layers 1..L-1 and leaves "select layers by separability" to its appendix; on the organism and on a
real LM (METHOD.md §8) the all-layer setting is what garbles retain answers. These rules choose from data the
user owns — the forget set and the ``tune`` retain profiles of :mod:`erasekit.heldout` — and never from a scored
profile or the Test split:

* :func:`heldout_gate_auc`: per layer, fit the gate on k-1 folds of the forget questions (and H_r), read it on the
  held-out fold (positives) and on the tune retain questions (negatives); AUC of the pooled scores. A gate that
  only memorised its fitting rows scores 0.5 here.
* :func:`select_layers`: the layers whose held-out AUC reaches ``threshold`` (default 0.8); if none does, the
  single best layer (with a warning). The threshold is a documented constant, not tuned on results.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .steering import fit_gate

__all__ = ["auc", "heldout_gate_auc", "select_layers", "LAYER_AUC_THRESHOLD"]

# Steer a layer only if its gate separates held-out forget questions from tune retain questions this well.
LAYER_AUC_THRESHOLD = 0.8


def auc(pos, neg) -> float:
    """P(score of a random positive > that of a random negative), ties count half (Mann-Whitney U / (n_p n_n))."""
    p = torch.as_tensor(pos, dtype=torch.float64).flatten()
    n = torch.as_tensor(neg, dtype=torch.float64).flatten()
    if p.numel() == 0 or n.numel() == 0:
        raise ValueError(f"auc needs positives and negatives, got {p.numel()} and {n.numel()}")
    gt = (p[:, None] > n[None, :]).double().mean()
    eq = (p[:, None] == n[None, :]).double().mean()
    return float(gt + 0.5 * eq)


def heldout_gate_auc(H_forget: Mapping[int, Tensor], H_retain: Mapping[int, Tensor],
                     H_tune: Mapping[int, Tensor], direction, layers: Sequence[int] | None = None,
                     folds: int = 4, seed: int = 0, **gate_kwargs) -> dict[int, float]:
    """``{layer: AUC}`` of the gate on held-out forget questions (k-fold) against tune retain questions.

    Args:
        H_forget: ``{layer: (N_f, d)}`` forget activations; H_retain: ``{layer: (N_r, d)}`` (H_r of the fit);
        H_tune: ``{layer: (N_t, d)}`` activations of the tune retain profiles (not in H_r, not scored).
        direction: :class:`erasekit.directions.ErasureDirection` (only its layers' vectors are used).
        folds: k of the k-fold split of the forget rows (seeded, by row).
        gate_kwargs: :func:`erasekit.steering.fit_gate` arguments (gate, gamma, gamma_scale, alpha, null_space).
    """
    layers = sorted(H_forget) if layers is None else [int(l) for l in layers]
    out = {}
    for l in layers:
        n = H_forget[l].shape[0]
        if n < folds:
            raise ValueError(f"layer {l}: {n} forget rows cannot make {folds} folds")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        pos, neg = [], []
        for f in order.chunk(folds):
            keep = torch.ones(n, dtype=torch.bool)
            keep[f] = False
            m = fit_gate(H_forget[l][keep], H_retain[l], direction[l], **gate_kwargs)
            pos.append(m.gate_value(H_forget[l][f]))
            neg.append(m.gate_value(H_tune[l]))
        out[l] = auc(torch.cat(pos), torch.cat(neg))
    return out


def select_layers(aucs: Mapping[int, float], threshold: float = LAYER_AUC_THRESHOLD) -> list[int]:
    """Layers whose held-out gate AUC is >= ``threshold``; if none, the best single layer (with a warning)."""
    if not aucs:
        raise ValueError("select_layers: no layers given")
    chosen = sorted(l for l, a in aucs.items() if a >= threshold)
    if not chosen:
        best = max(aucs, key=aucs.get)
        warnings.warn(f"no layer's held-out gate AUC reaches {threshold} (best: layer {best}, {aucs[best]:.3f}); "
                      "steering that layer only. The gate separates forget from retain questions poorly here.",
                      stacklevel=2)
        chosen = [best]
    return chosen
