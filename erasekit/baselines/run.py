"""The entry point: run one baseline on a copy of the vanilla model and record what it cost."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..measure import measure
from ..models import ModelAdapter
from .configs import CONFIGS, MANUConfig, RetainFTConfig, TrainConfig
from .data import Example
from .loop import lora_run, steps_for
from .manu import run_manu
from .mmunlearner import run_mmunlearner

__all__ = ["UnlearnResult", "unlearn", "retain_finetune"]


@dataclasses.dataclass
class UnlearnResult:
    """The unlearned adapter plus what it cost.

    ``peak_memory_mb``: ``torch.cuda.max_memory_allocated`` (``memory_kind="cuda_max_allocated"``) or the peak RSS
    increase over the start (``"rss_peak_increase"``). ``history``: one dict of floats per optimisation step.
    ``info``: method specifics (trainable parameters, LoRA targets, mask density, pruned neurons, ...).
    """

    adapter: ModelAdapter
    method: str
    config: dict
    seconds: float
    peak_memory_mb: float
    memory_kind: str
    steps: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)
    info: dict = dataclasses.field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-able record (no model): method, config, time, memory, steps, info."""
        return {"method": self.method, "config": self.config, "seconds": round(self.seconds, 3),
                "peak_memory_mb": round(self.peak_memory_mb, 1), "memory_kind": self.memory_kind,
                "steps": self.steps, "info": _jsonable(self.info)}

    def save(self, folder: str | os.PathLike) -> None:
        """Write the unlearned model (transformers folder), its processor parts and ``unlearning.json``."""
        folder = os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        self.adapter.model.save_pretrained(folder)
        proc = self.adapter.processor
        if hasattr(proc, "save_pretrained"):
            proc.save_pretrained(folder)
        else:  # ProcessorParts
            proc.tokenizer.save_pretrained(folder)
            if proc.image_processor is not None:
                proc.image_processor.save_pretrained(folder)
        with open(os.path.join(folder, "unlearning.json"), "w") as f:
            json.dump({**self.summary(), "history": self.history}, f, indent=1)


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (int, float, str, bool)) or x is None:
        return x
    return str(x)


def unlearn(adapter: ModelAdapter, forget: Sequence[Example], retain: Sequence[Example],
            config: TrainConfig | MANUConfig | str, reference: ModelAdapter | None = None) -> UnlearnResult:
    """Run one baseline on a copy of ``adapter``'s model; returns the unlearned adapter, time and memory.

    Args:
        adapter: the vanilla model (never modified).
        forget, retain: :func:`build_examples` of the forget and retain rows.
        config: a config instance, or a method name ("GA", "GA_Diff", "KL_Min", "NPO", "MMUnlearner", "MANU")
            for its defaults.
        reference: NPO only, an explicit pi_ref adapter (overrides ``config.reference``).

    Example::

        res = unlearn(vanilla, forget, retain, GADiffConfig(lr=3e-4, epochs=2))
        print(res.summary())
    """
    cfg = CONFIGS[config]() if isinstance(config, str) else config
    method = cfg.method
    if method not in CONFIGS:
        raise ValueError(f"unknown baseline {method!r}; expected one of {sorted(CONFIGS)}")
    forget, retain = list(forget), list(retain)
    info: dict = {"forget_examples": len(forget), "retain_examples": len(retain)}
    history: list[dict] = []
    with measure(adapter.device) as m:
        if method == "MANU":
            new, extra = run_manu(adapter, forget, retain, cfg)
        elif method == "MMUnlearner":
            new, history, extra = run_mmunlearner(adapter, forget, retain, cfg)
        else:
            n_steps = steps_for(cfg, len(forget))
            loss_kw: dict[str, Any] = {}
            ref_model = None
            needs_retain = method in ("GA_Diff", "KL_Min")
            if method == "GA_Diff":
                loss_kw["retain_weight"] = cfg.retain_weight
            elif method == "KL_Min":
                loss_kw["kl_weight"] = cfg.kl_weight
            elif method == "NPO":
                loss_kw["beta"] = cfg.beta
                if reference is not None:
                    ref_model = reference.model
                elif cfg.reference == "oracle":
                    ref_model = retain_finetune(adapter, retain, dataclasses.replace(
                        cfg.oracle, seed=cfg.seed, progress=cfg.progress)).adapter.model
                elif cfg.reference != "vanilla":
                    raise ValueError(f"NPO reference must be 'vanilla' or 'oracle', got {cfg.reference!r}")
            new, history, extra = lora_run(adapter, method, forget, retain if needs_retain else None, cfg,
                                           n_steps, loss_kw, ref_model)
            info["reference"] = getattr(cfg, "reference", None) if reference is None else "given"
        info.update(extra)
    return UnlearnResult(new, method, _jsonable(dataclasses.asdict(cfg)), m.seconds, m.peak_memory_mb,
                         m.memory_kind, len(history), history, info)


def retain_finetune(adapter: ModelAdapter, retain: Sequence[Example], config: RetainFTConfig | None = None
                    ) -> UnlearnResult:
    """LoRA fine-tune a copy of the model on retain data (NLL): NPO's retain-only reference ("oracle")."""
    cfg = config or RetainFTConfig()
    with measure(adapter.device) as m:
        new, history, info = lora_run(adapter, "Retain_FT", [], retain, cfg, cfg.epochs * cfg.steps_per_epoch)
    return UnlearnResult(new, "Retain_FT", dataclasses.asdict(cfg), m.seconds, m.peak_memory_mb,
                         m.memory_kind, len(history), history, info)
