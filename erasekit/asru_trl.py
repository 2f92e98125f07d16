"""ASRU's stage 2 by TRL's ``GRPOTrainer`` (``ASRUConfig(backend="trl")``): the trainer the field runs GRPO with
past one GPU (accelerate, DeepSpeed / FSDP, vLLM generation are TRL's), on the same prompts, schedule and reward as
erasekit's loop (:func:`erasekit.asru.train_asru`).

What is the same, and how:

* **Prompts.** Each query's prompt is rendered by the adapter (:meth:`ModelAdapter.build_prompts`, the family's
  chat template) and handed to TRL as plain text, so TRL tokenises exactly the ids the adapter would (a BOS the
  template writes is dropped, the tokenizer adds it back, as :meth:`ModelAdapter.encode` does).
* **Schedule.** The prompts of every step are drawn with erasekit's loop's generator (``prompts_per_step``, of them
  ``retain_share`` retain prompts) and TRL reads them in that order (``shuffle_dataset=False``), each repeated
  ``group_size`` times; ``updates_per_batch`` optimiser steps per batch of rollouts (TRL's ``num_iterations``).
* **Reward.** One TRL reward callable (:func:`reward_callable`) scores each completion with
  :func:`erasekit.asru_rollouts.score_responses`: the boundary reward + ``quality_weight`` x the quality reward
  against vanilla's own answer (the same ``ref_nll``).
* **Loss.** ``loss_type="grpo"`` (token mean per sequence, then the mean over sequences, as
  :func:`erasekit.grpo.grpo_loss`), the k3 KL to the reference with weight ``beta``, clip ``clip_eps``,
  group-std scaled advantages (``scale_rewards``), AdamW at a constant ``lr``, no weight decay, the same grad-norm
  clip, LoRA on the same targets (:func:`erasekit.baselines.lora.lora_targets`); the reference is the warm-started
  model (TRL disables the LoRA adapters for it, as erasekit's loop does).

What differs: TRL samples with its own generation call (so the rollouts are not the loop's, seed for seed); it
decodes completions itself (special tokens skipped, as the loop does); ``retain_nll`` (PPO-ptx) has no TRL
counterpart and is refused. What TRL needed from the adapters: the rendered prompt text and the tokenizer; image
queries would need TRL's conversational VLM path (its processor's chat template, images as message parts), which
the adapters' own placeholder expansion does not go through: the TRL backend takes text queries and says so.
"""

from __future__ import annotations

import math
import random
import tempfile
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .asru_rollouts import Query, curve_entry, score_responses

__all__ = ["trl_prompts", "step_schedule", "reward_callable", "grpo_trl"]


def trl_prompts(adapter: Any, queries: Sequence[Query]) -> list[str]:
    """The queries' prompts as the text TRL tokenises (``tokenizer(text)``, special tokens added) into the ids
    :meth:`ModelAdapter.encode` gives."""
    if any(q.image is not None for q in queries):
        raise ValueError("ASRUConfig(backend='trl') trains on text queries; queries with images need "
                         "backend='erasekit' (TRL's VLM path renders prompts with the processor's own template)")
    prompts = adapter.build_prompts([q.prompt for q in queries], [False] * len(queries))
    bos = adapter.tokenizer.bos_token
    adds_bos = bos is not None and adapter.tokenizer("x")["input_ids"][:1] == [adapter.tokenizer.bos_token_id]
    return [p[len(bos):] if adds_bos and p.startswith(bos) else p for p in prompts]


def step_schedule(n_forget: int, n_retain: int, steps: int, prompts_per_step: int, retain_share: float,
                  seed: int) -> list[list[int]]:
    """Per GRPO step, the indices of its prompts (forget ``0..n_forget-1``, then retain), drawn as erasekit's loop
    draws them (:func:`erasekit.asru.train_asru`)."""
    rng = random.Random(f"{seed}-grpo")
    n_ret = round(prompts_per_step * retain_share) if n_retain else 0
    n_fgt = prompts_per_step - n_ret
    forget, retain = list(range(n_forget)), list(range(n_forget, n_forget + n_retain))
    return [rng.sample(forget, min(n_fgt, n_forget)) + (rng.sample(retain, min(n_ret, n_retain)) if n_ret else [])
            for _ in range(steps)]


