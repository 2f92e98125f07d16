"""erasebook.plots: each helper draws on the given axes (or a new figure), returns the figure, saves nothing and
leaves matplotlib's global style alone."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from erasebook import plots


def _calls():
    im = Image.new("RGB", (8, 8), (200, 10, 10))
    return [
        lambda ax: plots.image_grid([im, torch.rand(3, 8, 8), im], titles=["a", "b", "c"], ncols=2, ax=ax),
        lambda ax: plots.per_layer({"text": {1: 1.0, 2: 2.0}, "mm": {1: 0.5, 2: 1.5}}, "norm", ax=ax),
        lambda ax: plots.loss_curves(torch.rand(2, 5), labels=["x", "y"], ax=ax),
        lambda ax: plots.bars(pd.DataFrame({"clean": [10.0, 20.0], "adv": [30.0, 40.0]}, index=["h", "j"]), ax=ax),
        lambda ax: plots.spectra({1: torch.rand(6), 2: torch.rand(6)}, kept={1: 2, 2: 2}, ax=ax),
        lambda ax: plots.gate_strip({"Fgt": np.ones(5), "Ret": np.zeros(5)}, ax=ax),
        lambda ax: plots.identity_scatter(np.arange(4.0), np.arange(4.0), "x", "y", ax=ax),
        lambda ax: plots.tradeoff(pd.DataFrame({"method": ["a", "b", "a"], "pct": [5, 5, 10], "forget": [0.1, 0.2, 0.3],
                                                "retain": [0.9, 0.8, 0.7]}), style="pct", ax=ax),
        lambda ax: plots.embedding({"Fgt": np.random.rand(5, 2), "Ret": torch.rand(4, 2)}, ax=ax),
    ]


def test_layer_distributions_one_panel_per_layer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fig = plots.layer_distributions({"Fgt": {1: torch.rand(9), 2: torch.rand(9), 3: torch.rand(9)},
                                     "Ret": {1: torch.rand(7), 2: torch.rand(7), 3: torch.ones(7)}},
                                    ncols=2, scores={1: 0.5, 2: 0.9, 3: 1.0})
    assert [ax.get_title() for ax in fig.axes[:3]] == ["layer 1 · AUC 0.50", "layer 2 · AUC 0.90", "layer 3 · AUC 1.00"]
    assert not fig.axes[3].axison  # the unused fourth panel is blank
    assert list(tmp_path.iterdir()) == []
    plt.close("all")


@pytest.mark.parametrize("i", range(9))
def test_plot_returns_figure_on_given_axes(i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = dict(plt.rcParams)
    fig, ax = plt.subplots()
    assert _calls()[i](ax) is fig
    new = _calls()[i](None)
    assert new is not fig and len(new.axes) == 1
    assert list(tmp_path.iterdir()) == []  # nothing saved
    assert dict(plt.rcParams) == rc  # global style untouched
    plt.close("all")


def test_multi_panel_helpers_return_their_figures():
    sep = pd.DataFrame({"gate": ["g1"] * 4, "mode": ["QA", "QA", "VQA", "VQA"], "layer": [1, 2, 1, 2],
                        "AUC": [0.9, 0.8, 0.5, 0.6]}).set_index(["gate", "mode", "layer"])
    figs = [plots.gate_strips({"paper": {"Fgt": np.ones(3), "Ret": np.zeros(3)}, "ours": {"Fgt": np.ones(3)}}),
            plots.separability_per_layer(sep, title="t"),
            plots.before_after({"unsteered": {"Fgt": np.random.rand(4, 2)}, "steered": {"Fgt": np.random.rand(4, 2)}}),
            plots.tradeoff(pd.DataFrame({"method": ["a"], "forget": [0.2], "retain": [0.9]}), diagonal=True)]
    assert [len(f.axes) for f in figs] == [2, 1, 2, 1]
    assert [int(t) for t in figs[1].axes[0].get_xticks()] == [1, 2]  # integer layer ticks only
    for f in figs:
        plt.close(f)


def test_bars_slant_long_labels_and_keep_the_legend_off_the_bars():
    long = pd.DataFrame({"seconds": [0.1, 40.0, 50.0]},
                        index=["erasekit gate (rank-one fit)", "paper gate (authors' dense route)", "GA"])
    ax = plots.bars(long, ylim=None).axes[0]
    assert ax.get_xticklabels()[0].get_rotation() == 30
    short = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]}, index=["VQA", "QA"])
    ax = plots.bars(short, title="a title").axes[0]
    assert ax.get_xticklabels()[0].get_rotation() == 0
    legend = ax.get_legend()
    # above the axes (off the bars), below the title
    fig = ax.figure
    fig.canvas.draw()
    box, axbox = legend.get_window_extent(), ax.get_window_extent()
    assert legend is not None and box.y0 >= axbox.y1 - 1
    assert ax.title.get_window_extent().y0 >= box.y1 - 1
    plt.close("all")


def test_missing_values_are_not_drawn_as_zero_and_legends_stay_off_the_data():
    """A NaN bar (the measurement does not apply) is labelled n/a, not 0; the trade-off plot's legend sits right
    of the axes; hires() does nothing outside IPython."""
    ax = plots.bars(pd.DataFrame({"a": [10.0, np.nan], "b": [np.nan, 0.0]}, index=["x", "y"])).axes[0]
    labels = [t.get_text() for t in ax.texts]
    assert labels.count("n/a") == 2 and "0" in labels and "nan" not in labels
    pts = pd.DataFrame({"method": ["a", "b"], "forget": [0.1, 0.9], "retain": [0.9, 0.1]})
    ax = plots.tradeoff(pts).axes[0]
    assert ax.get_legend().get_bbox_to_anchor().x0 > ax.get_window_extent().x1 - 1
    assert plots.hires() is False
    plt.close("all")
