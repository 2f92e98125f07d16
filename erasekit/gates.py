"""The rank-one gates of input-aware steering, f(h) = (g . h) d = W P h (paper Eq. 8-12), and their fits.

Eq. 12 gives the ridge solution with the null-space projector P of the retain activations:

    W* = D H_f^T P (P H_f H_f^T P + gamma P)^+,      D = d 1^T   (N_f identical columns)

(paper notation: H_f is d x N_f). Because every column of D is the same d, W* P is rank one. With
P = U2 U2^T, B = U2^T H_f and the push-through identity B^T (B B^T + gamma I)^-1 = (B^T B + gamma I)^-1 B^T:

    W* P = d g^T,      g = P H_f (H_f^T P H_f + gamma I)^-1 1          (an N_f x N_f solve)

so f(h) = (g . h) d: a scalar *gate* g . h times the erasure direction. The gate is ~1 on the forget
activations the map was fitted on (for small gamma) and exactly 0 on retain activations when P is the exact
null space. Storage is two d-vectors per layer instead of a d x d matrix. erasekit stores activations
row-wise, H as (N, d); the code below uses that layout, the docstrings give the paper's formulas.

Two gates, one API (:func:`fit_gate`): the paper's null-space gate (:func:`fit_input_aware`) and erasekit's
contrastive gate (:func:`fit_contrastive_gate`), which keeps the retain rows in the ridge objective; both rank one,
both with a dense reference (:func:`dense_gate_reference`) for tests. The per-layer container, the operators and
the ablation variants are in :mod:`erasekit.steering`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._checks import check_rows, check_width
from .nullspace import NullSpaceProjector, null_space_projector

__all__ = [
    "dense_eq12",
    "GATES",
    "GAMMA_SCALES",
    "InputAwareMap",
    "compute_dtype",
    "check_fit_inputs",
    "resolve_projector",
    "fit_input_aware",
    "fit_contrastive_gate",
    "fit_gate",
    "dense_gate_reference",
]


def compute_dtype(h: Tensor) -> torch.dtype:
    """The dtype gate products are computed in: h's, promoted to at least float32."""
    # Gate products over d ~ 4096 coordinates of large-norm bf16 activations lose digits in bf16; float32 is
    # plenty for steering at inference, float64 inputs stay float64 (tests against the dense formula).
    return torch.promote_types(h.dtype, torch.float32)


@dataclass
class InputAwareMap:
    """Rank-one input-aware map for one layer: f(h) = (g . h) d = W P h (Eq. 12-13 without lambda).

    Attributes:
        direction: d, the erasure direction (d,).
        gate: g = P H_f (H_f^T P H_f + gamma I)^-1 1, (d,); lies in the range of P.
        meta: gamma, null-space mode and size, N_f, N_r, gate statistics on the fitting data.
    """

    direction: Tensor
    gate: Tensor
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.direction.ndim != 1 or self.gate.shape != self.direction.shape:
            raise ValueError(f"InputAwareMap: direction and gate must both be (d,), got "
                             f"{tuple(self.direction.shape)} and {tuple(self.gate.shape)}")

    @property
    def d(self) -> int:
        return int(self.direction.shape[0])

    def _check(self, h: Tensor) -> None:
        check_width(h, self.d)

    def gate_value(self, h: Tensor) -> Tensor:
        """s(h) = g . h for h (..., d) -> (...,), in float32 or better."""
        self._check(h)
        cdt = compute_dtype(h)
        return h.to(cdt) @ self.gate.to(device=h.device, dtype=cdt)

    def __call__(self, h: Tensor) -> Tensor:
        """f(h) = (g . h) d for h (..., d) -> (..., d) in h's dtype."""
        s = self.gate_value(h)
        return (s.unsqueeze(-1) * self.direction.to(device=h.device, dtype=s.dtype)).to(h.dtype)

    def dense(self) -> Tensor:
        """W P = d g^T as a (d, d) float64 matrix. Only for tests and small d."""
        return torch.outer(self.direction.double(), self.gate.double())

    def to(self, *args, **kwargs) -> InputAwareMap:
        return InputAwareMap(self.direction.to(*args, **kwargs), self.gate.to(*args, **kwargs), dict(self.meta))

    def tensors(self) -> dict[str, Tensor]:
        return {"direction": self.direction, "gate": self.gate}

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


