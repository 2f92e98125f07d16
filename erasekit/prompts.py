"""The front door's default requests: harmful ones (the model should refuse), harmless ones (it should help) and the
harmful ones wrapped in a jailbreak (Eq. 3's contrast), shipped as data in ``prompts.json``.

They are the training wordings of a small synthetic safety set (some name fictitious people); the book regenerates
them from its world and a test checks the file still equals that.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

__all__ = ["KINDS", "default_requests"]

KINDS = ("harmful", "harmless", "jailbreak")


@functools.cache
def _load() -> dict[str, tuple[str, ...]]:
    with open(Path(__file__).with_name("prompts.json"), encoding="utf-8") as f:
        raw = json.load(f)
    return {k: tuple(raw[k]) for k in KINDS}


def default_requests(kind: str) -> list[str]:
    """The default requests of ``kind`` ("harmful", "harmless" or "jailbreak"), in a fixed order."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return list(_load()[kind])
