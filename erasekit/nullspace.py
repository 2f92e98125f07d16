"""Null-space projector P = U2 U2^T of the retain activations (paper Sec. 3.2, between Eq. 10 and Eq. 11).

The paper writes H_r as d x N_r and takes the eigenvectors of the uncentred Gram H_r H_r^T (d x d). erasekit
stores activations row-wise, H_r as (N_r, d), so the same Gram is ``H_r.T @ H_r``. Two ways to choose U2:

* ``"exact"``: eigenvectors whose eigenvalue is <= ``rtol * max eigenvalue``: the true (numerical) null space,
  so that ``P h_r = 0`` for every retain activation. Non-empty only if rank(H_r) < d, e.g. N_r < d.
* ratio (a float in (0, 1)): the ``int(ratio * d)`` eigenvectors with the *smallest* eigenvalues, as in the
  authors' released code (0.3 for LLaVA-1.5, 0.4 for Qwen2.5-VL). P then only approximately annihilates H_r,
  but it exists for any N_r. When the exact null space is larger than the requested size, which of its
  vectors are kept is arbitrary (all have eigenvalue 0): the steering result then depends on LAPACK's choice.

Linear algebra is float64. The decomposition is an SVD of H_r itself (eigenvalues = squared singular
values), which separates zero from non-zero eigenvalues far better than eigh of the explicitly formed Gram; for
N_r > d the SVD is taken of the (d, d) factor R of H_r = Q R (same singular values and vectors, much cheaper).
The d x d projector is never formed unless :meth:`NullSpaceProjector.matrix` is called; ``apply`` uses the
basis, ``P h = U2 (U2^T h)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from ._checks import check_rows, check_width

__all__ = ["NullSpaceProjector", "null_space_projector", "projector_summary"]


@dataclass
class NullSpaceProjector:
    """Orthogonal projector onto (approximately) the null space of the retain Gram.

    Attributes:
        basis: U2, (d, k) float64 with orthonormal columns.
        eigenvalues: (d,) float64, all eigenvalues of the Gram H_r^T H_r in ascending order (the first k belong
            to the basis); for spectrum plots.
        mode: ``"exact"`` or ``"ratio"``.
        meta: ``rtol`` or ``ratio``, ``n_retain``, ``rank`` (numerical rank at the exact-mode tolerance).
    """

    basis: Tensor
    eigenvalues: Tensor
    mode: str
    meta: dict = field(default_factory=dict)

    @property
    def d(self) -> int:
        return int(self.basis.shape[0])

    @property
    def k(self) -> int:
        """Dimension of the kept subspace (rank of P)."""
        return int(self.basis.shape[1])

    def apply(self, h: Tensor) -> Tensor:
        """P h for h of shape (..., d); computed in float64, returned in h's dtype and device."""
        check_width(h, self.d, "NullSpaceProjector.apply")
        u = self.basis.to(h.device)
        x = h.to(torch.float64)
        return ((x @ u) @ u.T).to(h.dtype)

    __call__ = apply

    def matrix(self) -> Tensor:
        """The dense projector P = U2 U2^T, (d, d) float64. Only for tests and small d."""
        return self.basis @ self.basis.T

    def to(self, device) -> NullSpaceProjector:
        return NullSpaceProjector(self.basis.to(device), self.eigenvalues.to(device), self.mode, dict(self.meta))


def _default_rtol(n: int, d: int) -> float:
    # Eigenvalues are squared singular values; numerically zero singular values of a float64 SVD sit near
    # max(n, d) * eps * s_max, so an eigenvalue tolerance of max(n, d) * eps * lambda_max is very safe
    # (it calls "zero" any singular value below sqrt(max(n, d) * eps) * s_max, ~1e-6 s_max for d = 4096).
    return max(n, d) * torch.finfo(torch.float64).eps


