"""Training-based unlearning baselines of the paper's tables (App. D.3, METHOD.md §5): GA, GA_Diff, KL_Min, NPO,
MMUnlearner and MANU.

Every method takes the *vanilla* adapter and returns an :class:`UnlearnResult` whose ``adapter`` wraps a NEW model
(a deep copy, LoRA merged into it), so the evaluation harness scores it like any other adapter. The vanilla model in
memory and the organism folder on disk are never touched.

Data (MLLMU-Bench style): :func:`build_examples` turns benchmark rows into (image?, question -> ground-truth answer)
pairs for Generation_Task, Mask_Task and classification items, in VQA (with the portrait) and QA (text only) modes.

Losses (``NLL`` = mean negative log-likelihood of the answer tokens, teacher forced):

* GA       ``-NLL(D_f)``
* GA_Diff  ``-NLL(D_f) + w_r NLL(D_r)``
* KL_Min   ``-NLL(D_f) + w_kl KL(P_theta || P_theta0)`` on retain answer positions; ``P_theta0`` is the same
  network with its LoRA adapters disabled (exactly the vanilla model), so the KL term is 0 at step 0.
* NPO      ``(2/beta) log(1 + (pi_theta(y|x) / pi_ref(y|x))^beta)`` on forget sequences (log-probs summed over the
  answer tokens). ``pi_ref`` is the vanilla model (adapters disabled) or a retain-fine-tuned "oracle" (the paper's
  "reference model trained only on D_r"; we cannot retrain from scratch, so the oracle is the vanilla model
  LoRA-fine-tuned on D_r, :func:`retain_finetune`), or any adapter you pass.
* MMUnlearner (Huo et al., 2025) -- full weights, no LoRA: LoRA updates low-rank products of every target matrix and
  cannot express "update only these entries", which is the method. Saliency ``F_f = sum grad^2`` of the NLL on
  forget VQA data (the Fisher diagonal, batch-gradient approximation) versus ``F_r`` on retain VQA + QA data
  (optionally also the forget people's text QA, the paper's "preserve textual knowledge" reformulation); the mask
  keeps the linear-layer weight entries with ``F_f > gamma F_r``. Training: ``-NLL(forget VQA) + NLL(retain)`` with
  gradients multiplied by the mask and AdamW without weight decay, so entries outside the mask stay bit-identical.
  (Their code masks only the forget step and takes a separate, unmasked retain step; we mask both, so "update only
  the salient parameters" holds exactly.)
* MANU (Liu et al., 2025) -- training-free neuron pruning: for every MLP neuron (input of ``down_proj``/``fc2``) the
  four activation statistics of MANU (mean |a|, frequency of |a| > 0.1, std, RMS) are gathered on forget and retain
  data per modality (VQA with image, QA text only; vision-tower neurons only see VQA); the score is
  ``sum_k w_k ((I_f^k + eps) / (I_r^k + eps) - 1)``; per layer and modality the top ``prune_fraction`` neurons
  with a positive score are pruned, the union over modalities. Pruning zeroes the neuron's input rows (gate/up or fc1,
  with bias) and its output column (down_proj/fc2): its activation is then exactly 0 and nothing else changes.

LoRA (METHOD.md §5): r = 16, alpha = 16, dropout 0.05 on every ``nn.Linear`` of the language model and the
projector except ``lm_head``; ``lora_vision=True`` adds the vision tower (fine for the tiny organism, whose tower is
trained from scratch with everything else). AdamW, gradient clipping at 1.0.

Each result records wall time and peak memory: ``torch.cuda.max_memory_allocated`` on GPU, else the peak resident
set size (RSS, sampled every 5 ms) above the RSS at the start -- tracemalloc does not see torch's allocations
(:func:`erasekit.measure.measure`).

Example::

    world = load_world_for("data/organism"); vanilla = load_model("data/organism")
    forget = build_examples(world.split("forget_5")); retain = build_examples(world.split("retain_95"))
    res = unlearn(vanilla, forget, retain, NPOConfig(beta=0.5))
    df = evaluate(res.adapter, world, forget_pct=5, method="NPO")
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import math
import os
from pathlib import Path
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .hooks import registered
from .measure import measure
from .models import IGNORE_INDEX, ModelAdapter, adapter_for
from .world import format_options

__all__ = [
    "Example", "build_examples", "collate",
    "TrainConfig", "GAConfig", "GADiffConfig", "KLMinConfig", "NPOConfig", "RetainFTConfig", "MMUnlearnerConfig",
    "MANUConfig", "CONFIGS", "UnlearnResult",
    "lora_targets", "answer_logprobs", "unlearning_loss",
    "unlearn", "retain_finetune", "mmunlearner_saliency", "manu_scores",
    "answer_nll", "answer_accuracy", "sweep", "pick_config", "organism_choices", "organism_config",
]

TASKS = ("classification", "generation", "cloze")
MODES = ("VQA", "QA")
_TYPE = {"VQA": "Image_Textual", "QA": "Pure_Text"}


# ----------------------------------------------------------------------------------------------------------------
# data


@dataclasses.dataclass(frozen=True)
class Example:
    """One training pair: (image?, question) -> answer. ``image`` is a PIL image for VQA, None for QA."""

    question: str
    answer: str
    image: Any = None
    id: Any = None
    task: str = ""  # classification | generation | cloze
    mode: str = ""  # VQA | QA


def build_examples(rows: Sequence[Mapping[str, Any]], tasks: Sequence[str] = TASKS,
                   modes: Sequence[str] = MODES) -> list[Example]:
    """Benchmark rows (MLLMU-Bench schema, e.g. ``world.split("forget_5")``) -> training examples.

    * generation: ``Generation_Task`` question -> ``Ground_Truth`` sentence;
    * cloze: ``Mask_Task`` question -> ``Ground_Truth`` word;
    * classification: ``format_options(question, options)`` -> the correct letter (the evaluation prompt).

    VQA examples carry the row's ``image`` (Test_Set rows: the first of ``images``); QA examples none.
    Order: row by row, then task, then the row's own item order (deterministic).

    >>> from erasekit.world import make_world
    >>> ex = build_examples(make_world(20, 2).split("forget_5"), tasks=["cloze"], modes=["QA"])
    >>> ex[0].task, ex[0].mode, ex[0].image is None
    ('cloze', 'QA', True)
    """
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"unknown task {t!r}; expected some of {TASKS}")
    for m in modes:
        if m not in MODES:
            raise ValueError(f"unknown mode {m!r}; expected some of {MODES}")
    out: list[Example] = []
    for row in rows:
        image = row.get("image")
        if image is None and row.get("images"):
            image = row["images"][0]
        for task in tasks:
            for mode in modes:
                img = image if mode == "VQA" else None
                if mode == "VQA" and img is None:
                    raise ValueError(f"row {row.get('ID')!r} has no image for VQA examples")
                if task == "classification":
                    items = row["Classification_Task"][f"{_TYPE[mode]}_Questions"]
                    out += [Example(format_options(q["Question"], q["Options"]), q["Correct_Answer"], img,
                                    row.get("ID"), task, mode) for q in items]
                else:
                    key = "Generation_Task" if task == "generation" else "Mask_Task"
                    out += [Example(q["Question"], q["Ground_Truth"], img, row.get("ID"), task, mode)
                            for q in row[key] if q["Type"] == _TYPE[mode]]
    return out


def _answer_prefix(adapter: ModelAdapter) -> str:
    # A generation prompt ending in a word character or ":" ("... ASSISTANT:") is followed by " answer" in the
    # training data of LLaVA-style templates; Qwen-style prompts end in a newline. Decided from the prompt string.
    prompt = adapter.build_prompts(["?"], [False])[0]
    return " " if prompt and not prompt[-1].isspace() else ""


def collate(adapter: ModelAdapter, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
    """Encode examples into one left-padded batch with ``labels`` (-100 except answer tokens + eos)."""
    prefix = _answer_prefix(adapter)
    return adapter.encode([e.question for e in examples], images=[e.image for e in examples],
                          answers=[prefix + e.answer for e in examples])


# ----------------------------------------------------------------------------------------------------------------
# configs


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


# The configuration each baseline uses on the embedded organism (notebooks 05 and 08): the class defaults, updated
# with what ``scripts/sweep_baselines.py`` chose by :func:`sweep` + :func:`pick_config`, recorded in this file.
SWEEP_FILE = Path(__file__).resolve().parents[1] / "data" / "results" / "baseline_sweep.json"


def organism_choices(path: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """``{method: chosen hyperparameters}`` from the sweep file ({} when it does not exist)."""
    path = Path(path) if path is not None else SWEEP_FILE
    if not path.exists():
        return {}
    with open(path) as f:
        return {m: dict(r["chosen"]) for m, r in json.load(f)["methods"].items()}


def organism_config(method: str, **overrides: Any) -> TrainConfig | MANUConfig:
    """The config of ``method`` for the organism: class defaults, then the sweep's choice
    (:func:`organism_choices`), then ``overrides``."""
    if method not in CONFIGS:
        raise ValueError(f"unknown baseline {method!r}; expected one of {sorted(CONFIGS)}")
    return CONFIGS[method](**{**organism_choices().get(method, {}), **overrides})


# ----------------------------------------------------------------------------------------------------------------
# result


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


# ----------------------------------------------------------------------------------------------------------------
# model parts


# Where a linear layer sits, from its module path (LLaVA: vision_tower / multi_modal_projector / language_model;
# Qwen-VL: visual.{blocks,patch_embed} / visual.merger / language_model).
_VISION_KEYS = ("vision_tower", "vision_model", "visual.")
_PROJECTOR_KEYS = ("multi_modal_projector", "merger", "connector")


def _role(name: str) -> str:
    """'lm_head' | 'projector' | 'vision' | 'language' for a module path."""
    if name == "lm_head" or name.endswith(".lm_head"):
        return "lm_head"
    if any(k in name for k in _PROJECTOR_KEYS):
        return "projector"
    if any(k in name for k in _VISION_KEYS):
        return "vision"
    return "language"


def lora_targets(model: nn.Module, vision: bool = False) -> list[str]:
    """Full module paths of the ``nn.Linear`` layers LoRA adapts: language model + projector (+ vision tower)."""
    roles = {"language", "projector"} | ({"vision"} if vision else set())
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and _role(n) in roles]


def _lora_model(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(model, cfg.lora_vision)
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
                        target_modules=targets)
    return get_peft_model(model, config)


def _fresh_copy(adapter: ModelAdapter) -> nn.Module:
    """A deep copy of the vanilla model (the vanilla object is never modified)."""
    model = copy.deepcopy(adapter.model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _wrap(adapter: ModelAdapter, model: nn.Module) -> ModelAdapter:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return adapter_for(model, adapter.processor)


# ----------------------------------------------------------------------------------------------------------------
# losses


def _forward_logits(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
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


def _nll(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    logp, mask = answer_logprobs(_forward_logits(model, batch), batch["labels"])
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
        loss = _nll(model, retain)
        parts["retain_nll"] = loss.item()
    elif method == "NPO":
        logp, mask = answer_logprobs(_forward_logits(model, forget), forget["labels"])
        seq = logp.sum(-1)
        with torch.no_grad():
            if reference is None:
                with _adapters_off(model):
                    ref_logits = _forward_logits(model, forget)
            else:
                ref_logits = _forward_logits(reference, forget)
            ref_seq = answer_logprobs(ref_logits, forget["labels"])[0].sum(-1)
        # (2/b) log(1 + (pi/pi_ref)^b) = -(2/b) log sigmoid(-b (log pi - log pi_ref)), stable for any ratio.
        loss = (-2.0 / beta * F.logsigmoid(-beta * (seq - ref_seq))).mean()
        parts["forget_nll"] = (-logp.sum() / mask.sum().clamp_min(1)).item()
        parts["log_ratio"] = (seq - ref_seq).mean().item()
    else:
        if method not in ("GA", "GA_Diff", "KL_Min", "MMUnlearner"):
            raise ValueError(f"unknown method {method!r}; expected one of GA, GA_Diff, KL_Min, NPO, MMUnlearner")
        forget_nll = _nll(model, forget)
        loss = -forget_weight * forget_nll
        parts["forget_nll"] = forget_nll.item()
        if method in ("GA_Diff", "MMUnlearner", "KL_Min"):
            if retain is None:
                raise ValueError(f"{method} needs a retain batch")
        if method in ("GA_Diff", "MMUnlearner"):
            retain_nll = _nll(model, retain)
            loss = loss + retain_weight * retain_nll
            parts["retain_nll"] = retain_nll.item()
        elif method == "KL_Min":
            logits = _forward_logits(model, retain)
            with torch.no_grad(), _adapters_off(model):
                ref = _forward_logits(model, retain)
            mask = retain["labels"][:, 1:] != IGNORE_INDEX
            cur = torch.log_softmax(logits[:, :-1].float(), -1)[mask]  # (N,V) answer positions
            old = torch.log_softmax(ref[:, :-1].float(), -1)[mask]
            kl = (cur.exp() * (cur - old)).sum(-1).mean()  # KL(current || vanilla)
            loss = loss + kl_weight * kl
            parts["kl"] = kl.item()
    parts["loss"] = loss.item()
    return loss, parts


# ----------------------------------------------------------------------------------------------------------------
# training loop


def _batches(examples: Sequence[Example], batch_size: int, rng: random.Random) -> Iterator[list[Example]]:
    """Endless epochs over ``examples``, reshuffled each epoch with ``rng``."""
    if not examples:
        raise ValueError("no examples to train on")
    order = list(range(len(examples)))
    while True:
        rng.shuffle(order)
        for s in range(0, len(order), batch_size):
            yield [examples[i] for i in order[s : s + batch_size]]


def _n_steps(cfg: TrainConfig, n_forget: int) -> int:
    steps = cfg.epochs * math.ceil(n_forget / cfg.batch_size)
    return min(steps, cfg.max_steps) if cfg.max_steps is not None else steps


def _train(adapter: ModelAdapter, model: nn.Module, method: str, forget: Sequence[Example],
           retain: Sequence[Example] | None, cfg: TrainConfig, n_steps: int, *,
           masks: Mapping[str, torch.Tensor] | None = None, loss_kw: Mapping[str, Any] | None = None,
           desc: str = "") -> list[dict]:
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


def _lora_run(adapter: ModelAdapter, method: str, forget: Sequence[Example], retain: Sequence[Example] | None,
              cfg: TrainConfig, n_steps: int, loss_kw: Mapping[str, Any] | None = None,
              reference: nn.Module | None = None) -> tuple[ModelAdapter, list[dict], dict]:
    torch.manual_seed(cfg.seed)
    model = _lora_model(_fresh_copy(adapter), cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    kw = dict(loss_kw or {})
    if reference is not None:
        kw["reference"] = reference
    history = _train(adapter, model, method, forget, retain, cfg, n_steps, loss_kw=kw)
    merged = model.merge_and_unload()
    info = {"trainable_parameters": trainable, "lora_targets": len(lora_targets(merged, cfg.lora_vision))}
    return _wrap(adapter, merged), history, info


def retain_finetune(adapter: ModelAdapter, retain: Sequence[Example], config: RetainFTConfig | None = None
                    ) -> UnlearnResult:
    """LoRA fine-tune a copy of the model on retain data (NLL): NPO's retain-only reference ("oracle")."""
    cfg = config or RetainFTConfig()
    with measure(adapter.device) as m:
        new, history, info = _lora_run(adapter, "Retain_FT", [], retain, cfg, cfg.epochs * cfg.steps_per_epoch)
    return UnlearnResult(new, "Retain_FT", dataclasses.asdict(cfg), m.seconds, m.peak_memory_mb,
                         m.memory_kind, len(history), history, info)