def reward_callable(queries: Sequence[Query], adapter: Any, ref_nll: dict, cfg: Any, log: list):
    """A TRL reward function: ``f(prompts, completions, query, **kw) -> rewards``; ``query`` is the dataset column
    holding each row's index into ``queries``. Appends each call's details to ``log`` (the curve)."""

    def asru_reward(prompts, completions, query, **kwargs) -> list[float]:
        qs = [queries[i] for i in query]
        use_q = cfg.quality_weight > 0
        rewards, details = score_responses(
            qs, list(completions), weights=cfg.weights, vanilla=adapter,
            ref_nll=[ref_nll.get(id(q), math.nan) for q in qs] if use_q else None,
            quality_weight=cfg.quality_weight, quality_scale=cfg.quality_scale)
        log.append((qs, rewards, details))
        return rewards

    return asru_reward


def grpo_trl(adapter: Any, model: Any, forget: Sequence[Query], retain: Sequence[Query], cfg: Any,
             ref_nll: dict, progress: bool = False) -> tuple[nn.Module, list[dict]]:
    """Stage 2 by TRL's GRPOTrainer on LoRA adapters over ``model`` (the warm-started model, also the reference).
    Returns (the merged model in eval mode, one curve entry per optimiser step's batch of rollouts)."""
    try:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as e:  # pragma: no cover - trl is a dev / [trl] dependency
        raise ImportError("ASRUConfig(backend='trl') needs trl (pip install 'erasekit[trl]')") from e
    from .baselines.lora import lora_config, merged_frozen

    if cfg.retain_nll > 0:
        raise ValueError("ASRUConfig.retain_nll has no TRL counterpart: use backend='erasekit' or retain_nll=0")
    queries = list(forget) + list(retain)
    prompts = trl_prompts(adapter, queries)
    schedule = step_schedule(len(forget), len(retain), cfg.steps, cfg.prompts_per_step, cfg.retain_share, cfg.seed)
    order = [i for step in schedule for i in step]
    data = Dataset.from_dict({"prompt": [prompts[i] for i in order], "query": order})
    log: list = []
    n_per_step = len(schedule[0])
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=not progress,
            seed=cfg.seed, learning_rate=cfg.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
            max_grad_norm=cfg.max_grad_norm, optim="adamw_torch", use_cpu=adapter.device.type == "cpu",
            bf16=False, fp16=False,
            per_device_train_batch_size=n_per_step * cfg.group_size, gradient_accumulation_steps=1,
            steps_per_generation=1, num_generations=cfg.group_size, num_iterations=cfg.updates_per_batch,
            max_steps=cfg.steps * cfg.updates_per_batch, shuffle_dataset=False,
            max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature, top_p=1.0, top_k=0,
            beta=cfg.beta, epsilon=cfg.clip_eps, loss_type="grpo",
            scale_rewards="group" if cfg.scale_rewards else "none", remove_unused_columns=False,
        )
        peft = lora_config(model, cfg)
        torch.manual_seed(cfg.seed)
        trainer = GRPOTrainer(model=model, reward_funcs=[reward_callable(queries, adapter, ref_nll, cfg, log)],
                              args=args, train_dataset=data, processing_class=adapter.tokenizer, peft_config=peft)
        trainer.train()
        history = [h for h in trainer.state.log_history if "loss" in h]
        policy: Any = trainer.model
        if policy is None:  # pragma: no cover - TRL always keeps the trained model
            raise RuntimeError("TRL's GRPOTrainer returned no model")
    curve = []
    for step, (qs, rewards, details) in enumerate(log):
        h = history[step * cfg.updates_per_batch] if step * cfg.updates_per_batch < len(history) else {}
        parts = {k: h[k] for k in ("loss", "kl") if k in h}
        curve.append(curve_entry(step, qs, rewards, details, cfg.weights, **parts))
    return merged_frozen(policy), curve
