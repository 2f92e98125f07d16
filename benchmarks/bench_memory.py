"""Steering-state bytes per model: rank one (direction + gate, two d-vectors per layer) vs dense (d x d per layer).

* organism (d=192, 6 layers): measured from the tensors of a fitted InputAwareSteerer (float64 as fitted, and
  after ``.to(torch.float32)`` as used on the device) and of its dense W P = d g^T matrices (``map.dense()``);
* LLaVA-1.5-7B (d=4096, 32 layers) and Qwen2.5-VL-7B (d=3584, 28 layers): computed from the configs' d and L.

Every layer is counted (the authors steer layers 1..L-1, i.e. one fewer; the ratio is the same). If the dense
route kept W and P separately it would need twice the dense numbers.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import torch  # noqa: E402

ITEMSIZE = {"float64": 8, "float32": 4, "bfloat16": 2}


def from_config(d: int, layers: int) -> dict:
    out = {"d": d, "layers": layers, "source": "config"}
    for name, size in ITEMSIZE.items():
        out[f"rank_one_bytes_{name}"] = layers * 2 * d * size
        out[f"dense_bytes_{name}"] = layers * d * d * size
    out["ratio_dense_over_rank_one"] = d / 2
    return out


def from_fitted(steerer) -> dict:
    maps = steerer.maps.values()
    r1_64 = sum(t.numel() * t.element_size() for m in maps for t in m.tensors().values())
    r1_32 = sum(t.numel() * t.element_size() for m in steerer.to(torch.float32).maps.values()
                for t in m.tensors().values())
    dense = [m.dense() for m in maps]  # (d, d) float64 each
    dense_64 = sum(w.numel() * w.element_size() for w in dense)
    dense_32 = sum(w.numel() * w.float().element_size() for w in dense)
    dense_bf16 = sum(w.numel() * w.bfloat16().element_size() for w in dense)
    assert steerer.state_bytes() == r1_64
    return {"d": steerer.d, "layers": len(steerer.maps), "source": "fitted tensors",
            "rank_one_bytes_float64": r1_64, "rank_one_bytes_float32": r1_32,
            "dense_bytes_float64": dense_64, "dense_bytes_float32": dense_32, "dense_bytes_bfloat16": dense_bf16,
            "ratio_dense_over_rank_one": dense_64 / r1_64}


def human(n: int) -> str:
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= div:
            return f"{n / div:.4g} {unit}"
    return f"{n} B"


def main(argv: list[str] | None = None) -> dict:
    p = C.base_parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    machine = C.setup(args)
    from tqdm.auto import tqdm

    org = C.ORGANISM
    models = {}
    for name in tqdm(["organism", "llava15_7b", "qwen25vl_7b"], desc="memory", disable=args.no_progress):
        if name == "organism":
            layers = list(range(org.num_layers))
            steerer = C.random_steerer(org.hidden_size, layers, n_forget=16 if args.quick else 32,
                                       n_retain=64 if args.quick else 128, seed=args.seed)
            models[name] = from_fitted(steerer)
        elif name == "llava15_7b":
            models[name] = from_config(C.LLAVA15_7B.hidden_size, C.LLAVA15_7B.num_layers)
        else:
            models[name] = from_config(C.QWEN25VL_7B_TEXT["hidden_size"], C.QWEN25VL_7B_TEXT["num_layers"])
    for name, r in models.items():
        print(f"{name:12s} d={r['d']:5d} L={r['layers']:2d}: rank one {human(r['rank_one_bytes_float32'])} (fp32) / "
              f"{human(r['rank_one_bytes_float64'])} (fp64)  vs dense {human(r['dense_bytes_float32'])} (fp32) / "
              f"{human(r['dense_bytes_bfloat16'])} (bf16)  -> x{r['ratio_dense_over_rank_one']:.0f}")
    C.write_results("memory", args.out_dir, machine, {"quick": args.quick}, {"models": models},
                    ["Every layer counted; the authors steer L-1 layers. Dense = one d x d W P per layer."])
    return models


if __name__ == "__main__":
    main()