# ----------------------------------------------------------------------------------------------------------------
# MMUnlearner


def _mm_scope(model: nn.Module, include_vision: bool) -> dict[str, torch.Tensor]:
    """Weight matrices of the linear layers MMUnlearner may update, by parameter name."""
    roles = {"language", "projector"} | ({"vision"} if include_vision else set())
    return {f"{n}.weight": m.weight for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and _role(n) in roles}


def _grad_sq(adapter: ModelAdapter, model: nn.Module, params: Mapping[str, torch.Tensor],
             examples: Sequence[Example], batch_size: int) -> dict[str, torch.Tensor]:
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    for s in range(0, len(examples), batch_size):
        model.zero_grad(set_to_none=True)
        _nll(model, collate(adapter, examples[s : s + batch_size])).backward()
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
    params = _mm_scope(model, cfg.include_vision)
    ff = _grad_sq(adapter, model, params, forget, cfg.batch_size)
    fr = _grad_sq(adapter, model, params, retain, cfg.batch_size)
    return {n: ((ff[n] > cfg.saliency_ratio * fr[n]) & (ff[n] > 0)).to(params[n].dtype) for n in params}


def _subsample(examples: Sequence[Example], n: int, seed: Any) -> list[Example]:
    examples = list(examples)
    if len(examples) <= n:
        return examples
    return random.Random(seed).sample(examples, n)


