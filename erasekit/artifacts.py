"""Typed artifacts on disk: safetensors for the tensors, a JSON sidecar for everything else. No pickle.

An artifact at ``base`` is two files, ``base.safetensors`` and ``base.json``. The sidecar records the kind,
model id, layers, hyperparameters, a data hash of the inputs (see :func:`cache_key`), free-form meta and the
sha256 of the tensors file. Both files are written atomically (temp file in the same folder, fsync,
``os.replace``): a crash leaves the old artifact or the new one, never half a file. The tensors file is
written first and the sidecar last, and loading checks the recorded sha256, so a tensors file without its
matching sidecar is detected instead of loaded.

Kinds and the types they round-trip:

    "direction"           :class:`erasekit.directions.ErasureDirection`
    "steerer"             :class:`erasekit.steering.InputAwareSteerer` (rank-one and MLP maps)
    "adversarial_images"  :class:`erasekit.attack.AdversarialImages`
    "pgd_result"          :class:`erasekit.attack.PGDResult`
    "tensors"             ``dict[str, Tensor]``

Example:
    >>> save_artifact("out/dir_llava", direction, model_id="llava-hf/llava-1.5-7b-hf",
    ...               data_hash=cache_key(prompts=prompts, images=images))          # doctest: +SKIP
    >>> direction = load_artifact("out/dir_llava", expected_model_id="llava-hf/llava-1.5-7b-hf")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save
from torch import Tensor

from .attack import AdversarialImages, PGDResult
from .directions import ErasureDirection
from .files import atomic_write  # re-exported: recipes, quality and others import it from here
from .steering import InputAwareMap, InputAwareSteerer, MLPMap

__all__ = ["save_artifact", "load_artifact", "read_sidecar", "artifact_exists", "artifact_paths", "cache_key",
           "ArtifactError"]

FORMAT = "erasekit-artifact"
VERSION = 1


class ArtifactError(ValueError):
    """An artifact is missing, corrupt, of the wrong kind, or made for another model."""


def artifact_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(base.safetensors, base.json)`` for ``base``, ``base.safetensors`` or ``base.json``."""
    p = str(path)
    for suffix in (".safetensors", ".json"):
        if p.endswith(suffix):
            p = p[: -len(suffix)]
    return Path(p + ".safetensors"), Path(p + ".json")


# --- JSON-able metadata ------------------------------------------------------------------------------------------

def _jsonable(obj: Any, where: str = "meta") -> Any:
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)  # strict JSON has no nan/inf
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, torch.dtype):
        return str(obj)
    if isinstance(obj, Tensor) and obj.numel() == 1:
        return _jsonable(obj.item(), where)
    if hasattr(obj, "item") and hasattr(obj, "dtype") and getattr(obj, "shape", None) == ():  # numpy scalar
        return _jsonable(obj.item(), where)
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} must be str or int to go into the JSON sidecar")
            out[str(k)] = _jsonable(v, f"{where}.{k}")
        return out
    raise TypeError(f"{where}: {type(obj).__name__} cannot go into the JSON sidecar (no pickle); store tensors "
                    f"as tensors and metadata as numbers/strings")


# --- object <-> (tensors, sidecar info) ---------------------------------------------------------------------------

def _encode(obj) -> tuple[str, dict[str, Tensor], dict, list[int] | None]:
    """-> kind, tensors, kind-specific sidecar info, layers."""
    if isinstance(obj, ErasureDirection):
        return "direction", {f"layer.{l}": v for l, v in obj.vectors.items()}, {"meta": obj.meta}, obj.layers
    if isinstance(obj, InputAwareSteerer):
        tensors, maps = {}, {}
        for l, m in obj.maps.items():
            kind = "rank_one" if isinstance(m, InputAwareMap) else "mlp" if isinstance(m, MLPMap) else None
            if kind is None:
                raise TypeError(f"layer {l}: cannot save a map of type {type(m).__name__}")
            tensors.update({f"layer.{l}.{name}": t for name, t in m.tensors().items()})
            maps[str(l)] = {"kind": kind, "meta": m.meta}
        return "steerer", tensors, {"meta": obj.meta, "maps": maps}, obj.layers
    if isinstance(obj, AdversarialImages):
        tensors = {"images": obj.images}
        if obj.loss_history is not None:
            tensors["loss_history"] = obj.loss_history
        return "adversarial_images", tensors, {"meta": obj.meta}, None
    if isinstance(obj, PGDResult):
        tensors = {"image": obj.image, "loss_history": torch.tensor(obj.loss_history, dtype=torch.float64)}
        return "pgd_result", tensors, {"meta": obj.meta}, None
    if isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        return "tensors", dict(obj), {}, None
    raise TypeError(f"save_artifact: unsupported object {type(obj).__name__} (ErasureDirection, InputAwareSteerer, "
                    f"AdversarialImages, PGDResult or dict[str, Tensor])")


