"""Null-space projector of the retain Gram (Sec. 3.2): exact and ratio modes."""

import pytest
import torch

from erasekit.nullspace import null_space_projector


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_exact_mode_annihilates_retain_and_is_orthonormal():
    H_r = _randn(6, 20).float()  # float32 input: computed in float64 anyway
    P = null_space_projector(H_r, "exact")
    assert P.mode == "exact" and P.k == 14 and P.meta["rank"] == 6
    assert P.basis.dtype == torch.float64 and P.basis.shape == (20, 14)
    torch.testing.assert_close(P.basis.T @ P.basis, torch.eye(14, dtype=torch.float64), rtol=0, atol=1e-12)
    assert P.apply(H_r.double()).abs().max() < 1e-12
    # P is the orthogonal projector onto the orthogonal complement of the row space of H_r
    Q, _ = torch.linalg.qr(H_r.double().T)
    torch.testing.assert_close(P.matrix(), torch.eye(20, dtype=torch.float64) - Q @ Q.T, rtol=0, atol=1e-12)
    # eigenvalues: ascending, zeros first, the rest equal the Gram's
    ev = P.eigenvalues
    assert torch.all(ev[1:] >= ev[:-1]) and ev[:14].abs().max() < 1e-10
    gram_ev = torch.linalg.eigvalsh(H_r.double().T @ H_r.double())
    torch.testing.assert_close(ev[14:], gram_ev[14:], rtol=1e-10, atol=1e-10)


def test_exact_mode_with_linear_dependency_when_n_ge_d():
    # N_r > d but rank 5 < d: exact null space is still found
    H_r = _randn(30, 5) @ _randn(5, 12, seed=1)
    P = null_space_projector(H_r, "exact")
    assert P.k == 7
    assert P.apply(H_r).abs().max() / H_r.abs().max() < 1e-12


def test_ratio_mode_keeps_smallest_eigenvalues():
    H_r = _randn(200, 20) * torch.linspace(0.1, 5.0, 20, dtype=torch.float64)
    P = null_space_projector(H_r, 0.3)
    assert P.mode == "ratio" and P.k == 6
    ev, vecs = torch.linalg.eigh(H_r.T @ H_r)  # ascending
    ref = vecs[:, :6] @ vecs[:, :6].T
    torch.testing.assert_close(P.matrix(), ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(P.eigenvalues, ev, rtol=1e-10, atol=1e-8)


def test_apply_keeps_dtype_and_batch_shape():
    P = null_space_projector(_randn(4, 10), "exact")
    h = _randn(2, 3, 10, seed=3).float()
    out = P.apply(h)
    assert out.shape == h.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), h.double() @ P.matrix(), rtol=1e-5, atol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="full rank d=8.*ratio mode"):
        null_space_projector(_randn(20, 8), "exact")
    for bad in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(ValueError, match=r"in \(0, 1\)"):
            null_space_projector(_randn(3, 8), bad)
    with pytest.raises(ValueError, match="'exact' or a float"):
        null_space_projector(_randn(3, 8), "approx")
    with pytest.raises(ValueError, match="empty"):
        null_space_projector(torch.zeros(0, 8), "exact")
    with pytest.raises(ValueError, match=r"\(N_r, d\)"):
        null_space_projector(torch.zeros(8), "exact")
    with pytest.raises(ValueError, match="= 0 dimensions"):
        null_space_projector(_randn(3, 8), 0.1)
