"""Typed artifacts on disk: safetensors for the tensors, a JSON sidecar for everything else. No pickle.

An artifact at ``base`` is two files, ``base.safetensors`` and ``base.json``. The sidecar records the kind,
model id, layers, hyperparameters, a data hash of the inputs (see :func:`erasekit.cache_keys.cache_key`), free-form
meta and the sha256 of the tensors file. Both files are written atomically (:func:`erasekit.files.atomic_write`): a
crash leaves the old artifact or the new one, never half a file. The tensors file is written first and the sidecar
last, and loading checks the recorded sha256, so a tensors file without its matching sidecar is detected instead
of loaded.

Kinds. This module knows no domain type: each module registers the types it defines with
:func:`register_artifact` (a kind string, the class, an encoder to tensors + sidecar fields and a decoder back).
The kind strings are part of the on-disk format and never change. Registered by the package (importing
``erasekit`` imports every registering module, so any artifact loads however it is reached):

    "direction"           :class:`erasekit.directions.ErasureDirection`
    "steerer"             :class:`erasekit.steering.InputAwareSteerer` (rank-one and MLP maps)
    "adversarial_images"  :class:`erasekit.attack.AdversarialImages`
    "pgd_result"          :class:`erasekit.attack.PGDResult`
    "tensors"             ``dict[str, Tensor]`` (here)

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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save
from torch import Tensor

from .files import atomic_write

__all__ = ["save_artifact", "load_artifact", "read_sidecar", "artifact_exists", "artifact_paths", "ArtifactError",
           "register_artifact", "registered_kinds", "Encoded", "jsonable"]

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

def jsonable(obj: Any, where: str = "meta") -> Any:
    """``obj`` as strict JSON values for a sidecar: numbers, strings, lists and str-keyed dicts.

    Non-finite floats become strings, paths strings, dtypes their name, one-element tensors and numpy scalars
    their number. Anything else raises TypeError naming ``where`` (e.g. ``hyperparameters.bad``): there is no
    pickle or ``repr`` fallback.
    """
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)  # strict JSON has no nan/inf
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, torch.dtype):
        return str(obj)
    if isinstance(obj, Tensor) and obj.numel() == 1:
        return jsonable(obj.item(), where)
    if hasattr(obj, "item") and hasattr(obj, "dtype") and getattr(obj, "shape", None) == ():  # numpy scalar
        return jsonable(obj.item(), where)
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} must be str or int to go into the JSON sidecar")
            out[str(k)] = jsonable(v, f"{where}.{k}")
        return out
    raise TypeError(f"{where}: {type(obj).__name__} cannot go into the JSON sidecar (no pickle); store tensors "
                    f"as tensors and metadata as numbers/strings")


# --- kinds: object <-> (tensors, sidecar fields) -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Encoded:
    """An object as an artifact stores it.

    Attributes:
        tensors: ``{name: Tensor}`` for the safetensors file.
        info: kind-specific sidecar fields (e.g. ``{"meta": obj.meta}``), JSON-able via :func:`jsonable`; a
            ``meta`` dict's ``model_id`` is the artifact's default model id.
        layers: the layers the object covers, recorded in the sidecar (None when it has none).
    """

    tensors: dict[str, Tensor]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    layers: list[int] | None = None


Encoder = Callable[[Any], Encoded]
Decoder = Callable[[dict[str, Tensor], Mapping[str, Any]], Any]  # (tensors, whole sidecar) -> object


@dataclasses.dataclass(frozen=True)
class _Kind:
    name: str
    cls: type
    encode: Encoder
    decode: Decoder


_KINDS: dict[str, _Kind] = {}


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_artifact(kind: str, cls: type, encode: Encoder, decode: Decoder) -> None:
    """Make instances of ``cls`` savable as artifacts of ``kind``.

    Args:
        kind: the sidecar's ``kind`` string. It is part of the on-disk format: renaming it orphans every saved
            artifact of that kind.
        cls: the type :func:`save_artifact` encodes with ``encode`` (``isinstance``).
        encode: ``obj -> Encoded``.
        decode: ``(tensors, sidecar) -> obj``; the sidecar holds the ``Encoded.info`` fields as saved.

    Registering the same kind for the same class again (e.g. on a module reload) replaces the codec; a kind
    already taken by another class, or a class already registered under another kind, raises ValueError.
    """
    taken = _KINDS.get(kind)
    if taken is not None and _qualname(taken.cls) != _qualname(cls):
        raise ValueError(f"artifact kind {kind!r} is already registered for {_qualname(taken.cls)}")
    other = [k.name for k in _KINDS.values() if k.name != kind and _qualname(k.cls) == _qualname(cls)]
    if other:
        raise ValueError(f"{_qualname(cls)} is already registered as artifact kind {other[0]!r}")
    _KINDS[kind] = _Kind(kind, cls, encode, decode)


def registered_kinds() -> dict[str, type]:
    """``{kind: class}`` of every registered artifact kind, in registration order."""
    return {k.name: k.cls for k in _KINDS.values()}


def _encode(obj: Any) -> tuple[str, Encoded]:
    for k in _KINDS.values():
        if isinstance(obj, k.cls):
            return k.name, k.encode(obj)
    known = ", ".join(f"{k.cls.__name__} ({k.name!r})" for k in _KINDS.values())
    raise TypeError(f"save_artifact: unsupported object {type(obj).__name__}; registered artifact kinds: {known}")


def _decode(kind: str, tensors: dict[str, Tensor], side: Mapping[str, Any]) -> Any:
    k = _KINDS.get(kind)
    if k is None:
        raise ArtifactError(f"unknown artifact kind {kind!r} (registered: {sorted(_KINDS)}); import the module that "
                            f"registers it")
    return k.decode(tensors, side)


def _encode_tensors(obj: dict) -> Encoded:
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise TypeError("save_artifact: unsupported object dict: a 'tensors' artifact is a dict[str, Tensor]")
    return Encoded(dict(obj))


register_artifact("tensors", dict, _encode_tensors, lambda tensors, side: tensors)


# --- public API ---------------------------------------------------------------------------------------------------

def save_artifact(
    path: str | os.PathLike,
    obj: Any,
    *,
    model_id: str | None = None,
    hyperparameters: dict | None = None,
    data_hash: str | None = None,
) -> Path:
    """Save ``obj`` as ``base.safetensors`` + ``base.json``, atomically; returns the tensors path.

    Args:
        path: ``base`` (``.safetensors`` / ``.json`` suffixes are stripped).
        obj: an instance of a registered kind (ErasureDirection, InputAwareSteerer, AdversarialImages, PGDResult,
            dict[str, Tensor], ...; see :func:`registered_kinds`).
        model_id: model the artifact belongs to; default ``obj.meta["model_id"]`` when present.
        hyperparameters: settings that produced it (gamma, eps, layers, ...), JSON-able.
        data_hash: hash of the inputs, e.g. ``cache_key(prompts=..., images=...)``.

    Raises:
        TypeError: ``obj`` is of no registered kind, or its metadata is not JSON-able (:func:`jsonable`).
    """
    kind, enc = _encode(obj)
    if model_id is None:
        model_id = (enc.info.get("meta") or {}).get("model_id")
    # Detached CPU contiguous copies: safetensors refuses views and shared storage (a steerer's maps may share
    # the direction tensor with the ErasureDirection they came from).
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in enc.tensors.items()}
    blob = _st_save(tensors)
    sidecar = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "model_id": model_id,
        "layers": enc.layers,
        "hyperparameters": jsonable(hyperparameters or {}, "hyperparameters"),
        "data_hash": data_hash,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tensors_file": None,
        "tensors_sha256": hashlib.sha256(blob).hexdigest(),
        **{k: jsonable(v, k) for k, v in enc.info.items()},
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
) -> Any:
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
