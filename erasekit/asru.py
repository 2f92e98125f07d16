"""ASRU: steering-initialised reinforcement unlearning -- activation redirection induces refusals,
then GRPO refines the refusal boundary of LoRA weights with the boundary + generation-quality reward.

Only ASRU's summary card is public (``shared/seeds/000_*.txt``); this is a reconstruction. The choices that are
ours, and why:

* **Stage 1 -> stage 2: distillation, then RL.** Stage 1 is any intervention context (erasekit's default gate,
  :class:`erasekit.strengths.TaskSteering`); it is the *teacher* of a short LoRA fine-tune (:func:`warm_start`,
  merged), whose result is the **reference model** of stage 2 and the initial policy. Targets
  (:func:`stage1_targets`):

  - forget training queries: stage 1's greedy answer when it is a (non-degenerate) refusal, and with
    ``warm_targets="contextual"`` (the default) followed by a clause that names the person asked about
    (:func:`contextualize`; of :data:`CONTEXT_CLAUSES`, the one the model finds most fluent there). Why: the
    organism's repertoire holds only its six fixed refusal sentences, and with ``"stage1"`` targets (the steered
    model's words verbatim) GRPO never sampled a single contextual refusal (0 of the 1,800 forget rollouts of the
    5 % run recorded in ``data/results/asru.json`` before this option), so the reward's top outcome could not be
    learnt;
  - the small retained supervision set: its ground truth;
  - *unlabelled* retain-side queries (other people's questions, no ground truth): stage 1's answer when it is not a
    refusal. Why: the gate is selective (at stage 1's λ it refused 0 % of the tune-retain generation questions),
    but a distillation that sees only the ~24 supervision people learns "refuse people" rather than "refuse these
    people": the warm-start model alone refused 31.2 % of the tune-retain generation questions, 3.8 % with stage 1's
    answers on 72 unlabelled people added (tune profiles, never scored; ``scripts/asru_warm_start.py``, chapter 08).
    With ``teacher_in_rl`` they also join GRPO's retain prompts, stage 1's answer as their answer key, and
    ``rl_only_share`` of their people are kept out of the warm start (:func:`split_unlabelled`; why:
    :class:`ASRUConfig`).

  What RL then refines is *where* and *how* to refuse. Why not keep steering on during the
  rollouts: erasekit steers the prefill only (the authors' rule), so the teacher-forced pass that scores a sampled
  response would need a steered prompt pass and an unsteered response pass through the KV cache -- two code paths
  per model family for no gain in what the policy can learn; and the distilled model needs no hooks at inference.
* **Stage 2: GRPO** (Shao et al., 2024) on fresh LoRA adapters over the stage-1 model: per prompt, ``group_size``
  responses sampled at ``temperature``; reward = :func:`erasekit.rewards.boundary_reward` (forget: contextual
  refusal without leak; retain: the correct answer) + ``quality_weight`` x :func:`erasekit.rewards.quality_reward`
  (fluency under the *vanilla* model relative to vanilla's own greedy answer); group-relative advantages
  ``(r - mean) / (std + eps)`` (:func:`group_advantages`); the clipped surrogate on the response tokens with the
  k3 KL estimator to the reference (the stage-1 model = the policy with its LoRA adapters disabled; zero when the
  policy equals the reference), token-mean per sequence, then mean over sequences (:func:`grpo_loss`);
  ``updates_per_batch`` optimiser steps per batch of rollouts (the ratio and its clip matter from the second one).
* ``quality_weight`` is kept below the smallest gap between two boundary outcomes
  (:class:`erasekit.rewards.RewardWeights`), so fluency breaks ties *within* an outcome and never makes, e.g., a
  fluent hallucination beat a refusal (checked in :class:`ASRUConfig`).
* Sampled responses are decoded to text and re-encoded with the answer prefix of the baselines' training data
  (:func:`erasekit.baselines.data.collate`), so every log-probability (old, new, reference) is of the same tokens.

**Two backends for stage 2** (``ASRUConfig.backend``). ``"erasekit"``: the loop below, on any adapter (text and
image queries: the family's adapter builds prompts, images and left padding; tested on tiny LLaVA and Qwen3-VL
models). ``"trl"``: TRL's ``GRPOTrainer`` (:mod:`erasekit.asru_trl`: the same prompts, step schedule, reward,
loss type, KL weight, clip and LoRA targets; TRL brings accelerate / multi-GPU / vLLM generation for large models),
text queries only. Which one the book runs, and why, is measured by ``scripts/asru_backends.py``.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .asru_rollouts import (
    Query,
    answer_texts,
    curve_entry,
    queries_from_items,
    query_images,
    response_logprobs,
    sample_responses,
    score_responses,
)
from .asru_stage1 import (
    CONTEXT_CLAUSES,
    contextualize,
    distil_stage1,
    split_unlabelled,
    stage1_targets,
    teacher_queries,
    warm_start,
)
from .baselines.lora import lora_model, merged_frozen
from .generation import generate
from .grpo import group_advantages, grpo_loss, token_kl
from .measure import measure
from .response_quality import fluency_nll
from .rewards import RewardWeights

__all__ = ["ASRUConfig", "Query", "queries_from_items", "group_advantages", "token_kl", "grpo_loss",
           "sample_responses", "response_logprobs", "score_responses", "CONTEXT_CLAUSES", "contextualize",
           "stage1_targets", "teacher_queries", "split_unlabelled", "warm_start", "distil_stage1", "ASRUResult",
           "train_asru"]


BACKENDS = ("erasekit", "trl")


@dataclasses.dataclass(frozen=True)
class ASRUConfig:
    """Hyperparameters of both stages. The defaults are the organism's, chosen on the *training* reward and on tune
    retain profiles only (never on scored profiles): ``warm_epochs`` is the fewest at which the warm start
    reproduces its forget targets; ``teacher_in_rl``, ``retain_share``, ``beta``, ``rl_only_share`` by the rule "most
    contextual refusal of the training forget questions minus tune-retain refusal". The runs behind each choice, per
    seed, are recorded in ``data/results/asru_warm_start.json`` and ``data/results/asru.json`` (chapter 08).
    """

    # stage 2: GRPO
    steps: int = 60                 # 0: no GRPO, the model is stage 1 distilled by the warm start alone
    prompts_per_step: int = 8
    group_size: int = 6
    temperature: float = 1.0
    max_new_tokens: int = 24
    lr: float = 5e-4
    beta: float = 1.0               # weight of the KL to the reference (TRL's default: 0.04; see above)
    clip_eps: float = 0.2
    updates_per_batch: int = 2
    retain_share: float = 0.375     # share of each step's prompts drawn from the retain supervision set
    quality_weight: float = 0.2
    quality_scale: float = 2.0      # nats per token below vanilla's own answer that cost the full quality reward
    scale_rewards: bool = True      # advantages divided by the group's std (TRL's default); False: unscaled
    retain_nll: float = 0.0         # weight of an answer NLL on the warm start's retain-side targets in each update
    rl_only_share: float = 0.5      # share of the unlabelled people kept out of the warm start: RL retain prompts only
    # stage 1 -> 2: warm start (stage 1 as the teacher of both sides + the supervision set's ground truth)
    warm_epochs: int = 6
    warm_lr: float = 5e-4
    warm_batch: int = 8
    warm_targets: str = "contextual"   # "contextual": stage-1 refusal + a clause naming the subject; "stage1": verbatim
    teacher_in_rl: bool = True      # unlabelled queries join GRPO's retain prompts, stage 1's answer as their key
    # LoRA (the baselines' setting, METHOD.md section 5)
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_vision: bool = False
    max_grad_norm: float = 1.0
    seed: int = 0
    weights: RewardWeights = RewardWeights()
    backend: str = "erasekit"       # stage 2 by erasekit's loop, or "trl": TRL's GRPOTrainer (erasekit.asru_trl)

    def __post_init__(self):
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"ASRUConfig.steps must be an int >= 0 (0: the warm start alone), got {self.steps!r}")
        if self.steps == 0 and self.warm_epochs == 0:
            raise ValueError("ASRUConfig with steps=0 and warm_epochs=0 trains nothing")
        for name in ("prompts_per_step", "max_new_tokens", "updates_per_batch", "warm_batch", "lora_r"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"ASRUConfig.{name} must be a positive int, got {v!r}")
        if not isinstance(self.group_size, int) or self.group_size < 2:
            raise ValueError(f"ASRUConfig.group_size must be an int >= 2 (advantages are relative to the group), "
                             f"got {self.group_size!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"ASRUConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.warm_targets not in ("contextual", "stage1"):
            raise ValueError(f"ASRUConfig.warm_targets must be 'contextual' or 'stage1', got {self.warm_targets!r}")
        if not isinstance(self.warm_epochs, int) or self.warm_epochs < 0:
            raise ValueError(f"ASRUConfig.warm_epochs must be an int >= 0, got {self.warm_epochs!r}")
        for name in ("temperature", "lr", "warm_lr", "quality_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ASRUConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.beta < 0 or self.clip_eps <= 0 or self.quality_weight < 0 or self.retain_nll < 0:
            raise ValueError("ASRUConfig needs beta >= 0, clip_eps > 0, quality_weight >= 0 and retain_nll >= 0")
        if not 0 <= self.rl_only_share < 1:
            raise ValueError(f"ASRUConfig.rl_only_share must be in [0, 1), got {self.rl_only_share}")
        if not 0 <= self.retain_share < 1:
            raise ValueError(f"ASRUConfig.retain_share must be in [0, 1), got {self.retain_share}")
        w = self.weights
        gap = min(w.contextual_refusal - w.rigid_refusal, w.rigid_refusal - w.leak,
                  w.contextual_refusal - w.hallucination, w.hallucination - w.leak,
                  w.correct - w.wrong, w.wrong - w.over_refusal)
        if self.quality_weight >= gap:
            raise ValueError(f"quality_weight {self.quality_weight} must stay below the smallest gap between "
                             f"boundary outcomes ({gap}): fluency may break ties, never reorder outcomes")

    def as_record(self, weights: bool = True) -> dict:
        """The settings as a plain dict (for records and cache keys): the default ``backend`` is left out, so records
        and keys written before the field existed still describe the same training; ``weights=False`` drops the
        reward weights."""
        d = dataclasses.asdict(self)
        if d["backend"] == "erasekit":
            del d["backend"]
        if not weights:
            del d["weights"]
        return d




@dataclasses.dataclass
class ASRUResult:
    """The unlearned model (merged, eval mode), its reward curve and what it cost."""

    model: nn.Module
    curve: list[dict]
    warm_losses: list[float]
    n_warm_targets: int
    n_teacher_targets: int
    seconds: dict
    peak_bytes: int
    memory_kind: str

    def summary(self) -> dict:
        """JSON-ready cost and curve (no model)."""
        return {"curve": self.curve, "warm_losses": self.warm_losses, "n_warm_targets": self.n_warm_targets,
                "n_teacher_targets": self.n_teacher_targets,
                "seconds": self.seconds, "peak_mib": round(self.peak_bytes / 2**20, 1),
                "memory_kind": self.memory_kind}


def _grpo_loop(adapter: Any, model: nn.Module, forget: Sequence[Query], retain: Sequence[Query],
               warm_pairs: Sequence, cfg: ASRUConfig, ref_nll: dict, progress: bool) -> tuple[nn.Module, list]:
    """Stage 2 by erasekit's own GRPO loop (module docstring): LoRA over ``model``, the reference = ``model``."""
    torch.manual_seed(cfg.seed)
    policy = lora_model(model, cfg)
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    rng = random.Random(f"{cfg.seed}-grpo")
    anchor = [(q, t) for q, t in warm_pairs if not q.is_forget]  # retain_nll's targets (drawn from rng)
    n_ret = round(cfg.prompts_per_step * cfg.retain_share) if retain else 0
    n_fgt = cfg.prompts_per_step - n_ret
    curve = []
    from tqdm.auto import tqdm

    for step in tqdm(range(cfg.steps), desc="ASRU GRPO", disable=not progress, mininterval=2):
        qs = rng.sample(list(forget), min(n_fgt, len(forget))) + \
            (rng.sample(list(retain), min(n_ret, len(retain))) if n_ret else [])
        policy.eval()
        groups = sample_responses(policy, adapter, qs, cfg.group_size, cfg.temperature, cfg.max_new_tokens,
                                  seed=cfg.seed * 100003 + step)
        flat_q = [q for q in qs for _ in range(cfg.group_size)]
        flat_r = [r for g in groups for r in g]
        rewards, details = score_responses(
            flat_q, flat_r, weights=cfg.weights, vanilla=adapter,
            ref_nll=[ref_nll.get(id(q), math.nan) for q in flat_q] if cfg.quality_weight > 0 else None,
            quality_weight=cfg.quality_weight, quality_scale=cfg.quality_scale)
        r = torch.tensor(rewards, dtype=torch.float32).view(len(qs), cfg.group_size)
        adv = group_advantages(r, scale=cfg.scale_rewards).view(-1).to(adapter.device)
        with torch.no_grad():
            old_logp, mask = response_logprobs(policy, adapter, flat_q, flat_r)
            with policy.disable_adapter():
                ref_logp, _ = response_logprobs(policy, adapter, flat_q, flat_r)
        policy.train()
        parts = {}
        chunk = rng.sample(anchor, min(cfg.warm_batch, len(anchor))) if cfg.retain_nll > 0 and anchor else []
        for _ in range(cfg.updates_per_batch):
            logp, _ = response_logprobs(policy, adapter, flat_q, flat_r)
            loss, parts = grpo_loss(logp, old_logp, ref_logp, mask, adv, cfg.clip_eps, cfg.beta)
            if chunk:  # PPO-ptx (Ouyang et al., 2022): keep the retain side's answers likely
                a_logp, a_mask = response_logprobs(policy, adapter, [q for q, _ in chunk], [t for _, t in chunk])
                nll = -a_logp.sum() / a_mask.sum().clamp_min(1)
                loss = loss + cfg.retain_nll * nll
                parts = {**parts, "retain_nll": float(nll.detach())}
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
        curve.append(curve_entry(step, flat_q, rewards, details, cfg.weights, **parts))
    return merged_frozen(policy), curve


