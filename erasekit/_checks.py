"""Input checks shared by the linear-algebra modules (directions, null space, steering fit)."""

from __future__ import annotations

from torch import Tensor


def check_rows(name: str, H: Tensor, d: int | None = None, need: str = "at least one row", rows: str = "N"
               ) -> tuple[int, int]:
    """Check that ``H`` is a non-empty (N, d) matrix (with the given d); returns (N, d). Errors say what to pass."""
    if H.ndim != 2:
        raise ValueError(f"{name} must be ({rows}, d), got shape {tuple(H.shape)}")
    if d is not None and H.shape[1] != d:
        raise ValueError(f"shape mismatch: {name} is {tuple(H.shape)}, expected ({rows}, {d}) to match the direction")
    if H.shape[0] == 0:
        raise ValueError(f"{name} is empty ({rows} = 0): need {need}")
    return int(H.shape[0]), int(H.shape[1])


def check_width(h: Tensor, d: int, who: str = "") -> None:
    """Check that activations ``h`` are (..., d): the width a fitted map, gate or projector was fitted at."""
    if h.shape[-1] != d:
        raise ValueError(f"{who + ': ' if who else ''}expected activations (..., {d}), got {tuple(h.shape)}")
