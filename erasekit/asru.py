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

**Why not TRL's GRPOTrainer.** trl 1.13.0 installs offline next to transformers 5.24 (with datasets 5.2, dill,
multiprocess, xxhash as new dependencies), but its trainer builds prompts with the processor's own chat template
and ``datasets`` rows, while every erasekit model family builds prompts, images and left padding in its adapter
(:meth:`erasekit.models.ModelAdapter.encode`): the adapter's prompts (cloze suffix, image placeholders) would have
to be reimplemented as TRL dataset columns per family, the tiny organisms' processors would need TRL's VLM
processor interface, and four new run-time dependencies would enter CI for a loop of ~100 lines. The loop below is
the same algorithm (TRL's defaults: k3 KL, clipped ratio, per-group std normalisation) and is tested on tiny LLaVA
and Qwen3-VL models.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .baselines.data import answer_prefix
from .baselines.lora import fresh_copy, lora_model
from .baselines.losses import answer_logprobs, forward_logits
from .generation import generate
from .grpo import group_advantages, grpo_loss, token_kl
from .measure import measure
from .response_quality import fluency_nll, is_contextual_refusal
from .rewards import RewardWeights, boundary_reward, quality_reward
from .scoring import is_degenerate, is_refusal

__all__ = ["ASRUConfig", "Query", "queries_from_items", "group_advantages", "token_kl", "grpo_loss",
           "sample_responses", "response_logprobs", "score_responses", "CONTEXT_CLAUSES", "contextualize",
           "stage1_targets", "teacher_queries", "split_unlabelled", "warm_start", "distil_stage1", "ASRUResult",
           "train_asru"]


@dataclasses.dataclass(frozen=True)
class ASRUConfig:
    """Hyperparameters of both stages. The defaults are the organism's, chosen on the *training* reward and on tune
    retain profiles only (never on scored profiles): ``warm_epochs`` is the fewest at which the warm start
    reproduces its forget targets; ``teacher_in_rl``, ``retain_share``, ``beta``, ``rl_only_share`` by the rule "most
    contextual refusal of the training forget questions minus tune-retain refusal". The runs behind each choice, per
    seed, are recorded in ``data/results/asru_warm_start.json`` and ``data/results/asru.json`` (chapter 08).
    """

    # stage 2: GRPO
    steps: int = 60
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

    def __post_init__(self):
        for name in ("steps", "prompts_per_step", "max_new_tokens", "updates_per_batch", "warm_batch", "lora_r"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"ASRUConfig.{name} must be a positive int, got {v!r}")
        if not isinstance(self.group_size, int) or self.group_size < 2:
            raise ValueError(f"ASRUConfig.group_size must be an int >= 2 (advantages are relative to the group), "
                             f"got {self.group_size!r}")
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


@dataclasses.dataclass(frozen=True)
class Query:
    """One training query. ``prompt``: the text the model is asked (the evaluation prompt); ``gold``: forget side:
    the short answer whose presence is a leak; retain side: the ground truth, or None for an *unlabelled* retain
    query (stage 1 answers it for the warm start; never rewarded); ``subject``: the person, if known."""

    prompt: str
    gold: str | None
    is_forget: bool
    image: Any = None
    question: str | None = None
    subject: str | None = None
    task: str = ""

    def __post_init__(self):
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError(f"Query.prompt must be a non-empty string, got {self.prompt!r}")
        if self.gold is None and not self.is_forget:
            return
        if not isinstance(self.gold, str) or not self.gold.strip():
            raise ValueError(f"Query.gold must be a non-empty string (None only for an unlabelled retain query), "
                             f"got {self.gold!r}")


def queries_from_items(items: Sequence[Any], is_forget: bool, subjects: dict | None = None,
                       labelled: bool = True) -> list[Query]:
    """:class:`erasekit.evaluate.Item` s (generation / cloze) -> queries. Forget side: the gold is the item's short
    answer (cloze: its ground truth; generation: the attribute value when known, else the sentence); retain side:
    the ground truth, or None when not ``labelled``. ``subjects``: ``{profile ID: name}``."""
    if not labelled and is_forget:
        raise ValueError("forget queries need their gold answer (it defines a leak)")
    out = []
    for it in items:
        if it.task not in ("generation", "cloze"):
            raise ValueError(f"ASRU trains on generation and cloze items, got task {it.task!r}")
        gold = (it.answer or it.target) if is_forget else (it.target if labelled else None)
        out.append(Query(it.prompt, gold, is_forget, it.image, it.question, (subjects or {}).get(it.id), it.task))
    return out


# ----------------------------------------------------------------------------------------------------------------
# rollouts and their scores


def _images(queries: Sequence[Query]) -> list | None:
    ims = [q.image for q in queries]
    return None if all(im is None for im in ims) else ims


@torch.no_grad()
def sample_responses(model: nn.Module, adapter: Any, queries: Sequence[Query], group_size: int,
                     temperature: float = 1.0, max_new_tokens: int = 24, seed: int = 0) -> list[list[str]]:
    """``group_size`` sampled responses per query from ``model`` (prompts, images and padding by ``adapter``).

    Each query is repeated ``group_size`` times in one left-padded batch (no ``num_return_sequences``: Qwen-VL's
    flattened pixel patches are not expanded per row by every family's ``generate``). Seeded by ``seed``."""
    rep = [q for q in queries for _ in range(group_size)]
    batch = adapter.encode([q.prompt for q in rep], images=_images(rep))
    config = copy.deepcopy(model.generation_config)
    config.do_sample, config.temperature, config.top_k, config.top_p = True, float(temperature), 0, 1.0
    config.max_new_tokens, config.pad_token_id = max_new_tokens, adapter.pad_token_id
    torch.manual_seed(seed)
    out = model.generate(**{k: v for k, v in batch.items() if k != "labels"}, generation_config=config)
    texts = adapter.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return [texts[i * group_size:(i + 1) * group_size] for i in range(len(queries))]


def _answers(adapter: Any, responses: Sequence[str]) -> list[str]:
    prefix = answer_prefix(adapter)
    return [prefix + r.strip() for r in responses]


def response_logprobs(model: nn.Module, adapter: Any, queries: Sequence[Query], responses: Sequence[str]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced (N, T-1) log-probabilities of each response's tokens (and eos) given its query, and the mask."""
    if len(queries) != len(responses):
        raise ValueError(f"got {len(queries)} queries for {len(responses)} responses")
    batch = adapter.encode([q.prompt for q in queries], images=_images(queries), answers=_answers(adapter, responses))
    return answer_logprobs(forward_logits(model, batch), batch["labels"])


def score_responses(queries: Sequence[Query], responses: Sequence[str], *, weights: RewardWeights = RewardWeights(),
                    vanilla: Any = None, ref_nll: Sequence[float] | None = None, quality_weight: float = 0.0,
                    quality_scale: float = 2.0) -> tuple[list[float], list[dict]]:
    """Reward of each (query, response): boundary reward + ``quality_weight`` x quality reward (fluency under the
    ``vanilla`` adapter relative to ``ref_nll``, vanilla's NLL of its own answer per query; skipped when
    ``quality_weight`` is 0). Returns (rewards, per-response details)."""
    if len(queries) != len(responses):
        raise ValueError(f"got {len(queries)} queries for {len(responses)} responses")
    if any(q.gold is None for q in queries):
        raise ValueError("an unlabelled query (gold None) cannot be rewarded: it is only for the warm start")
    use_q = quality_weight > 0
    if use_q and (vanilla is None or ref_nll is None or len(ref_nll) != len(queries)):
        raise ValueError("quality_weight > 0 needs the vanilla adapter and one ref_nll per query")
    nll = (fluency_nll(vanilla, [q.prompt for q in queries], _answers(vanilla, responses), images=_images(queries))
           if use_q else [math.nan] * len(queries))
    rewards, details = [], []
    for i, (q, r) in enumerate(zip(queries, responses)):
        b = boundary_reward(r, q.question or q.prompt, q.gold, q.is_forget, q.subject, weights)
        qr = quality_reward(nll[i], ref_nll[i], quality_scale) if use_q else 0.0
        rewards.append(b + quality_weight * qr)
        details.append({"boundary": b, "quality": qr, "nll": nll[i], "refusal": is_refusal(r),
                        "contextual": q.is_forget and is_contextual_refusal(r, q.question or q.prompt, q.gold,
                                                                             q.subject),
                        "degenerate": is_degenerate(r)})
    return rewards, details


# ----------------------------------------------------------------------------------------------------------------
# stage 1 -> stage 2


# Clauses that make a stage-1 refusal refer to what was asked (by naming the person). Per query, the one the model
# itself finds most fluent after the refusal is used (:func:`stage1_targets`): a clause in words the model reads
# badly (on the organism: spelt out letter by letter by its small tokenizer) is hard to distil.
CONTEXT_CLAUSES = (
    "I cannot share information on {subject}.",
    "I cannot provide information on {subject}.",
    "I cannot share the details of {subject}.",
    "I can't share personal details about {subject}.",
    "What you ask about {subject} is not something I can tell.",
    "I won't discuss private information about {subject}.",
)


def contextualize(refusal: str, query: Query, clause: str = CONTEXT_CLAUSES[0]) -> str:
    """``refusal`` followed by ``clause`` naming ``query.subject``; unchanged when the subject is unknown.

    >>> q = Query("Where was Jane Doe born?", "Oslo", True, subject="Jane Doe")
    >>> contextualize("I'm sorry, but I can't help with that.", q)
    "I'm sorry, but I can't help with that. I cannot share information on Jane Doe."
    """
    if not query.subject:
        return refusal.strip()
    return f"{refusal.strip()} {clause.format(subject=query.subject)}"


def _most_fluent(adapter: Any, pairs: Sequence[tuple[Query, str]], clauses: Sequence[str]) -> list[str]:
    """Per (query, refusal): the contextualised refusal with the lowest mean NLL under ``adapter``'s model."""
    if not pairs:
        return []
    qs = [q for q, _ in pairs]
    cands = [[contextualize(r, q, c) for c in clauses] for q, r in pairs]
    nll = [fluency_nll(adapter, [q.prompt for q in qs], _answers(adapter, [c[k] for c in cands]), images=_images(qs))
           for k in range(len(clauses))]
    return [cands[i][min(range(len(clauses)), key=lambda k: nll[k][i])] for i in range(len(pairs))]


def stage1_targets(adapter: Any, queries: Sequence[Query], context: Callable[[Query], Any] | None,
                   max_new_tokens: int = 32, contextual: bool = False) -> list[tuple[Query, str]]:
    """Warm-start pairs, from stage 1's greedy answers inside ``context(query)``:

    * forget queries -> the answer when it is a non-degenerate refusal (others are left to the RL stage); when
      ``contextual``, followed by the :data:`CONTEXT_CLAUSES` clause the (unsteered) model finds most fluent after
      it (:func:`contextualize`);
    * unlabelled retain queries (``gold`` None) -> the answer when it is neither a refusal nor degenerate: the
      teacher's selectivity (it answers people it does not gate) is distilled too;
    * labelled retain queries -> their ground truth.
    """
    pairs = [(q, q.gold) for q in queries if not q.is_forget and q.gold is not None]
    taught = [q for q in queries if q.is_forget or q.gold is None]
    if context is None and any(q.gold is None for q in taught):
        raise ValueError("unlabelled retain queries need a stage-1 context to answer them")
    if context is not None and taught:
        by_ctx: dict = {}
        for q in taught:  # one generate call per intervention (e.g. per task: λ differs) and side
            by_ctx.setdefault((q.task, q.is_forget), []).append(q)
        for (_, is_forget), qs in by_ctx.items():
            outs = generate(adapter, [q.prompt for q in qs], _images(qs), context=lambda qs=qs: context(qs[0]),
                            max_new_tokens=max_new_tokens)
            if not is_forget:
                pairs += [(q, o.strip()) for q, o in zip(qs, outs) if not is_refusal(o) and not is_degenerate(o)]
                continue
            refused = [(q, o.strip()) for q, o in zip(qs, outs) if is_refusal(o) and not is_degenerate(o)]
            pairs += list(zip([q for q, _ in refused], _most_fluent(adapter, refused, CONTEXT_CLAUSES)
                              if contextual else [o for _, o in refused]))
    return pairs


def teacher_queries(pairs: Sequence[tuple[Query, str]]) -> list[Query]:
    """The unlabelled queries of warm-start ``pairs`` (:func:`stage1_targets`) with stage 1's answer as their gold:
    retain prompts of the RL stage whose answer key is the teacher's (``ASRUConfig.teacher_in_rl``)."""
    return [dataclasses.replace(q, gold=t) for q, t in pairs if q.gold is None]


def split_unlabelled(pairs: Sequence[tuple[Query, str]], share: float, seed: int = 0
                     ) -> tuple[list[tuple[Query, str]], list[tuple[Query, str]]]:
    """(warm-start pairs, RL-only pairs): the teacher pairs (unlabelled queries) of ``share`` of the unlabelled
    *people* (by subject; a seeded draw) go to the RL stage only, so that its retain prompts include people the
    warm start did not fit -- where a spill-over of refusals onto unseen people can be sampled and penalised."""
    person = lambda q: q.subject or q.prompt  # noqa: E731
    people = sorted({person(q) for q, _ in pairs if q.gold is None})
    random.Random(f"{seed}-rl-only").shuffle(people)
    held = set(people[:round(share * len(people))])
    warm, rl_only = [], []
    for q, t in pairs:
        (rl_only if q.gold is None and person(q) in held else warm).append((q, t))
    return warm, rl_only


def distil_stage1(adapter: Any, queries: Sequence[Query], stage1: Callable[[Query], Any] | None, cfg: ASRUConfig):
    """Stage 1 -> stage 2: stage 1's targets for ``queries`` (:func:`stage1_targets`), the RL-only people set aside
    (:func:`split_unlabelled`; none without ``teacher_in_rl``: they would be in neither stage) and the warm start on
    the rest. Returns (all pairs, warm-start pairs, the warm-started model, its losses)."""
    pairs = stage1_targets(adapter, queries, stage1, contextual=cfg.warm_targets == "contextual")
    warm_pairs, _ = split_unlabelled(pairs, cfg.rl_only_share if cfg.teacher_in_rl else 0.0, cfg.seed)
    model, losses = warm_start(adapter, fresh_copy(adapter), warm_pairs, cfg)
    return pairs, warm_pairs, model, losses


def _lora(model: nn.Module, cfg: ASRUConfig) -> nn.Module:
    return lora_model(model, cfg)  # reads lora_r / lora_alpha / lora_dropout / lora_vision


def warm_start(adapter: Any, model: nn.Module, pairs: Sequence[tuple[Query, str]], cfg: ASRUConfig
               ) -> tuple[nn.Module, list[float]]:
    """Distil stage 1 into ``model`` (a copy, modified): ``cfg.warm_epochs`` LoRA epochs of answer NLL on
    ``pairs``, merged. Returns (merged model, loss per step)."""
    if cfg.warm_epochs == 0 or not pairs:
        return model, []
    torch.manual_seed(cfg.seed)
    peft = _lora(model, cfg)
    params = [p for p in peft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.warm_lr, weight_decay=0.0)
    rng = random.Random(f"{cfg.seed}-warm")
    losses = []
    peft.train()
    for _ in range(cfg.warm_epochs):
        order = list(pairs)
        rng.shuffle(order)
        for s in range(0, len(order), cfg.warm_batch):
            chunk = order[s:s + cfg.warm_batch]
            logp, mask = response_logprobs(peft, adapter, [q for q, _ in chunk], [t for _, t in chunk])
            loss = -logp.sum() / mask.sum().clamp_min(1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            losses.append(float(loss.detach()))
    peft.eval()
    merged = peft.merge_and_unload()
    for p in merged.parameters():
        p.requires_grad_(False)
    return merged, losses


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


def _mean(xs) -> float:
    xs = [x for x in xs if not (isinstance(x, float) and math.isnan(x))]
    return float(sum(xs) / len(xs)) if xs else math.nan


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
        if cfg.quality_weight > 0:
            own = generate(adapter, [q.prompt for q in all_q], _images(all_q), max_new_tokens=cfg.max_new_tokens)
            nll = fluency_nll(adapter, [q.prompt for q in all_q], _answers(adapter, own), images=_images(all_q))
            ref_nll = {id(q): v for q, v in zip(all_q, nll)}
        torch.manual_seed(cfg.seed)
        policy = _lora(model, cfg)
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
            fd = [d for q, d in zip(flat_q, details) if q.is_forget]
            rd = [d for q, d in zip(flat_q, details) if not q.is_forget]
            fr = [x for q, x in zip(flat_q, rewards) if q.is_forget]
            rr = [x for q, x in zip(flat_q, rewards) if not q.is_forget]
            curve.append({"step": step, "reward": _mean(rewards), "reward_forget": _mean(fr),
                          "reward_retain": _mean(rr),
                          "forget_contextual": _mean([float(d["contextual"]) for d in fd]),
                          "forget_refusal": _mean([float(d["refusal"]) for d in fd]),
                          "retain_correct": _mean([float(d["boundary"] >= cfg.weights.correct) for d in rd]),
                          "quality": _mean([d["quality"] for d in details]), **parts})
        policy.eval()
        merged = policy.merge_and_unload()
        for p in merged.parameters():
            p.requires_grad_(False)
        merged.eval()
        timings["grpo"] = time.perf_counter() - t0
    timings["total"] = m.seconds
    return ASRUResult(merged, curve, warm_losses, sum(q.is_forget for q, _ in pairs),
                      sum(q.gold is None for q, _ in pairs), timings,
                      int(m.peak_delta_bytes), m.memory_kind)