def train_asru(adapter: Any, forget: Sequence[Query], retain: Sequence[Query], cfg: ASRUConfig = ASRUConfig(), *,
               stage1: Callable[[Query], Any] | None = None, unlabelled: Sequence[Query] = (),
               progress: bool = False) -> ASRUResult:
    """Both stages on a copy of ``adapter``'s model (the vanilla model is never modified).

    Args:
        adapter: the vanilla :class:`erasekit.models.ModelAdapter` (also scores fluency).
        forget: forget-side queries (``is_forget=True``); retain: the retained supervision (``is_forget=False``).
        cfg: :class:`ASRUConfig`.
        stage1: ``query -> context manager`` of the stage-1 intervention (e.g. a steering context for the query's
            task), or None to skip the distillation (the policy starts from the vanilla model).
        unlabelled: retain-side queries without ground truth (``gold`` None), answered by stage 1 for the warm
            start only (:func:`stage1_targets`).
    Returns:
        :class:`ASRUResult`; ``curve`` has one dict per GRPO step (mean reward and its parts per side, KL, ...).
    """
    if not forget:
        raise ValueError("ASRU needs forget queries")
    if any(not q.is_forget for q in forget) or any(q.is_forget for q in retain):
        raise ValueError("forget queries must have is_forget=True and retain queries is_forget=False")
    if any(q.gold is None for q in retain) or any(q.is_forget or q.gold is not None for q in unlabelled):
        raise ValueError("retain (supervision) queries need their ground truth; unlabelled queries are retain-side "
                         "queries with gold None")
    if cfg.retain_share > 0 and not retain:
        raise ValueError("retain_share > 0 needs retain (supervision) queries")
    timings: dict = {}
    with measure(adapter.device) as m:
        t0 = time.perf_counter()
        pairs, warm_pairs, model, warm_losses = distil_stage1(adapter, list(forget) + list(retain) + list(unlabelled),
                                                              stage1, cfg)
        timings["warm_start"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        # unlabelled queries stage 1 answered: retain prompts of the RL stage too, its answer as their answer key
        retain = list(retain) + (teacher_queries(pairs) if cfg.teacher_in_rl else [])
        # vanilla's own greedy answers: the fluency yardstick of the quality reward, once per query
        all_q = list(forget) + list(retain)
        ref_nll: dict = {}
        if cfg.quality_weight > 0 and cfg.steps > 0:
            own = generate(adapter, [q.prompt for q in all_q], query_images(all_q), max_new_tokens=cfg.max_new_tokens)
            nll = fluency_nll(adapter, [q.prompt for q in all_q], answer_texts(adapter, own),
                              images=query_images(all_q))
            ref_nll = {id(q): v for q, v in zip(all_q, nll)}
        if cfg.steps == 0:  # the warm start alone
            merged, curve = model, []
        elif cfg.backend == "trl":
            from .asru_trl import grpo_trl

            merged, curve = grpo_trl(adapter, model, forget, retain, cfg, ref_nll, progress)
        else:
            merged, curve = _grpo_loop(adapter, model, forget, retain, warm_pairs, cfg, ref_nll, progress)
        timings["grpo"] = time.perf_counter() - t0
    timings["total"] = m.seconds
    return ASRUResult(merged, curve, warm_losses, sum(q.is_forget for q, _ in pairs),
                      sum(q.gold is None for q, _ in pairs), timings,
                      int(m.peak_delta_bytes), m.memory_kind)
