"""Erasure directions: difference of means between two contrastive groups of activations.

Paper, Eq. 3 (text-only) and Eq. 7 (multimodal):

    d_erase^l = mean_{(I, Q) in D+} h^l(I, Q)  -  mean_{(I', Q') in D-} h^l(I', Q')

with D+ the knowledge-*erasure* set (clean image + rejected harmful prompt: the model refuses) and D- the
knowledge-*recall* set (PGD image + jailbreak prompt: the model complies). Steering with a *positive*
strength lambda (Eq. 4, Eq. 13) then pushes activations towards refusal.

Sign convention. erasekit follows the paper: ``refusal - recall`` and positive lambda. The authors' released
code builds the opposite vector (``mean(adversarial + jailbreak) - mean(clean + refused)`` = -d) and steers
with negative strengths; the two give the same intervention. Use :meth:`ErasureDirection.negated` to convert
a direction taken from their code.

Everything here is layer-indexed: activations come as ``{layer: Tensor (N, d)}`` with N the number of prompts
(last prompt token, residual stream), and a direction is ``{layer: Tensor (d,)}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._checks import check_rows
from .artifacts import Encoded, register_artifact

__all__ = [
    "ErasureDirection",
    "diff_in_means",
    "layer_norms",
    "cosine_per_layer",
    "project_out",
]


@dataclass
class ErasureDirection:
    """A per-layer steering direction d_l (Eq. 3 / Eq. 7).

    Attributes:
        vectors: ``{layer: Tensor (d,)}``; float64 when built by :func:`diff_in_means`.
        meta: JSON-able provenance (model id, site, number of prompts, sign convention, ...).
    """

    vectors: dict[int, Tensor]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.vectors:
            raise ValueError("ErasureDirection needs at least one layer")
        dims = {int(v.shape[-1]) for v in self.vectors.values()}
        if any(v.ndim != 1 for v in self.vectors.values()) or len(dims) != 1:
            shapes = {l: tuple(v.shape) for l, v in self.vectors.items()}
            raise ValueError(f"ErasureDirection vectors must all be 1-D of the same size d, got {shapes}")
        self.vectors = {int(l): v for l, v in sorted(self.vectors.items())}

    @property
    def layers(self) -> list[int]:
        return list(self.vectors)

    @property
    def d(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    def __getitem__(self, layer: int) -> Tensor:
        return self.vectors[layer]

    def __contains__(self, layer: int) -> bool:
        return layer in self.vectors

    def to(self, *args, **kwargs) -> ErasureDirection:
        """Same direction with every vector moved by ``Tensor.to(*args, **kwargs)``."""
        return ErasureDirection({l: v.to(*args, **kwargs) for l, v in self.vectors.items()}, dict(self.meta))

    def negated(self) -> ErasureDirection:
        """-d for every layer: converts between the paper's and the released code's sign convention."""
        meta = dict(self.meta, negated=not self.meta.get("negated", False))
        return ErasureDirection({l: -v for l, v in self.vectors.items()}, meta)

    def normalized(self) -> ErasureDirection:
        """Unit-norm copy (d_l / ||d_l||) per layer; raises on a zero vector."""
        out = {}
        for l, v in self.vectors.items():
            n = v.norm()
            if n == 0:
                raise ValueError(f"layer {l}: cannot normalise a zero direction")
            out[l] = v / n
        return ErasureDirection(out, dict(self.meta, normalized=True))

    def norms(self) -> dict[int, float]:
        """``{layer: ||d_l||_2}``."""
        return layer_norms(self)


def _encode_direction(direction: ErasureDirection) -> Encoded:
    return Encoded({f"layer.{l}": v for l, v in direction.vectors.items()}, {"meta": direction.meta}, direction.layers)


def _decode_direction(tensors: dict[str, Tensor], side: Mapping) -> ErasureDirection:
    return ErasureDirection({int(k.split(".")[1]): v for k, v in tensors.items()}, side.get("meta", {}))


register_artifact("direction", ErasureDirection, _encode_direction, _decode_direction)


def _check_acts(name: str, acts: Mapping[int, Tensor]) -> None:
    if not acts:
        raise ValueError(f"{name} is empty: expected {{layer: Tensor (N, d)}}")
    for l, a in acts.items():
        check_rows(f"{name}[{l}]", a, need="at least one prompt per group")


def diff_in_means(
    acts_refusal: Mapping[int, Tensor],
    acts_recall: Mapping[int, Tensor],
    layers: list[int] | None = None,
    meta: dict | None = None,
) -> ErasureDirection:
    """Difference of means per layer, Eq. 3 / Eq. 7: ``d_l = mean(acts_refusal[l]) - mean(acts_recall[l])``.

    Args:
        acts_refusal: ``{layer: (N+, d)}`` activations of the knowledge-erasure group D+ (clean image,
            refused prompt).
        acts_recall: ``{layer: (N-, d)}`` activations of the knowledge-recall group D- (PGD image, jailbreak
            prompt). N+ and N- may differ.
        layers: layers to use; default: those in ``acts_refusal`` (each must also be in ``acts_recall``).
        meta: extra provenance stored on the result.

    Returns:
        :class:`ErasureDirection` with float64 vectors (d,) (means in float64 so that bf16 activations of
        large norm do not lose the small difference).

    Example:
        >>> acts_pos = {3: torch.randn(17, 8) + 1.0}; acts_neg = {3: torch.randn(17, 8)}
        >>> diff_in_means(acts_pos, acts_neg)[3].shape
        torch.Size([8])
    """
    _check_acts("acts_refusal", acts_refusal)
    _check_acts("acts_recall", acts_recall)
    layers = sorted(acts_refusal) if layers is None else list(layers)
    vectors, counts = {}, {}
    for l in layers:
        if l not in acts_refusal or l not in acts_recall:
            raise KeyError(f"layer {l} missing: acts_refusal has {sorted(acts_refusal)}, "
                           f"acts_recall has {sorted(acts_recall)}")
        pos, neg = acts_refusal[l], acts_recall[l]
        if pos.shape[1] != neg.shape[1]:
            raise ValueError(f"layer {l}: hidden sizes differ, acts_refusal {tuple(pos.shape)} vs "
                             f"acts_recall {tuple(neg.shape)}")
        vectors[l] = pos.double().mean(0) - neg.double().mean(0)
        counts[l] = (int(pos.shape[0]), int(neg.shape[0]))
    n_pos, n_neg = counts[layers[0]]
    info = {"method": "diff_in_means", "sign": "refusal_minus_recall", "n_refusal": n_pos, "n_recall": n_neg}
    return ErasureDirection(vectors, {**info, **(meta or {})})


def layer_norms(direction: ErasureDirection) -> dict[int, float]:
    """``{layer: ||d_l||_2}`` (useful to pick layers and to read Fig. 8's ||f(h)|| = |lambda g.h| ||d||)."""
    return {l: float(v.double().norm()) for l, v in direction.vectors.items()}


def cosine_per_layer(a: ErasureDirection, b: ErasureDirection) -> dict[int, float]:
    """Cosine similarity between two directions on their common layers, ``{layer: cos(a_l, b_l)}``.

    A zero vector gives ``nan`` for that layer rather than a silent 0.
    """
    common = [l for l in a.layers if l in b]
    if not common:
        raise ValueError(f"no common layers: {a.layers} vs {b.layers}")
    if a.d != b.d:
        raise ValueError(f"hidden sizes differ: {a.d} vs {b.d}")
    out = {}
    for l in common:
        x, y = a[l].double(), b[l].double().to(a[l].device)
        den = x.norm() * y.norm()
        out[l] = float(x @ y / den) if den > 0 else float("nan")
    return out


def project_out(h: Tensor, r: Tensor) -> Tensor:
    """Remove the component along r: ``h - (h . r_hat) r_hat`` with ``r_hat = r / ||r||``.

    The "ablate refusal" causal check (Arditi et al.): with the direction projected out of every layer the
    model should stop refusing.

    Args:
        h: activations (..., d), any float dtype.
        r: direction (d,).

    Returns:
        Tensor (..., d) in h's dtype; the product is computed in float32 or better.
    """
    if r.ndim != 1 or h.shape[-1] != r.shape[0]:
        raise ValueError(f"project_out: h (..., d) and r (d,) must agree, got h {tuple(h.shape)}, r {tuple(r.shape)}")
    cdt = torch.promote_types(h.dtype, torch.float32)
    r = r.to(device=h.device, dtype=cdt)
    n = r.norm()
    if n == 0:
        raise ValueError("project_out: r is the zero vector")
    r_hat = r / n
    x = h.to(cdt)
    return (x - (x @ r_hat).unsqueeze(-1) * r_hat).to(h.dtype)
