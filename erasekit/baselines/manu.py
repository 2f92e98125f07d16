"""MANU (Liu et al., 2025): training-free, modality-aware pruning of MLP neurons.

See :mod:`erasekit.baselines` for the method; which child modules form an MLP block is the model family's knowledge
(``ModelAdapter.mlp_in`` / ``mlp_out``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..hooks import registered
from ..models import ModelAdapter, adapter_class
from .configs import MANUConfig
from .data import MODES, Example, collate, subsample
from .lora import as_adapter, fresh_copy
from .losses import forward_logits

__all__ = ["mlp_blocks", "manu_scores", "run_manu"]


def mlp_blocks(model: nn.Module, include_vision: bool) -> dict[str, tuple[list[nn.Linear], nn.Linear]]:
    """MLP blocks -> (input projections, output projection); the output projection's input is the neuron layer.

    Which child modules are an MLP's projections, and where a block sits, is asked of the model's family adapter
    (``mlp_in`` / ``mlp_out`` / ``module_role``); projector MLPs are never candidates.
    """
    family = adapter_class(model.config.model_type)
    out = {}
    for name, mod in model.named_modules():
        role = family.module_role(name)
        if role == "projector" or (role == "vision" and not include_vision):
            continue
        children = dict(mod.named_children())
        outs = [children[k] for k in family.mlp_out if isinstance(children.get(k), nn.Linear)]
        ins = [children[k] for k in family.mlp_in if isinstance(children.get(k), nn.Linear)]
        if len(outs) == 1 and ins:
            out[name] = (ins, outs[0])
    return out


class _NeuronStats:
    """Streaming sums for MANU's four statistics over the real tokens of one neuron layer."""

    def __init__(self, width: int, threshold: float):
        self.n = 0
        self.threshold = threshold
        self.abs = torch.zeros(width, dtype=torch.float64)
        self.freq = torch.zeros(width, dtype=torch.float64)
        self.sum = torch.zeros(width, dtype=torch.float64)
        self.sq = torch.zeros(width, dtype=torch.float64)

    def add(self, a: torch.Tensor) -> None:  # (N, width)
        a = a.detach().double().cpu()
        self.n += a.shape[0]
        self.abs += a.abs().sum(0)
        self.freq += (a.abs() > self.threshold).double().sum(0)
        self.sum += a.sum(0)
        self.sq += (a * a).sum(0)

    def importance(self) -> torch.Tensor:
        """(4, width): mean |a|, frequency of |a| > threshold, std, RMS."""
        n = max(self.n, 1)
        mean, meansq = self.sum / n, self.sq / n
        return torch.stack([self.abs / n, self.freq / n, (meansq - mean**2).clamp_min(0).sqrt(), meansq.sqrt()])


@torch.no_grad()
def _collect(adapter: ModelAdapter, model: nn.Module, mlps: Mapping[str, tuple], examples: Sequence[Example],
             cfg: MANUConfig, desc: str) -> dict[str, _NeuronStats]:
    from tqdm.auto import tqdm

    stats = {n: _NeuronStats(o.in_features, cfg.freq_threshold) for n, (_, o) in mlps.items()}
    current: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(_module, args):
            a = args[0]
            mask = current.get("mask")
            if mask is not None and a.ndim == 3 and tuple(a.shape[:2]) == tuple(mask.shape):
                a = a[mask.bool()]  # language tokens: drop padding
            stats[name].add(a.reshape(-1, a.shape[-1]))
        return fn

    with registered(lambda: (o.register_forward_pre_hook(hook(n)) for n, (_, o) in mlps.items())):
        for s in tqdm(range(0, len(examples), cfg.batch_size), desc=desc, disable=not cfg.progress):
            batch = collate(adapter, examples[s : s + cfg.batch_size])
            current["mask"] = batch["attention_mask"]
            forward_logits(model, batch)
    return {n: s for n, s in stats.items() if s.n > 0}


def manu_scores(adapter: ModelAdapter, forget: Sequence[Example], retain: Sequence[Example],
                cfg: MANUConfig | None = None, model: nn.Module | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """MANU pruning scores ``{modality: {mlp_name: (width,) float64}}`` (positive: more important for forget).

    Score = ``sum_k w_k ((I_f^k + eps) / (I_r^k + eps) - 1)`` over the four statistics; per modality, on the
    forget and retain examples of that modality (each subsampled to ``max_examples``). MANU's code has no eps in
    the numerator; with it a statistic that is 0 on both sets (e.g. a neuron never above the frequency threshold)
    scores 0 instead of -1.
    """
    cfg = cfg or MANUConfig()
    model = adapter.model if model is None else model
    mlps = mlp_blocks(model, cfg.include_vision)
    w = torch.tensor(cfg.weights, dtype=torch.float64).view(4, 1)
    scores: dict[str, dict[str, torch.Tensor]] = {}
    for mode in MODES:
        f = subsample([e for e in forget if e.mode == mode], cfg.max_examples, f"{cfg.seed}-{mode}-f")
        r = subsample([e for e in retain if e.mode == mode], cfg.max_examples, f"{cfg.seed}-{mode}-r")
        if not f or not r:
            continue
        sf = _collect(adapter, model, mlps, f, cfg, f"MANU {mode} forget")
        sr = _collect(adapter, model, mlps, r, cfg, f"MANU {mode} retain")
        scores[mode] = {n: (w * ((sf[n].importance() + cfg.eps) / (sr[n].importance() + cfg.eps) - 1)).sum(0)
                        for n in sf if n in sr}
    return scores


@torch.no_grad()
def _prune(mlps: Mapping[str, tuple[list[nn.Linear], nn.Linear]], chosen: Mapping[str, list[int]]) -> None:
    for name, idx in chosen.items():
        if not idx:
            continue
        ins, out = mlps[name]
        j = torch.tensor(idx, dtype=torch.long, device=out.weight.device)
        for lin in ins:  # neuron j's pre-activation(s) -> 0, so act(0) * ... = 0
            lin.weight[j] = 0
            if lin.bias is not None:
                lin.bias[j] = 0
        out.weight[:, j] = 0  # and it writes nothing


def run_manu(adapter: ModelAdapter, forget: Sequence[Example], retain: Sequence[Example],
             cfg: MANUConfig) -> tuple[ModelAdapter, dict]:
    """Score the MLP neurons of a fresh copy (:func:`manu_scores`) and prune the chosen ones: (new adapter, info)."""
    model = fresh_copy(adapter)
    model.eval()
    scores = manu_scores(adapter, forget, retain, cfg, model=model)
    mlps = mlp_blocks(model, cfg.include_vision)
    chosen: dict[str, set[int]] = {n: set() for n in mlps}
    for per_layer in scores.values():
        for name, s in per_layer.items():
            k = math.ceil(cfg.prune_fraction * s.numel())
            top = torch.argsort(s, descending=True, stable=True)[:k]
            chosen[name] |= {int(i) for i in top if s[i] > 0 or not cfg.positive_only}
    chosen_sorted = {n: sorted(v) for n, v in chosen.items() if v}
    _prune(mlps, chosen_sorted)
    width = sum(o.in_features for _, o in mlps.values())
    info = {"pruned": chosen_sorted, "pruned_neurons": sum(len(v) for v in chosen_sorted.values()),
            "total_neurons": width, "modalities": sorted(scores)}
    return as_adapter(adapter, model), info
