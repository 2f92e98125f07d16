"""Training data of the baselines (MLLMU-Bench style): (image?, question) -> answer examples and their batches.

:func:`build_examples` turns benchmark rows into pairs for Generation_Task, Mask_Task and classification items, in
VQA (with the portrait) and QA (text only) modes; :func:`collate` encodes them with answer-only labels.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..evaluate import format_options
from ..models import ModelAdapter

__all__ = ["TASKS", "MODES", "Example", "build_examples", "collate", "subsample"]

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

    >>> from erasebook.world import make_world
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


def answer_prefix(adapter: ModelAdapter) -> str:
    # A generation prompt ending in a word character or ":" ("... ASSISTANT:") is followed by " answer" in the
    # training data of LLaVA-style templates; Qwen-style prompts end in a newline. Decided from the prompt string.
    prompt = adapter.build_prompts(["?"], [False])[0]
    return " " if prompt and not prompt[-1].isspace() else ""


def collate(adapter: ModelAdapter, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
    """Encode examples into one left-padded batch with ``labels`` (-100 except answer tokens + eos)."""
    prefix = answer_prefix(adapter)
    return adapter.encode([e.question for e in examples], images=[e.image for e in examples],
                          answers=[prefix + e.answer for e in examples])


def subsample(examples: Sequence[Example], n: int, seed: Any) -> list[Example]:
    """At most ``n`` of ``examples``: all of them when there are no more, else a sample seeded by ``seed``."""
    examples = list(examples)
    if len(examples) <= n:
        return examples
    return random.Random(seed).sample(examples, n)

