"""Input-aware steering f(h) = W P h (paper Eq. 8-13), in its rank-one form, plus the ablation variants.

Eq. 12 gives the ridge solution with the null-space projector P of the retain activations:

    W* = D H_f^T P (P H_f H_f^T P + gamma P)^+,      D = d 1^T   (N_f identical columns)

(paper notation: H_f is d x N_f). Because every column of D is the same d, W* P is rank one. With
P = U2 U2^T, B = U2^T H_f and the push-through identity B^T (B B^T + gamma I)^-1 = (B^T B + gamma I)^-1 B^T:

    W* P = d g^T,      g = P H_f (H_f^T P H_f + gamma I)^-1 1          (an N_f x N_f solve)

so f(h) = (g . h) d: a scalar *gate* g . h times the erasure direction. The gate is ~1 on the forget
activations the map was fitted on (for small gamma) and exactly 0 on retain activations when P is the exact
null space. Storage is two d-vectors per layer instead of a d x d matrix. erasekit stores activations
row-wise, H as (N, d); the code below uses that layout, the docstrings give the paper's formulas.

Operators. :meth:`InputAwareSteerer.operators` returns ``{layer: op}`` where ``op(h)`` maps activations
(..., d) to the additive change (..., d) *with the strength already applied*: ``h~ = h + op(h)`` with
``op(h) = lambda * f(h)`` (Eq. 13). The same convention holds for :func:`constant_operators` (Eq. 4) and
:func:`ablation_operator`, so a hook module just adds what an operator returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from ._checks import check_rows
from .directions import ErasureDirection
from .nullspace import NullSpaceProjector, null_space_projector

__all__ = [
    "InputAwareMap",
    "MLPMap",
    "InputAwareSteerer",
    "fit_input_aware",
    "fit_mlp",
    "fit_steerer",
    "fit_mlp_steerer",
    "constant_operator",
    "constant_operators",
    "ablation_operator",
]

Operator = Callable[[Tensor], Tensor]


def _compute_dtype(h: Tensor) -> torch.dtype:
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
        if h.shape[-1] != self.d:
            raise ValueError(f"expected activations (..., {self.d}), got {tuple(h.shape)}")

    def gate_value(self, h: Tensor) -> Tensor:
        """s(h) = g . h for h (..., d) -> (...,), in float32 or better."""
        self._check(h)
        cdt = _compute_dtype(h)
        return h.to(cdt) @ self.gate.to(device=h.device, dtype=cdt)

    def __call__(self, h: Tensor) -> Tensor:
        """f(h) = (g . h) d for h (..., d) -> (..., d) in h's dtype."""
        s = self.gate_value(h)
        return (s.unsqueeze(-1) * self.direction.to(device=h.device, dtype=s.dtype)).to(h.dtype)

    def dense(self) -> Tensor:
        """W P = d g^T as a (d, d) float64 matrix. Only for tests and small d."""
        return torch.outer(self.direction.double(), self.gate.double())

    def to(self, *args, **kwargs) -> "InputAwareMap":
        return InputAwareMap(self.direction.to(*args, **kwargs), self.gate.to(*args, **kwargs), dict(self.meta))

    def tensors(self) -> dict[str, Tensor]:
        return {"direction": self.direction, "gate": self.gate}

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


@dataclass
class MLPMap:
    """Two-layer MLP f(h) = W2 relu(W1 h + b1) + b2 (paper Appendix I, "Ours-MLP").

    Trained on P h (see :func:`fit_mlp`); the projector and the input/output scalings are folded into the
    stored weights, so W1 already equals ``W1_trained P / scale_in`` and no projector is kept at inference.

    Attributes:
        w1: (hidden, d), b1: (hidden,), w2: (d, hidden), b2: (d,); float32.
        meta: training hyperparameters and final losses.
    """

    w1: Tensor
    b1: Tensor
    w2: Tensor
    b2: Tensor
    meta: dict = field(default_factory=dict)

    @property
    def d(self) -> int:
        return int(self.w1.shape[1])

    def __call__(self, h: Tensor) -> Tensor:
        if h.shape[-1] != self.d:
            raise ValueError(f"expected activations (..., {self.d}), got {tuple(h.shape)}")
        cdt = _compute_dtype(h)
        w1, b1, w2, b2 = (t.to(device=h.device, dtype=cdt) for t in (self.w1, self.b1, self.w2, self.b2))
        return (torch.relu(h.to(cdt) @ w1.T + b1) @ w2.T + b2).to(h.dtype)

    def to(self, *args, **kwargs) -> "MLPMap":
        return MLPMap(*(t.to(*args, **kwargs) for t in (self.w1, self.b1, self.w2, self.b2)), dict(self.meta))

    def tensors(self) -> dict[str, Tensor]:
        return {"w1": self.w1, "b1": self.b1, "w2": self.w2, "b2": self.b2}

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