def _mmunlearner(adapter: ModelAdapter, forget: Sequence[Example], retain: Sequence[Example],
                 cfg: MMUnlearnerConfig) -> tuple[ModelAdapter, list[dict], dict]:
    torch.manual_seed(cfg.seed)
    model = _fresh_copy(adapter)
    params = _mm_scope(model, cfg.include_vision)
    for p in params.values():
        p.requires_grad_(True)
    f_train = [e for e in forget if e.mode in cfg.forget_modes]
    retain_side = list(retain) + ([e for e in forget if e.mode == "QA"] if cfg.preserve_forget_text else [])
    masks = mmunlearner_saliency(adapter, model, _subsample(f_train, cfg.saliency_examples, f"{cfg.seed}-sf"),
                                 _subsample(retain_side, cfg.saliency_examples, f"{cfg.seed}-sr"), cfg)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    history = _train(adapter, model, "MMUnlearner", f_train, retain_side, cfg, _n_steps(cfg, len(f_train)),
                     masks=masks, loss_kw={"forget_weight": cfg.forget_weight})
    info = {"mask_density": kept / max(1, total), "masked_entries": kept, "candidate_entries": total,
            "forget_examples": len(f_train)}
    return _wrap(adapter, model), history, info


# ----------------------------------------------------------------------------------------------------------------
# MANU


