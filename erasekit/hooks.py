"""Activation capture and steering on the residual stream at decoder-layer inputs.

Layer convention (used everywhere in erasekit: directions, H_f, H_r, steering): layer index ``l`` in 0..L-1 is the
residual stream at the INPUT of decoder layer ``l`` (``adapter.layers[l]``). For LLaVA, Qwen2.5-VL and plain LMs
this is ``output_hidden_states=True`` -> ``hidden_states[l]``. For Qwen3-VL it differs from HF's
``hidden_states[l]`` at image positions of the deepstack layers (HF records layer outputs before the deepstack
visual features are added; the layer input contains them). Reading and steering use the same point, so a
direction read at ``l`` is applied at ``l``.

Every intervention is a context manager that registers forward (pre-)hooks on the decoder layers and removes
exactly its own hooks in ``finally`` (also after an exception), so contexts nest. Modules are never replaced.
Decoder layers may receive ``hidden_states`` positionally or as a keyword and may return a tensor (transformers
5.x) or a tuple: capture reads the layer's (possibly steered) input, steering rewrites it.

Sign convention: ``steer`` applies ``h~ = h + scale * operator(h)``; an operator returns the additive change
(..., d). erasekit.steering's operators already include the strength lambda, so use ``scale=1`` with them.

Example::

    with steer(adapter, steerer.operators(0.3), mode="prefill"):
        answers = adapter.generate(adapter.encode(questions, images), max_new_tokens=50)
    acts = collect_activations(adapter, questions, images, layers=[8, 16])   # {8: (N, d), 16: (N, d)}
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .capture import CAPTURE_PASSES, capture, collect_activations
from .layer_io import StopForward, check_layers, layer_input, registered, with_layer_input, without_cache
from .models import Adapter

__all__ = ["Operator", "check_layers", "registered", "layer_input", "with_layer_input", "without_cache", "capture",
           "collect_activations", "CAPTURE_PASSES", "steer", "STEER_MODES", "READ_MODES", "FROZEN_ROUTES"]

Operator = Callable[[Tensor], Tensor]
STEER_MODES = ("prefill", "persist", "all", "constant")
READ_MODES = ("steered", "frozen", "anchor")
FROZEN_ROUTES = ("fork", "pass")


# ----------------------------------------------------------------------------------------------------------------
# steering


def _raw_gate(op: Any, h: Tensor) -> Tensor:
    """The gate before any floor (what the fitting data's range describes)."""
    return op.raw_gate(h) if hasattr(op, "raw_gate") else op.gate_value(h)


@contextmanager
def steer(
    adapter: Adapter,
    operators: Mapping[int, Operator | Tensor],
    mode: str = "prefill",
    scale: float = 1.0,
    read: str = "steered",
    anchor: int | None = None,
    record: dict | None = None,
    frozen_route: str = "fork",
) -> Iterator[None]:
    """Add ``scale * operator(h)`` to the input of each steered layer: ``h~ = h + scale * operator(h)``.

    Args:
        adapter: a ModelAdapter.
        operators: ``{layer: op}`` with ``op: (..., d) -> (..., d)`` returning the additive change; a (d,) tensor
            is shorthand for the constant operator returning that vector.
        mode:
            "prefill" (the authors' rule): on a pass with sequence length > 1, delta = op(h[:, -1]) from the last
                prompt token's state, the same (B,d) vector added to every position; passes of length 1 (decode
                steps with KV cache) are untouched, the effect flows through the cache. A 1-token prompt is
                therefore never steered.
            "persist" (erasekit): the prefill's rule, and the same per-prompt delta is also added at every decode
                step, so the generated tokens are pushed too, not only the prompt they attend to (the gate decides
                once, from the last prompt token). Measured on the organism with erasekit's gate (λ 2-8): the refusals
                the prefill push starts degrade into loops ("I can't I I photography ..."), so no default uses it.
            "all": delta = op(h) per position, on every pass (prefill and every decode step).
            "constant": delta = op(zeros(d)), the same vector at every position on every pass (input-unaware
                ablation: give constant operators).
        scale: global multiplier on every delta.
        read: which state an input-aware operator reads, in "prefill" mode (METHOD.md §8, the cascade):
            "steered" (the authors): each layer's own incoming state, already pushed by the steered layers
                before it, so a gate can read values far outside what it was fitted on;
            "frozen": the same layer's state without any steering: the gates read exactly the activations they
                were fitted on. How it is computed is ``frozen_route``; it costs the steered span's layers once
                more per generate call (the fork);
            "anchor": one gate, that of layer ``anchor`` (which must be <= every steered layer, so its state is
                still unsteered), read once and used to push every steered layer along its own direction:
                delta_l = op_l.push(s_anchor). Needs :class:`erasekit.steering.GatedOperator` operators and no
                extra pass.
        frozen_route: for ``read="frozen"``: "fork" (default) forks the unsteered stream where it first differs,
            at the first steered layer's input: that layer's pre-hook runs the layers up to the last steered one
            unsteered (same inputs, same keyword arguments, no KV cache) and then lets the steered pass go on, so
            the extra cost is the steered span only; "pass" runs a whole extra unsteered prefill from the embeddings
            up to the last steered layer first. Both give the same gate values (the layers below the first steered
            one see the same input either way; tests/test_hooks.py checks equality). "fork" falls back to "pass"
            when the layers of the span declare different attention types (e.g. sliding-window layers, whose
            masks differ per layer) or the model writes into the stream between them
            (``adapter.layers_chain_from``: Qwen3-VL's DeepStack in its first layers).
        anchor: the reading layer for ``read="anchor"`` (its operator must be among ``operators``).
        record: if a dict, the gate values each gated operator reads on every prefill pass are appended to
            ``record[layer]`` (raw, before any floor; a diagnostic of the cascade).

    Gated operators carry the range of gate values seen on their fitting data; with read="steered" a gate read far
    outside it (the cascade) triggers one warning per context.

    The hooks are forward pre-hooks; contexts nest (an inner context's layer inputs include outer steering when
    registered on earlier layers; on the same layer, hooks run in the order the contexts were entered).
    """
    if mode not in STEER_MODES:
        raise ValueError(f"mode must be one of {STEER_MODES}, got {mode!r}")
    if read not in READ_MODES:
        raise ValueError(f"read must be one of {READ_MODES}, got {read!r}")
    if read != "steered" and mode not in ("prefill", "persist"):
        raise ValueError(f"read={read!r} applies to modes 'prefill' and 'persist' only (got mode={mode!r})")
    if frozen_route not in FROZEN_ROUTES:
        raise ValueError(f"frozen_route must be one of {FROZEN_ROUTES}, got {frozen_route!r}")
    layer_ids = check_layers(adapter, operators.keys())
    modules = adapter.layers
    span = [modules[j] for j in range(layer_ids[0], layer_ids[-1] + 1)]
    if read == "frozen" and frozen_route == "fork" and (
            len({getattr(m, "attention_type", None) for m in span}) > 1
            or not getattr(adapter, "layers_chain_from", lambda first: True)(layer_ids[0])):
        frozen_route = "pass"

    def as_operator(op: Operator | Tensor) -> Operator:
        if isinstance(op, Tensor):
            if op.ndim != 1:
                raise ValueError(f"a tensor operator must be a (d,) vector, got {tuple(op.shape)}")
            vec = op
            return lambda h: vec.to(device=h.device, dtype=h.dtype).expand_as(h)
        if not callable(op):
            raise TypeError(f"operator must be callable or a (d,) tensor, got {type(op).__name__}")
        return op

    ops = {l: as_operator(operators[l]) for l in layer_ids}
    if read == "anchor":
        if anchor is None or int(anchor) not in ops:
            raise ValueError(f"read='anchor' needs anchor= one of the steered layers {layer_ids}, got {anchor!r}")
        anchor = int(anchor)
        if anchor != layer_ids[0]:
            raise ValueError(f"anchor layer {anchor} must be the first steered layer ({layer_ids[0]}): its state "
                             "has to be read before any steering reaches it")
        if not all(hasattr(o, "push") and hasattr(o, "gate_value") for o in ops.values()):
            raise TypeError("read='anchor' needs gated operators (erasekit.steering.GatedOperator, e.g. from "
                            "InputAwareSteerer.operators)")
    # Gate values outside their fitted range are collected as device tensors and checked once, when the context
    # exits: a check per layer and pass would force a device synchronisation at every steered layer.
    state = {"inner": False, "frozen": {}, "anchor": None, "outside": [], "held": {}, "mask": None}
    located = any(getattr(o, "locator", None) is not None for o in ops.values())

    def read_state(op, h: Tensor) -> Tensor:
        """The state a gate reads: the last prompt token, or its locator's position (erasekit.locate)."""
        loc = getattr(op, "locator", None)
        if loc is None:
            return h[:, -1, :]
        mask = state["mask"]
        if mask is not None and mask.shape != h.shape[:2]:
            mask = None
        return loc.read(h, mask)

    def check_range(op, s: Tensor, l: int) -> None:
        if record is not None and not state["inner"]:
            record.setdefault(l, []).append(s.detach().float().cpu())
        rng = getattr(op, "gate_range", None)
        # Only the authors' reading has a cascade; frozen / anchor gates read unsteered states, where a value outside
        # the fitted range means prompts unlike the fitting data, not upstream steering.
        if rng is None or read != "steered" or state["inner"] or len(state["outside"]) >= 4096:
            return
        lo, hi = rng
        s = s.detach()
        state["outside"].append((l, lo, hi, ((s < lo) | (s > hi)).any(), s.min(), s.max()))

    def warn_cascade() -> None:
        for l, lo, hi, out, smin, smax in state["outside"]:
            if bool(out):
                warnings.warn(
                    f"gate at layer {l} read {float(smin):.3g}..{float(smax):.3g} during steering, outside the range "
                    f"{lo:.3g}..{hi:.3g} seen on its fitting data: upstream steering inflates it (the cascade). "
                    "Use read='frozen' or 'anchor', fewer steered layers, or a larger gamma.", stacklevel=4)
                return

    def make_hook(l: int, op: Operator):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            h = layer_input(args, kwargs)
            if state["inner"]:  # the extra unsteered pass of read="frozen": record, do not touch
                state["frozen"][l] = read_state(op, h)
                if l == layer_ids[-1]:
                    raise StopForward
                return None
            if mode in ("prefill", "persist"):
                if h.shape[1] <= 1:  # a decode step: "prefill" leaves it to the KV cache, "persist" pushes it too
                    held = state["held"].get(l) if mode == "persist" else None
                    if held is None or held.shape[0] != h.shape[0]:
                        return None
                    return with_layer_input(args, kwargs, h + held.to(h.dtype))
                if read == "frozen" and frozen_route == "fork" and l == layer_ids[0]:
                    fork_unsteered(args, kwargs)
                last = read_state(op, h) if read != "frozen" else state["frozen"][l]
                if hasattr(op, "gate_value"):
                    if read == "anchor":
                        if l == anchor:
                            state["anchor"] = ops[anchor].gate_value(last)
                            check_range(ops[anchor], _raw_gate(ops[anchor], last), l)
                        s = state["anchor"]
                    else:
                        s = op.gate_value(last)
                        check_range(op, _raw_gate(op, last), l)
                    delta = op.push(s, h).unsqueeze(1)
                else:
                    delta = op(last).unsqueeze(1)  # (B,1,d), broadcast over positions
                if mode == "persist":
                    state["held"][l] = scale * delta.detach()
            elif mode == "all":
                delta = op(h)
            else:
                delta = op(h.new_zeros(h.shape[-1]))  # (d,)
            return with_layer_input(args, kwargs, h + scale * delta.to(h.dtype))

        return hook

    def run_unsteered(run: Callable[[], None]) -> None:
        # The extra unsteered run of read="frozen": the layers' hooks see state["inner"], record each steered
        # layer's reading and stop the run after the last one.
        state["inner"], state["frozen"] = True, {}
        try:
            with torch.no_grad():
                run()
        except StopForward:
            pass
        finally:
            state["inner"] = False

    def fork_unsteered(args: tuple, kwargs: dict) -> None:
        # The input of the first steered layer is still unsteered: run the span unsteered from it, without the KV
        # cache, which only the steered pass may fill.
        kw = without_cache(kwargs)

        def run():
            h = layer_input(args, kwargs)
            for m in span:
                a, k = with_layer_input(args, kw, h)
                out = m(*a, **k)
                h = out[0] if isinstance(out, tuple) else out

        run_unsteered(run)

    def frozen_pass(module: nn.Module, args: tuple, kwargs: dict) -> None:
        # Before every multi-token forward of the whole model (the prefill), run it once unsteered up to the last
        # steered layer and keep each steered layer's last-token input. No KV cache: the real pass builds it.
        if state["inner"]:
            return None
        ids = kwargs.get("input_ids", args[0] if args else None)
        emb = kwargs.get("inputs_embeds")
        seq = (ids if ids is not None else emb).shape[1]
        if seq <= 1:
            return None
        inner_kwargs = without_cache(kwargs)  # the real pass builds the KV cache, not this one
        run_unsteered(lambda: module(*args, **inner_kwargs))
        return None

    def remember_mask(module: nn.Module, args: tuple, kwargs: dict) -> None:
        # a located read skips left padding: keep the prefill's attention mask (B, T)
        mask = kwargs.get("attention_mask")
        if isinstance(mask, Tensor) and mask.ndim == 2 and mask.shape[1] > 1 and not state["inner"]:
            state["mask"] = mask
        return None

    def handles():
        if located:
            yield adapter.model.register_forward_pre_hook(remember_mask, with_kwargs=True)
        if read == "frozen" and frozen_route == "pass":
            yield adapter.model.register_forward_pre_hook(frozen_pass, with_kwargs=True)
        for l in layer_ids:
            yield modules[l].register_forward_pre_hook(make_hook(l, ops[l]), with_kwargs=True)

    with registered(handles):
        yield
    warn_cascade()