def check_fit_inputs(H_forget: Tensor, H_retain: Tensor | None, direction: Tensor) -> int:
    """Validate a fit's inputs (rows of width d = len(direction)) with errors that say what to pass; returns d."""
    if direction.ndim != 1:
        raise ValueError(f"direction must be (d,), got shape {tuple(direction.shape)}")
    d = int(direction.shape[0])
    check_rows("H_forget", H_forget, d, need="forget activations to fit the map", rows="N_f")
    if H_retain is not None:
        check_rows("H_retain", H_retain, d, need="retain activations for the null-space projector",
                   rows="N_r")
    return d


def resolve_projector(H_retain: Tensor | None, null_space, d: int, rtol: float | None) -> NullSpaceProjector:
    """``null_space`` if it already is a :class:`NullSpaceProjector` (checked against d), else one built from H_r."""
    if isinstance(null_space, NullSpaceProjector):
        if null_space.d != d:
            raise ValueError(f"shape mismatch: projector has d={null_space.d}, direction has d={d}")
        return null_space
    if H_retain is None:
        raise ValueError("H_retain is required unless null_space is a precomputed NullSpaceProjector")
    return null_space_projector(H_retain, null_space, rtol=rtol)


GATES = ("nullspace", "contrastive")
GAMMA_SCALES = ("absolute", "relative")


def _check_gamma(gamma: float, gamma_scale: str) -> None:
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
    if gamma_scale not in GAMMA_SCALES:
        raise ValueError(f"gamma_scale must be one of {GAMMA_SCALES}, got {gamma_scale!r}")


def _ridge(gamma: float, gamma_scale: str, trace: float, d: int) -> float:
    """The ridge actually added: gamma itself, or gamma times the mean eigenvalue trace / d of the normal matrix."""
    if gamma_scale == "absolute":
        return float(gamma)
    if not trace > 0:
        raise ValueError("relative gamma: the activations are all zero, so there is no scale to be relative to")
    return float(gamma) * trace / d


def _spd_solve(A: Tensor, ridge: float, rhs: Tensor) -> Tensor:
    """(A + ridge I)^-1 rhs for a symmetric PSD A by Cholesky (general solve only if Cholesky trips on rounding)."""
    A = A + ridge * torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    L, info = torch.linalg.cholesky_ex(A)
    return torch.cholesky_solve(rhs, L) if int(info) == 0 else torch.linalg.solve(A, rhs)


def _gate_stats(s_f: Tensor, s_r: Tensor | None) -> dict:
    """Gate values on the fitting data: their range is what steering should read (the cascade check in hooks)."""
    out = {"gate_forget_mean": float(s_f.mean()), "gate_forget_min": float(s_f.min()),
           "gate_forget_max": float(s_f.max())}
    if s_r is not None:
        out.update(gate_retain_mean=float(s_r.mean()), gate_retain_absmax=float(s_r.abs().max()),
                   gate_retain_min=float(s_r.min()), gate_retain_max=float(s_r.max()))
    return out


def _warn_small_ratio(null_space, n_retain: int, d: int) -> None:
    if isinstance(null_space, (int, float)) and not isinstance(null_space, bool) and 0 < null_space < 1 \
            and n_retain < d:
        warnings.warn(
            f"ratio null space ({null_space}) asked of {n_retain} retain rows < d = {d}: the exact null space already "
            f"has dimension >= {d - n_retain}, so the ratio keeps an arbitrary part of it (LAPACK's choice among "
            f"zero eigenvalues). Use null_space='exact', more retain rows, or the contrastive gate.", stacklevel=3)