def _check_fit_inputs(H_forget: Tensor, H_retain: Tensor | None, direction: Tensor) -> int:
    if direction.ndim != 1:
        raise ValueError(f"direction must be (d,), got shape {tuple(direction.shape)}")
    d = int(direction.shape[0])
    check_rows("H_forget", H_forget, d, need="forget activations to fit the map", rows="N_f")
    if H_retain is not None:
        check_rows("H_retain", H_retain, d, need="retain activations for the null-space projector",
                   rows="N_r")
    return d


def _projector(H_retain: Tensor | None, null_space, d: int, rtol: float | None) -> NullSpaceProjector:
    if isinstance(null_space, NullSpaceProjector):
        if null_space.d != d:
            raise ValueError(f"shape mismatch: projector has d={null_space.d}, direction has d={d}")
        return null_space
    if H_retain is None:
        raise ValueError("H_retain is required unless null_space is a precomputed NullSpaceProjector")
    return null_space_projector(H_retain, null_space, rtol=rtol)


def fit_input_aware(
    H_forget: Tensor,
    H_retain: Tensor | None,
    direction: Tensor,
    gamma: float,
    null_space: str | float | NullSpaceProjector = "exact",
    rtol: float | None = None,
) -> InputAwareMap:
    """Fit the input-aware map of Eq. 12 for one layer, in rank-one form W P = d g^T.

    Args:
        H_forget: (N_f, d) forget activations (rows; the paper's H_f is the transpose).
        H_retain: (N_r, d) retain activations; may be None when ``null_space`` is a projector.
        direction: (d,) erasure direction d (paper sign, see :mod:`erasekit.directions`).
        gamma: ridge strength, > 0 (paper/code use 0.1 and 1.0; treat as a sweep).
        null_space: ``"exact"``, a ratio in (0, 1) (smallest-eigenvalue fraction of d, authors' code), or a
            precomputed :class:`NullSpaceProjector` (reuse it across a gamma sweep; the SVD is the costly part).
        rtol: exact-mode eigenvalue tolerance (see :func:`null_space_projector`).

    Returns:
        :class:`InputAwareMap` with ``gate`` g = P H_f (H_f^T P H_f + gamma I)^-1 1 and ``direction`` (float64),
        callable as f(h) = (g . h) d on (..., d).

    Example:
        >>> H_f, H_r, d = torch.randn(4, 32), torch.randn(10, 32), torch.randn(32)
        >>> f = fit_input_aware(H_f, H_r, d, gamma=1e-6)
        >>> bool(torch.allclose(f.gate_value(H_f.double()), torch.ones(4, dtype=torch.float64), atol=1e-3))
        True
    """
    d = _check_fit_inputs(H_forget, H_retain, direction)
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
    P = _projector(H_retain, null_space, d, rtol)
    Hf = H_forget.to(device=P.basis.device, dtype=torch.float64)
    PHf = P.apply(Hf)  # (N_f, d): columns P h_f in paper notation
    n_f = Hf.shape[0]
    # H_f^T P H_f = (P H_f)^T (P H_f) because P is a symmetric idempotent; this form is symmetric by construction.
    K = PHf @ PHf.T
    A = K + gamma * torch.eye(n_f, dtype=torch.float64, device=K.device)
    ones = torch.ones(n_f, 1, dtype=torch.float64, device=K.device)
    L, info = torch.linalg.cholesky_ex(A)
    # A is SPD for gamma > 0; fall back to a general solve only if Cholesky trips on rounding.
    a = torch.cholesky_solve(ones, L) if int(info) == 0 else torch.linalg.solve(A, ones)
    gate = (PHf.T @ a).squeeze(1)  # (d,)
    direction64 = direction.to(device=gate.device, dtype=torch.float64)
    s_f = Hf @ gate
    meta = {
        "kind": "rank_one",
        "gamma": float(gamma),
        "null_space_mode": P.mode,
        "null_space_dim": P.k,
        **{f"null_space_{k}": v for k, v in P.meta.items() if k in ("ratio", "rtol", "rank")},
        "n_forget": int(n_f),
        "gate_forget_mean": float(s_f.mean()),
    }
    if H_retain is not None:
        meta["n_retain"] = int(H_retain.shape[0])
        s_r = H_retain.to(device=gate.device, dtype=torch.float64) @ gate
        meta["gate_retain_mean"] = float(s_r.mean())
        meta["gate_retain_absmax"] = float(s_r.abs().max())
    return InputAwareMap(direction64, gate, meta)


