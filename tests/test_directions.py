"""Difference-of-means directions (Eq. 3 / Eq. 7) and their helpers."""

import pytest
import torch

from erasekit.directions import ErasureDirection, cosine_per_layer, diff_in_means, layer_norms, project_out


def _acts(n, d, shift, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + shift


def test_diff_in_means_is_exact_difference_of_means():
    pos = {2: _acts(7, 5, 0.0, 0), 4: _acts(7, 5, 1.0, 1)}
    neg = {2: _acts(3, 5, 0.0, 2), 4: _acts(3, 5, 0.0, 3)}
    d = diff_in_means(pos, neg)
    assert d.layers == [2, 4] and d.d == 5
    for l in (2, 4):
        torch.testing.assert_close(d[l], pos[l].mean(0) - neg[l].mean(0), rtol=0, atol=1e-15)
    assert d.meta["sign"] == "refusal_minus_recall" and d.meta["n_refusal"] == 7 and d.meta["n_recall"] == 3


def test_diff_in_means_recovers_planted_direction():
    d_model, n = 64, 4000
    g = torch.Generator().manual_seed(0)
    planted = torch.randn(d_model, generator=g, dtype=torch.float64)
    planted = 3.0 * planted / planted.norm()
    base_pos = torch.randn(n, d_model, generator=g, dtype=torch.float64)
    base_neg = torch.randn(n, d_model, generator=g, dtype=torch.float64)
    # bf16 inputs: the float64 accumulation must still find the direction
    d = diff_in_means({0: (base_pos + planted).bfloat16()}, {0: base_neg.bfloat16()})
    cos = float(d[0] @ planted / (d[0].norm() * planted.norm()))
    assert cos > 0.98
    assert abs(layer_norms(d)[0] - 3.0) < 0.3


def test_negated_and_cosine():
    d = diff_in_means({1: _acts(5, 6, 1.0, 0)}, {1: _acts(5, 6, 0.0, 1)})
    assert cosine_per_layer(d, d)[1] == pytest.approx(1.0)
    assert cosine_per_layer(d, d.negated())[1] == pytest.approx(-1.0)
    assert d.negated().meta["negated"] is True
    assert d.normalized().norms()[1] == pytest.approx(1.0)


def test_project_out_removes_component_and_keeps_rest():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(8, generator=g, dtype=torch.float64)
    h = torch.randn(3, 4, 8, generator=g, dtype=torch.float64)
    out = project_out(h, r)
    assert out.shape == h.shape
    assert (out @ r).abs().max() < 1e-12
    # what is removed is parallel to r: project_out is idempotent and the residual is a multiple of r
    torch.testing.assert_close(project_out(out, r), out)
    diff = h - out
    r_hat = r / r.norm()
    torch.testing.assert_close(diff, (diff @ r_hat).unsqueeze(-1) * r_hat)


def test_errors():
    with pytest.raises(ValueError, match="empty"):
        diff_in_means({}, {0: torch.zeros(1, 3)})
    with pytest.raises(ValueError, match="N = 0"):
        diff_in_means({0: torch.zeros(0, 3)}, {0: torch.zeros(1, 3)})
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        diff_in_means({0: torch.zeros(2, 3)}, {0: torch.zeros(2, 4)})
    with pytest.raises(KeyError, match="layer 1"):
        diff_in_means({0: torch.zeros(2, 3), 1: torch.zeros(2, 3)}, {0: torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="same size"):
        ErasureDirection({0: torch.zeros(3), 1: torch.zeros(4)})
    with pytest.raises(ValueError, match="zero vector"):
        project_out(torch.ones(2, 3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"h \(2, 3\), r \(4,\)"):
        project_out(torch.ones(2, 3), torch.ones(4))