def fit_input_aware(
    H_forget: Tensor,
    H_retain: Tensor | None,
    direction: Tensor,
    gamma: float,
    null_space: str | float | NullSpaceProjector = "exact",
    rtol: float | None = None,
    gamma_scale: str = "absolute",
) -> InputAwareMap:
    """Fit the input-aware map of Eq. 12 for one layer, in rank-one form W P = d g^T (the paper's gate).

    Args:
        H_forget: (N_f, d) forget activations (rows; the paper's H_f is the transpose).
        H_retain: (N_r, d) retain activations; may be None when ``null_space`` is a projector.
        direction: (d,) erasure direction d (paper sign, see :mod:`erasekit.directions`).
        gamma: ridge strength, > 0 (paper/code use 0.1 and 1.0; treat as a sweep).
        null_space: ``"exact"``, a ratio in (0, 1) (smallest-eigenvalue fraction of d, authors' code), or a
            precomputed :class:`NullSpaceProjector` (reuse it across a gamma sweep; the SVD is the costly part).
        rtol: exact-mode eigenvalue tolerance (see :func:`null_space_projector`).
        gamma_scale: ``"absolute"`` (the paper: gamma as given) or ``"relative"``: the ridge used is
            ``gamma * tr(P H_f H_f^T P) / d``, i.e. gamma in units of the mean eigenvalue of the regularised Gram,
            so the same number means the same regularisation at every layer and for every model.

    Returns:
        :class:`InputAwareMap` with ``gate`` g = P H_f (H_f^T P H_f + gamma I)^-1 1 and ``direction`` (float64),
        callable as f(h) = (g . h) d on (..., d).

    Example:
        >>> H_f, H_r, d = torch.randn(4, 32), torch.randn(10, 32), torch.randn(32)
        >>> f = fit_input_aware(H_f, H_r, d, gamma=1e-6)
        >>> bool(torch.allclose(f.gate_value(H_f.double()), torch.ones(4, dtype=torch.float64), atol=1e-3))
        True
    """
    d = check_fit_inputs(H_forget, H_retain, direction)
    _check_gamma(gamma, gamma_scale)
    if not isinstance(null_space, NullSpaceProjector) and H_retain is not None:
        _warn_small_ratio(null_space, H_retain.shape[0], d)
    P = resolve_projector(H_retain, null_space, d, rtol)
    Hf = H_forget.to(device=P.basis.device, dtype=torch.float64)
    PHf = P.apply(Hf)  # (N_f, d): columns P h_f in paper notation
    n_f = Hf.shape[0]
    # H_f^T P H_f = (P H_f)^T (P H_f) because P is a symmetric idempotent; this form is symmetric by construction.
    K = PHf @ PHf.T
    ridge = _ridge(gamma, gamma_scale, float(K.diagonal().sum()), d)
    a = _spd_solve(K, ridge, torch.ones(n_f, 1, dtype=torch.float64, device=K.device))
    gate = (PHf.T @ a).squeeze(1)  # (d,)
    direction64 = direction.to(device=gate.device, dtype=torch.float64)
    s_f = Hf @ gate
    meta = {
        "kind": "rank_one",
        "gate": "nullspace",
        "gamma": float(gamma),
        "gamma_scale": gamma_scale,
        "ridge": ridge,
        "null_space_mode": P.mode,
        "null_space_dim": P.k,
        **{f"null_space_{k}": v for k, v in P.meta.items() if k in ("ratio", "rtol", "rank")},
        "n_forget": int(n_f),
        **_gate_stats(s_f, None if H_retain is None else H_retain.to(device=gate.device, dtype=torch.float64) @ gate),
    }
    if H_retain is not None:
        meta["n_retain"] = int(H_retain.shape[0])
    return InputAwareMap(direction64, gate, meta)