def fit_mlp(
    H_forget: Tensor,
    H_retain: Tensor | None,
    direction: Tensor,
    null_space: str | float | NullSpaceProjector = "exact",
    hidden: int = 256,
    steps: int = 300,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    rtol: float | None = None,
) -> MLPMap:
    """Fit the two-layer MLP ablation of f(h) (paper Appendix I): P h_f -> d and P h_r -> 0.

    Full-batch Adam in float32, ``steps`` iterations, deterministic for a given ``seed`` (weights initialised
    under a forked RNG, so the global RNG is untouched). Inputs are scaled by the mean norm of P h_f and
    targets expressed in units of ||d|| so that lr does not depend on the model's activation scale; forget and
    retain MSE are averaged separately (the sets differ a lot in size). Retain rows are required for the
    P h_r -> 0 term even when ``null_space`` is a projector.

    Args:
        H_forget: (N_f, d); H_retain: (N_r, d); direction: (d,).
        null_space: as in :func:`fit_input_aware`.
        hidden: hidden width; steps, lr, weight_decay: Adam settings; seed: init seed.

    Returns:
        :class:`MLPMap` with the projector and scalings folded into its weights.
    """
    d = _check_fit_inputs(H_forget, H_retain, direction)
    if H_retain is None:
        raise ValueError("fit_mlp needs H_retain (the P h_r -> 0 targets)")
    if hidden < 1 or steps < 1 or not lr > 0:
        raise ValueError(f"need hidden >= 1, steps >= 1, lr > 0; got hidden={hidden}, steps={steps}, lr={lr}")
    P = _projector(H_retain, null_space, d, rtol)
    dev = P.basis.device
    Xf = P.apply(H_forget.to(device=dev, dtype=torch.float64))
    Xr = P.apply(H_retain.to(device=dev, dtype=torch.float64))
    dvec = direction.to(device=dev, dtype=torch.float64)
    d_norm = float(dvec.norm())
    in_norm = float(Xf.norm(dim=1).mean())
    if d_norm == 0:
        raise ValueError("direction is the zero vector")
    if in_norm == 0:
        raise ValueError("P h_f = 0 for every forget activation: the forget set lies in the retain span; "
                         "nothing can separate them (use ratio mode or check the data)")
    xf, xr = (Xf / in_norm).float(), (Xr / in_norm).float()
    y = (dvec / d_norm).float()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, d)).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss_f = ((net(xf) - y) ** 2).sum(-1).mean()
            loss_r = (net(xr) ** 2).sum(-1).mean()
            loss = loss_f + loss_r
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    lin1, lin2 = net[0], net[2]
    with torch.no_grad():
        # Fold P and the input scaling into the first layer: W1 (P h) / s = ((W1 U2) U2^T / s) h.
        u = P.basis
        w1 = ((lin1.weight.double() @ u) @ u.T / in_norm).float()
        w2 = (lin2.weight.double() * d_norm).float()
        b2 = (lin2.bias.double() * d_norm).float()
        b1 = lin1.bias.detach().float().clone()
    meta = {
        "kind": "mlp", "hidden": hidden, "steps": steps, "lr": lr, "weight_decay": weight_decay, "seed": seed,
        "null_space_mode": P.mode, "null_space_dim": P.k, "n_forget": int(H_forget.shape[0]),
        "n_retain": int(H_retain.shape[0]), "loss_first": losses[0], "loss_last": losses[-1],
    }
    return MLPMap(w1, b1, w2, b2, meta)


