"""Cache keys: value-based, order-free, exact; the same function artifacts re-export."""

import numpy as np
import pytest
import torch

from erasekit.cache_keys import cache_key
from erasekit.directions import ErasureDirection


def _direction():
    return ErasureDirection({2: torch.arange(8.0), 5: -torch.arange(8.0)}, {"model_id": "toy/tiny-llava"})


def test_cache_key_is_value_based_and_order_free():
    a = cache_key(x=torch.arange(4.0), names=["a", "b"], eps=16 / 255, cfg={"g": 0.1, "l": [1, 2]})
    b = cache_key(cfg={"l": [1, 2], "g": 0.1}, eps=16 / 255, names=["a", "b"], x=torch.arange(4.0))
    assert a == b and len(a) == 64
    assert cache_key(x=torch.arange(4.0)) != cache_key(x=torch.arange(4))  # dtype matters
    assert cache_key(x=torch.zeros(2, 3)) != cache_key(x=torch.zeros(3, 2))  # shape matters
    assert cache_key(x=["ab", "c"]) != cache_key(x=["a", "bc"])
    assert cache_key(x=np.ones(3)) == cache_key(x=np.ones(3))
    assert cache_key(d=_direction()) == cache_key(d=_direction())
    assert cache_key(x=torch.ones(2, dtype=torch.bfloat16)) != cache_key(x=torch.ones(2, dtype=torch.float16))
    with pytest.raises(TypeError, match="cannot hash"):
        cache_key(x=object())


def test_cache_key_digest_is_stable():
    """Cached pipeline steps are found by these digests: the hash of a fixed input must never change."""
    key = cache_key(model="llava", layers=[1, 2], eps=16 / 255, x=torch.arange(4.0), a=np.ones(3),
                    d=ErasureDirection({2: torch.arange(8.0)}, {"m": None}), b=b"\x00", t=("s", True))
    assert key == "1ca82dd7c8238746f5dd1ffd7172d65f8d494c925acf65f6a755930308e1e241"