def fit_contrastive_gate(
    H_forget: Tensor,
    H_retain: Tensor,
    direction: Tensor,
    gamma: float = 1e-3,
    alpha: float = 1.0,
    gamma_scale: str = "relative",
) -> InputAwareMap:
    """erasekit's gate: keep the retain rows *in* the ridge objective instead of projecting them out.

    The paper's gate (:func:`fit_input_aware`) first removes every direction in which the retain activations vary
    (the null-space projector P, Eq. 10-11), then fits g on what is left. When forget and retain questions share
    their templates and differ only in the person, the person's identity lies in directions where the retain set
    varies too, so P discards exactly the information the gate needs (METHOD.md §8). The *contrastive gate* asks
    for the same thing softly::

        min_g  ||H_f g - 1||^2  +  c ||H_r g||^2  +  gamma' ||g||^2,      c = alpha * N_f / N_r
        g = (H_f^T H_f + c H_r^T H_r + gamma' I)^-1 H_f^T 1                (rows are activations)

    i.e. the dense map W = argmin ||W H_f^T - D||^2 + c ||W H_r^T||^2 + gamma' ||W||^2 with D = d 1^T, which is
    again rank one: W = d g^T. ``alpha`` weighs retain against forget rows (c makes it independent of the set
    sizes); as alpha -> inf g is forced into the exact null space of H_r and the gate becomes the paper's gate with
    the exact projector. Solved by one Cholesky factorisation of the smaller of the (d, d) normal matrix and the
    (N, N) kernel matrix X X^T + gamma' I (X = [H_f; sqrt(c) H_r], push-through identity); no eigendecomposition.

    Args:
        H_forget: (N_f, d) forget activations; H_retain: (N_r, d) retain activations; direction: (d,).
        gamma: ridge strength; with ``gamma_scale="relative"`` (default) the ridge is
            ``gamma * tr(H_f^T H_f + c H_r^T H_r) / d`` (units of the mean eigenvalue of the normal matrix).
        alpha: retain weight, > 0.
        gamma_scale: ``"relative"`` or ``"absolute"``.

    Returns:
        :class:`InputAwareMap` (direction float64, gate float64); ``meta["gate"] == "contrastive"``.

    Example:
        >>> H_f, H_r, d = torch.randn(8, 32) + 2, torch.randn(40, 32), torch.randn(32)
        >>> f = fit_contrastive_gate(H_f, H_r, d, gamma=1e-4)
        >>> bool(f.gate_value(H_f.double()).mean() > 4 * f.gate_value(H_r.double()).abs().mean())
        True
    """
    d = check_fit_inputs(H_forget, H_retain, direction)
    if H_retain is None:
        raise ValueError("fit_contrastive_gate needs H_retain (the rows the gate must read as 0)")
    _check_gamma(gamma, gamma_scale)
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    dev = H_forget.device
    Hf = H_forget.to(torch.float64)
    Hr = H_retain.to(device=dev, dtype=torch.float64)
    n_f, n_r = Hf.shape[0], Hr.shape[0]
    c = float(alpha) * n_f / n_r
    rhs = Hf.sum(0)  # H_f^T 1
    trace = float((Hf * Hf).sum() + c * (Hr * Hr).sum())
    ridge = _ridge(gamma, gamma_scale, trace, d)
    if d <= n_f + n_r:
        A = Hf.T @ Hf + c * (Hr.T @ Hr)
        gate = _spd_solve(A, ridge, rhs.unsqueeze(1)).squeeze(1)
        route = "normal (d x d)"
    else:
        X = torch.cat([Hf, math.sqrt(c) * Hr])
        y = torch.cat([torch.ones(n_f, 1, dtype=torch.float64, device=dev),
                       torch.zeros(n_r, 1, dtype=torch.float64, device=dev)])
        gate = (X.T @ _spd_solve(X @ X.T, ridge, y)).squeeze(1)
        route = "kernel (N x N)"
    meta = {
        "kind": "rank_one", "gate": "contrastive", "gamma": float(gamma), "gamma_scale": gamma_scale,
        "ridge": ridge, "alpha": float(alpha), "retain_weight": c, "route": route,
        "n_forget": int(n_f), "n_retain": int(n_r), **_gate_stats(Hf @ gate, Hr @ gate),
    }
    return InputAwareMap(direction.to(device=dev, dtype=torch.float64), gate, meta)