@dataclass
class InputAwareSteerer:
    """Per-layer container of fitted maps (:class:`InputAwareMap` or :class:`MLPMap`).

    Attributes:
        maps: ``{layer: map}``; each map is callable on (..., d).
        meta: shared hyperparameters (gamma, null_space, model id, ...).
    """

    maps: dict[int, InputAwareMap | MLPMap]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.maps:
            raise ValueError("InputAwareSteerer needs at least one layer")
        self.maps = {int(l): m for l, m in sorted(self.maps.items())}

    @property
    def layers(self) -> list[int]:
        return list(self.maps)

    @property
    def d(self) -> int:
        return next(iter(self.maps.values())).d

    def __getitem__(self, layer: int):
        return self.maps[layer]

    def operators(self, scale: float | Mapping[int, float] = 1.0) -> dict[int, Operator]:
        """``{layer: op}`` with ``op(h) = scale * f_l(h)``, the additive change for the hook: h~ = h + op(h).

        Call ``steerer.to(model_device)`` first: operators move the stored vectors to h's device on every
        call otherwise (correct, but a host-to-device copy per hook call).

        Args:
            scale: lambda of Eq. 13, one float for all layers or ``{layer: lambda_l}`` (missing layers are
                left out of the result, i.e. not steered).
        """
        out = {}
        for l, m in self.maps.items():
            lam = scale.get(l) if isinstance(scale, Mapping) else scale
            if lam is None:
                continue
            out[l] = _scaled(m, float(lam))
        return out

    def gate_values(self, acts: Mapping[int, Tensor]) -> dict[int, Tensor]:
        """``{layer: g_l . h}`` for activations ``{layer: (..., d)}`` (rank-one maps only): a per-query diagnostic."""
        out = {}
        for l, h in acts.items():
            m = self.maps.get(l)
            if isinstance(m, InputAwareMap):
                out[l] = m.gate_value(h)
        return out

    def to(self, *args, **kwargs) -> "InputAwareSteerer":
        return InputAwareSteerer({l: m.to(*args, **kwargs) for l, m in self.maps.items()}, dict(self.meta))

    def state_bytes(self) -> int:
        """Bytes held by the fitted state (rank one: two d-vectors per layer)."""
        return sum(m.state_bytes() for m in self.maps.values())

    def dense_state_bytes(self, dtype: torch.dtype = torch.float32) -> int:
        """Bytes a dense d x d W P per layer would take in ``dtype`` (the authors' storage), for comparison."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return len(self.maps) * self.d * self.d * itemsize


def _scaled(fn: Callable[[Tensor], Tensor], lam: float) -> Operator:
    def op(h: Tensor) -> Tensor:
        return fn(h) * lam

    return op


def _layers_for(direction: ErasureDirection, layers, *acts: tuple[str, Mapping[int, Tensor]]) -> list[int]:
    layers = direction.layers if layers is None else [int(l) for l in layers]
    if not layers:
        raise ValueError("no layers to fit")
    for l in layers:
        if l not in direction:
            raise KeyError(f"layer {l} not in direction (has {direction.layers})")
        for name, a in acts:
            if l not in a:
                raise KeyError(f"layer {l} not in {name} (has {sorted(a)})")
    return layers


def fit_steerer(
    H_forget: Mapping[int, Tensor],
    H_retain: Mapping[int, Tensor],
    direction: ErasureDirection,
    gamma: float,
    null_space: str | float = "exact",
    layers: list[int] | None = None,
    rtol: float | None = None,
) -> InputAwareSteerer:
    """Fit :func:`fit_input_aware` at every layer.

    Args:
        H_forget: ``{layer: (N_f, d)}``; H_retain: ``{layer: (N_r, d)}``, read at the same site (decoder-layer
            input) where the steering will be applied.
        direction: :class:`ErasureDirection`.
        gamma, null_space, rtol: as in :func:`fit_input_aware`.
        layers: default: all layers of ``direction``.

    Returns:
        :class:`InputAwareSteerer`; ``.operators(lam)`` gives the hooks' operators.
    """
    layers = _layers_for(direction, layers, ("H_forget", H_forget), ("H_retain", H_retain))
    maps = {}
    for l in layers:
        try:
            maps[l] = fit_input_aware(H_forget[l], H_retain[l], direction[l], gamma, null_space, rtol=rtol)
        except ValueError as e:
            raise ValueError(f"layer {l}: {e}") from e
    meta = {"kind": "rank_one", "gamma": float(gamma), "null_space": null_space, "layers": layers,
            "direction_meta": dict(direction.meta)}
    return InputAwareSteerer(maps, meta)


def fit_mlp_steerer(
    H_forget: Mapping[int, Tensor],
    H_retain: Mapping[int, Tensor],
    direction: ErasureDirection,
    null_space: str | float = "exact",
    layers: list[int] | None = None,
    **mlp_kwargs,
) -> InputAwareSteerer:
    """Fit :func:`fit_mlp` at every layer (Appendix I ablation); ``mlp_kwargs`` go to :func:`fit_mlp`."""
    layers = _layers_for(direction, layers, ("H_forget", H_forget), ("H_retain", H_retain))
    maps = {}
    for l in layers:
        try:
            maps[l] = fit_mlp(H_forget[l], H_retain[l], direction[l], null_space, **mlp_kwargs)
        except ValueError as e:
            raise ValueError(f"layer {l}: {e}") from e
    meta = {"kind": "mlp", "null_space": null_space, "layers": layers, **mlp_kwargs,
            "direction_meta": dict(direction.meta)}
    return InputAwareSteerer(maps, meta)


def constant_operator(vector: Tensor, scale: float = 1.0) -> Operator:
    """Input-unaware steering (Eq. 4): ``op(h) = scale * v`` broadcast to h's shape (..., d), in h's dtype."""
    if vector.ndim != 1:
        raise ValueError(f"vector must be (d,), got {tuple(vector.shape)}")
    v = vector * scale

    def op(h: Tensor) -> Tensor:
        if h.shape[-1] != v.shape[0]:
            raise ValueError(f"expected activations (..., {v.shape[0]}), got {tuple(h.shape)}")
        return v.to(device=h.device, dtype=h.dtype).expand_as(h)

    return op


def constant_operators(direction: ErasureDirection, scale: float = 1.0,
                       layers: list[int] | None = None) -> dict[int, Operator]:
    """``{layer: constant_operator(d_l, scale)}`` for the input-unaware baseline (Eq. 4)."""
    layers = direction.layers if layers is None else layers
    return {l: constant_operator(direction[l], scale) for l in layers}


def ablation_operator(vector: Tensor) -> Operator:
    """Directional ablation: ``op(h) = -(h . r_hat) r_hat``, so ``h + op(h)`` has no component along r.

    Use at every layer with the refusal direction for the "ablate refusal" causal check.
    """

    if vector.ndim != 1:
        raise ValueError(f"vector must be (d,), got {tuple(vector.shape)}")
    n = vector.double().norm()
    if n == 0:
        raise ValueError("ablation_operator: the direction is the zero vector")
    r_hat = (vector.double() / n)

    def op(h: Tensor) -> Tensor:
        if h.shape[-1] != r_hat.shape[0]:
            raise ValueError(f"expected activations (..., {r_hat.shape[0]}), got {tuple(h.shape)}")
        # The delta itself (not project_out(h) - h): subtracting two large bf16 tensors would lose digits.
        cdt = _compute_dtype(h)
        r = r_hat.to(device=h.device, dtype=cdt)
        return (-(h.to(cdt) @ r).unsqueeze(-1) * r).to(h.dtype)

    return op
