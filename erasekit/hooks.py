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

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Operator", "check_layers", "capture", "collect_activations", "steer", "STEER_MODES"]

Operator = Callable[[Tensor], Tensor]
STEER_MODES = ("prefill", "all", "constant")


def check_layers(adapter: Any, layers: Iterable[int] | None) -> list[int]:
    """Validate layer indices against ``adapter.num_layers``; None means all layers. Returns a sorted list."""
    n = len(adapter.layers)
    if layers is None:
        return list(range(n))
    out = sorted({int(l) for l in layers})
    bad = [l for l in out if not 0 <= l < n]
    if bad:
        raise ValueError(
            f"layer index {bad} out of range: valid layers are 0..{n - 1} (index l = input of decoder layer l; "
            "negative indices are not accepted)"
        )
    return out


def _get_hidden(args: tuple, kwargs: dict) -> Tensor:
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    raise RuntimeError("decoder layer called without hidden_states (neither positional nor keyword)")


def _set_hidden(args: tuple, kwargs: dict, hidden: Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


@contextmanager
def _registered(handles_factory: Callable[[], Iterable]) -> Iterator[None]:
    """Register hooks via the factory and remove exactly those handles on exit (nesting-safe)."""
    handles: list = []
    try:
        # One at a time, so a failure half-way still removes the hooks registered before it.
        for handle in handles_factory():
            handles.append(handle)
        yield
    finally:
        for handle in handles:
            handle.remove()


# ----------------------------------------------------------------------------------------------------------------
# capture


@contextmanager
def capture(
    adapter: Any, layers: Iterable[int] | None = None, position: str = "all", detach: bool = True
) -> Iterator[dict[int, list[Tensor]]]:
    """Record the input of the given decoder layers on every forward pass inside the context.

    Args:
        adapter: a ModelAdapter (anything with ``.layers``).
        layers: layer indices (None: all).
        position: "all" records (B,T,d) per pass; "last" records the last position (B,d).
        detach: detach from the autograd graph (False keeps it, e.g. for losses on activations).

    Yields:
        ``{layer: [tensor per forward pass]}``; generate() gives one entry for the prefill and one per decode step.
        The recorded input is what the layer actually receives, i.e. after any steering hooks, regardless of
        the order in which contexts were entered.
    """
    if position not in ("all", "last"):
        raise ValueError(f"position must be 'all' or 'last', got {position!r}")
    layers = check_layers(adapter, layers)
    records: dict[int, list[Tensor]] = {l: [] for l in layers}
    modules = adapter.layers

    def make_hook(l: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            # A forward (post) hook sees the args after every pre-hook ran: the steered input when steering.
            h = _get_hidden(args, kwargs)
            h = h[:, -1, :] if position == "last" else h
            records[l].append(h.detach() if detach else h)

        return hook

    with _registered(lambda: (modules[l].register_forward_hook(make_hook(l), with_kwargs=True) for l in layers)):
        yield records


class _StopForward(Exception):
    """Raised after the last needed layer to skip the rest of the forward pass."""


def collect_activations(
    adapter: Any,
    questions: list[str],
    images: Any = None,
    layers: Iterable[int] | None = None,
    position: str = "last",
    batch_size: int = 8,
    progress: bool = True,
    chat: bool = True,
) -> dict[int, Tensor]:
    """Batched activations at the input of each layer, float32 on CPU.

    Args:
        adapter: a ModelAdapter.
        questions: N prompts; images: None, a list of N (PIL / (3,H,W) tensor / None) or a tensor (N,3,H,W).
        layers: layer indices (None: all layers 0..L-1).
        position: "last" -> one row per prompt (its last prompt token; rows are LEFT padded so this is a real
            token); "all" -> one row per real (non-pad) token, prompts concatenated in order.
        batch_size: prompts per forward pass. progress: show a tqdm bar. chat: apply the chat template.

    Returns:
        ``{layer: Tensor (N, d)}`` (N = number of prompts for "last", of real tokens for "all"), float32, CPU.
    """
    from tqdm.auto import tqdm

    if position not in ("all", "last"):
        raise ValueError(f"position must be 'all' or 'last', got {position!r}")
    layers = check_layers(adapter, layers)
    n = len(questions)
    if images is not None and len(images) != n:
        raise ValueError(f"got {len(images)} images for {n} questions")
    out: dict[int, list[Tensor]] = {l: [] for l in layers}
    last_module = adapter.layers[max(layers)]

    def stop(module: nn.Module, args: tuple, output: Any) -> None:
        raise _StopForward

    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="activations", disable=not progress, total=len(starts)):
        batch_images = None if images is None else images[start : start + batch_size]
        batch = adapter.encode(questions[start : start + batch_size], images=batch_images, chat=chat)
        with torch.no_grad(), capture(adapter, layers, position=position) as rec:
            # Layers after the last requested one cannot change its input: skip them.
            with _registered(lambda: [last_module.register_forward_hook(stop)]):
                try:
                    adapter.model(**batch, use_cache=False)
                except _StopForward:
                    pass
        mask = batch["attention_mask"].bool()
        for l in layers:
            (h,) = rec[l]
            h = h[mask.to(h.device)] if position == "all" else h
            out[l].append(h.float().cpu())
    return {l: torch.cat(v) for l, v in out.items()}


# ----------------------------------------------------------------------------------------------------------------
# steering


@contextmanager
def steer(
    adapter: Any,
    operators: Mapping[int, Operator | Tensor],
    mode: str = "prefill",
    scale: float = 1.0,
) -> Iterator[None]:
    """Add ``scale * operator(h)`` to the input of each steered layer: ``h~ = h + scale * operator(h)``.

    Args:
        adapter: a ModelAdapter.
        operators: ``{layer: op}`` with ``op: (..., d) -> (..., d)`` returning the additive change; a (d,) tensor
            is shorthand for the constant operator returning that vector.
        mode:
            "prefill" (the authors' rule): on a pass with sequence length > 1, delta = op(h[:, -1]) from the last
                prompt token's (already upstream-steered) state, the same (B,d) vector added to every position;
                passes of length 1 (decode steps with KV cache) are untouched, the effect flows through the cache.
                A 1-token prompt is therefore never steered.
            "all": delta = op(h) per position, on every pass (prefill and every decode step).
            "constant": delta = op(zeros(d)), the same vector at every position on every pass (input-unaware
                ablation: give constant operators).
        scale: global multiplier on every delta.

    The hooks are forward pre-hooks; contexts nest (an inner context's layer inputs include outer steering when
    registered on earlier layers; on the same layer, hooks run in the order the contexts were entered).
    """
    if mode not in STEER_MODES:
        raise ValueError(f"mode must be one of {STEER_MODES}, got {mode!r}")
    layer_ids = check_layers(adapter, operators.keys())
    modules = adapter.layers

    def as_operator(op: Operator | Tensor) -> Operator:
        if isinstance(op, Tensor):
            if op.ndim != 1:
                raise ValueError(f"a tensor operator must be a (d,) vector, got {tuple(op.shape)}")
            vec = op
            return lambda h: vec.to(device=h.device, dtype=h.dtype).expand_as(h)
        if not callable(op):
            raise TypeError(f"operator must be callable or a (d,) tensor, got {type(op).__name__}")
        return op

    def make_hook(op: Operator):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            h = _get_hidden(args, kwargs)
            if mode == "prefill":
                if h.shape[1] <= 1:
                    return None  # decode step: leave it to the KV cache
                delta = op(h[:, -1, :]).unsqueeze(1)  # (B,1,d), broadcast over positions
            elif mode == "all":
                delta = op(h)
            else:
                delta = op(h.new_zeros(h.shape[-1]))  # (d,)
            return _set_hidden(args, kwargs, h + scale * delta.to(h.dtype))

        return hook

    ops = {l: as_operator(operators[l]) for l in layer_ids}
    with _registered(
        lambda: (modules[l].register_forward_pre_hook(make_hook(ops[l]), with_kwargs=True) for l in layer_ids)
    ):
        yield
