"""Input-aware steering: rank-one W P = d g^T against the dense Eq. 12, gates, operators, MLP ablation."""

import pytest
import torch

from erasekit.directions import ErasureDirection
from erasekit.nullspace import null_space_projector
from erasekit.steering import (
    InputAwareSteerer,
    ablation_operator,
    constant_operators,
    fit_input_aware,
    fit_mlp,
    fit_mlp_steerer,
    fit_steerer,
)

D_MODEL = 24


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _dense_reference_WP(H_f, d, gamma, P):
    """Eq. 12 literally, in the paper's d x N layout: W = D H_f^T P (P H_f H_f^T P + gamma P)^+; returns W P."""
    Hf = H_f.T  # (d, N_f)
    D = d.unsqueeze(1).expand(-1, Hf.shape[1])  # N_f identical columns
    M = P @ Hf @ Hf.T @ P + gamma * P
    W = D @ Hf.T @ P @ torch.linalg.pinv(M, hermitian=True, rtol=1e-10)
    return W @ P


def _reference_P(H_r, null_space):
    if null_space == "exact":  # complement of the row space of H_r (N_r < d, full row rank)
        Q, _ = torch.linalg.qr(H_r.T)
        return torch.eye(H_r.shape[1], dtype=torch.float64) - Q @ Q.T
    k = int(null_space * H_r.shape[1])
    _, vecs = torch.linalg.eigh(H_r.T @ H_r)  # ascending eigenvalues
    return vecs[:, :k] @ vecs[:, :k].T


@pytest.mark.parametrize("null_space,n_retain", [("exact", 10), (0.4, 60)])
@pytest.mark.parametrize("gamma", [0.1, 1.0])
def test_rank_one_matches_dense_eq12(null_space, n_retain, gamma):
    H_f = _randn(6, D_MODEL, seed=1) + 0.5
    H_r = _randn(n_retain, D_MODEL, seed=2)
    d = _randn(D_MODEL, seed=3)
    f = fit_input_aware(H_f, H_r, d, gamma=gamma, null_space=null_space)
    WP = _dense_reference_WP(H_f, d, gamma, _reference_P(H_r, null_space))
    rel_matrix = float((f.dense() - WP).abs().max() / WP.abs().max())
    h = _randn(50, D_MODEL, seed=4)
    ref = h @ WP.T
    rel_apply = float((f(h) - ref).abs().max() / ref.abs().max())
    print(f"\n[rank-one vs dense Eq. 12] null_space={null_space} gamma={gamma}: "
          f"max rel diff W P {rel_matrix:.2e}, f(h) {rel_apply:.2e}")
    assert rel_matrix < 1e-10 and rel_apply < 1e-10


def test_exact_mode_vanishes_on_retain_and_gate_is_one_on_forget():
    H_f = _randn(5, D_MODEL, seed=1)
    H_r = _randn(12, D_MODEL, seed=2)  # N_r < d: non-empty exact null space
    d = _randn(D_MODEL, seed=3)
    f = fit_input_aware(H_f, H_r, d, gamma=1e-6, null_space="exact")
    assert f(H_r).abs().max() < 1e-10 * d.abs().max() * H_r.abs().max()
    assert f.gate_value(H_r).abs().max() < 1e-10
    # for small gamma the fitted forget activations get gate 1 - O(gamma), hence f(h_f) ~ d (Eq. 9)
    s = f.gate_value(H_f)
    assert (s - 1).abs().max() < 1e-4
    torch.testing.assert_close(f(H_f), s.unsqueeze(1) * d, rtol=0, atol=1e-12)
    assert f.meta["gate_retain_absmax"] < 1e-10 and f.meta["gate_forget_mean"] == pytest.approx(1, abs=1e-4)
    assert f.gate.shape == (D_MODEL,) and f.direction.shape == (D_MODEL,)
    # the gate lies in the range of P, so f(h) = f(P h)
    P = null_space_projector(H_r, "exact")
    h = _randn(3, D_MODEL, seed=9)
    torch.testing.assert_close(f(h), f(P.apply(h)), rtol=0, atol=1e-12)


