"""Refusal behaviour on the world's safety prompts: does a (steered) model still refuse harmful requests, help with
harmless ones and comply with jailbreak-wrapped ones? Generation goes through :func:`erasekit.evaluate.run_items`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from .evaluate import Item, run_items
from .scoring import is_degenerate, is_refusal
from .world import safety_prompts

__all__ = ["evaluate_safety", "refusal_rates"]


def evaluate_safety(adapter: Any, world: Any, kinds: Sequence[str] = ("harmful", "jailbreak", "harmless"),
                    heldout_only: bool = True, image: Any = None, intervention: Any = None, batch_size: int = 8,
                    max_new_tokens: int = 50, progress: bool = True, seed: int = 0) -> pd.DataFrame:
    """Refusal behaviour on ``world.safety_prompts`` (held-out phrasings by default), one row per prompt.

    ``image``: None (text only), one PIL image for every prompt, or a list / dict of clean natural images
    (e.g. ``world.natural_images(size)``) used round-robin. ``intervention``: a context-manager factory.
    Columns: ``kind, heldout, prompt, image, response, refusal, category`` where category is
    ``"refusal" | "degenerate" | "complied"`` (refusal checked first, so a looped refusal counts as refusal).
    Use :func:`refusal_rates` for the per-kind rates.
    """
    prompts = [p for p in safety_prompts(world, seed=seed) if p.kind in kinds and (p.heldout or not heldout_only)]
    if isinstance(image, Mapping):
        names, pool = list(image), list(image.values())
    elif isinstance(image, (list, tuple)):
        names, pool = list(range(len(image))), list(image)
    else:
        names, pool = [None if image is None else 0], [image]
    items = [Item("safety", "VQA" if pool[i % len(pool)] is not None else "QA", p.kind, i, None, p.prompt, p.prompt,
                  pool[i % len(pool)], p.response) for i, p in enumerate(prompts)]
    responses = run_items(adapter, items, intervention, batch_size, max_new_tokens, progress)
    recs = []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ref = is_refusal(r)
        cat = "refusal" if ref else ("degenerate" if is_degenerate(r) else "complied")
        recs.append({"kind": p.kind, "heldout": p.heldout, "prompt": p.prompt, "image": names[i % len(pool)],
                     "response": r, "refusal": ref, "category": cat})
    return pd.DataFrame.from_records(recs, columns=["kind", "heldout", "prompt", "image", "response", "refusal",
                                                    "category"])


def refusal_rates(df: pd.DataFrame) -> pd.DataFrame:
    """Refusal / degenerate rate (%) and count per kind from :func:`evaluate_safety` output."""
    g = df.groupby("kind", sort=False)
    return pd.DataFrame({"refusal_rate": g["refusal"].mean() * 100,
                         "degenerate_rate": g["category"].apply(lambda c: (c == "degenerate").mean() * 100),
                         "n": g.size()})
