"""Hyperparameter rules that read tuning data only: held-out gate AUC per layer and layer selection.

The paper steers layers 1..L-1 and leaves "select layers by separability" to its appendix; on the organism and on a
real LM (METHOD.md §8) the all-layer setting is what garbles retain answers. These rules choose from data the
user owns — the forget set and the ``tune`` retain profiles of :mod:`erasekit.heldout` — and never from a scored
profile or the Test split:

* :func:`heldout_gate_auc`: per layer, fit the gate on k-1 folds of the forget questions (and H_r), read it on the
  held-out fold (positives) and on the tune retain questions (negatives); AUC of the pooled scores. A gate that
  only memorised its fitting rows scores 0.5 here.
* :func:`select_layers`: the layers whose held-out AUC is within ``margin`` (0.05) of the best layer's, i.e. the
  threshold is ``best - margin``: "steer where the gate is nearly as selective as it gets". AUC levels differ
  between models and between image and text questions; a margin transfers, a fixed level does not. If even the
  best layer is below ``minimum`` (0.6) the gate barely separates anything: that layer alone, with a warning.
  The constants are stated here and were not tuned on scored results.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .gates import fit_gate
from .steering import InputAwareSteerer, fit_steerer

__all__ = ["auc", "heldout_gate_auc", "select_layers", "choose_gate", "LAYER_AUC_MARGIN", "LAYER_AUC_MIN",
           "GAMMA_GRID"]

# Steer a layer only if its held-out gate AUC is within this margin of the best layer's.
LAYER_AUC_MARGIN = 0.05
# Below this best-layer AUC the gate barely separates: one layer only, with a warning.
LAYER_AUC_MIN = 0.6
# Relative ridge candidates for the contrastive gate (units of the normal matrix's mean eigenvalue).
GAMMA_GRID = (1e-4, 1e-3, 1e-2)


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
                     folds: int = 4, seed: int = 0, groups: tuple[Sequence, Sequence, Sequence] | None = None,
                     **gate_kwargs) -> dict[int, float]:
    """``{layer: AUC}`` of the gate on held-out forget questions (k-fold) against tune retain questions.

    ``groups``: ``(forget labels, retain labels, tune labels)``, one label per row (e.g. each prompt's form
    family): then each fold is one label, held out of the fit on BOTH sides (forget and H_r rows with that label
    are left out), scored on its forget rows against its tune rows; the AUC is the mean over labels (labels
    without forget or tune rows are skipped). The rule then prefers what transfers to a form the gate never saw.

    Args:
        H_forget: ``{layer: (N_f, d)}`` forget activations; H_retain: ``{layer: (N_r, d)}`` (H_r of the fit);
        H_tune: ``{layer: (N_t, d)}`` activations of the tune retain profiles (not in H_r, not scored).
        direction: :class:`erasekit.directions.ErasureDirection` (only its layers' vectors are used).
        folds: k of the k-fold split of the forget rows (seeded, by row).
        gate_kwargs: :func:`erasekit.steering.fit_gate` arguments (gate, gamma, gamma_scale, alpha, null_space).
    """
    layers = sorted(H_forget) if layers is None else [int(l) for l in layers]
    out = {}
    if groups is not None:
        fg, rg, tg = (list(g) for g in groups)
        labels = [g for g in dict.fromkeys(fg) if g in set(tg) and sum(x != g for x in fg) > 0]
        if len(labels) < 2:
            raise ValueError(f"groups need at least 2 labels with forget and tune rows, got {labels}")
        for l in layers:
            scores = []
            for g in labels:
                kf = torch.tensor([x != g for x in fg])
                kr = torch.tensor([x != g for x in rg])
                m = fit_gate(H_forget[l][kf], H_retain[l][kr], direction[l], **gate_kwargs)
                scores.append(auc(m.gate_value(H_forget[l][~kf]), m.gate_value(H_tune[l][torch.tensor(
                    [x == g for x in tg])])))
            out[l] = sum(scores) / len(scores)
        return out
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


def select_layers(aucs: Mapping[int, float], margin: float = LAYER_AUC_MARGIN,
                  minimum: float = LAYER_AUC_MIN) -> list[int]:
    """Layers whose held-out gate AUC is >= best - ``margin``; the best layer alone (warning) if best < minimum."""
    if not aucs:
        raise ValueError("select_layers: no layers given")
    best = max(aucs, key=lambda layer: aucs[layer])
    if aucs[best] < minimum:
        warnings.warn(f"the best layer's held-out gate AUC is {aucs[best]:.3f} (layer {best}), below {minimum}: "
                      "the gate separates forget from retain questions poorly; steering that layer only.",
                      stacklevel=2)
        return [best]
    return sorted(l for l, a in aucs.items() if a >= aucs[best] - margin)


def choose_gate(H_forget: Mapping[int, Tensor], H_retain: Mapping[int, Tensor], H_tune: Mapping[int, Tensor],
                direction, layers: Sequence[int] | None = None, gammas: Sequence[float] = GAMMA_GRID,
                alpha: float = 1.0, margin: float = LAYER_AUC_MARGIN, floor_quantile: float | None = 0.9,
                folds: int = 4, groups: tuple[Sequence, Sequence, Sequence] | None = None) -> InputAwareSteerer:
    """erasekit's default steerer, every choice by a stated rule on tuning data (no scored profile, no Test row).

    1. For each relative ridge gamma in ``gammas``: the held-out gate AUC per layer (:func:`heldout_gate_auc`).
    2. gamma = the candidate with the highest best-layer AUC (ties: the larger gamma, the smoother map).
    3. layers = those whose AUC at that gamma is within ``margin`` of the best layer's (:func:`select_layers`).
    4. The contrastive gate is fitted on all forget rows at those layers, and its floors set at the
       ``floor_quantile`` of the gate on the tune retain questions (:meth:`InputAwareSteerer.with_floors`;
       None: no floor).

    Returns the steerer; ``meta["selection"]`` records the AUC table ``{gamma: {layer: auc}}`` and the choices.
    """
    layers = sorted(H_forget) if layers is None else [int(l) for l in layers]
    layers = [l for l in layers if bool(direction[l].abs().max() > 0)]
    table = {float(g): heldout_gate_auc(H_forget, H_retain, H_tune, direction, layers, folds, groups=groups,
                                        gate="contrastive", gamma=g, gamma_scale="relative", alpha=alpha)
             for g in gammas}
    gamma = max(sorted(table, reverse=True), key=lambda g: max(table[g].values()))
    chosen = select_layers(table[gamma], margin)
    st = fit_steerer(H_forget, H_retain, direction, gamma, layers=chosen, gate="contrastive",
                     gamma_scale="relative", alpha=alpha)
    if floor_quantile is not None:
        st = st.with_floors(H_tune, floor_quantile)
    st.meta["selection"] = {"folds": "one form family at a time" if groups is not None else f"{folds} random",
                            "rule": f"gamma: best-layer held-out AUC over {list(map(float, gammas))}; layers: AUC >= "
                                    f"best - {margin}; floor: q{floor_quantile} of tune retain gates",
                            "auc": {str(g): {str(l): a for l, a in t.items()} for g, t in table.items()},
                            "gamma": gamma, "layers": chosen, "margin": margin}
    return st
