"""MMUnlearner (Huo et al., 2025): Fisher-saliency masked full-weight unlearning (no LoRA).

See :mod:`erasekit.baselines` for the method; entries outside the saliency mask stay bit-identical.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..models import ModelAdapter
from .configs import MMUnlearnerConfig
from .data import Example, collate, subsample
from .loop import steps_for, train
from .lora import as_adapter, fresh_copy, lora_targets
from .losses import batch_nll

__all__ = ["mmunlearner_scope", "mmunlearner_saliency", "run_mmunlearner"]


def mmunlearner_scope(model: nn.Module, include_vision: bool) -> dict[str, torch.Tensor]:
    """Weight matrices of the linear layers MMUnlearner may update, by parameter name: the layers LoRA would adapt
    (:func:`~erasekit.baselines.lora.lora_targets`, the vision tower with ``include_vision``)."""
    return {f"{n}.weight": model.get_submodule(n).weight for n in lora_targets(model, include_vision)}


def _grad_sq(adapter: ModelAdapter, model: nn.Module, params: Mapping[str, torch.Tensor],
             examples: Sequence[Example], batch_size: int) -> dict[str, torch.Tensor]:
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    for s in range(0, len(examples), batch_size):
        model.zero_grad(set_to_none=True)
        batch_nll(model, collate(adapter, examples[s : s + batch_size])).backward()
        for n, p in params.items():
            if p.grad is not None:
                acc[n] += p.grad.float() ** 2
    model.zero_grad(set_to_none=True)
    return acc


def mmunlearner_saliency(adapter: ModelAdapter, model: nn.Module, forget: Sequence[Example],
                         retain: Sequence[Example], cfg: MMUnlearnerConfig) -> dict[str, torch.Tensor]:
    """0/1 masks (same shape as each weight): 1 where the forget Fisher diagonal beats ``gamma`` x the retain one.

    ``forget``/``retain`` are used as given (the caller picks modalities and sizes); ``model`` must have
    ``requires_grad`` on the scope weights.
    """
    params = mmunlearner_scope(model, cfg.include_vision)
    ff = _grad_sq(adapter, model, params, forget, cfg.batch_size)
    fr = _grad_sq(adapter, model, params, retain, cfg.batch_size)
    return {n: ((ff[n] > cfg.saliency_ratio * fr[n]) & (ff[n] > 0)).to(params[n].dtype) for n in params}



def run_mmunlearner(adapter: ModelAdapter, forget: Sequence[Example], retain: Sequence[Example],
                    cfg: MMUnlearnerConfig) -> tuple[ModelAdapter, list[dict], dict]:
    """Saliency mask on a fresh full-weight copy, then masked training: (new adapter, history, info)."""
    torch.manual_seed(cfg.seed)
    model = fresh_copy(adapter)
    params = mmunlearner_scope(model, cfg.include_vision)
    for p in params.values():
        p.requires_grad_(True)
    f_train = [e for e in forget if e.mode in cfg.forget_modes]
    retain_side = list(retain) + ([e for e in forget if e.mode == "QA"] if cfg.preserve_forget_text else [])
    masks = mmunlearner_saliency(adapter, model, subsample(f_train, cfg.saliency_examples, f"{cfg.seed}-sf"),
                                 subsample(retain_side, cfg.saliency_examples, f"{cfg.seed}-sr"), cfg)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    history = train(adapter, model, "MMUnlearner", f_train, retain_side, cfg, steps_for(cfg, len(f_train)),
                    masks=masks, loss_kw={"forget_weight": cfg.forget_weight})
    info = {"mask_density": kept / max(1, total), "masked_entries": kept, "candidate_entries": total,
            "forget_examples": len(f_train)}
    return as_adapter(adapter, model), history, info