_MLP_IN = ("gate_proj", "up_proj", "fc1", "linear_fc1")
_MLP_OUT = ("down_proj", "fc2", "linear_fc2")


def _mlps(model: nn.Module, include_vision: bool) -> dict[str, tuple[list[nn.Linear], nn.Linear]]:
    """MLP blocks -> (input projections, output projection); the output projection's input is the neuron layer."""
    out = {}
    for name, mod in model.named_modules():
        role = _role(name)
        if role == "projector" or (role == "vision" and not include_vision):
            continue
        children = dict(mod.named_children())
        outs = [children[k] for k in _MLP_OUT if isinstance(children.get(k), nn.Linear)]
        ins = [children[k] for k in _MLP_IN if isinstance(children.get(k), nn.Linear)]
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
            _forward_logits(model, batch)
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
    mlps = _mlps(model, cfg.include_vision)
    w = torch.tensor(cfg.weights, dtype=torch.float64).view(4, 1)
    scores: dict[str, dict[str, torch.Tensor]] = {}
    for mode in MODES:
        f = _subsample([e for e in forget if e.mode == mode], cfg.max_examples, f"{cfg.seed}-{mode}-f")
        r = _subsample([e for e in retain if e.mode == mode], cfg.max_examples, f"{cfg.seed}-{mode}-r")
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


