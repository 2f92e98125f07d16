"""Batched greedy generation on any adapter, optionally inside an intervention (a steering context).

One loop for every place that generates: the pipeline's behaviour filters, the notebooks' examples and the
:class:`erasekit.eraser.Eraser` front door. Prompts are encoded in batches (left-padded by the adapter, so the last
position of every row is its last prompt token) and decoded greedily; ``context`` is a factory of a context manager
(e.g. ``lambda: steer(adapter, ops)``) entered once per batch, so steering hooks see each batch's prefill pass and
its decode steps exactly as :func:`erasekit.hooks.steer` documents.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

__all__ = ["generate", "prefill_gate_values"]


def generate(adapter: Any, prompts: Sequence[str], images: Sequence[Any] | None = None, *,
             context: Callable[[], Any] | None = None, max_new_tokens: int = 50, batch_size: int = 16,
             progress: bool = False, desc: str = "generate") -> list[str]:
    """Greedy answers to ``prompts`` (one image or None per prompt in ``images``), inside ``context()`` if given.

    Args:
        adapter: a :class:`erasekit.models.ModelAdapter`.
        prompts: the questions (the adapter applies its chat template).
        images: None, or one entry per prompt (PIL image, (3, H, W) tensor in [0, 1], or None).
        context: factory of the intervention context (entered per batch), e.g. a steering context.
        max_new_tokens, batch_size: generation length and batch size.
        progress: show a tqdm bar over the batches.

    Returns:
        The decoded continuations (new tokens only), in the order of ``prompts``.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not a single string")
    if images is not None and len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images for {len(prompts)} prompts (give one image or None per prompt)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out: list[str] = []
    for s in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress):
        ims = None if images is None else list(images[s:s + batch_size])
        if ims is not None and all(im is None for im in ims):
            ims = None
        batch = adapter.encode(list(prompts[s:s + batch_size]), images=ims)
        with (context() if context is not None else contextlib.nullcontext()), torch.no_grad():
            out += adapter.generate(batch, max_new_tokens=max_new_tokens)
    return out


def prefill_gate_values(adapter: Any, prompts: Sequence[str], images: Sequence[Any] | None,
                        context: Callable[[dict], Any], batch_size: int = 16) -> dict[int, Any]:
    """The raw gate value each gated layer reads on one steered prefill of every prompt: ``{layer: (N,)}``.

    ``context(record)`` must return the steering context that appends the gate values it reads to ``record``
    (:func:`erasekit.hooks.steer`'s ``record=``); prompts are encoded in batches of ``batch_size``.
    """
    record: dict = {}
    for s in range(0, len(prompts), batch_size):
        ims = None if images is None else list(images[s:s + batch_size])
        batch = adapter.encode(list(prompts[s:s + batch_size]), images=ims)
        with torch.no_grad(), context(record):
            adapter.model(**batch)
    return {l: torch.cat(v) for l, v in sorted(record.items())}

