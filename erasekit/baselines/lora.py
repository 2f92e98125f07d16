"""The model copy a baseline trains, and the LoRA plumbing on it (METHOD.md §5).

Every method works on :func:`fresh_copy` (the vanilla model is never modified) and returns :func:`as_adapter` of
the result. LoRA adapts every ``nn.Linear`` of the language model and the projector except ``lm_head`` (plus the
vision tower with ``lora_vision``); where a module sits is the model family's knowledge
(``ModelAdapter.module_role``).
"""

from __future__ import annotations

import copy

from torch import nn

from ..models import ModelAdapter, adapter_class, adapter_for
from .configs import TrainConfig

__all__ = ["lora_targets", "lora_config", "lora_model", "merged_frozen", "fresh_copy", "as_adapter"]


def lora_targets(model: nn.Module, vision: bool = False) -> list[str]:
    """Full module paths of the ``nn.Linear`` layers LoRA adapts: language model + projector (+ vision tower).

    Where a module sits is asked of the model's family adapter (``ModelAdapter.module_role``).
    """
    role = adapter_class(model.config.model_type).module_role
    roles = {"language", "projector"} | ({"vision"} if vision else set())
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and role(n) in roles]


def lora_config(model: nn.Module, cfg: TrainConfig):
    """peft's ``LoraConfig`` of ``cfg`` (r, alpha, dropout; no bias) on ``model``'s :func:`lora_targets`."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
                      target_modules=lora_targets(model, cfg.lora_vision))


def lora_model(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """``model`` with peft LoRA adapters (:func:`lora_config`)."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(model, cfg))


def merged_frozen(peft_model: nn.Module) -> nn.Module:
    """A trained peft model's LoRA merged into its base weights, in eval mode, every parameter frozen."""
    peft_model.eval()
    merged = peft_model.merge_and_unload()
    for p in merged.parameters():
        p.requires_grad_(False)
    return merged.eval()


def fresh_copy(adapter: ModelAdapter) -> nn.Module:
    """A deep copy of the vanilla model (the vanilla object is never modified)."""
    model = copy.deepcopy(adapter.model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def as_adapter(adapter: ModelAdapter, model: nn.Module) -> ModelAdapter:
    """The trained copy, frozen in eval mode, wrapped in an adapter with the vanilla adapter's processor."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return adapter_for(model, adapter.processor)