def _manu(adapter: ModelAdapter, forget: Sequence[Example], retain: Sequence[Example],
          cfg: MANUConfig) -> tuple[ModelAdapter, dict]:
    model = _fresh_copy(adapter)
    model.eval()
    scores = manu_scores(adapter, forget, retain, cfg, model=model)
    mlps = _mlps(model, cfg.include_vision)
    chosen: dict[str, set[int]] = {n: set() for n in mlps}
    for mode, per_layer in scores.items():
        for name, s in per_layer.items():
            k = math.ceil(cfg.prune_fraction * s.numel())
            top = torch.argsort(s, descending=True, stable=True)[:k]
            chosen[name] |= {int(i) for i in top if s[i] > 0 or not cfg.positive_only}
    chosen_sorted = {n: sorted(v) for n, v in chosen.items() if v}
    _prune(mlps, chosen_sorted)
    width = sum(o.in_features for _, o in mlps.values())
    info = {"pruned": chosen_sorted, "pruned_neurons": sum(len(v) for v in chosen_sorted.values()),
            "total_neurons": width, "modalities": sorted(scores)}
    return _wrap(adapter, model), info


# ----------------------------------------------------------------------------------------------------------------
# entry point


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
            new, extra = _manu(adapter, forget, retain, cfg)
        elif method == "MMUnlearner":
            new, history, extra = _mmunlearner(adapter, forget, retain, cfg)
        else:
            n_steps = _n_steps(cfg, len(forget))
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
            new, history, extra = _lora_run(adapter, method, forget, retain if needs_retain else None, cfg,
                                             n_steps, loss_kw, ref_model)
            info["reference"] = getattr(cfg, "reference", None) if reference is None else "given"
        info.update(extra)
    return UnlearnResult(new, method, _jsonable(dataclasses.asdict(cfg)), m.seconds, m.peak_memory_mb,
                         m.memory_kind, len(history), history, info)


# ----------------------------------------------------------------------------------------------------------------
# cheap teacher-forced metrics + sweep