def test_gate_shrinks_with_gamma():
    H_f, H_r, d = _randn(5, D_MODEL, seed=1), _randn(12, D_MODEL, seed=2), _randn(D_MODEL, seed=3)
    means = [fit_input_aware(H_f, H_r, d, g).gate_value(H_f).mean() for g in (1e-3, 1.0, 100.0)]
    assert means[0] > means[1] > means[2] > 0


def test_precomputed_projector_and_low_precision_inputs():
    H_f, H_r, d = _randn(5, D_MODEL, seed=1), _randn(12, D_MODEL, seed=2), _randn(D_MODEL, seed=3)
    P = null_space_projector(H_r, "exact")
    f1 = fit_input_aware(H_f, H_r, d, 0.1, "exact")
    f2 = fit_input_aware(H_f, None, d, 0.1, P)
    torch.testing.assert_close(f1.gate, f2.gate, rtol=0, atol=1e-14)
    out = f1(H_f.bfloat16())
    assert out.dtype == torch.bfloat16 and out.shape == (5, D_MODEL)


def _layered(seed):
    layers = [1, 3]
    H_f = {l: _randn(5, D_MODEL, seed=seed + l) for l in layers}
    H_r = {l: _randn(12, D_MODEL, seed=seed + 10 + l) for l in layers}
    direction = ErasureDirection({l: _randn(D_MODEL, seed=seed + 20 + l) for l in layers}, {"model_id": "toy"})
    return H_f, H_r, direction


def test_steerer_operators_apply_scale_and_report_memory():
    H_f, H_r, direction = _layered(0)
    st = fit_steerer(H_f, H_r, direction, gamma=0.1, null_space="exact")
    assert isinstance(st, InputAwareSteerer) and st.layers == [1, 3]
    ops = st.operators(0.25)
    h = _randn(2, 7, D_MODEL, seed=5)
    for l in (1, 3):
        torch.testing.assert_close(ops[l](h), 0.25 * st[l](h), rtol=0, atol=1e-14)
        torch.testing.assert_close(st.gate_values({l: h})[l], h @ st[l].gate)
    only = st.operators({3: 0.5})
    assert list(only) == [3]
    # rank one: gate + direction per layer (float64), vs d x d dense per layer
    assert st.state_bytes() == 2 * 2 * D_MODEL * 8
    assert st.dense_state_bytes(torch.float32) == 2 * D_MODEL * D_MODEL * 4
    assert st.meta["gamma"] == 0.1 and st.meta["direction_meta"] == {"model_id": "toy"}


def test_constant_and_ablation_operators():
    _, _, direction = _layered(0)
    ops = constant_operators(direction, scale=2.0)
    h = _randn(2, 3, D_MODEL, seed=6).float()
    out = ops[1](h)
    assert out.shape == h.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, (2.0 * direction[1]).float().expand_as(h))
    ab = ablation_operator(direction[3])
    steered = h.double() + ab(h.double())
    assert (steered @ direction[3]).abs().max() < 1e-12


def test_mlp_variant_fits_and_is_deterministic():
    H_f, H_r, d = _randn(8, 16, seed=1), _randn(10, 16, seed=2), _randn(16, seed=3)
    kw = dict(hidden=32, steps=300, lr=1e-2, seed=0)
    m1 = fit_mlp(H_f, H_r, d, "exact", **kw)
    m2 = fit_mlp(H_f, H_r, d, "exact", **kw)
    for a, b in zip(m1.tensors().values(), m2.tensors().values()):
        assert torch.equal(a, b)
    assert m1.meta["loss_last"] < 0.05 * m1.meta["loss_first"]
    rel_f = (m1(H_f) - d).norm(dim=1).max() / d.norm()
    rel_r = m1(H_r).norm(dim=1).max() / d.norm()
    assert rel_f < 0.2 and rel_r < 0.2
    # the projector is folded into W1: inputs along the retain row space do not reach the hidden layer
    assert (H_r.float() @ m1.w1.T).abs().max() < 1e-4
    st = fit_mlp_steerer(*_layered(0), null_space="exact", hidden=8, steps=20)
    assert st.layers == [1, 3] and st.state_bytes() == 2 * 4 * (8 * D_MODEL + 8 + D_MODEL * 8 + D_MODEL)


