"""Reading activations: :func:`capture` records decoder-layer inputs on every forward pass inside it, and
:func:`collect_activations` batches prompts (left padded) and stops each forward after the last layer it needs.
The layer convention: :mod:`erasekit.hooks`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .layer_io import StopForward, check_layers, layer_input, registered
from .models import Adapter

__all__ = ["CAPTURE_PASSES", "capture", "collect_activations"]


CAPTURE_PASSES = ("all", "prefill", "decode")


@contextmanager
def capture(
    adapter: Adapter, layers: Iterable[int] | None = None, position: str = "all", detach: bool = True,
    passes: str = "all",
) -> Iterator[dict[int, list[Tensor]]]:
    """Record the input of the given decoder layers on every forward pass inside the context.

    Args:
        adapter: a ModelAdapter (anything with ``.layers``).
        layers: layer indices (None: all).
        position: "all" records (B,T,d) per pass; "last" records the last position (B,d).
        detach: detach from the autograd graph (False keeps it, e.g. for losses on activations).
        passes: which forward passes to record during ``generate`` (with a KV cache): "all" (the prefill, then
            one entry per decode step), "prefill" (passes over more than one position: the prompt) or "decode"
            (single-position passes: one per generated token after the first). A plain forward call is a prefill.

    Yields:
        ``{layer: [tensor per recorded pass]}``: with ``passes="all"``, generate() gives entry 0 for the prefill
        ((B, T_prompt, d)) and entry k for decode step k ((B, 1, d)). The recorded input is what the layer actually
        receives, i.e. after any steering hooks, regardless of the order in which contexts were entered; the extra
        unsteered run of ``steer(read="frozen")`` is recorded too at the layers it runs (it is a prefill: the
        steered span with the default fork, every layer up to the span's last with ``frozen_route="pass"``).
    """
    if position not in ("all", "last"):
        raise ValueError(f"position must be 'all' or 'last', got {position!r}")
    if passes not in CAPTURE_PASSES:
        raise ValueError(f"passes must be one of {CAPTURE_PASSES}, got {passes!r}")
    layers = check_layers(adapter, layers)
    records: dict[int, list[Tensor]] = {l: [] for l in layers}
    modules = adapter.layers

    def make_hook(l: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            # A forward (post) hook sees the args after every pre-hook ran: the steered input when steering.
            h = layer_input(args, kwargs)
            if passes != "all" and (h.shape[1] > 1) != (passes == "prefill"):
                return
            h = h[:, -1, :] if position == "last" else h
            records[l].append(h.detach() if detach else h)

        return hook

    with registered(lambda: (modules[l].register_forward_hook(make_hook(l), with_kwargs=True) for l in layers)):
        yield records


def collect_activations(
    adapter: Adapter,
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
        raise StopForward

    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="activations", disable=not progress, total=len(starts)):
        batch_images = None if images is None else images[start : start + batch_size]
        batch = adapter.encode(questions[start : start + batch_size], images=batch_images, chat=chat)
        with torch.no_grad(), capture(adapter, layers, position=position) as rec:
            # Layers after the last requested one cannot change its input: skip them.
            with registered(lambda: [last_module.register_forward_hook(stop)]):
                try:
                    adapter.model(**batch, use_cache=False)
                except StopForward:
                    pass
        mask = batch["attention_mask"].bool()
        for l in layers:
            (h,) = rec[l]
            h = h[mask.to(h.device)] if position == "all" else h
            out[l].append(h.float().cpu())
    return {l: torch.cat(v) for l, v in out.items()}