def _decode(kind: str, tensors: dict[str, Tensor], side: dict):
    meta = side.get("meta", {})
    if kind == "direction":
        return ErasureDirection({int(k.split(".")[1]): v for k, v in tensors.items()}, meta)
    if kind == "steerer":
        maps = {}
        for l_str, info in side["maps"].items():
            t = {name: tensors[f"layer.{l_str}.{name}"] for name in
                 (("direction", "gate") if info["kind"] == "rank_one" else ("w1", "b1", "w2", "b2"))}
            maps[int(l_str)] = (InputAwareMap(meta=info["meta"], **t) if info["kind"] == "rank_one"
                                else MLPMap(meta=info["meta"], **t))
        return InputAwareSteerer(maps, meta)
    if kind == "adversarial_images":
        return AdversarialImages(tensors["images"], tensors.get("loss_history"), meta)
    if kind == "pgd_result":
        return PGDResult(tensors["image"], tensors["loss_history"].tolist(), meta)
    if kind == "tensors":
        return tensors
    raise ArtifactError(f"unknown artifact kind {kind!r}")


# --- public API ---------------------------------------------------------------------------------------------------

def save_artifact(
    path: str | os.PathLike,
    obj,
    *,
    model_id: str | None = None,
    hyperparameters: dict | None = None,
    data_hash: str | None = None,
) -> Path:
    """Save ``obj`` as ``base.safetensors`` + ``base.json``, atomically; returns the tensors path.

    Args:
        path: ``base`` (``.safetensors`` / ``.json`` suffixes are stripped).
        obj: ErasureDirection, InputAwareSteerer, AdversarialImages, PGDResult or dict[str, Tensor].
        model_id: model the artifact belongs to; default ``obj.meta["model_id"]`` when present.
        hyperparameters: settings that produced it (gamma, eps, layers, ...), JSON-able.
        data_hash: hash of the inputs, e.g. ``cache_key(prompts=..., images=...)``.
    """
    kind, tensors, info, layers = _encode(obj)
    if model_id is None:
        model_id = (info.get("meta") or {}).get("model_id")
    # Detached CPU contiguous copies: safetensors refuses views and shared storage (a steerer's maps may share
    # the direction tensor with the ErasureDirection they came from).
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    blob = _st_save(tensors)
    sidecar = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "model_id": model_id,
        "layers": layers,
        "hyperparameters": _jsonable(hyperparameters or {}, "hyperparameters"),
        "data_hash": data_hash,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tensors_file": None,
        "tensors_sha256": hashlib.sha256(blob).hexdigest(),
        **{k: _jsonable(v, k) for k, v in info.items()},
    }
    st_path, js_path = artifact_paths(path)
    sidecar["tensors_file"] = st_path.name
    text = json.dumps(sidecar, indent=2, sort_keys=True, allow_nan=False)
    atomic_write(st_path, blob)
    atomic_write(js_path, text.encode())
    return st_path


def read_sidecar(path: str | os.PathLike) -> dict:
    """The JSON sidecar of an artifact (cheap: no tensors read)."""
    _, js_path = artifact_paths(path)
    if not js_path.exists():
        raise ArtifactError(f"no artifact sidecar at {js_path}")
    try:
        side = json.loads(js_path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"corrupt sidecar {js_path}: {e}") from e
    if side.get("format") != FORMAT:
        raise ArtifactError(f"{js_path} is not an erasekit artifact sidecar")
    if side.get("version") != VERSION:
        raise ArtifactError(f"{js_path}: artifact version {side.get('version')} not supported (expected {VERSION})")
    return side


def artifact_exists(path: str | os.PathLike, expected_model_id: str | None = None,
                    data_hash: str | None = None) -> bool:
    """True if both files exist, the sidecar parses, and model id / data hash match when given (for caching)."""
    st_path, _ = artifact_paths(path)
    try:
        side = read_sidecar(path)
    except ArtifactError:
        return False
    if not st_path.exists():
        return False
    if expected_model_id is not None and side.get("model_id") != expected_model_id:
        return False
    return data_hash is None or side.get("data_hash") == data_hash