def test_errors():
    H_f, H_r, d = _randn(5, D_MODEL), _randn(12, D_MODEL), _randn(D_MODEL)
    with pytest.raises(ValueError, match=r"H_forget is \(5, 24\), expected \(N_f, 23\)"):
        fit_input_aware(H_f, H_r, d[:-1], 0.1)
    with pytest.raises(ValueError, match=r"H_retain is \(12, 23\), expected \(N_r, 24\)"):
        fit_input_aware(H_f, H_r[:, :-1], d, 0.1)
    with pytest.raises(ValueError, match="H_forget is empty"):
        fit_input_aware(H_f[:0], H_r, d, 0.1)
    with pytest.raises(ValueError, match="H_retain is empty"):
        fit_input_aware(H_f, H_r[:0], d, 0.1)
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="gamma"):
            fit_input_aware(H_f, H_r, d, bad)
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\)"):
        fit_input_aware(H_f, H_r, d, 0.1, null_space=1.2)
    with pytest.raises(ValueError, match="null space is empty.*ratio mode"):
        fit_input_aware(H_f, _randn(40, D_MODEL), d, 0.1, null_space="exact")
    H_fl, H_rl, direction = _layered(0)
    with pytest.raises(KeyError, match="layer 3 not in H_retain"):
        fit_steerer(H_fl, {1: H_rl[1]}, direction, 0.1)
    with pytest.raises(ValueError, match="layer 1: exact null space is empty"):
        fit_steerer(H_fl, {l: _randn(40, D_MODEL) for l in (1, 3)}, direction, 0.1)


# ---------------------------------------------------------------------------------------------------------------
# the gate family: contrastive gate, relative gamma, dense references, guard rails

from erasekit.steering import GatedOperator, dense_gate_reference, fit_contrastive_gate, fit_gate  # noqa: E402


@pytest.mark.parametrize("n_r", [40, 6])  # N_f + N_r >= d: (d, d) normal route; < d: (N, N) kernel route
def test_contrastive_gate_equals_dense_reference(n_r):
    H_f, H_r, d = _randn(5, D_MODEL, seed=1) + 1.0, _randn(n_r, D_MODEL, seed=2), _randn(D_MODEL, seed=3)
    f = fit_contrastive_gate(H_f, H_r, d, gamma=0.05, alpha=2.0, gamma_scale="absolute")
    W = dense_gate_reference(H_f, H_r, d, "contrastive", gamma=0.05, alpha=2.0)
    torch.testing.assert_close(f.dense(), W, rtol=1e-9, atol=1e-12)
    assert f.meta["route"].startswith("normal" if n_r == 40 else "kernel")


def test_contrastive_gate_large_alpha_is_the_exact_nullspace_gate():
    """The hard null space is the alpha -> inf limit of the contrastive gate."""
    H_f, H_r, d = _randn(4, D_MODEL, seed=4), _randn(10, D_MODEL, seed=5), _randn(D_MODEL, seed=6)
    paper = fit_input_aware(H_f, H_r, d, gamma=0.1, null_space="exact")
    soft = fit_contrastive_gate(H_f, H_r, d, gamma=0.1, alpha=1e9, gamma_scale="absolute")
    torch.testing.assert_close(soft.gate, paper.gate, rtol=1e-5, atol=1e-7)
    mild = fit_contrastive_gate(H_f, H_r, d, gamma=0.1, alpha=1.0, gamma_scale="absolute")
    assert not torch.allclose(mild.gate, paper.gate, atol=1e-3)


@pytest.mark.parametrize("gate", ["contrastive", "nullspace"])
def test_relative_gamma_is_scale_free(gate):
    """With relative gamma, scaling every activation by c leaves the gate VALUES unchanged (g scales by 1/c)."""
    H_f, H_r, d = _randn(6, D_MODEL, seed=7), _randn(30, D_MODEL, seed=8), _randn(D_MODEL, seed=9)
    kw = dict(gate=gate, gamma=1e-2, gamma_scale="relative", null_space=0.5)
    a = fit_gate(H_f, H_r, d, **kw)
    b = fit_gate(1000 * H_f, 1000 * H_r, d, **kw)
    torch.testing.assert_close(a.gate_value(H_f), b.gate_value(1000 * H_f), rtol=1e-8, atol=1e-10)
    absolute = fit_gate(1000 * H_f, 1000 * H_r, d, gate=gate, gamma=1e-2, gamma_scale="absolute", null_space=0.5)
    assert not torch.allclose(absolute.gate_value(1000 * H_f), a.gate_value(H_f), atol=1e-4)
    assert b.meta["ridge"] == pytest.approx(1e6 * a.meta["ridge"])


