"""ASRU's front door: ``fit_asru(adapter, forget, retain)`` beside :func:`erasekit.fit_eraser`, returning a peft LoRA
on the user's model (no hooks at inference, ``save_pretrained`` / ``PeftModel.from_pretrained``, mergeable).

Steps (each a rule, nothing tuned on the scored people):

1. Inputs as the eraser takes them: prompts (strings or (text, image) pairs) or facts
   (:class:`erasekit.forms.Fact`, rendered in ``forms``). A query's *gold* is the fact's value for facts; for plain
   prompts it is the vanilla model's own greedy answer (forget side: what must stop being revealed; retain side:
   what must keep being said).
2. Stage 1 = an :class:`erasekit.eraser.Eraser` (``eraser=``, or :func:`erasekit.fit_eraser` on the same inputs):
   its steered answers are the warm start's targets (:func:`erasekit.asru.train_asru`). The retain subjects its
   rules tuned on (every fourth retain subject, by default) are not trained on (:func:`rule_held_out`).
3. Warm start + GRPO (:func:`erasekit.asru.train_asru`, :class:`erasekit.asru.ASRUConfig`).
4. Export: both stages are LoRA updates of rank ``cfg.lora_r`` on the same ``nn.Linear`` layers, merged in turn,
   so the trained model differs from the user's model by ``ΔW`` of rank <= 2 r per layer (nothing else changes:
   checked). ``ΔW`` is factored exactly (a rank-``k`` SVD, ``k`` = 2 r, or r with no warm start; randomized for
   large layers, still exact at that rank) into one peft
   LoRA of rank ``k`` with ``lora_alpha = k`` (scaling 1); the largest relative reconstruction error is in
   ``report["lora_rel_error"]`` (its floor is the float rounding of the merged weights, ~eps * |W| / |ΔW|).

Example::

    asru = ek.fit_asru(adapter, forget=facts[:12], retain=facts[12:40])
    asru.save("asru/capitals")                                     # peft's adapter folder
    # later, without erasekit: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(...), "asru/capitals")
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .asru import ASRUConfig, ASRUResult, Query, train_asru
from .baselines.lora import fresh_copy, lora_model, lora_targets
from .eraser import Eraser, are_facts, fit_eraser, split_prompts
from .forms import Fact, render, split_subjects
from .generation import generate
from .scoring import is_degenerate, is_refusal

__all__ = ["ASRUFit", "fit_asru", "lora_from_delta", "rule_held_out", "ASRU_FORMS"]

# The form families ASRU trains on by default: free-text answers (ASRU's reward reads a generated answer).
ASRU_FORMS = ("question", "paraphrase", "cloze", "completion", "context")


@dataclasses.dataclass
class ASRUFit:
    """The result of :func:`fit_asru`: ``model`` (a peft model: the user's model, copied, with one LoRA adapter),
    ``result`` (:class:`erasekit.asru.ASRUResult`: reward curve, warm-start losses, stage timings) and ``report``
    (sizes, seconds, peak memory, the LoRA's reconstruction error)."""

    model: nn.Module
    result: ASRUResult
    report: dict

    def save(self, path: str | os.PathLike) -> None:
        """peft's ``save_pretrained``: ``adapter_config.json`` + ``adapter_model.safetensors`` in ``path``."""
        self.model.save_pretrained(str(path))

    def generate(self, adapter: Any, prompts: Sequence[Any], *, max_new_tokens: int = 64, batch_size: int = 16,
                 progress: bool = True) -> list[str]:
        """Greedy answers of the unlearned model (the merged weights of :attr:`result`, equal to base + LoRA up to
        ``report["lora_rel_error"]``); ``adapter`` gives the processor, its model is not used."""
        from .models import adapter_for

        texts, images = split_prompts(prompts, "prompts")
        tuned = adapter_for(self.result.model, adapter.processor)
        return generate(tuned, texts, images, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        progress=progress)


def _queries(adapter: Any, items: Sequence[Any], is_forget: bool, forms: Sequence[str], pool: Sequence[Fact],
             max_new_tokens: int, batch_size: int, progress: bool) -> list[Query]:
    """Facts or prompts -> ASRU queries (gold: the fact's value, or the vanilla model's own answer)."""
    if are_facts(items):
        out = []
        for p in render(items, forms, pool=pool):
            task = "cloze" if p.family == "cloze" else "generation"
            out.append(Query(p.text, p.fact.value, is_forget, p.image, p.text, p.fact.subject, task))
        if not out:
            raise ValueError(f"no prompt rendered from the facts in forms {list(forms)}")
        return out
    texts, images = split_prompts(items, "forget" if is_forget else "retain")
    own = generate(adapter, texts, images, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    out = []
    for i, (t, a) in enumerate(zip(texts, own)):
        a = a.strip()
        if not a or is_degenerate(a) or (is_forget and is_refusal(a)):
            continue  # nothing to unlearn (already refused) or no answer to keep
        out.append(Query(t, a, is_forget, None if images is None else images[i], t, None, "generation"))
    if not out:
        side = "forget" if is_forget else "retain"
        raise ValueError(f"the model gave no usable answer to any {side} prompt (all empty, degenerate"
                         f"{' or already refused' if is_forget else ''}): nothing to train on")
    return out


def lora_from_delta(base: nn.Module, tuned: nn.Module, targets: Sequence[str], rank: int
                    ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """``{module: (A (k, in), B (out, k))}`` with ``B @ A`` = the tuned minus the base weight of each target
    ``nn.Linear`` (a rank-``rank`` SVD; exact when the difference has rank <= ``rank``), and the largest relative
    Frobenius error of the reconstruction. Raises if anything outside the targets' weights differs."""
    tuned_params = dict(tuned.named_parameters())
    target_weights = {f"{t}.weight" for t in targets}
    for name, p in base.named_parameters():
        if name not in target_weights and not torch.equal(p, tuned_params[name]):
            raise RuntimeError(f"{name} changed outside the LoRA targets: the result is not a LoRA of the model")
    factors, worst = {}, 0.0
    for t in targets:
        w0 = base.get_submodule(t).weight.detach().double()
        delta = tuned.get_submodule(t).weight.detach().double() - w0
        norm = float(delta.norm())
        if norm == 0.0:
            continue
        if min(delta.shape) > rank + 8:  # randomized range finder: exact for rank <= rank, O(n^2 r) not O(n^3)
            U, S, V = torch.svd_lowrank(delta, q=rank + 8, niter=4)
            Vh = V.T
        else:
            U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
        k = min(rank, S.numel())
        root = S[:k].sqrt()
        B, A = U[:, :k] * root, root[:, None] * Vh[:k]
        worst = max(worst, float((B @ A - delta).norm()) / norm)
        dtype = base.get_submodule(t).weight.dtype
        factors[t] = (A.to(dtype), B.to(dtype))
    return factors, worst


def rule_held_out(retain: Sequence[Any], tune_from: str | None) -> tuple[list[Any], list[Any]]:
    """(retain items ASRU trains on, items kept for the eraser's rules only): when stage 1's rules tuned on part of
    ``retain`` (``tune_from``, :func:`erasekit.fit_eraser`'s record: every fourth retain subject, or every fourth
    retain prompt), that part stays out of the warm start and of GRPO, so the subjects the rules read are never
    trained on; otherwise (``"given"``: the rules read other subjects) all of ``retain``."""
    retain = list(retain)
    if tune_from == "every fourth retain subject" and are_facts(retain):
        return split_subjects(retain)
    if tune_from == "every fourth retain prompt":
        return [r for i, r in enumerate(retain) if i % 4 != 3], retain[3::4]
    return retain, []


def fit_asru(adapter: Any, forget: Sequence[Any], retain: Sequence[Any], *, eraser: Eraser | None = None,
             cfg: ASRUConfig = ASRUConfig(), forms: Sequence[str] = ASRU_FORMS, max_new_tokens: int = 32,
             batch_size: int = 16, eraser_kwargs: dict | None = None, progress: bool = True) -> ASRUFit:
    """ASRU on ``adapter``'s model (see the module docstring): stage 1 = ``eraser`` (default: :func:`fit_eraser` on
    the same inputs, ``eraser_kwargs`` passed on), then warm start and GRPO; returns an :class:`ASRUFit` whose
    ``model`` is a peft model with one LoRA adapter over a copy of the user's model (the vanilla model is never
    modified).

    Args:
        adapter: from :func:`erasekit.models.load_model` (a VLM or a text-only causal LM).
        forget, retain: prompts (strings or (text, image) pairs) or facts (:class:`erasekit.forms.Fact`), as for
            :func:`fit_eraser`; facts are rendered in ``forms`` for training.
        eraser: stage 1; default: fitted here (``eraser_kwargs``: e.g. ``{"strength": 4}``; with prompts given as
            strings, the eraser's rules need ``{"tune": [prompts about other subjects]}``, :func:`fit_eraser`).
        cfg: :class:`erasekit.asru.ASRUConfig` (steps, group size, LoRA rank, warm start, ...).
    """
    if not isinstance(cfg, ASRUConfig):
        raise TypeError(f"cfg must be an erasekit.asru.ASRUConfig, got {type(cfg).__name__}")
    if isinstance(forget, str) or isinstance(retain, str) or not len(forget) or not len(retain):
        raise ValueError("forget and retain must be non-empty lists of prompts or facts")
    t0 = time.perf_counter()
    if eraser is None:
        eraser = fit_eraser(adapter, forget, retain, progress=progress, **(eraser_kwargs or {}))
    elif not isinstance(eraser, Eraser):
        raise TypeError(f"eraser must be an erasekit.Eraser, got {type(eraser).__name__}")
    t_eraser = time.perf_counter() - t0
    pool = [x for x in (*forget, *retain) if isinstance(x, Fact)]
    train_retain, rule_only = rule_held_out(retain, eraser.steerer.meta.get("tune_from"))
    kw = dict(forms=forms, pool=pool, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    fq, rq = _queries(adapter, forget, True, **kw), _queries(adapter, train_retain, False, **kw)
    result = train_asru(adapter, fq, rq, cfg, stage1=lambda q: eraser.context(adapter), progress=progress)

    targets = lora_targets(adapter.model, cfg.lora_vision)
    rank = cfg.lora_r * (2 if cfg.warm_epochs > 0 else 1)
    factors, err = lora_from_delta(adapter.model, result.model, targets, rank)
    # the baselines' LoRA on the same targets, at rank k with scaling 1; peft starts B at 0, so an untouched layer
    # stays a zero update
    peft = lora_model(fresh_copy(adapter), dataclasses.replace(cfg, lora_r=rank, lora_alpha=rank, lora_dropout=0.0))
    with torch.no_grad():
        for t, (A, B) in factors.items():
            layer = peft.base_model.model.get_submodule(t)
            layer.lora_A["default"].weight.copy_(A)
            layer.lora_B["default"].weight.copy_(B)
    peft.eval()
    report = {"n_forget_queries": len(fq), "n_retain_queries": len(rq), "n_rule_only_retain": len(rule_only),
              "lora_rank": rank,
              "lora_modules": len(targets), "lora_rel_error": err,
              "seconds": {"eraser": t_eraser, **result.seconds, "total": time.perf_counter() - t0},
              "peak_mib": round(result.peak_bytes / 2**20, 1), "memory_kind": result.memory_kind}
    return ASRUFit(peft, result, report)