def null_space_projector(
    H_retain: Tensor, null_space: str | float = "exact", rtol: float | None = None
) -> NullSpaceProjector:
    """Build P from retain activations.

    Args:
        H_retain: (N_r, d) retain activations (rows are last-token hidden states), any float dtype/device.
        null_space: ``"exact"`` or a float ratio in (0, 1) (fraction of d kept, smallest eigenvalues first).
        rtol: exact-mode tolerance on eigenvalues relative to the largest; default ``max(N_r, d) * eps64``.

    Returns:
        :class:`NullSpaceProjector` with basis (d, k).

    Raises:
        ValueError: bad shapes, empty H_r, ratio out of range, or an empty exact null space (H_r of full rank d).

    Example:
        >>> H_r = torch.randn(5, 16, dtype=torch.float64)
        >>> P = null_space_projector(H_r, "exact")
        >>> P.k, bool(P.apply(H_r).abs().max() < 1e-10)
        (11, True)
    """
    n, d = check_rows("H_retain", H_retain, need="retain activations to build the null space",
                      rows="N_r")
    if d == 0:
        raise ValueError("H_retain has d = 0 columns")
    if rtol is not None and not rtol >= 0:
        raise ValueError(f"rtol must be >= 0, got {rtol}")
    H = H_retain.to(torch.float64)
    if n > d:
        # Tall H_r (the usual case: N_r ~ 6000 > d): H = Q R with R (d, d) has the same singular values and right
        # singular vectors, and the R-only QR is several times cheaper than a thin SVD of H (measured with
        # benchmarks/bench_fit.py at commit 08cc600; see benchmarks/README.md).
        H = torch.linalg.qr(H, mode="r").R
    # full_matrices only when n < d, where the (d, d) Vh is needed to reach the null space; otherwise the thin
    # SVD already has a (d, d) Vh, and full_matrices would allocate an (n, n) U for nothing.
    _, s, vh = torch.linalg.svd(H, full_matrices=H.shape[0] < d)
    eig_desc = torch.zeros(d, dtype=torch.float64, device=H.device)
    eig_desc[: s.shape[0]] = s**2
    eigenvalues = eig_desc.flip(0)  # ascending
    vecs_asc = vh.flip(0).T  # (d, d) columns match ascending eigenvalues
    lam_max = float(eig_desc[0])
    tol = (_default_rtol(n, d) if rtol is None else float(rtol)) * lam_max
    rank = int((eig_desc > tol).sum())
    meta: dict[str, float] = {"n_retain": int(n), "d": int(d), "rank": rank}

    if isinstance(null_space, str):
        if null_space != "exact":
            raise ValueError(f"null_space must be 'exact' or a float ratio in (0, 1), got {null_space!r}")
        k = d - rank
        if k == 0:
            raise ValueError(
                f"exact null space is empty: H_retain {tuple(H_retain.shape)} has full rank d={d} "
                f"(N_r={n} >= d or no linear dependency). Use ratio mode (e.g. null_space=0.3, as the authors do), "
                f"fewer retain activations than d, or a larger rtol.")
        mode = "exact"
        meta["rtol"] = _default_rtol(n, d) if rtol is None else float(rtol)
    else:
        ratio = float(null_space)
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"null_space ratio must be in (0, 1), got {ratio}")
        k = int(ratio * d)
        if k == 0:
            raise ValueError(f"null_space ratio {ratio} keeps int({ratio} * {d}) = 0 dimensions; use a larger ratio")
        mode = "ratio"
        meta["ratio"] = ratio
    return NullSpaceProjector(vecs_asc[:, :k].contiguous(), eigenvalues, mode, meta)


def projector_summary(acts: Any, null_space: str | float = 0.3,
                      layers: Sequence[int] | None = None) -> pd.DataFrame:
    """For ``acts`` with ``forget`` / ``retain`` ``{layer: (N, d)}`` and ``layers`` (e.g.
    :class:`erasebook.pipeline.ForgetRetain`), per layer: N_r, d, numerical rank of H_r, kept dimension k, and the
    share (%) of the retain and forget
    activations' energy ``||P H||² / ||H||²`` that the projector keeps (retain ≈ 0 is the constraint; the
    forget share is what is left for the steering map to act on)."""
    recs = []
    for l in (acts.layers if layers is None else layers):
        Hr, Hf = acts.retain[l].double(), acts.forget[l].double()
        P = null_space_projector(Hr, null_space)
        recs.append({"layer": l, "N_r": Hr.shape[0], "d": Hr.shape[1], "rank(H_r)": P.meta["rank"], "k": P.k,
                     "retain energy kept (%)": 100 * float(P.apply(Hr).norm() ** 2 / Hr.norm() ** 2),
                     "forget energy kept (%)": 100 * float(P.apply(Hf).norm() ** 2 / Hf.norm() ** 2)})
    return pd.DataFrame(recs).set_index("layer")
