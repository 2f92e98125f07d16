"""ASRU's stage 1 -> stage 2: the steered model (stage 1) answers the training queries; its refusals of the forget
side (made contextual: :func:`contextualize`) and its answers to unlabelled retain-side queries become warm-start
targets (:func:`stage1_targets`), distilled into LoRA weights (:func:`warm_start`) that GRPO starts from. The design
and its reasons: :mod:`erasekit.asru`."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .asru_rollouts import Query, answer_texts, query_images, response_logprobs
from .baselines.lora import fresh_copy, lora_model, merged_frozen
from .generation import generate
from .response_quality import fluency_nll
from .scoring import is_degenerate, is_refusal

if TYPE_CHECKING:
    from .asru import ASRUConfig

__all__ = ["CONTEXT_CLAUSES", "contextualize", "most_fluent", "stage1_targets", "teacher_queries",
           "split_unlabelled", "distil_stage1", "warm_start"]


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


def most_fluent(adapter: Any, pairs: Sequence[tuple[Query, str]], clauses: Sequence[str]) -> list[str]:
    """Per (query, refusal): the contextualised refusal with the lowest mean NLL under ``adapter``'s model."""
    if not pairs:
        return []
    qs = [q for q, _ in pairs]
    cands = [[contextualize(r, q, c) for c in clauses] for q, r in pairs]
    nll = [fluency_nll(adapter, [q.prompt for q in qs], answer_texts(adapter, [c[k] for c in cands]),
                       images=query_images(qs))
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
            outs = generate(adapter, [q.prompt for q in qs], query_images(qs), context=lambda qs=qs: context(qs[0]),
                            max_new_tokens=max_new_tokens)
            if not is_forget:
                pairs += [(q, o.strip()) for q, o in zip(qs, outs) if not is_refusal(o) and not is_degenerate(o)]
                continue
            refused = [(q, o.strip()) for q, o in zip(qs, outs) if is_refusal(o) and not is_degenerate(o)]
            pairs += list(zip([q for q, _ in refused], most_fluent(adapter, refused, CONTEXT_CLAUSES)
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


def warm_start(adapter: Any, model: nn.Module, pairs: Sequence[tuple[Query, str]], cfg: ASRUConfig
               ) -> tuple[nn.Module, list[float]]:
    """Distil stage 1 into ``model`` (a copy, modified): ``cfg.warm_epochs`` LoRA epochs of answer NLL on
    ``pairs``, merged. Returns (merged model, loss per step)."""
    if cfg.warm_epochs == 0 or not pairs:
        return model, []
    torch.manual_seed(cfg.seed)
    peft = lora_model(model, cfg)  # reads lora_r / lora_alpha / lora_dropout / lora_vision
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
    return merged_frozen(peft), losses
