"""ASRU's queries and rollouts: :class:`Query` (one training question, its gold answer and side), sampling a group
of responses per query, their teacher-forced log-probabilities, and their rewards (the boundary reward plus the
generation-quality reward of :mod:`erasekit.rewards`). The design and its reasons: :mod:`erasekit.asru`."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .baselines.data import answer_prefix
from .baselines.losses import answer_logprobs, forward_logits
from .response_quality import fluency_nll, is_contextual_refusal
from .rewards import RewardWeights, boundary_reward, quality_reward
from .scoring import is_degenerate, is_refusal

__all__ = ["Query", "queries_from_items", "query_images", "answer_texts", "sample_responses", "response_logprobs",
           "score_responses", "nanmean", "curve_entry"]


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


def query_images(queries: Sequence[Query]) -> list | None:
    """The queries' images for an adapter call: None when no query has one."""
    ims = [q.image for q in queries]
    return None if all(im is None for im in ims) else ims


@torch.no_grad()
def sample_responses(model: nn.Module, adapter: Any, queries: Sequence[Query], group_size: int,
                     temperature: float = 1.0, max_new_tokens: int = 24, seed: int = 0) -> list[list[str]]:
    """``group_size`` sampled responses per query from ``model`` (prompts, images and padding by ``adapter``).

    Each query is repeated ``group_size`` times in one left-padded batch (no ``num_return_sequences``: Qwen-VL's
    flattened pixel patches are not expanded per row by every family's ``generate``). Seeded by ``seed``."""
    rep = [q for q in queries for _ in range(group_size)]
    batch = adapter.encode([q.prompt for q in rep], images=query_images(rep))
    config = copy.deepcopy(model.generation_config)
    config.do_sample, config.temperature, config.top_k, config.top_p = True, float(temperature), 0, 1.0
    config.max_new_tokens, config.pad_token_id = max_new_tokens, adapter.pad_token_id
    torch.manual_seed(seed)
    out = model.generate(**{k: v for k, v in batch.items() if k != "labels"}, generation_config=config)
    texts = adapter.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return [texts[i * group_size:(i + 1) * group_size] for i in range(len(queries))]


def answer_texts(adapter: Any, responses: Sequence[str]) -> list[str]:
    """Responses as the baselines' training answers (their answer prefix + the stripped text): the tokens every
    log-probability of a response is taken over."""
    prefix = answer_prefix(adapter)
    return [prefix + r.strip() for r in responses]


def response_logprobs(model: nn.Module, adapter: Any, queries: Sequence[Query], responses: Sequence[str]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced (N, T-1) log-probabilities of each response's tokens (and eos) given its query, and the mask."""
    if len(queries) != len(responses):
        raise ValueError(f"got {len(queries)} queries for {len(responses)} responses")
    batch = adapter.encode([q.prompt for q in queries], images=query_images(queries),
                           answers=answer_texts(adapter, responses))
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
    nll = (fluency_nll(vanilla, [q.prompt for q in queries], answer_texts(vanilla, responses),
                       images=query_images(queries)) if use_q else [math.nan] * len(queries))
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


def nanmean(xs) -> float:
    """Mean of ``xs`` without NaNs (NaN when nothing is left)."""
    xs = [x for x in xs if not (isinstance(x, float) and math.isnan(x))]
    return float(sum(xs) / len(xs)) if xs else math.nan


def curve_entry(step: int, queries: Sequence[Query], rewards: Sequence[float], details: Sequence[dict],
                weights: RewardWeights, **extra: Any) -> dict:
    """One GRPO step of the reward curve: mean reward (all, forget, retain), the forget side's contextual refusal
    and refusal rates, the retain side's correct rate, mean quality, and ``extra`` (loss parts)."""
    fd = [d for q, d in zip(queries, details) if q.is_forget]
    rd = [d for q, d in zip(queries, details) if not q.is_forget]
    return {"step": step, "reward": nanmean(rewards),
            "reward_forget": nanmean([x for q, x in zip(queries, rewards) if q.is_forget]),
            "reward_retain": nanmean([x for q, x in zip(queries, rewards) if not q.is_forget]),
            "forget_contextual": nanmean([float(d["contextual"]) for d in fd]),
            "forget_refusal": nanmean([float(d["refusal"]) for d in fd]),
            "retain_correct": nanmean([float(d["boundary"] >= weights.correct) for d in rd]),
            "quality": nanmean([d["quality"] for d in details]), **extra}