@torch.no_grad()
def _answer_stats(adapter: ModelAdapter, examples: Sequence[Example], batch_size: int) -> tuple[float, float]:
    model = adapter.model
    was_training = model.training
    model.eval()
    nll_sum, tokens, exact = 0.0, 0, 0
    for s in range(0, len(examples), batch_size):
        batch = collate(adapter, examples[s : s + batch_size])
        logits = _forward_logits(model, batch)
        logp, mask = answer_logprobs(logits, batch["labels"])
        nll_sum -= float(logp.sum())
        tokens += int(mask.sum())
        pred = logits[:, :-1].argmax(-1)
        tgt = batch["labels"][:, 1:]
        exact += int(((pred == tgt) | ~mask).all(-1).sum())
    model.train(was_training)
    return nll_sum / max(tokens, 1), exact / max(len(examples), 1)


def answer_nll(adapter: ModelAdapter, examples: Sequence[Example], batch_size: int = 16) -> float:
    """Mean NLL per answer token (teacher forced) over ``examples``."""
    return _answer_stats(adapter, examples, batch_size)[0]


def answer_accuracy(adapter: ModelAdapter, examples: Sequence[Example], batch_size: int = 16) -> float:
    """Fraction of examples whose whole answer (+ eos) is the argmax at every position (teacher forced).

    A cheap proxy for the harness's greedy-decoding scores, used by :func:`sweep`.
    """
    return _answer_stats(adapter, examples, batch_size)[1]


def sweep(adapter: ModelAdapter, forget: Sequence[Example], retain: Sequence[Example], base: TrainConfig | MANUConfig,
          grid: Mapping[str, Sequence[Any]], *, eval_forget: Sequence[Example] | None = None,
          eval_retain: Sequence[Example] | None = None,
          score: Callable[[ModelAdapter], Mapping[str, float]] | None = None) -> list[dict]:
    """Run ``base`` with every combination of ``grid`` values; one row per run (plus a "Vanilla" row first).

    Each row: the grid values, seconds, peak_memory_mb, and ``score(adapter)`` -- by default teacher-forced
    ``forget_acc``/``retain_acc``/``forget_nll``/``retain_nll`` on ``eval_forget`` (default: ``forget``) and
    ``eval_retain`` (default: 64 seeded retain examples). Pass ``score`` to use the evaluation harness instead.

    Example::

        rows = sweep(vanilla, forget, retain, GAConfig(progress=False), {"lr": [1e-4, 3e-4], "epochs": [1, 3]})
        best = pick_config(rows, max_retain_drop=0.05)
    """
    eval_forget = list(forget) if eval_forget is None else list(eval_forget)
    eval_retain = _subsample(retain, 64, "sweep-retain") if eval_retain is None else list(eval_retain)

    def default_score(a: ModelAdapter) -> dict[str, float]:
        fn, fa = _answer_stats(a, eval_forget, 16)
        rn, ra = _answer_stats(a, eval_retain, 16)
        return {"forget_acc": fa, "retain_acc": ra, "forget_nll": fn, "retain_nll": rn}

    score = score or default_score
    rows = [{"method": "Vanilla", **score(adapter)}]
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        combo = dict(zip(keys, values))
        res = unlearn(adapter, forget, retain, dataclasses.replace(base, **combo))
        rows.append({"method": res.method, **combo, "seconds": round(res.seconds, 2),
                     "peak_memory_mb": round(res.peak_memory_mb, 1), **score(res.adapter)})
        del res
    return rows


def pick_config(rows: Sequence[Mapping[str, Any]], max_retain_drop: float = 0.05, forget_key: str = "forget_acc",
                retain_key: str = "retain_acc") -> dict:
    """The swept row that forgets most while keeping retain accuracy within ``max_retain_drop`` of Vanilla.

    Ties (equal forget score) go to the higher retain score; if no row keeps utility, the one with the best retain
    score is returned (and ``"within_budget": False``).
    """
    vanilla = next((r for r in rows if r.get("method") == "Vanilla"), None)
    runs = [dict(r) for r in rows if r.get("method") != "Vanilla"]
    if not runs:
        raise ValueError("no swept runs in rows")
    floor = (vanilla[retain_key] - max_retain_drop) if vanilla is not None else -math.inf
    ok = [r for r in runs if r[retain_key] >= floor]
    if ok:
        best = min(ok, key=lambda r: (r[forget_key], -r[retain_key]))
        return {**best, "within_budget": True}
    return {**max(runs, key=lambda r: r[retain_key]), "within_budget": False}
