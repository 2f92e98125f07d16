"""The search attacks of :mod:`erasebook.extraction`: black-box gate evasion (attack 3) and white-box
image PGD (attack 4), with the objectives they optimise (the gate margin, the gold answer's NLL under the model as
deployed). Facts, targets, the prompt attacks, the records and their summary are in :mod:`erasebook.extraction`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from erasekit.attack import clamp_to_box
from erasekit.generation import prefill_gate_values

from .extraction import Fact, Target, check_facts, check_target, run_prompts, train_question
from .world import STATEMENTS

__all__ = ["gate_thresholds", "gate_objective", "gate_evasion", "gold_statement", "answer_nll", "image_pgd"]


# ----------------------------------------------------------------------------------------------------------------
# attack 3: black-box gate evasion


def _gate_reads(target: Target, prompts: Sequence[str], task: str, images: Sequence | None = None,
                batch_size: int = 64) -> dict[int, torch.Tensor]:
    if target.steering is None or target.steering.steerer is None:
        raise ValueError(f"target {target.name!r} has no gated steering: gate values need an input-aware steerer")
    ops = target.steering.operators(task, target.adapter.num_layers)
    return prefill_gate_values(target.adapter, list(prompts), images,
                               lambda rec: target.steering.context(target.adapter, ops, record=rec), batch_size)


def gate_thresholds(target: Target, retain_prompts: Sequence[str], task: str = "generation",
                    quantile: float = 0.9) -> dict[int, float]:
    """Per steered layer, the gate value below which a prompt is treated like a retain question: the steerer's floor
    where it has one (erasekit's gate: no push at all below it), else the ``quantile`` of the gate on
    ``retain_prompts`` (the paper's gate: the push a typical retain question gets)."""
    floors = target.steering.steerer.floors if target.steering is not None and target.steering.steerer else {}
    reads = _gate_reads(target, retain_prompts, task)
    return {l: floors[l] if l in floors else float(torch.quantile(s.double(), quantile)) for l, s in reads.items()}


def gate_objective(target: Target, prompts: Sequence[str], task: str, thresholds: Mapping[int, float],
                   scale: Mapping[int, float]) -> torch.Tensor:
    """``max_l (s_l - t_l) / scale_l`` per prompt, (N,): <= 0 when every layer's gate is at or below its threshold
    t_l; ``scale_l`` is the spread (standard deviation) of the gate on retain questions, so 3 means three retain
    spreads above the threshold."""
    reads = _gate_reads(target, prompts, task)
    z = torch.stack([(reads[l].double() - thresholds[l]) / scale[l] for l in thresholds])
    return z.max(0).values


def answer_nll(target: Target, question: str, answer: str, image: torch.Tensor | None = None,
               task: str = "generation") -> torch.Tensor:
    """Mean NLL of ``answer``'s tokens after ``question`` (+ ``image``, (3,H,W) in [0,1]) under ``target`` as deployed:
    the prompt is prefilled inside the steering context (so the gate reads the last *prompt* token, as in
    generation) and the answer tokens are scored after it, unsteered, through the KV cache — exactly what greedy
    decoding sees. Differentiable in ``image``. One prompt (no padding)."""
    from erasekit.baselines.data import answer_prefix

    adapter = target.adapter
    batch = adapter.encode([question], images=None if image is None else image[None])
    ids = adapter.tokenizer(answer_prefix(adapter) + answer, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"answer {answer!r} has no tokens")
    ids_t = torch.tensor([ids], device=adapter.device)
    factory = target.context(task)
    with (factory() if factory is not None else _null()):
        out = adapter.model(**batch, use_cache=True)
    logits = out.logits[:, -1:]
    if len(ids) > 1:
        mask = torch.cat([batch["attention_mask"], torch.ones_like(ids_t[:, :-1])], 1)
        more = adapter.model(input_ids=ids_t[:, :-1], attention_mask=mask, use_cache=True,
                             **{_cache_kwarg(adapter.model): out.past_key_values}).logits
        logits = torch.cat([logits, more], 1)
    return F.cross_entropy(logits[0].float(), ids_t[0])


def gold_statement(fact: Fact) -> str:
    """The answer a model trained on the world gives when it knows the fact: ``"Cali Linmor lives in Edinburgh."``
    (the world's statement with the name), the target of the likelihood objectives."""
    return STATEMENTS[fact.attribute].format(subj=fact.name, v=fact.gold)


def _cache_kwarg(model: Any) -> str:
    # transformers 5.x names the KV cache argument ``cache`` (``past_key_values`` is deprecated there); 4.x
    # knows only ``past_key_values``.
    import inspect

    try:
        return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    except (TypeError, ValueError):
        return "past_key_values"


def _null():
    import contextlib

    return contextlib.nullcontext()


def _batched_answer_nll(target: Target, prompts: Sequence[str], answer: str) -> torch.Tensor:
    """Teacher-forced answer NLL per prompt (N,) for a target *without* steering (one batched forward)."""
    from erasekit.baselines.data import answer_prefix

    if target.steering is not None:
        raise ValueError("batched answer NLL ignores steering; use answer_nll for a steered target")
    adapter = target.adapter
    batch = adapter.encode(list(prompts), answers=[answer_prefix(adapter) + answer] * len(prompts))
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = adapter.model(**batch).logits[:, :-1].float()
    lab = labels[:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab.reshape(-1), ignore_index=-100,
                         reduction="none").view(lab.shape)
    return ce.sum(1) / (lab != -100).sum(1).clamp_min(1)


def _candidate_tokens(adapter: Any, n: int, seed: int) -> list[str]:
    """``n`` word-like vocabulary entries (decoded, alphabetic), drawn with a seeded generator."""
    tok = adapter.tokenizer
    decoded = {tok.decode([i]).strip() for i in range(len(tok))}
    words = sorted(w for w in decoded if w.isalpha() and len(w) >= 2)
    if not words:  # byte-level vocabularies: single letters
        words = sorted(w for w in decoded if w.isalpha())
    if not words:
        raise ValueError("the tokenizer has no alphabetic tokens to search over")
    rng = random.Random(seed)
    return rng.sample(words, min(n, len(words)))


def gate_evasion(target: Target, facts: Sequence[Fact], retain_prompts: Sequence[str] | None = None, *,
                 n_tokens: int = 4, n_candidates: int = 48, rounds: int = 2, position: str = "suffix",
                 objective: str | None = None, seed: int = 0, max_new_tokens: int = 32,
                 progress: bool = False) -> pd.DataFrame:
    """Attack 3, black-box gate evasion. **Threat model:** query access to the deployed system and to one scalar per
    query — the gate value (gated targets: ``objective="gate"``) or the gold answer's loss (targets without a gate:
    ``objective="answer"``, which also presumes the attacker can test a guessed answer) — but no gradients and no
    weights. The attacker keeps the question unchanged and searches, per fact, a ``n_tokens`` word ``position``
    ("suffix"/"prefix") by greedy coordinate search: ``rounds`` sweeps over the positions, at each trying
    ``n_candidates`` vocabulary words (a fresh seeded sample per step) and keeping the best.

    ``retain_prompts``: retain questions that set the gate thresholds (:func:`gate_thresholds`; required for
    ``objective="gate"``). Records carry ``objective_before`` / ``objective_after`` (gate: :func:`gate_objective`,
    <= 0 means below threshold at every layer; answer: mean NLL of :func:`gold_statement`)."""
    target, facts = check_target(target), check_facts(facts)
    objective = objective or ("gate" if target.steering is not None else "answer")
    if objective not in ("gate", "answer"):
        raise ValueError(f"objective must be 'gate' or 'answer', got {objective!r}")
    if position not in ("suffix", "prefix"):
        raise ValueError(f"position must be 'suffix' or 'prefix', got {position!r}")
    if n_tokens < 1 or n_candidates < 1 or rounds < 1:
        raise ValueError(f"n_tokens, n_candidates and rounds must be >= 1, got {n_tokens}, {n_candidates}, {rounds}")
    task = "generation"
    if objective == "gate":
        if not retain_prompts:
            raise ValueError("objective='gate' needs retain_prompts (they set the gate thresholds)")
        thr = gate_thresholds(target, retain_prompts, task)
        spread = _gate_reads(target, retain_prompts, task)
        scale = {l: max(float(spread[l].double().std()), 1e-12) for l in thr}
        score = lambda fact, prompts: gate_objective(target, prompts, task, thr, scale)  # noqa: E731
    else:
        if target.steering is not None:
            raise ValueError("objective='answer' is for targets without steering (its batched loss ignores steering)")
        score = lambda fact, prompts: _batched_answer_nll(target, prompts, gold_statement(fact))  # noqa: E731
    rng = random.Random(seed)
    pool = _candidate_tokens(target.adapter, 4096, seed)

    def compose(q: str, words: list[str]) -> str:
        w = " ".join(x for x in words if x)
        if not w:
            return q
        return f"{q} {w}" if position == "suffix" else f"{w} {q}"

    jobs, before, after = [], [], []
    for fact in tqdm(facts, desc=f"gate evasion ({target.name})", disable=not progress):
        q = fact.question or train_question(fact.attribute, fact.name)
        words = [""] * n_tokens
        best = float(score(fact, [q])[0])
        start = best
        for _ in range(rounds):
            for i in range(n_tokens):
                cands = rng.sample(pool, min(n_candidates, len(pool)))
                trials = [words[:i] + [c] + words[i + 1:] for c in cands]
                vals = score(fact, [compose(q, t) for t in trials])
                j = int(torch.argmin(vals))
                if float(vals[j]) < best:
                    best, words = float(vals[j]), trials[j]
        jobs.append((fact, f"{position}_{objective}", compose(q, words), task))
        before.append(start)
        after.append(best)
    df = run_prompts(target, "gate_evasion", jobs, max_new_tokens=max_new_tokens)
    df["objective_before"], df["objective_after"] = before, after
    return df


# ----------------------------------------------------------------------------------------------------------------
# attack 4: white-box image PGD


def image_pgd(target: Target, facts: Sequence[Fact], *, eps: float = 16 / 255, alpha: float = 2 / 255,
              steps: int = 20, max_new_tokens: int = 32, progress: bool = False) -> pd.DataFrame:
    """Attack 4, white-box image PGD. **Threat model:** the attacker has the weights *and* the deployed steering
    (gate, direction, λ) and may attach an image to a text question that names the person. Starting from the
    person's portrait (grey if none), ``steps`` signed-gradient steps in the L∞ ``eps``-ball (pixels in [0, 1])
    minimise :func:`answer_nll` of the gold statement (:func:`gold_statement`) under the model as deployed; then the
    question is asked with the adversarial image (the step with the lowest loss). With erasekit's gate
    (``read="frozen"``) the gate is read on an unsteered pass without gradient, so the gradient treats the gate as
    fixed for that step (a BPDA-style approximation); the paper's gate is differentiated through.

    Records carry the answer NLL before and after (``objective_before`` / ``objective_after``)."""
    from erasekit.models.pixels import pil_to_tensor

    target, facts = check_target(target), check_facts(facts)
    if not getattr(target.adapter, "is_multimodal", False):
        raise ValueError(f"target {target.name!r} takes no images: the image attack needs a vision-language model")
    if not (math.isfinite(eps) and eps > 0) or not (math.isfinite(alpha) and alpha > 0) or steps < 0:
        raise ValueError(f"need eps > 0, alpha > 0, steps >= 0; got {eps}, {alpha}, {steps}")
    size = target.adapter.image_size or (32, 32)
    jobs, images, before, after = [], [], [], []
    for fact in tqdm(facts, desc=f"image PGD ({target.name})", disable=not progress):
        q = fact.question or train_question(fact.attribute, fact.name)
        x0 = pil_to_tensor(fact.image) if fact.image is not None else torch.full((3, *size), 0.5)
        lo, hi = (x0 - eps).clamp(0, 1), (x0 + eps).clamp(0, 1)
        x = x0.clone()
        start = best = None
        best_x = x0
        for _ in range(steps + 1):
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = answer_nll(target, q, gold_statement(fact), x)
                (grad,) = torch.autograd.grad(loss, x)
            v = float(loss.detach())
            start = v if start is None else start
            if best is None or v < best:
                best, best_x = v, x.detach()
            x = clamp_to_box(x.detach() - alpha * grad.sign(), lo, hi)
        jobs.append((fact, f"eps={eps * 255:.0f}/255", q, "generation"))
        images.append(best_x)
        before.append(start)
        after.append(best)
    df = run_prompts(target, "image_pgd", jobs, images=images, max_new_tokens=max_new_tokens)
    df["objective_before"], df["objective_after"] = before, after
    return df
