"""Cache keys: a sha256 of named inputs by value (tensors, arrays, images, dicts, dataclasses), never by identity.

The pipeline keys every cached step with :func:`cache_key`, and artifacts record it as their ``data_hash``
(:mod:`erasekit.artifacts`). Each value is fed to the hash as a type tag, a length prefix and its bytes, so no two
different inputs give the same byte stream; unsupported types raise instead of falling back to ``repr``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["cache_key", "key_of", "image_digests"]


def _feed(h: Any, obj: Any, where: str) -> None:
    """Feed ``obj`` to the hash object ``h`` (``where`` names it in errors)."""

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


def cache_key(**inputs: Any) -> str:
    """sha256 hex digest of the named inputs, for cached pipeline steps and artifacts' ``data_hash``.

    Hashes values, not identities: tensors by dtype, shape and bytes; numpy arrays and PIL images likewise;
    dicts by sorted key; dataclasses (e.g. ErasureDirection) by their fields; floats exactly (``float.hex``).
    Unsupported types raise TypeError rather than fall back to ``repr``.

    Example:
        >>> a = cache_key(model="llava", layers=[1, 2], eps=16 / 255)
        >>> a == cache_key(eps=16 / 255, layers=[1, 2], model="llava")
        True
    """
    h = hashlib.sha256()
    _feed(h, inputs, "inputs")
    return h.hexdigest()


def key_of(obj: Any) -> str:
    """The cache key an upstream result carries (``meta["cache_key"]`` or a ``key`` string), else a hash of it."""
    meta = getattr(obj, "meta", None)
    if isinstance(meta, dict) and "cache_key" in meta:
        return meta["cache_key"]
    key = getattr(obj, "key", None)
    if isinstance(key, str):
        return key
    return cache_key(obj=obj)


def image_digests(images: Sequence[Any]) -> list[str | None]:
    """Per-image content digests (:func:`cache_key` of the image; None for no image), computed once per distinct
    object (portraits repeat across questions)."""
    seen: dict[int, str] = {}
    out: list[str | None] = []
    for im in images:
        if im is None:
            out.append(None)
            continue
        if id(im) not in seen:
            seen[id(im)] = cache_key(image=im)
        out.append(seen[id(im)])
    return out
