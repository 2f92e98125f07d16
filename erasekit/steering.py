"""Input-aware steering (paper Eq. 13) per layer: the fitted maps' container, the hooks' operators, and the ablation
variants (the MLP map of Appendix I, fitted in :mod:`erasekit.mlp_map`; input-unaware constant push, Eq. 4;
directional ablation).

The rank-one gates themselves and their fits (Eq. 10-12 and erasekit's contrastive gate) are in
:mod:`erasekit.gates`; their public names are re-exported here.

Operators. :meth:`InputAwareSteerer.operators` returns ``{layer: op}`` where ``op(h)`` maps activations
(..., d) to the additive change (..., d) *with the strength already applied*: ``h~ = h + op(h)`` with
``op(h) = lambda * f(h)`` (Eq. 13). The same convention holds for :func:`constant_operators` (Eq. 4) and
:func:`ablation_operator`, so a hook module just adds what an operator returns.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .artifacts import ArtifactError, Encoded, register_artifact
from .directions import ErasureDirection
from .gates import (
    GATES,
    InputAwareMap,
    compute_dtype,
    dense_gate_reference,
    fit_contrastive_gate,
    fit_gate,
    fit_input_aware,
)
from .hooks import Operator
from .locate import Locator
from .mlp_map import MLPMap, fit_mlp

__all__ = [
    "InputAwareMap",
    "MLPMap",
    "InputAwareSteerer",
    "GATES",
    "GatedOperator",
    "fit_input_aware",
    "fit_contrastive_gate",
    "fit_gate",
    "dense_gate_reference",
    "fit_mlp",
    "fit_steerer",
    "fit_mlp_steerer",
    "constant_operator",
    "constant_operators",
    "ablation_operator",
]


@dataclass
class InputAwareSteerer:
    """Per-layer container of fitted maps (:class:`InputAwareMap` or :class:`MLPMap`).

    Attributes:
        maps: ``{layer: map}``; each map is callable on (..., d).
        meta: shared hyperparameters (gamma, null_space, model id, ...).
    """

    maps: dict[int, InputAwareMap | MLPMap]
    meta: dict = field(default_factory=dict)
    locators: dict[int, Locator] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.maps:
            raise ValueError("InputAwareSteerer needs at least one layer")
        self.maps = {int(l): m for l, m in sorted(self.maps.items())}
        self.locators = {int(l): c for l, c in self.locators.items()}
        extra = set(self.locators) - set(self.maps)
        if extra:
            raise ValueError(f"locators at layers {sorted(extra)} that have no map")

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
            out[l] = _scaled(m, float(lam), self.floors.get(l), self.locators.get(l))
        return out

    @property
    def floors(self) -> dict[int, float]:
        """Per-layer gate floors tau (:meth:`with_floors`); empty: the plain linear gate of Eq. 13."""
        return {int(l): float(t) for l, t in self.meta.get("floors", {}).items()}

    def with_floors(self, H_tune: Mapping[int, Tensor], quantile: float = 0.9) -> InputAwareSteerer:
        """A copy whose gates read 0 up to the ``quantile`` of their values on held-out retain activations.

        erasekit's addition to the linear gate: a retain question whose gate lands in the retain distribution's
        bulk gets no push at all, instead of a push proportional to its (small but non-zero) gate. tau_l is the
        ``quantile`` of s_l(h) over ``H_tune[l]`` — retain questions of profiles that are neither in H_r nor
        scored (the ``tune`` role of :mod:`erasekit.heldout`) — capped at 0.9 so that a forget question at s = 1
        is still pushed. Rank-one maps only.
        """
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        floors = {}
        for l, m in self.maps.items():
            if not isinstance(m, InputAwareMap):
                raise TypeError(f"layer {l}: floors need rank-one gates, got {type(m).__name__}")
            if l not in H_tune:
                raise KeyError(f"layer {l} not in H_tune (has {sorted(H_tune)})")
            s = m.gate_value(H_tune[l])
            floors[str(l)] = min(float(torch.quantile(s.double(), quantile)), 0.9)
        # A cache key in meta describes the steerer without these floors: drop it (the copy is keyed by value).
        meta = {k: v for k, v in self.meta.items() if k != "cache_key"}
        return InputAwareSteerer(dict(self.maps), {**meta, "floors": floors, "floor_quantile": quantile},
                                 dict(self.locators))

    def gate_values(self, acts: Mapping[int, Tensor]) -> dict[int, Tensor]:
        """``{layer: g_l . h}`` for activations ``{layer: (..., d)}`` (rank-one maps only): a per-query diagnostic."""
        out = {}
        for l, h in acts.items():
            m = self.maps.get(l)
            if isinstance(m, InputAwareMap):
                out[l] = m.gate_value(h)
        return out

    def to(self, *args, **kwargs) -> InputAwareSteerer:
        return InputAwareSteerer({l: m.to(*args, **kwargs) for l, m in self.maps.items()}, dict(self.meta),
                                 {l: c.to(*args, **kwargs) for l, c in self.locators.items()})

    def state_bytes(self) -> int:
        """Bytes held by the fitted state (rank one: two d-vectors per layer)."""
        return sum(m.state_bytes() for m in self.maps.values())

    def dense_state_bytes(self, dtype: torch.dtype = torch.float32) -> int:
        """Bytes a dense d x d W P per layer would take in ``dtype`` (the authors' storage), for comparison."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return len(self.maps) * self.d * self.d * itemsize


# Saved as a "steerer" artifact: each layer's map under its map kind, tensors named layer.{l}.{field}.
_MAP_KINDS: dict[str, tuple[type, tuple[str, ...]]] = {"rank_one": (InputAwareMap, ("direction", "gate")),
                                                       "mlp": (MLPMap, ("w1", "b1", "w2", "b2"))}


def _encode_steerer(steerer: InputAwareSteerer) -> Encoded:
    tensors, maps = {}, {}
    for l, m in steerer.maps.items():
        kind = next((k for k, (cls, _) in _MAP_KINDS.items() if isinstance(m, cls)), None)
        if kind is None:
            raise TypeError(f"layer {l}: cannot save a map of type {type(m).__name__}")
        tensors.update({f"layer.{l}.{name}": t for name, t in m.tensors().items()})
        maps[str(l)] = {"kind": kind, "meta": m.meta}
    locators = {}
    for l, c in steerer.locators.items():
        tensors.update({f"locator.{l}.{name}": t for name, t in c.tensors().items()})
        locators[str(l)] = c.meta
    side = {"meta": steerer.meta, "maps": maps, **({"locators": locators} if locators else {})}
    return Encoded(tensors, side, steerer.layers)


def _decode_steerer(tensors: dict[str, Tensor], side: Mapping) -> InputAwareSteerer:
    maps = {}
    for l_str, info in side["maps"].items():
        if info["kind"] not in _MAP_KINDS:
            raise ArtifactError(f"layer {l_str}: unknown map kind {info['kind']!r} (expected {sorted(_MAP_KINDS)})")
        cls, names = _MAP_KINDS[info["kind"]]
        maps[int(l_str)] = cls(meta=info["meta"], **{name: tensors[f"layer.{l_str}.{name}"] for name in names})
    locators = {int(l): Locator(tensors[f"locator.{l}.weight"], tensors[f"locator.{l}.mean"], meta)
                for l, meta in side.get("locators", {}).items()}
    return InputAwareSteerer(maps, side.get("meta", {}), locators)


register_artifact("steerer", InputAwareSteerer, _encode_steerer, _decode_steerer)


@dataclass
class GatedOperator:
    """``op(h) = strength * s(h) * push`` with the scalar gate ``s(h) = gate . h``: Eq. 13 for one layer.

    Callable like any operator (h (..., d) -> additive change (..., d)); :func:`erasekit.hooks.steer` also uses
    its parts: ``read="anchor"`` evaluates one layer's gate and pushes every layer's direction with it, and
    ``gate_range`` (the gate values seen on the fitting data, widened) is what the cascade warning compares with.
    """

    map: InputAwareMap
    strength: float
    gate_range: tuple[float, float] | None = None
    floor: float | None = None
    locator: Locator | None = None  # read the gate at the locator's position instead of the last prompt token

    def raw_gate(self, h: Tensor) -> Tensor:
        """s(h) = g . h, before the floor."""
        return self.map.gate_value(h)

    def gate_value(self, h: Tensor) -> Tensor:
        """The gate as applied: s(h), or with a floor tau, max(s - tau, 0) / (1 - tau) (0 below the floor, 1 at 1)."""
        s = self.map.gate_value(h)
        if self.floor is None:
            return s
        return (s - self.floor).clamp(min=0) / (1.0 - self.floor)

    def push(self, s: Tensor, like: Tensor) -> Tensor:
        """strength * s * direction for gate values s (...,), in ``like``'s dtype/device."""
        dvec = self.map.direction.to(device=like.device, dtype=s.dtype)
        return (self.strength * s.unsqueeze(-1) * dvec).to(like.dtype)

    def __call__(self, h: Tensor) -> Tensor:
        return self.push(self.gate_value(h), h)


def _gate_range(meta: Mapping, widen: float = 0.5) -> tuple[float, float] | None:
    """The fitting data's gate range [min, max] over forget and retain rows, widened by ``widen`` x its span."""
    keys = ("gate_forget_min", "gate_forget_max", "gate_retain_min", "gate_retain_max")
    vals = [meta[k] for k in keys if k in meta]
    if len(vals) < 2:
        return None
    lo, hi = min(vals), max(vals)
    span = hi - lo
    return lo - widen * span, hi + widen * span


def _scaled(fn: Callable[[Tensor], Tensor], lam: float, floor: float | None = None,
            locator: Locator | None = None) -> Operator:
    if isinstance(fn, InputAwareMap):
        return GatedOperator(fn, lam, _gate_range(fn.meta), floor, locator)

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
    gate: str = "nullspace",
    gamma_scale: str = "absolute",
    alpha: float = 1.0,
) -> InputAwareSteerer:
    """Fit a rank-one gate (:func:`fit_gate`) at every layer.

    The defaults reproduce the paper (null-space gate, absolute gamma); ``gate="contrastive"`` with
    ``gamma_scale="relative"`` is erasekit's gate. Layers where the direction is exactly zero are skipped with a
    warning (e.g. layer 0 when every prompt ends in the same template token: nothing to push along).

    Args:
        H_forget: ``{layer: (N_f, d)}``; H_retain: ``{layer: (N_r, d)}``, read at the same site (decoder-layer
            input) where the steering will be applied.
        direction: :class:`ErasureDirection`.
        gamma, null_space, rtol, gamma_scale, alpha: as in :func:`fit_gate`.
        layers: default: all layers of ``direction``.

    Returns:
        :class:`InputAwareSteerer`; ``.operators(lam)`` gives the hooks' operators.
    """
    layers = _layers_for(direction, layers, ("H_forget", H_forget), ("H_retain", H_retain))
    zero = [l for l in layers if not bool(direction[l].abs().max() > 0)]
    if zero:
        warnings.warn(f"direction is exactly zero at layers {zero}; not steering them", stacklevel=2)
        layers = [l for l in layers if l not in zero]
        if not layers:
            raise ValueError("the direction is zero at every requested layer: nothing to steer")
    maps = {}
    for l in layers:
        try:
            maps[l] = fit_gate(H_forget[l], H_retain[l], direction[l], gate, gamma, gamma_scale, alpha, null_space,
                               rtol)
        except ValueError as e:
            raise ValueError(f"layer {l}: {e}") from e
    meta = {"kind": "rank_one", "gate": gate, "gamma": float(gamma), "gamma_scale": gamma_scale,
            "layers": layers, "direction_meta": dict(direction.meta)}
    meta.update({"alpha": float(alpha)} if gate == "contrastive" else {"null_space": null_space})
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
        cdt = compute_dtype(h)
        r = r_hat.to(device=h.device, dtype=cdt)
        return (-(h.to(cdt) @ r).unsqueeze(-1) * r).to(h.dtype)

    return op
