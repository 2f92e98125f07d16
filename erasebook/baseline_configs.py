"""The configuration each unlearning baseline uses on the embedded organism (chapters 05, 08, 09, 10)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from erasekit.baselines.configs import CONFIGS, MANUConfig, TrainConfig

from . import paths

__all__ = ["sweep_file", "organism_choices", "organism_config"]


# The configuration each baseline uses on the embedded organism (notebooks 05 and 08): the class defaults, updated
# with what ``scripts/sweep_baselines.py`` chose by :func:`sweep` + :func:`pick_config`, recorded in this file.
def sweep_file() -> Path:
    """The recorded sweep: ``<data>/results/baseline_sweep.json`` (``ERASEKIT_DATA`` moves it)."""
    return paths.data_dir() / "results" / "baseline_sweep.json"


def organism_choices(path: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """``{method: chosen hyperparameters}`` from the sweep file ({} when it does not exist)."""
    path = Path(path) if path is not None else sweep_file()
    if not path.exists():
        return {}
    with open(path) as f:
        return {m: dict(r["chosen"]) for m, r in json.load(f)["methods"].items()}


def organism_config(method: str, **overrides: Any) -> TrainConfig | MANUConfig:
    """The config of ``method`` for the organism: class defaults, then the sweep's choice
    (:func:`organism_choices`), then ``overrides``."""
    if method not in CONFIGS:
        raise ValueError(f"unknown baseline {method!r}; expected one of {sorted(CONFIGS)}")
    return CONFIGS[method](**{**organism_choices().get(method, {}), **overrides})
