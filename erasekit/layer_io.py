"""What every hook on a decoder layer needs: valid layer indices, the layer's hidden-state input read and replaced
wherever the family passes it, a forward's keywords without the KV cache, hooks registered and removed as one, and
the exception that ends a forward early. The layer convention (index l = the input of decoder layer l) and the
interventions built on these: :mod:`erasekit.hooks`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from torch import Tensor

from .models import Adapter

__all__ = ["check_layers", "layer_input", "with_layer_input", "without_cache", "registered", "StopForward",
           "CACHE_KWARGS"]

# The KV cache's keyword across transformers versions (4.x: past_key_values / past_key_value, 5.x: cache).
CACHE_KWARGS = ("past_key_values", "past_key_value", "cache")


class StopForward(Exception):
    """Raised by a hook to end a forward pass at its layer (the layers after it are not needed); the code that
    registered the hook catches it."""


def check_layers(adapter: Adapter, layers: Iterable[int] | None) -> list[int]:
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


def layer_input(args: tuple, kwargs: dict) -> Tensor:
    """The hidden states a decoder layer was called with (positional or ``hidden_states=``)."""
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    raise RuntimeError("decoder layer called without hidden_states (neither positional nor keyword)")


def without_cache(kwargs: dict) -> dict:
    """A forward's keyword arguments for an extra pass that must not touch the KV cache: ``use_cache=False`` and
    the cache keyword (whichever name this transformers version uses) set to None."""
    out = {**kwargs, "use_cache": False}
    for name in CACHE_KWARGS:
        if name in out:
            out[name] = None
    return out


def with_layer_input(args: tuple, kwargs: dict, hidden: Tensor) -> tuple[tuple, dict]:
    """The layer call's (args, kwargs) with its hidden states replaced by ``hidden``, where they were passed."""
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


@contextmanager
def registered(handles_factory: Callable[[], Iterable]) -> Iterator[None]:
    """Register hooks via the factory and remove exactly those handles on exit (nesting-safe).

    Example::

        with registered(lambda: (m.register_forward_pre_hook(fn) for m in modules)):
            model(**batch)
    """
    handles: list = []
    try:
        # One at a time, so a failure half-way still removes the hooks registered before it.
        for handle in handles_factory():
            handles.append(handle)
        yield
    finally:
        for handle in handles:
            handle.remove()
