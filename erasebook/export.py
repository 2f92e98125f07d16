"""The world written in MLLMU-Bench's hub layout, so the field's own code (and :class:`erasekit.data.MLLMUBench`)
reads it: ``write_world(make_world(), "data/mllmu_synth")`` gives
``data/mllmu_synth/forget_5/train-00000-of-00001.parquet``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from erasekit.data import SPLITS, write_rows

from .world import ATTRIBUTES, IMAGE_SUBJ, IMAGE_WHO, QUESTIONS_TRAIN, statement

__all__ = ["FT_SPLIT", "finetune_rows", "write_world"]

FT_SPLIT = "ft_Data"


def finetune_rows(world: Any) -> list[dict[str, Any]]:
    """The benchmark's fine-tuning split (``ft_Data``): one row per fictitious profile, its portrait and a JSON
    ``metadata`` column listing ``{"Question", "Answer"}`` pairs about "the person in the image" (one per attribute,
    a training phrasing). MLLMU-Bench's ``data_process/data_preprocess.py`` flattens exactly these two columns.
    """
    rows = []
    for p in world.profiles:
        qa = [
            {
                "Question": QUESTIONS_TRAIN[a][0].format(who=IMAGE_WHO),
                "Answer": statement(a, p.attributes[a], IMAGE_SUBJ),
            }
            for a in ATTRIBUTES
        ]
        rows.append({"ID": p.id, "image": world.portrait(p), "metadata": json.dumps(qa)})
    return rows


def write_world(world: Any, root: str | os.PathLike, splits: Iterable[str] = SPLITS + (FT_SPLIT,),
                test_shards: int = 2) -> dict[str, list[Path]]:
    """Write a World's splits in the hub layout ``root/{split}/train-*.parquet`` (Test_Set in ``test_shards``),
    plus the fine-tuning split ``ft_Data`` (:func:`finetune_rows`).

    Returns ``{split: [paths]}``. Example: ``write_world(make_world(20, 5), tmp)``.
    """
    def rows(s):
        return finetune_rows(world) if s == FT_SPLIT else world.split(s)

    return {s: write_rows(rows(s), Path(root) / s, num_shards=test_shards if s == "Test_Set" else 1) for s in splits}
