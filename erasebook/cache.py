"""The cache of the pipeline's expensive steps: where results live, how they are keyed, and the in-process memo.

A step computes its result once and stores it with :mod:`erasekit.artifacts` under
:func:`erasebook.paths.cache_dir` (``<step>/<key[:24]>``), keyed by :func:`erasekit.cache_keys.cache_key` of
everything that determines it: the model (:func:`erasebook.session.model_key`), the data actually fed to the model
(prompts and image pixels), the hyperparameters and the keys of upstream results (:func:`key_of`). Evaluation
results (DataFrames) are stored next to them as parquet files with the same key scheme. So notebooks run alone and
in any order, and a second call, in the same process or another, only reads the result.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from erasekit.artifacts import artifact_exists, load_artifact, save_artifact
from erasekit.cache_keys import key_of
from erasekit.files import atomic_write

from . import paths

__all__ = ["VERSION", "STATS", "cache_path", "cached", "cached_frame", "cached_weights", "key_of"]

# Bump when a step's computation changes: every cached result made by an older version is then recomputed.
VERSION = 1
# Cache statistics per step: STATS["refusal_direction:hit"] etc. (tests and notebooks read them).
STATS: collections.Counter = collections.Counter()
_MEMO: dict[tuple[str, str], Any] = {}


def cache_path(step: str, key: str) -> Path:
    """Where the result of ``step`` for ``key`` lives (without suffix)."""
    return paths.cache_dir() / step / key[:24]


def cached(step: str, key: str, compute: Callable[[], Any], model_id: str, hyper: dict, refresh: bool = False):
    """Load the artifact for ``key`` or compute and save it (recording ``model_id`` and ``hyper`` in its sidecar);
    counts hits and misses in :data:`STATS`."""
    memo = (step, key)
    if not refresh and memo in _MEMO:
        STATS[f"{step}:hit"] += 1
        return _MEMO[memo]
    path = cache_path(step, key)
    if not refresh and artifact_exists(path, data_hash=key):
        STATS[f"{step}:hit"] += 1
        obj = load_artifact(path)
    else:
        STATS[f"{step}:miss"] += 1
        obj = compute()
        save_artifact(path, obj, model_id=model_id, hyperparameters=hyper, data_hash=key)
    _MEMO[memo] = obj
    return obj


def cached_frame(step: str, key: str, compute: Callable[[], pd.DataFrame], refresh: bool = False) -> pd.DataFrame:
    """Same for DataFrames: a parquet file named by the key, written atomically; returns a copy."""
    memo = (step, key)
    if not refresh and memo in _MEMO:
        STATS[f"{step}:hit"] += 1
        return _MEMO[memo].copy()
    path = cache_path(step, key).with_suffix(".parquet")
    if not refresh and path.exists():
        STATS[f"{step}:hit"] += 1
        df = pd.read_parquet(path)
    else:
        STATS[f"{step}:miss"] += 1
        df = compute()
        atomic_write(path, _parquet_safe(df).to_parquet(index=False))
        df = pd.read_parquet(path)  # the same types on a miss as on a hit
    _MEMO[memo] = df
    return df.copy()


def cached_weights(step: str, key: str, train: Callable[[], tuple[Any, dict]], base: Any,
                   model_id: str) -> tuple[Any, dict]:
    """A model trained from ``base`` (a :class:`erasekit.models.ModelAdapter`), trained once per ``key``:
    ``train()`` returns (trained adapter, JSON-able summary); what is stored is the summary and only the tensors
    training changed (a LoRA merge, a masked or pruned copy: same architecture as ``base``). A hit rebuilds the model
    as a fresh copy of ``base`` with those tensors loaded, so chapters that score and chapters that attack one
    trained baseline or ASRU model train it once. Returns (adapter, summary). Weights and summary are written
    atomically; a summary without its weights (or the reverse) retrains."""
    import torch

    from erasekit.baselines.lora import as_adapter, fresh_copy

    path = cache_path(step, key)
    summary_path = path.with_suffix(".summary.json")
    if summary_path.exists() and artifact_exists(path, data_hash=key):
        STATS[f"{step}:hit"] += 1
        changed = load_artifact(path)
        model = fresh_copy(base)
        missing, unexpected = model.load_state_dict(changed, strict=False)
        if unexpected:
            raise RuntimeError(f"cached weights {path} name tensors {base.model.__class__.__name__} does not have: "
                               f"{unexpected[:3]}; delete the file to retrain")
        return as_adapter(base, model), json.loads(summary_path.read_text())
    STATS[f"{step}:miss"] += 1
    adapter, summary = train()
    before = base.model.state_dict()
    changed = {k: v for k, v in adapter.model.state_dict().items()
               if k not in before or v.shape != before[k].shape or not torch.equal(v, before[k])}
    atomic_write(summary_path, json.dumps(summary, indent=1))
    save_artifact(path, changed, model_id=model_id, hyperparameters={"changed_tensors": len(changed)}, data_hash=key)
    return adapter, summary


def _parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    # Mixed-type object columns (ids that are ints in one split and strings in another, None targets) become str.
    df = df.copy()
    for c in df.columns:
        if df[c].dtype == object:
            types = {type(v) for v in df[c] if v is not None}
            if len(types) > 1 or (types and not types <= {str, bool}):
                df[c] = df[c].map(lambda v: None if v is None else str(v))
    return df
