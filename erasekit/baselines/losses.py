"""Teacher-forced answer log-probabilities and the unlearning objectives (GA, GA_Diff, KL_Min, NPO, ...)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..models import IGNORE_INDEX

__all__ = ["forward_logits", "answer_logprobs", "batch_nll", "unlearning_loss"]


def forward_logits(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(B,T,V) logits of a :func:`~erasekit.baselines.data.collate` batch (its ``labels`` are not passed on)."""
    return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def answer_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position log-probabilities of the label tokens.

    Args:
        logits: (B,T,V) model logits; labels: (B,T) with -100 outside the answer.
    Returns:
        logp (B,T-1) float32 (0 where masked) and mask (B,T-1) bool: position t predicts labels[:, t+1].
    """
    tgt = labels[:, 1:]
    mask = tgt != IGNORE_INDEX
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tok = logp.gather(-1, tgt.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return tok * mask, mask


def batch_nll(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean NLL per answer token of a batch (teacher forced): the model's own token-mean loss."""
    logp, mask = answer_logprobs(forward_logits(model, batch), batch["labels"])
    return -logp.sum() / mask.sum().clamp_min(1)


@contextlib.contextmanager
def _adapters_off(model: nn.Module) -> Iterator[None]:
    if not hasattr(model, "disable_adapter"):
        raise TypeError("a vanilla reference from the same network needs a peft model (LoRA adapters to disable)")
    with model.disable_adapter():
        yield


def unlearning_loss(model: nn.Module, method: str, forget: Mapping[str, torch.Tensor],
                    retain: Mapping[str, torch.Tensor] | None = None, *, reference: nn.Module | None = None,
                    beta: float = 0.5, retain_weight: float = 1.0, kl_weight: float = 1.0,
                    forget_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """The objective that is *minimised* for one step of ``method`` on a forget (and retain) batch.

    Args:
        model: the model being trained (a peft model for KL_Min, and for NPO with ``reference=None``).
        method: "GA" | "GA_Diff" | "KL_Min" | "NPO" | "MMUnlearner" | "Retain_FT".
        forget, retain: batches from :func:`collate` (with labels).
        reference: NPO's pi_ref; None = the same network with its adapters disabled (the vanilla model).
    Returns:
        (scalar loss, parts) where parts holds floats: forget_nll, retain_nll, kl, npo, loss.
    """
    parts: dict[str, float] = {}
    if method == "Retain_FT":
        loss = batch_nll(model, retain)
        parts["retain_nll"] = loss.item()
    elif method == "NPO":
        logp, mask = answer_logprobs(forward_logits(model, forget), forget["labels"])
        seq = logp.sum(-1)
        with torch.no_grad():
            if reference is None:
                with _adapters_off(model):
                    ref_logits = forward_logits(model, forget)
            else:
                ref_logits = forward_logits(reference, forget)
            ref_seq = answer_logprobs(ref_logits, forget["labels"])[0].sum(-1)
        # (2/b) log(1 + (pi/pi_ref)^b) = -(2/b) log sigmoid(-b (log pi - log pi_ref)), stable for any ratio.
        loss = (-2.0 / beta * F.logsigmoid(-beta * (seq - ref_seq))).mean()
        parts["forget_nll"] = (-logp.sum() / mask.sum().clamp_min(1)).item()
        parts["log_ratio"] = (seq - ref_seq).mean().item()
    else:
        if method not in ("GA", "GA_Diff", "KL_Min", "MMUnlearner"):
            raise ValueError(f"unknown method {method!r}; expected one of GA, GA_Diff, KL_Min, NPO, MMUnlearner")
        forget_nll = batch_nll(model, forget)
        loss = -forget_weight * forget_nll
        parts["forget_nll"] = forget_nll.item()
        if method in ("GA_Diff", "MMUnlearner", "KL_Min"):
            if retain is None:
                raise ValueError(f"{method} needs a retain batch")
        if method in ("GA_Diff", "MMUnlearner"):
            retain_nll = batch_nll(model, retain)
            loss = loss + retain_weight * retain_nll
            parts["retain_nll"] = retain_nll.item()
        elif method == "KL_Min":
            logits = forward_logits(model, retain)
            with torch.no_grad(), _adapters_off(model):
                ref = forward_logits(model, retain)
            mask = retain["labels"][:, 1:] != IGNORE_INDEX
            cur = torch.log_softmax(logits[:, :-1].float(), -1)[mask]  # (N,V) answer positions
            old = torch.log_softmax(ref[:, :-1].float(), -1)[mask]
            kl = (cur.exp() * (cur - old)).sum(-1).mean()  # KL(current || vanilla)
            loss = loss + kl_weight * kl
            parts["kl"] = kl.item()
    parts["loss"] = loss.item()
    return loss, parts
