"""Plot helpers for the notebooks.

Every helper takes ``ax=None`` (a new figure is made when None), draws on that one axes, returns the figure, and
never saves files or changes matplotlib's global style. New figures are at most :data:`PAGE_WIDTH` inches wide, the
book's content column, so that they are shown at their own size (fonts as set, not shrunk to fit the page).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["hires", "image_grid", "per_layer", "loss_curves", "bars", "spectra", "gate_strip", "identity_scatter",
           "tradeoff", "layer_distributions", "embedding", "PAGE_WIDTH"]

# Width (inches) of the book's content column: ~770 px at the notebook backend's 100 dpi (1400 px window). A wider
# figure is scaled down in the page, and its 7-9 pt labels with it.
PAGE_WIDTH = 7.5


def hires() -> bool:
    """Notebook figures as PNGs at twice their pixel size, shown at their own size (IPython's "retina" format:
    200 dpi at the book's 100 dpi layout). The notebooks call it once; outside IPython it does nothing (False)."""
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:  # pragma: no cover - IPython ships with the notebooks' environment
        return False
    if get_ipython() is None:
        return False
    set_matplotlib_formats("retina")
    return True


def _ax(ax, figsize=(6, 3.5)):
    if ax is None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax.figure, ax


def _np(x: Any) -> np.ndarray:
    """A tensor, array or sequence as a float64 numpy array."""
    return np.asarray(x.detach().float().cpu() if hasattr(x, "detach") else x, dtype=float)


def _to_array(im: Any) -> np.ndarray:
    if hasattr(im, "detach"):  # (3, H, W) tensor in [0, 1]
        return im.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def image_grid(images: Sequence[Any], titles: Sequence[str] | None = None, ncols: int = 8, pad: int = 2,
               ax=None, scale: float | None = None, fontsize: float = 7):
    """Images (PIL or (3,H,W) tensors in [0,1], same size) as one mosaic with a caption under each.

    Each row of images is followed by a white band tall enough for its captions, so a caption never overprints
    the picture below it; ``scale`` is the width of one image in inches (None: 1.2, less where the row would be
    wider than :data:`PAGE_WIDTH`).
    """
    arrs = [_to_array(im) for im in images]
    if not arrs:
        raise ValueError("no images to show")
    h, w = arrs[0].shape[:2]
    ncols = min(ncols, len(arrs))
    nrows = -(-len(arrs) // ncols)
    if scale is None:
        scale = min(1.2, PAGE_WIDTH / ncols)
    # caption band: the font's height plus some air, in image pixels (one image is ``scale`` inches wide)
    cap = int(np.ceil(1.8 * fontsize / 72 * (w + pad) / scale)) if titles else 0
    row = h + cap + pad
    mosaic = np.ones((nrows * row - pad, ncols * (w + pad) - pad, 3), dtype=np.float32)
    for i, a in enumerate(arrs):
        r, c = divmod(i, ncols)
        mosaic[r * row:r * row + h, c * (w + pad):c * (w + pad) + w] = a
    width_in = scale * ncols
    fig, ax = _ax(ax, figsize=(width_in, width_in * mosaic.shape[0] / mosaic.shape[1] + 0.1))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    for i, t in enumerate(titles or []):
        r, c = divmod(i, ncols)
        ax.text(c * (w + pad) + w / 2, r * row + h + cap / 2, t, ha="center", va="center", fontsize=fontsize,
                clip_on=True)
    return fig


def per_layer(series: Mapping[str, Mapping[int, float]], ylabel: str = "", title: str | None = None, ax=None,
              logy: bool = False, xlabel: str = "layer (input of decoder layer l)"):
    """One line per series of ``{x: value}`` (layers: direction norms, cosines, gates per layer, ...); integer x
    values get one tick each."""
    fig, ax = _ax(ax)
    xs = set()
    for label, values in series.items():
        ls = sorted(values)
        xs.update(ls)
        ax.plot(ls, [values[l] for l in ls], marker="o", label=label)
    if xs and all(float(x).is_integer() for x in xs):
        ax.set_xticks(sorted(xs))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if len(series) > 1:  # beside the axes, never over a line
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(alpha=0.3)
    return fig


def loss_curves(history: Any, labels: Sequence[str] | None = None, ax=None, title: str | None = None,
                smooth: int = 10):
    """PGD loss per step, one line per image; ``history`` (B, steps). Each step samples its targets, so the raw
    loss is noisy: it is drawn faint, with its running mean over ``smooth`` steps on top (1: raw only)."""
    fig, ax = _ax(ax)
    h = _np(history)
    for i, row in enumerate(np.atleast_2d(h)):
        steps = np.arange(len(row))
        if smooth > 1 and len(row) >= smooth:
            raw, = ax.plot(steps, row, lw=0.6, alpha=0.3)
            mean = np.convolve(row, np.ones(smooth) / smooth, mode="valid")
            ax.plot(steps[smooth - 1:], mean, lw=1.6, color=raw.get_color(),
                    label=None if labels is None else labels[i])
        else:
            ax.plot(steps, row, lw=1, label=None if labels is None else labels[i])
    ax.set_xlabel("PGD step" + (f" (bold: running mean of {smooth})" if smooth > 1 else ""))
    ax.set_ylabel("mean CE of harmful targets")
    if title:
        ax.set_title(title)
    if labels is not None:
        ax.legend(fontsize=7, ncols=2)
    ax.grid(alpha=0.3)
    return fig


def bars(table: Any, ylabel: str = "", title: str | None = None, ax=None, ylim: tuple | None = (0, 100),
         fmt: str = "{:.0f}"):
    """Grouped bar chart of a DataFrame: one group per row, one bar per column; values written on the bars.

    A missing value (NaN: the measurement does not apply) draws no bar and is labelled "n/a", never drawn as 0.
    """
    rows = [" / ".join(map(str, r)) if isinstance(r, tuple) else str(r) for r in table.index]
    cols = list(table.columns)
    # room for every bar: wider with more bars, up to the page's width
    fig, ax = _ax(ax, figsize=(min(PAGE_WIDTH, max(6.0, 1.5 + 0.18 * len(rows) * len(cols))), 3.8))
    width = 0.8 / max(1, len(cols))
    x = np.arange(len(rows))
    for j, c in enumerate(cols):
        vals = np.asarray(table[c], dtype=float)
        b = ax.bar(x + (j - (len(cols) - 1) / 2) * width, np.nan_to_num(vals), width, label=str(c))
        ax.bar_label(b, labels=["n/a" if np.isnan(v) else fmt.format(v) for v in vals], fontsize=7, padding=1,
                     rotation=90 if len(cols) * len(rows) > 24 else 0)
    # long group labels would run into each other: slant them (room per group ~ 60 / groups characters)
    slant = max(map(len, rows), default=0) > 60 / max(1, len(rows))
    ax.set_xticks(x, rows, fontsize=8, rotation=30 if slant else 0, ha="right" if slant else "center",
                  rotation_mode="anchor")
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(ylim[0], ylim[1] * 1.1)  # room for the labels
    # the legend in rows above the axes (never over a bar, and the bars keep the page's width), the title above it
    ncol = min(len(cols), 3)
    if len(cols) > 1:
        ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=ncol, frameon=False)
    if title:
        ax.set_title(title, pad=6 + (18 * -(-len(cols) // ncol) if len(cols) > 1 else 0))
    return fig


def spectra(eigenvalues: Mapping[int, Any], kept: Mapping[int, int] | None = None, ax=None,
            title: str | None = None):
    """Eigenvalues of the retain Gram per layer (ascending, log scale), with the kept null-space size marked."""
    fig, ax = _ax(ax)
    for l, ev in sorted(eigenvalues.items()):
        ev = _np(ev)
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
    for i, v in enumerate(values.values()):
        v = _np(v)
        ax.scatter(i + rng.uniform(-0.25, 0.25, len(v)), v, s=6, alpha=0.5)
        ax.hlines(np.median(v), i - 0.35, i + 0.35, color="k", lw=2)
    ax.set_xticks(range(len(values)), list(values))
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return fig


def gate_strips(panels: Mapping[str, Mapping[str, Any]], ylabel: str = "gate value", title: str | None = None,
                sharey: bool = False):
    """One :func:`gate_strip` panel per entry of ``{panel: {group: values}}``, side by side."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(min(4.2 * len(panels), PAGE_WIDTH), 3.4), layout="constrained",
                             sharey=sharey, squeeze=False)
    for ax, (name, values) in zip(axes[0], panels.items()):
        gate_strip(values, ax=ax, ylabel=ylabel if ax is axes[0][0] else "", title=name)
    if title:
        fig.suptitle(title)
    return fig


def identity_scatter(x: Any, y: Any, xlabel: str, ylabel: str, ax=None, title: str | None = None):
    """y against x with the diagonal: two computations of the same quantity."""
    fig, ax = _ax(ax, figsize=(4, 4))
    x = _np(x).ravel()
    y = _np(y).ravel()
    ax.scatter(x, y, s=4, alpha=0.5)
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return fig


def tradeoff(points: Any, x: str = "forget", y: str = "retain", label: str = "method", style: str | None = None,
             ax=None, xlabel: str = "forget-set score (lower = more forgotten)",
             ylabel: str = "retain-set score (higher = more utility kept)", title: str | None = None,
             diagonal: bool = False):
    """Paper Fig. 3: one marker per row of ``points`` (a DataFrame), colour by ``label``, marker by ``style``;
    ``diagonal`` draws y = x (forget and retain lost in equal measure)."""
    fig, ax = _ax(ax, figsize=(PAGE_WIDTH, 4.5))
    if diagonal:
        lo = float(min(points[x].min(), points[y].min(), 0.0))
        hi = float(max(points[x].max(), points[y].max(), 1.0))
        ax.plot([lo, hi], [lo, hi], ls=":", color="grey", lw=1, label="y = x")
    markers = "osD^vP*X"
    styles = list(dict.fromkeys(points[style])) if style else [None]
    for i, name in enumerate(dict.fromkeys(points[label])):
        sub = points[points[label] == name]
        color = f"C{i % 10}"
        for j, st in enumerate(styles):
            part = sub if st is None else sub[sub[style] == st]
            ax.scatter(part[x], part[y], color=color, marker=markers[j % len(markers)], s=40,
                       label=name if j == 0 else None, edgecolor="k", linewidth=0.4)
    if style:
        for j, st in enumerate(styles):
            ax.scatter([], [], color="grey", marker=markers[j % len(markers)], label=f"{style} {st}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    # beside the axes: the good corner (low forget, high retain) stays visible
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(alpha=0.3)
    return fig


def layer_distributions(values: Mapping[str, Mapping[int, Any]], ncols: int = 4, bins: int = 30,
                        scores: Mapping[int, float] | None = None, xlabel: str = "", title: str | None = None):
    """Paper Fig. 8: one small histogram panel per layer, one distribution per group (``{group: {layer: v}}``);
    ``scores`` adds a per-layer number (e.g. AUC) to each panel's title."""
    import matplotlib.pyplot as plt

    layers = sorted(next(iter(values.values())))
    nrows = -(-len(layers) // ncols)
    ncols = -(-len(layers) // nrows)  # balanced rows: 5 layers in 2 rows of 3, not 4 + 1 and 3 blank panels
    fig, axes = plt.subplots(nrows, ncols, figsize=(min(2.6 * ncols, PAGE_WIDTH), 2.2 * nrows),
                             layout="constrained", squeeze=False)
    for i, (ax, l) in enumerate(zip(axes.ravel(), layers)):
        arrs = {g: _np(v[l]).ravel() for g, v in values.items()}
        lo = min(a.min() for a in arrs.values())
        hi = max(a.max() for a in arrs.values())
        edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
        for j, (g, a) in enumerate(arrs.items()):  # filled and outlined: overlapping groups stay distinguishable
            ax.hist(a, bins=edges, density=True, color=f"C{j}", alpha=0.3, label=g)
            ax.hist(a, bins=edges, density=True, color=f"C{j}", histtype="step", lw=1.2)
        ax.set_title(f"layer {l}" + (f" · AUC {scores[l]:.2f}" if scores is not None and l in scores else ""),
                     fontsize=9)
        ax.tick_params(labelsize=7)
        if i % ncols == 0:
            ax.set_ylabel("density", fontsize=8)
    for ax in axes.ravel()[len(layers):]:
        ax.set_axis_off()
    axes.ravel()[0].legend(fontsize=7)
    if xlabel:  # once for the figure: one per panel runs into its neighbours'
        fig.supxlabel(xlabel, fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def embedding(points: Mapping[str, Any], ax=None, title: str | None = None, xlabel: str = "dim 1",
              ylabel: str = "dim 2"):
    """2-D scatter of embedded points per group (``{group: (N, 2)}``), e.g. UMAP of activations (paper Fig. 4)."""
    fig, ax = _ax(ax, figsize=(4.5, 4))
    for g, xy in points.items():
        xy = _np(xy)
        ax.scatter(xy[:, 0], xy[:, 1], s=10, alpha=0.7, label=g)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7)
    return fig


def separability_per_layer(sep: Any, value: str = "AUC", title: str | None = None, ax=None):
    """One line per (gate, mode) of ``sep[value]`` against the layer (index (gate, mode, layer)); 0.5 = chance."""
    fig, ax = _ax(ax, figsize=(6, 3.5))
    for i, ((gate, mode), s) in enumerate(sep[value].groupby(level=[0, 1], sort=False)):
        s = s.droplevel([0, 1])
        ax.plot(s.index, s.values, marker="o", ls="-" if mode == "QA" else "--", color=f"C{i // 2}",
                label=f"{gate} · {mode}")
    layers = sorted(set(sep.index.get_level_values(-1)))
    ax.set_xticks(layers)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_ylim(0.3, 1.02)
    ax.set_xlabel("layer")
    ax.set_ylabel(value)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def before_after(points: Mapping[str, Mapping[str, Any]], xlabel: str = "dim 1", ylabel: str = "dim 2"):
    """Side-by-side :func:`embedding` panels with shared axes, e.g. ``{"unsteered": {group: (N, 2)}, "steered":
    {...}}`` (paper Fig. 4)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(points), figsize=(min(4.5 * len(points), PAGE_WIDTH), 3.8), layout="constrained",
                             sharex=True, sharey=True, squeeze=False)
    for i, (ax, (name, pts)) in enumerate(zip(axes[0], points.items())):
        embedding(pts, ax=ax, title=name, xlabel=xlabel, ylabel=ylabel if i == 0 else "")
    return fig