def load_artifact(
    path: str | os.PathLike,
    *,
    expected_model_id: str | None = None,
    expected_kind: str | None = None,
    device: str | torch.device = "cpu",
):
    """Load an artifact saved by :func:`save_artifact`, as its original type.

    Args:
        path: ``base`` (or either file).
        expected_model_id: refuse (ArtifactError) unless the sidecar records exactly this model id.
        expected_kind: refuse unless the artifact is of this kind ("direction", "steerer", ...).
        device: where the tensors go.

    Raises:
        ArtifactError: missing files, tensors not matching the sidecar's sha256, wrong kind or model.
    """
    side = read_sidecar(path)
    st_path, js_path = artifact_paths(path)
    if expected_kind is not None and side["kind"] != expected_kind:
        raise ArtifactError(f"{js_path} holds a {side['kind']!r} artifact, expected {expected_kind!r}")
    if expected_model_id is not None and side.get("model_id") != expected_model_id:
        raise ArtifactError(f"{js_path} was made for model {side.get('model_id')!r}, not {expected_model_id!r}; "
                            f"recompute it for this model (or pass the matching expected_model_id)")
    if not st_path.exists():
        raise ArtifactError(f"{st_path} is missing (sidecar {js_path} exists)")
    blob = st_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != side["tensors_sha256"]:
        raise ArtifactError(f"{st_path} does not match its sidecar's sha256 (modified or from another save); "
                            f"recompute the artifact")
    tensors = {k: v.to(device) for k, v in _st_load(blob).items()}
    return _decode(side["kind"], tensors, side)


# --- hashing for caches ---------------------------------------------------------------------------------------------

def _feed(h, obj, where: str) -> None:
    def put(tag: bytes, data: bytes) -> None:
        # tag + length prefix: no two different inputs give the same byte stream
        h.update(tag + struct.pack("<Q", len(data)) + data)

    if obj is None:
        put(b"N", b"")
    elif isinstance(obj, bool):
        put(b"B", b"1" if obj else b"0")
    elif isinstance(obj, int):
        put(b"I", str(obj).encode())
    elif isinstance(obj, float):
        put(b"F", obj.hex().encode())
    elif isinstance(obj, str):
        put(b"S", obj.encode())
    elif isinstance(obj, bytes):
        put(b"Y", obj)
    elif isinstance(obj, os.PathLike):
        put(b"P", os.fspath(obj).encode())
    elif isinstance(obj, torch.dtype):
        put(b"D", str(obj).encode())
    elif isinstance(obj, Tensor):
        t = obj.detach().to("cpu").contiguous()
        put(b"T", f"{t.dtype}|{tuple(t.shape)}".encode())
        put(b"t", t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif hasattr(obj, "__array__") and hasattr(obj, "dtype") and hasattr(obj, "tobytes"):  # numpy
        put(b"A", f"{obj.dtype}|{tuple(obj.shape)}".encode())
        put(b"a", obj.tobytes(order="C"))
    elif hasattr(obj, "mode") and hasattr(obj, "size") and hasattr(obj, "tobytes"):  # PIL image
        put(b"M", f"{obj.mode}|{tuple(obj.size)}".encode())
        put(b"m", obj.tobytes())
    elif isinstance(obj, (list, tuple)):
        put(b"L", str(len(obj)).encode())
        for i, v in enumerate(obj):
            _feed(h, v, f"{where}[{i}]")
    elif isinstance(obj, dict):
        put(b"O", str(len(obj)).encode())
        for k in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            _feed(h, k, where)
            _feed(h, obj[k], f"{where}.{k}")
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        put(b"C", type(obj).__qualname__.encode())
        _feed(h, {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, where)
    else:
        raise TypeError(f"cache_key: cannot hash {where} of type {type(obj).__name__}")


def cache_key(**inputs) -> str:
    """sha256 hex digest of the named inputs, for cached pipeline steps and artifacts' ``data_hash``.

    Hashes values, not identities: tensors by dtype, shape and bytes; numpy arrays and PIL images likewise;
    dicts by sorted key; dataclasses (e.g. ErasureDirection) by their fields; floats exactly (``float.hex``).
    Unsupported types raise TypeError rather than fall back to ``repr``.

    Example:
        >>> cache_key(model="llava", layers=[1, 2], eps=16 / 255) == cache_key(eps=16 / 255, layers=[1, 2], model="llava")
        True
    """
    h = hashlib.sha256()
    _feed(h, inputs, "inputs")
    return h.hexdigest()
