"""One route: chapter 05's steerers, fitted by the front door (ek.fit_eraser on erasebook.pipeline.gate_prompts),
against the steerers the book's cache holds for the same keys (fitted by whichever route filled the cache: on the
committed cache, the route before the book called the front door). Per forget split and gate: whether every map's
direction, gate and metadata (floors, γ) and the layers are equal bit for bit, and which selection-metadata keys
differ, and the largest relative gate difference. Bit-for-bit equality needs the thread count the cache was
filled with (float reductions change with it). Writes data/results/one_route.json.

    python scripts/one_route_check.py [--pcts 5 10 15] [--threads 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import erasebook.pipeline as pl
from erasebook import paths, recipes
from erasebook.session import load_session
from erasekit.eraser import fit_eraser
from erasekit.files import atomic_write


def compare(a, b) -> dict:
    """Bit-for-bit comparison of two steerers' maps; the selection metadata keys whose values differ."""
    same = a.layers == b.layers and all(
        torch.equal(a.maps[l].direction, b.maps[l].direction) and torch.equal(a.maps[l].gate, b.maps[l].gate)
        and a.maps[l].meta == b.maps[l].meta for l in a.layers)
    sa, sb = a.meta.get("selection", {}), b.meta.get("selection", {})
    differ = sorted(k for k in set(sa) | set(sb)
                    if json.dumps(sa.get(k), default=str) != json.dumps(sb.get(k), default=str))
    rel = max(float((a.maps[l].gate - b.maps[l].gate).abs().max() / b.maps[l].gate.abs().max().clamp_min(1e-30))
              for l in a.layers) if a.layers == b.layers else float("nan")
    return {"maps_equal": bool(same), "layers": list(a.layers), "gate_max_rel_diff": rel,
            "selection_keys_differing": differ}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pcts", type=int, nargs="+", default=[5, 10, 15])
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", default=str(paths.data_dir() / "results" / "one_route.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    session = load_session(None, None)
    cfg = recipes.GateConfig()
    setup = recipes.gate_setup(session, cfg, gates=())
    record: dict = {"threads": torch.get_num_threads(), "splits": {}}
    for pct in args.pcts:
        p = pl.gate_prompts(session, pct, cfg.fit_modes)
        out = {}
        for gate, kw in (("default", {"read_at": "last"}), ("paper", {"gate": "paper"})):
            cached = setup.steerer(gate, pct)
            t0 = time.perf_counter()
            fresh = fit_eraser(session.adapter, p["forget"], p["retain"], tune=p["tune"], strength=1.0,
                               direction=setup.directions[gate], progress=False, **kw).steerer
            out[gate] = {**compare(cached, fresh), "seconds": round(time.perf_counter() - t0, 1)}
            print(pct, gate, out[gate], flush=True)
        record["splits"][str(pct)] = out
    record["command"] = "python scripts/one_route_check.py " + " ".join(sys.argv[1:] if argv is None else argv)
    atomic_write(args.out, json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
