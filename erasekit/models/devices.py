"""The one device / dtype policy of erasekit: CUDA + bfloat16 when a GPU is there, else CPU + float32."""

from __future__ import annotations

import torch

__all__ = ["pick_device_dtype"]


def pick_device_dtype(
    device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> tuple[torch.device, torch.dtype]:
    """Choose the device and dtype: CUDA + bfloat16 when a GPU is there, else CPU + float32.

    Explicit arguments win; ``dtype`` may be a string such as ``"bfloat16"``.

    >>> pick_device_dtype("cpu")
    (device(type='cpu'), torch.float32)
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if dtype is None:
        # bf16 halves memory on GPU; on CPU bf16 matmuls are slow and imprecise, so keep float32 there.
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16' or 'float16'")
        dtype = resolved
    return device, dtype