def test_nullspace_gate_relative_gamma_equals_absolute_with_the_stated_ridge():
    H_f, H_r, d = _randn(6, D_MODEL, seed=10), _randn(30, D_MODEL, seed=11), _randn(D_MODEL, seed=12)
    rel = fit_gate(H_f, H_r, d, gate="nullspace", gamma=0.1, gamma_scale="relative", null_space=0.5)
    P = null_space_projector(H_r, 0.5)
    ridge = 0.1 * float((P.apply(H_f) ** 2).sum()) / D_MODEL
    assert rel.meta["ridge"] == pytest.approx(ridge)
    torch.testing.assert_close(rel.dense(), _dense_reference_WP(H_f, d, ridge, P.matrix()), rtol=1e-8, atol=1e-10)


def test_gate_validation_and_guard_rails():
    H_f, H_r, d = _randn(4, D_MODEL, seed=13), _randn(10, D_MODEL, seed=14), _randn(D_MODEL, seed=15)
    with pytest.raises(ValueError, match="gate must be one of"):
        fit_gate(H_f, H_r, d, gate="soft")
    with pytest.raises(ValueError, match="alpha"):
        fit_contrastive_gate(H_f, H_r, d, alpha=0.0)
    with pytest.raises(ValueError, match="gamma_scale"):
        fit_contrastive_gate(H_f, H_r, d, gamma_scale="percent")
    with pytest.warns(UserWarning, match="arbitrary part"):
        fit_input_aware(H_f, H_r, d, 0.1, null_space=0.3)  # N_r = 10 < d = 24


def test_fit_steerer_skips_zero_direction_layers_and_returns_gated_operators():
    H = {l: _randn(6, D_MODEL, seed=20 + l) for l in range(3)}
    R = {l: _randn(40, D_MODEL, seed=30 + l) for l in range(3)}
    vecs = {0: torch.zeros(D_MODEL, dtype=torch.float64), 1: _randn(D_MODEL, seed=1), 2: _randn(D_MODEL, seed=2)}
    direction = ErasureDirection(vecs)
    with pytest.warns(UserWarning, match="exactly zero at layers \\[0\\]"):
        st = fit_steerer(H, R, direction, 1e-3, gate="contrastive", gamma_scale="relative")
    assert st.layers == [1, 2] and st.meta["gate"] == "contrastive"
    op = st.operators(0.5)[1]
    assert isinstance(op, GatedOperator) and op.gate_range[0] < op.gate_range[1]
    torch.testing.assert_close(op(H[1]), 0.5 * st[1](H[1]))


def test_floors_zero_the_retain_bulk_and_keep_forget():
    H = {1: _randn(8, D_MODEL, seed=40) + 2.0}
    R = {1: _randn(60, D_MODEL, seed=41)}
    T = {1: _randn(30, D_MODEL, seed=42)}
    st = fit_steerer(H, R, ErasureDirection({1: _randn(D_MODEL, seed=43)}), 1e-3, gate="contrastive",
                     gamma_scale="relative")
    fl = st.with_floors(T, quantile=0.9)
    tau = fl.floors[1]
    assert tau == pytest.approx(float(torch.quantile(st[1].gate_value(T[1]), 0.9)))
    op = fl.operators(1.0)[1]
    s_tune = op.gate_value(T[1])
    assert float((s_tune == 0).double().mean()) >= 0.85  # the retain bulk reads exactly 0
    assert bool((op.gate_value(H[1]) > 0).all())
    one = torch.tensor(1.0, dtype=torch.float64)
    assert float((one - tau).clamp(min=0) / (1 - tau)) == 1.0
    assert not st.floors and fl.meta["floor_quantile"] == 0.9
    with pytest.raises(ValueError, match="quantile"):
        st.with_floors(T, quantile=1.0)
    st.meta["cache_key"] = "key-of-the-unfloored-steerer"
    assert "cache_key" not in st.with_floors(T).meta  # a floored copy must not reuse the original's cache key
