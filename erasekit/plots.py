"""Plot helpers for the notebooks.

Every helper takes ``ax=None`` (a new figure is made when None), draws on that one axes, returns the figure, and
never saves files or changes matplotlib's global style.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["image_grid", "per_layer", "loss_curves", "bars", "spectra", "gate_strip", "identity_scatter"]


def _ax(ax, figsize=(6, 3.5)):
    if ax is None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax.figure, ax


def _to_array(im: Any) -> np.ndarray:
    if hasattr(im, "detach"):  # (3, H, W) tensor in [0, 1]
        return im.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def image_grid(images: Sequence[Any], titles: Sequence[str] | None = None, ncols: int = 8, pad: int = 2,
               ax=None, scale: float = 1.2):
    """Images (PIL or (3,H,W) tensors in [0,1], same size) as one mosaic with a caption under each."""
    arrs = [_to_array(im) for im in images]
    if not arrs:
        raise ValueError("no images to show")
    h, w = arrs[0].shape[:2]
    ncols = min(ncols, len(arrs))
    nrows = -(-len(arrs) // ncols)
    mosaic = np.ones((nrows * (h + pad) - pad, ncols * (w + pad) - pad, 3), dtype=np.float32)
    for i, a in enumerate(arrs):
        r, c = divmod(i, ncols)
        mosaic[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = a
    fig, ax = _ax(ax, figsize=(scale * ncols, scale * nrows + 0.3 * nrows))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    for i, t in enumerate(titles or []):
        r, c = divmod(i, ncols)
        ax.text(c * (w + pad) + w / 2, r * (h + pad) + h + pad / 2, t, ha="center", va="top", fontsize=7)
    return fig


def per_layer(series: Mapping[str, Mapping[int, float]], ylabel: str = "", title: str | None = None, ax=None,
              logy: bool = False):
    """One line per series of ``{layer: value}`` (direction norms, cosines, gates per layer, ...)."""
    fig, ax = _ax(ax)
    for label, values in series.items():
        ls = sorted(values)
        ax.plot(ls, [values[l] for l in ls], marker="o", label=label)
    ax.set_xlabel("layer (input of decoder layer l)")
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def loss_curves(history: Any, labels: Sequence[str] | None = None, ax=None, title: str | None = None):
    """PGD loss per step, one line per image; ``history`` (B, steps)."""
    fig, ax = _ax(ax)
    h = np.asarray(history.detach().cpu() if hasattr(history, "detach") else history, dtype=float)
    for i, row in enumerate(np.atleast_2d(h)):
        ax.plot(np.arange(len(row)), row, lw=1, label=None if labels is None else labels[i])
    ax.set_xlabel("PGD step")
    ax.set_ylabel("mean CE of harmful targets")
    if title:
        ax.set_title(title)
    if labels is not None:
        ax.legend(fontsize=7, ncols=2)
    ax.grid(alpha=0.3)
    return fig


def bars(table: Any, ylabel: str = "", title: str | None = None, ax=None, ylim: tuple | None = (0, 100),
         fmt: str = "{:.0f}"):
    """Grouped bar chart of a DataFrame: one group per row, one bar per column; values written on the bars."""
    fig, ax = _ax(ax)
    rows = [" / ".join(map(str, r)) if isinstance(r, tuple) else str(r) for r in table.index]
    cols = list(table.columns)
    width = 0.8 / max(1, len(cols))
    x = np.arange(len(rows))
    for j, c in enumerate(cols):
        vals = np.asarray(table[c], dtype=float)
        b = ax.bar(x + (j - (len(cols) - 1) / 2) * width, vals, width, label=str(c))
        ax.bar_label(b, labels=[fmt.format(v) for v in vals], fontsize=7, padding=1)
    ax.set_xticks(x, rows, fontsize=8)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(ylim[0], ylim[1] * 1.1)  # room for the labels
    if title:
        ax.set_title(title)
    if len(cols) > 1:
        ax.legend(fontsize=8)
    return fig


def spectra(eigenvalues: Mapping[int, Any], kept: Mapping[int, int] | None = None, ax=None,
            title: str | None = None):
    """Eigenvalues of the retain Gram per layer (ascending, log scale), with the kept null-space size marked."""
    fig, ax = _ax(ax)
    for l, ev in sorted(eigenvalues.items()):
        ev = np.asarray(ev.detach().cpu() if hasattr(ev, "detach") else ev, dtype=float)
        line, = ax.semilogy(np.arange(len(ev)), np.maximum(ev, 1e-30), lw=1.2, label=f"layer {l}")
        if kept is not None and l in kept:
            ax.axvline(kept[l] - 0.5, color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel("eigenvalue index (ascending)")
    ax.set_ylabel("eigenvalue of $H_r^T H_r$")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, ncols=2)
    ax.grid(alpha=0.3)
    return fig


def gate_strip(values: Mapping[str, Any], ax=None, ylabel: str = "gate s(h) = g·h", title: str | None = None,
               seed: int = 0):
    """Per-query values per group as jittered points with the group median as a bar."""
    fig, ax = _ax(ax)
    rng = np.random.default_rng(seed)
    for i, (name, v) in enumerate(values.items()):
        v = np.asarray(v.detach().cpu() if hasattr(v, "detach") else v, dtype=float)
        ax.scatter(i + rng.uniform(-0.25, 0.25, len(v)), v, s=6, alpha=0.5)
        ax.hlines(np.median(v), i - 0.35, i + 0.35, color="k", lw=2)
    ax.set_xticks(range(len(values)), list(values))
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return fig


def identity_scatter(x: Any, y: Any, xlabel: str, ylabel: str, ax=None, title: str | None = None):
    """y against x with the diagonal: two computations of the same quantity."""
    fig, ax = _ax(ax, figsize=(4, 4))
    x = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=float).ravel()
    y = np.asarray(y.detach().cpu() if hasattr(y, "detach") else y, dtype=float).ravel()
    ax.scatter(x, y, s=4, alpha=0.5)
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return fig
