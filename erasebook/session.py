"""The session: one model and its data, what every notebook and pipeline step starts from.

:func:`load_session` loads a model (the embedded organism by default, or any supported folder / hub id / adapter)
and its benchmark source (the organism's own world, or an MLLMU-Bench folder), fixes the held-out partition of the
profiles (:mod:`erasekit.heldout`) and hashes both, so every cached step (:mod:`erasebook.cache`) is keyed by
exactly the model and data it saw.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

from erasekit.cache_keys import cache_key
from erasekit.clear import ClearBench, is_clear_folder
from erasekit.data import MLLMUBench
from erasekit.heldout import ProfilePartition, partition_profiles
from erasekit.models import load_model

from . import paths
from .organism import load_world_for
from .world import World, make_world

__all__ = ["Session", "load_session", "model_key", "data_key", "file_digest"]

# Loaded sessions per process: a second load_session in a notebook is instant.
_SESSIONS: dict[tuple, Session] = {}


@dataclasses.dataclass
class Session:
    """A model, its benchmark source and the held-out partition of its profiles.

    Attributes:
        adapter: the :class:`erasekit.models.ModelAdapter`.
        source: anything with ``split(name)``: the organism's :class:`erasebook.world.World` or an
            :class:`erasekit.data.MLLMUBench`.
        world: the synthetic world when the source is one (portraits, profiles), else None.
        safety_world: world whose names fill the privacy prompts of :func:`erasebook.world.safety_prompts`
            (the source world, or a small synthetic one next to a real benchmark).
        model_key: hash of the model id, config and weights (part of every cache key).
        data_key: hash of the data source.
        partition: which retain / celebrity profiles are scored (``eval``), protect the hyperparameter rules
            (``tune``) and form H_r and the baselines' retain data (``fit``); disjoint (:mod:`erasekit.heldout`).
    """

    adapter: Any
    source: Any
    world: Any
    safety_world: Any
    model_key: str
    data_key: str
    partition: ProfilePartition | None = None

    @property
    def model_id(self) -> str:
        return str(self.adapter.model_id)

    @property
    def num_layers(self) -> int:
        return int(self.adapter.num_layers)

    @property
    def image_size(self) -> int:
        size = self.adapter.image_size
        if size is None:
            raise ValueError(f"{self.model_id} takes no images (text-only adapter); the multimodal steps need a VLM")
        return int(size[0])

    def __repr__(self) -> str:
        src = type(self.source).__name__
        return (f"Session(model={Path(self.model_id).name!r}, layers={self.num_layers}, "
                f"hidden size={self.adapter.hidden_size}, source={src})")


def file_digest(path: Path, full_limit: int = 512 << 20) -> str:
    """sha256 of a file; above ``full_limit`` bytes only its size and first/last MiB (7B weights: seconds, not
    minutes)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        if size <= full_limit:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(f.read(1 << 20))
            f.seek(size - (1 << 20))
            h.update(f.read(1 << 20))
    return h.hexdigest()


def _is_adapter(model: Any) -> bool:
    return hasattr(model, "model") and hasattr(model, "layers")


def model_key(model: Any) -> str:
    """Cache-key part for a model: a local folder (config + weights + tokenizer files), a hub id, or an adapter.

    An adapter passed directly is hashed by its model id and, when it is small (< 100 M parameters), its weights.
    """
    if _is_adapter(model):
        params = list(model.model.state_dict().items())
        n = sum(t.numel() for _, t in params)
        weights = {k: t for k, t in params} if n < 100_000_000 else n
        return cache_key(model_id=str(model.model_id), weights=weights)
    p = Path(os.fspath(model))
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and (
            f.suffix in (".json", ".safetensors", ".bin", ".model", ".jinja", ".txt")))
        if not files:
            raise FileNotFoundError(f"{p} holds no model files (config.json, *.safetensors, ...)")
        return cache_key(files={f.name: file_digest(f) for f in files})
    return cache_key(hub_id=str(model))


def data_key(source: Any) -> str:
    """Cache-key part for a benchmark source: a synthetic world by content, a parquet folder by its files."""
    if isinstance(source, World):
        return cache_key(world=source)
    root = getattr(source, "root", None)
    if root is not None:
        files = sorted(Path(root).rglob("*.parquet"))
        return cache_key(files={str(f.relative_to(root)): file_digest(f, full_limit=64 << 20) for f in files})
    return cache_key(source=repr(source))


def load_session(model: Any = None, data: Any = None, *, device: Any = None, dtype: Any = None,
                 safety_world: Any = None) -> Session:
    """The model and its data: the embedded organism and its world by default.

    Args:
        model: a local folder or hub id (LLaVA-1.5, Qwen2.5-VL, Qwen3-VL in HF format), an already built adapter,
            or None for :func:`erasebook.paths.organism_dir`.
        data: None (the organism's own world: ``model`` must be an erasekit organism folder), a folder with the
            MLLMU-Bench parquet files (:class:`erasekit.data.MLLMUBench`) or a local CLEAR copy
            (:class:`erasekit.clear.ClearBench`, recognised by its ``forget05`` config), or a World / anything with
            ``split``.
        device, dtype: passed to :func:`erasekit.models.load_model` (default: GPU + bf16 when there is one).
        safety_world: world used for the safety prompts' names (default: the source world, or a small synthetic
            one when the source is a real benchmark).

    Loaded sessions are memoised per process: calling it again in a notebook is instant.
    """
    model = paths.organism_dir() if model is None else model
    is_adapter = _is_adapter(model)
    memo = (
        id(model) if is_adapter else os.fspath(model),
        id(data) if data is not None and not isinstance(data, (str, os.PathLike)) else data,
        str(device),
        str(dtype),
    )
    if memo in _SESSIONS:
        return _SESSIONS[memo]
    if not is_adapter:
        p = Path(os.fspath(model))
        if not p.exists() and (str(model).startswith((".", "/", "~")) or p == paths.organism_dir()):
            raise FileNotFoundError(f"model folder {p} does not exist. For the embedded organism run "
                                    f"`erasekit build-organism` (or scripts/main.sh); else pass a folder or hub id.")
    adapter = model if is_adapter else load_model(model, device=device, dtype=dtype)
    world = None
    if data is None:
        if is_adapter:
            raise ValueError("data=None needs an organism folder as model (its world is rebuilt from it); "
                             "pass data= (a World or an MLLMU-Bench folder) with an adapter")
        if not (Path(os.fspath(model)) / "organism_config.json").exists():
            raise ValueError(f"{model} is not an erasekit organism (no organism_config.json), so it has no embedded "
                             f"world: pass data=<folder with the MLLMU-Bench parquet files>")
        source = world = load_world_for(os.fspath(model))
    elif isinstance(data, (str, os.PathLike)):
        source = ClearBench(data) if is_clear_folder(data) else MLLMUBench(data)
    elif hasattr(data, "split"):
        source = data
        world = data if hasattr(data, "portrait") else None
    else:
        raise TypeError(f"data must be None, a folder or an object with split(name), got {type(data).__name__}")
    if safety_world is None:
        safety_world = world if world is not None else make_world(20, 1, seed=0)
    out = Session(adapter, source, world, safety_world, model_key(model), data_key(source),
                  partition_profiles(source))
    _SESSIONS[memo] = out
    return out
