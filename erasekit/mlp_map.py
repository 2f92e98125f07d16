"""The MLP map (paper Appendix I, an ablation of the rank-one gate): a two-layer network trained on P h so that
forget activations map onto the erasure direction and retain ones onto 0; the projector and the scalings are folded
into its weights. :func:`erasekit.steering.fit_mlp_steerer` fits one per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ._checks import check_width
from .gates import check_fit_inputs, compute_dtype, resolve_projector
from .nullspace import NullSpaceProjector

__all__ = ["MLPMap", "fit_mlp"]


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
        check_width(h, self.d)
        cdt = compute_dtype(h)
        w1, b1, w2, b2 = (t.to(device=h.device, dtype=cdt) for t in (self.w1, self.b1, self.w2, self.b2))
        return (torch.relu(h.to(cdt) @ w1.T + b1) @ w2.T + b2).to(h.dtype)

    def to(self, *args, **kwargs) -> MLPMap:
        return MLPMap(*(t.to(*args, **kwargs) for t in (self.w1, self.b1, self.w2, self.b2)), dict(self.meta))

    def tensors(self) -> dict[str, Tensor]:
        return {"w1": self.w1, "b1": self.b1, "w2": self.w2, "b2": self.b2}

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


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
    d = check_fit_inputs(H_forget, H_retain, direction)
    if H_retain is None:
        raise ValueError("fit_mlp needs H_retain (the P h_r -> 0 targets)")
    if hidden < 1 or steps < 1 or not lr > 0:
        raise ValueError(f"need hidden >= 1, steps >= 1, lr > 0; got hidden={hidden}, steps={steps}, lr={lr}")
    P = resolve_projector(H_retain, null_space, d, rtol)
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
