"""The optimisation loop shared by the training baselines, and a LoRA run around it."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..models import ModelAdapter
from .configs import TrainConfig
from .data import Example, collate
from .lora import as_adapter, fresh_copy, lora_model, lora_targets
from .losses import unlearning_loss

__all__ = ["steps_for", "train", "lora_run"]


def _batches(examples: Sequence[Example], batch_size: int, rng: random.Random) -> Iterator[list[Example]]:
    """Endless epochs over ``examples``, reshuffled each epoch with ``rng``."""
    if not examples:
        raise ValueError("no examples to train on")
    order = list(range(len(examples)))
    while True:
        rng.shuffle(order)
        for s in range(0, len(order), batch_size):
            yield [examples[i] for i in order[s : s + batch_size]]


def steps_for(cfg: TrainConfig, n_forget: int) -> int:
    """Optimisation steps of a run: ``epochs`` passes over ``n_forget`` examples, capped at ``max_steps``."""
    steps = cfg.epochs * math.ceil(n_forget / cfg.batch_size)
    return min(steps, cfg.max_steps) if cfg.max_steps is not None else steps


def train(adapter: ModelAdapter, model: nn.Module, method: str, forget: Sequence[Example],
          retain: Sequence[Example] | None, cfg: TrainConfig, n_steps: int, *,
          masks: Mapping[str, torch.Tensor] | None = None, loss_kw: Mapping[str, Any] | None = None,
          desc: str = "") -> list[dict]:
    """``n_steps`` AdamW steps of :func:`~erasekit.baselines.losses.unlearning_loss` on ``model`` (in place).

    Forget and retain batches are drawn from seeded reshuffled epochs (``cfg.seed``); ``masks`` multiply the
    gradients of the named parameters (MMUnlearner), ``loss_kw`` go to the loss. Returns one dict of floats per step.
    """
    from tqdm.auto import tqdm

    params = [p for p in model.parameters() if p.requires_grad]
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    f_it = _batches(forget, cfg.batch_size, random.Random(f"{cfg.seed}-forget")) if forget else None
    r_it = _batches(retain, cfg.batch_size, random.Random(f"{cfg.seed}-retain")) if retain else None
    history = []
    model.train()
    for step in tqdm(range(n_steps), desc=desc or method, disable=not cfg.progress, mininterval=2):
        fb = collate(adapter, next(f_it)) if f_it is not None else None
        rb = collate(adapter, next(r_it)) if r_it is not None else None
        loss, parts = unlearning_loss(model, method, fb, rb, **(loss_kw or {}))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if masks is not None:
            for n, m in masks.items():
                if named[n].grad is not None:
                    named[n].grad.mul_(m)
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        history.append({"step": step, **parts})
    model.eval()
    return history


def lora_run(adapter: ModelAdapter, method: str, forget: Sequence[Example], retain: Sequence[Example] | None,
             cfg: TrainConfig, n_steps: int, loss_kw: Mapping[str, Any] | None = None,
             reference: nn.Module | None = None) -> tuple[ModelAdapter, list[dict], dict]:
    """Train LoRA adapters on a fresh copy with :func:`train`, merge them: (new adapter, history, info)."""
    torch.manual_seed(cfg.seed)
    model = lora_model(fresh_copy(adapter), cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    kw = dict(loss_kw or {})
    if reference is not None:
        kw["reference"] = reference
    history = train(adapter, model, method, forget, retain, cfg, n_steps, loss_kw=kw)
    merged = model.merge_and_unload()
    info = {"trainable_parameters": trainable, "lora_targets": len(lora_targets(merged, cfg.lora_vision))}
    return as_adapter(adapter, merged), history, info
