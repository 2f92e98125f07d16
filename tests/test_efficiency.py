"""erasebook.efficiency (chapter 10's measurements) and its sentences in erasebook.report, on tiny inputs."""

from __future__ import annotations

import json

import pytest
import torch

import erasekit as ek
from erasebook import efficiency, report
from erasekit.directions import ErasureDirection


def _acts(d=16, layers=(1, 2), seed=0):
    g = torch.Generator().manual_seed(seed)
    forget = {l: torch.randn(12, d, generator=g, dtype=torch.float64) + 2 for l in layers}
    retain = {l: torch.randn(30, d, generator=g, dtype=torch.float64) for l in layers}
    direction = ErasureDirection({l: torch.randn(d, generator=g, dtype=torch.float64) for l in layers})
    return forget, retain, direction


def test_gate_fit_seconds_and_costs_sentence():
    forget, retain, direction = _acts()
    default = ek.fit_steerer(forget, retain, direction, 1e-3, layers=[1, 2], gate="contrastive",
                             gamma_scale="relative")
    default.meta.update(gamma=1e-3, alpha=1.0)
    paper = ek.fit_steerer(forget, retain, direction, 0.1, 0.3, layers=[1, 2])
    fit = efficiency.gate_fit_seconds(forget, retain, direction, default, paper, 0.1, 0.3)
    assert set(fit) == {"erasekit gate (rank-one fit)", "paper gate (rank-one fit)",
                        "paper gate (authors' dense d×d route)"} and all(v > 0 for v in fit.values())
    import pandas as pd
    cost = pd.DataFrame({"seconds": {**fit, "GA": 10.0, "NPO": 20.0}})
    text = report.describe_costs(cost, 2, 2)
    assert "baselines train for 10–20 s" in text and "dense route" in text


def test_generation_throughput_ratios(tiny_llava):
    op = {1: ek.steering.constant_operator(torch.zeros(tiny_llava.hidden_size))}
    settings = {"vanilla": None, "zero push": lambda: ek.steer(tiny_llava, op)}
    thr = efficiency.generation_throughput(tiny_llava, ["hi", "hello there"], settings, reps=2, max_new_tokens=3)
    assert list(thr.index) == ["vanilla", "zero push"] and thr.loc["vanilla", "vs vanilla"] == 1.0
    assert (thr["tokens/s (median)"] > 0).all()
    assert "zero push" in report.describe_throughput(thr, 2, 2, 3)
    with pytest.raises(ValueError, match="vanilla"):
        efficiency.generation_throughput(tiny_llava, ["hi"], {"a": None}, reps=1)


def test_state_bytes_and_benchmark_ratios(tmp_path):
    forget, retain, direction = _acts(d=8)
    st = ek.fit_steerer(forget, retain, direction, 0.1, 0.5, layers=[1, 2])
    mem = efficiency.steering_state_bytes(st, {"big": (4096, 31)})
    assert mem.loc["big", "dense / rank one"] == pytest.approx(4096 / 2)
    assert mem.loc["this model", "rank one (bytes)"] == st.state_bytes()
    (tmp_path / "fit.json").write_text(json.dumps({"machine": {"gpu": "X", "date": "2026"}, "results": {
        "target": {"ratio_dense_over_default": {"ratio_of_medians": 12.3456}, "other": 1}}}))
    table = efficiency.benchmark_ratios(tmp_path)
    assert table.to_dict("records") == [{"benchmark": "fit", "ratio": "target / ratio dense over default",
                                         "value": 12.346, "device": "X", "date": "2026"}]
    assert efficiency.benchmark_ratios(tmp_path / "none").empty