def dense_gate_reference(H_forget: Tensor, H_retain: Tensor, direction: Tensor, gate: str = "contrastive", *,
                         gamma: float, alpha: float = 1.0, P: Tensor | None = None) -> Tensor:
    """The dense (d, d) map W (P) of either gate from its defining formula, float64. Only for tests and small d.

    ``"nullspace"``: Eq. 12 literally, W = D H_f^T P (P H_f H_f^T P + gamma P)^+ with D = d 1^T, returning W P
    (needs ``P``, the (d, d) projector). ``"contrastive"``: W = D [H_f; c H_r]-weighted normal equations solved by
    a pseudo-inverse, W = D H_f (H_f^T H_f + c H_r^T H_r + gamma I)^+ with c = alpha N_f / N_r. ``gamma`` is
    absolute here.
    """
    Hf = H_forget.double()
    dcol = direction.double().unsqueeze(1)
    D = dcol.expand(-1, Hf.shape[0])  # (d, N_f), identical columns
    if gate == "nullspace":
        if P is None:
            raise ValueError("the nullspace reference needs the (d, d) projector P")
        P = P.double()
        Hp = Hf.T  # paper layout (d, N_f)
        W = D @ Hp.T @ P @ torch.linalg.pinv(P @ Hp @ Hp.T @ P + gamma * P)
        return W @ P
    if gate == "contrastive":
        Hr = H_retain.double()
        c = alpha * Hf.shape[0] / Hr.shape[0]
        A = Hf.T @ Hf + c * Hr.T @ Hr + gamma * torch.eye(Hf.shape[1], dtype=torch.float64)
        return D @ Hf @ torch.linalg.pinv(A)
    raise ValueError(f"gate must be one of {GATES}, got {gate!r}")


def fit_gate(
    H_forget: Tensor,
    H_retain: Tensor,
    direction: Tensor,
    gate: str = "contrastive",
    gamma: float = 1e-3,
    gamma_scale: str = "relative",
    alpha: float = 1.0,
    null_space: str | float | NullSpaceProjector = 0.3,
    rtol: float | None = None,
) -> InputAwareMap:
    """One API for both rank-one gates at one layer: ``gate="contrastive"`` (erasekit's default,
    :func:`fit_contrastive_gate`, uses ``alpha``) or ``"nullspace"`` (the paper's Eq. 10-12,
    :func:`fit_input_aware`, uses ``null_space``/``rtol``). ``gamma``/``gamma_scale`` mean the same for both."""
    if gate == "contrastive":
        return fit_contrastive_gate(H_forget, H_retain, direction, gamma, alpha, gamma_scale)
    if gate == "nullspace":
        return fit_input_aware(H_forget, H_retain, direction, gamma, null_space, rtol=rtol, gamma_scale=gamma_scale)
    raise ValueError(f"gate must be one of {GATES}, got {gate!r}")


def dense_eq12(H_forget: Tensor, P: Tensor, direction: Tensor, gamma: float) -> Tensor:
    """The dense Eq. 12 map W P (d × d, float64), for showing the rank-one identity on real activations.

    W = D H_fᵀ P (P H_f H_fᵀ P + γ P)⁺ with D = d 1ᵀ (paper notation, H_f is d × N_f; here rows). Costs a d × d
    pseudo-inverse: use for small d only.
    """
    Hf = H_forget.double().T  # (d, N_f)
    P = P.double()
    D = direction.double().unsqueeze(1).expand(-1, Hf.shape[1])
    M = P @ Hf @ Hf.T @ P + gamma * P
    W = D @ Hf.T @ P @ torch.linalg.pinv(M, hermitian=True, rtol=1e-10)
    return W @ P
