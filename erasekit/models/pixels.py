"""Raw-pixel preprocessing shared by the adapters: PIL-exact differentiable resizing, and input checks.

The adapters' ``pixel_inputs`` turn a float batch (B,3,H,W) in [0,1] into the model's pixel kwargs in torch, so
gradients reach the pixels (PGD). :func:`resize` reproduces PIL's uint8 resampling (the image processors' PIL
backend); :func:`check_pixels` / :func:`check_pil` reject inputs the adapters would silently misread.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

__all__ = ["size_get", "resample_mode", "resize", "check_pixels", "check_pil", "pil_to_tensor"]


def size_get(size: Any, key: str) -> Any:
    """Read a key from an image processor size (dict or SizeDict); None when absent."""
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


_RESAMPLE_TO_TORCH = {2: "bilinear", 3: "bicubic"}  # PIL.Image.Resampling values


def resample_mode(image_processor: Any) -> str:
    """The torch interpolation mode ("bilinear" / "bicubic") of the image processor's PIL ``resample``."""
    resample = getattr(image_processor, "resample", 3)
    resample = int(getattr(resample, "value", resample))
    if resample not in _RESAMPLE_TO_TORCH:
        raise ValueError(
            f"image processor resample={resample} has no differentiable torch equivalent here; "
            "only bilinear (2) and bicubic (3) are supported"
        )
    return _RESAMPLE_TO_TORCH[resample]


@functools.lru_cache(maxsize=64)
def _pil_weights(in_size: int, out_size: int, mode: str) -> torch.Tensor:
    """(out_size, in_size) float64 resampling matrix computed exactly like PIL's Resample.c (precompute_coeffs).

    PIL's antialiased kernels widen the filter by the downscale factor; bicubic uses a = -0.5.
    """

    def bicubic(x: float) -> float:
        a, x = -0.5, abs(x)
        if x < 1.0:
            return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        if x < 2.0:
            return (((x - 5.0) * x + 8.0) * x - 4.0) * a
        return 0.0

    def bilinear(x: float) -> float:
        return max(0.0, 1.0 - abs(x))

    kernel, support = (bicubic, 2.0) if mode == "bicubic" else (bilinear, 1.0)
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    for out in range(out_size):
        center = (out + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = torch.tensor([kernel((i - center + 0.5) / filterscale) for i in range(lo, hi)], dtype=torch.float64)
        weights[out, lo:hi] = taps / taps.sum()
    return weights


def _round_uint8(x: torch.Tensor) -> torch.Tensor:
    """PIL keeps uint8 between its two passes: round in the forward pass, identity gradient (straight-through)."""
    return x + (torch.round(x * 255.0) / 255.0 - x).detach()


def resize(pixels: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """Differentiable resize (B,C,H,W) -> (B,C,height,width) that reproduces PIL's uint8 resize.

    PIL resamples in two 1-D passes and stores uint8 (clipped, rounded) in between; so do we, with the rounding
    as a straight-through estimator (gradients flow as if there were no rounding). A plain
    F.interpolate(antialias=True) skips the intermediate clipping and differs by up to ~25/255 on
    high-frequency images. Pass order: Pillow 13 does the vertical pass first when it shrinks the height while
    the width does not shrink (found empirically, exact on all such cases tried), else horizontal first (the
    Resample.c default); in the remaining case of shrinking both, Pillow sometimes goes vertical first and we
    then differ by a few uint8 steps at isolated pixels. Otherwise matches PIL to 1-2 uint8 steps at isolated
    pixels (PIL's fixed-point coefficients).
    """
    in_h, in_w = pixels.shape[-2:]
    x = pixels

    def horizontal(x: torch.Tensor) -> torch.Tensor:
        if in_w == width:
            return x
        w = _pil_weights(in_w, width, mode).to(device=x.device, dtype=x.dtype)
        return _round_uint8((x @ w.T).clamp(0.0, 1.0))

    def vertical(x: torch.Tensor) -> torch.Tensor:
        if in_h == height:
            return x
        h = _pil_weights(in_h, height, mode).to(device=x.device, dtype=x.dtype)
        return _round_uint8((h @ x).clamp(0.0, 1.0))

    if height < in_h and width >= in_w:
        return horizontal(vertical(x))
    return vertical(horizontal(x))


def check_pixels(pixels: Any) -> torch.Tensor:
    """Validate a raw-pixel batch (B,3,H,W) float in [0,1]; returns it unchanged."""
    if not isinstance(pixels, torch.Tensor):
        raise TypeError(f"pixels must be a torch.Tensor (B,3,H,W) in [0,1], got {type(pixels).__name__}")
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(
            f"pixels must have shape (B,3,H,W) (channels first, RGB), got {tuple(pixels.shape)}; "
            "for a single image use pixels[None], for (B,H,W,3) use pixels.permute(0,3,1,2)"
        )
    if not pixels.is_floating_point():
        raise ValueError(f"pixels must be a float tensor in [0,1], got dtype {pixels.dtype}; for uint8 use x / 255")
    lo, hi = float(pixels.detach().min()), float(pixels.detach().max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"pixel values must lie in [0,1], got range [{lo:.4g}, {hi:.4g}]; divide 0..255 images by 255 and "
            "pass raw (un-normalised) pixels: the adapter normalises them itself"
        )
    return pixels


def check_pil(image: Any) -> None:
    """Reject PIL images that are not RGB (the processors would convert them silently, or fail)."""
    if getattr(image, "mode", "RGB") != "RGB":
        raise ValueError(
            f"image mode {image.mode!r} is not supported: convert with image.convert('RGB') first "
            "(for RGBA, paste onto a white background to avoid black transparent areas)"
        )


def pil_to_tensor(image: Any) -> torch.Tensor:
    """PIL RGB image -> float tensor (3,H,W) in [0,1]."""
    import numpy as np

    check_pil(image)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
