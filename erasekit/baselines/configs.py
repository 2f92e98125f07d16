"""Baseline configurations: shared optimisation settings, one config per method, and the organism's chosen ones."""

from __future__ import annotations

import dataclasses

__all__ = ["TrainConfig", "GAConfig", "GADiffConfig", "KLMinConfig", "RetainFTConfig", "NPOConfig",
           "MMUnlearnerConfig", "MANUConfig", "CONFIGS"]


@dataclasses.dataclass
class TrainConfig:
    """Shared optimisation settings. Defaults are starting points for the organism; choose with :func:`sweep`.

    ``epochs`` are passes over the forget examples (``ceil(n_forget / batch_size)`` steps each); retain batches are
    drawn at random (seeded) alongside. ``max_steps`` caps the total (smoke runs).
    """

    lr: float = 2e-4
    epochs: int = 3
    batch_size: int = 8
    max_steps: int | None = None
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_vision: bool = False  # also adapt the vision tower (fine for the tiny organism)
    progress: bool = True

    method = ""  # class attribute, not a field


@dataclasses.dataclass
class GAConfig(TrainConfig):
    """Gradient ascent: minimise ``-NLL(forget)``."""

    method = "GA"


@dataclasses.dataclass
class GADiffConfig(TrainConfig):
    """Gradient difference: ``-NLL(forget) + retain_weight * NLL(retain)``."""

    retain_weight: float = 1.0
    method = "GA_Diff"


@dataclasses.dataclass
class KLMinConfig(TrainConfig):
    """``-NLL(forget) + kl_weight * KL(current || vanilla)`` on retain answer positions."""

    kl_weight: float = 1.0
    method = "KL_Min"


@dataclasses.dataclass
class RetainFTConfig(TrainConfig):
    """Plain LoRA fine-tuning on retain data (NLL); used for NPO's retain-only "oracle" reference.

    ``epochs`` here are passes over ``steps_per_epoch`` retain batches (the retain set is large).
    """

    lr: float = 2e-4
    epochs: int = 1
    steps_per_epoch: int = 100
    method = "Retain_FT"


@dataclasses.dataclass
class NPOConfig(TrainConfig):
    """NPO with ``beta`` (paper range 0.4-0.9); ``reference``: "vanilla" (adapters disabled) or "oracle"
    (:func:`retain_finetune` with ``oracle``), unless a reference adapter is passed to :func:`unlearn`."""

    beta: float = 0.5
    reference: str = "vanilla"
    oracle: RetainFTConfig = dataclasses.field(default_factory=RetainFTConfig)
    method = "NPO"


@dataclasses.dataclass
class MMUnlearnerConfig(TrainConfig):
    """Saliency-masked full-weight GA + retain descent (see the module docstring).

    ``saliency_ratio`` gamma: keep weight entries with ``F_f > gamma * F_r``. ``saliency_examples``: how many forget
    and retain examples estimate F_f and F_r. ``forget_modes``: MMUnlearner unlearns from VQA data.
    ``preserve_forget_text`` adds the forget people's QA examples to the retain side (the paper's reformulation:
    forget the visual pattern, keep the text knowledge); off by default because MLLMU-Bench / MLLMEraser also
    count forget-set QA as knowledge to remove. ``include_vision``: the vision tower's linear weights are
    candidates too (as in their code). LoRA fields are ignored.
    """

    lr: float = 1e-4
    saliency_ratio: float = 1.0
    saliency_examples: int = 64
    forget_modes: tuple[str, ...] = ("VQA",)
    preserve_forget_text: bool = False
    include_vision: bool = True
    forget_weight: float = 1.0
    method = "MMUnlearner"


@dataclasses.dataclass
class MANUConfig:
    """Modality-aware neuron pruning (training-free).

    ``prune_fraction``: per layer and modality, this fraction of the MLP neurons, highest score first; with
    ``positive_only`` (default) only neurons with a positive score, i.e. more important for forget than for retain
    data (App. D.3), so fewer may be pruned (MANU's code takes the top fraction regardless). ``weights``: of the
    four MANU statistics (abs, freq, var, rms). ``max_examples``: forget and retain examples per modality used for
    the statistics. ``include_vision``: score and prune vision-tower MLP neurons too (with VQA data).
    """

    prune_fraction: float = 0.02
    positive_only: bool = True
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    freq_threshold: float = 0.1
    eps: float = 1e-5
    max_examples: int = 64
    batch_size: int = 8
    include_vision: bool = True
    seed: int = 0
    progress: bool = True
    method = "MANU"


CONFIGS: dict[str, type] = {c.method: c for c in (GAConfig, GADiffConfig, KLMinConfig, NPOConfig,
                                                  MMUnlearnerConfig, MANUConfig)}
