"""What unlearning costs (paper Fig. 5, Table 4): the time to fit each gate, the generation throughput with the
steering on, the memory of the steering state, and the ratios the ``benchmarks/`` scripts recorded.

Timings go through :mod:`erasekit.measure` (wall time; interleaved repetitions so background load hits every
variant alike); notebook 10 only chooses what to compare.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from erasekit.gates import dense_gate_reference
from erasekit.measure import interleaved, measure
from erasekit.nullspace import null_space_projector
from erasekit.steering import InputAwareSteerer, fit_steerer

__all__ = ["gate_fit_seconds", "generation_throughput", "steering_state_bytes", "benchmark_ratios"]


def gate_fit_seconds(forget: Mapping[int, torch.Tensor], retain: Mapping[int, torch.Tensor], direction: Any,
                     default: InputAwareSteerer, paper: InputAwareSteerer, paper_gamma: float,
                     paper_null_space: float | str) -> dict[str, float]:
    """Seconds to fit, on the same H_f / H_r: erasekit's gate at ``default``'s layers and hyperparameters
    (rank one), the paper's gate at ``paper``'s layers (rank one), and the paper's gate by the authors' dense
    d × d route (projector matrix + Eq. 12 pseudo-inverse per layer). Shared inputs (activations) not counted."""
    out = {}
    with measure() as m:
        fit_steerer(forget, retain, direction, default.meta["gamma"], layers=default.layers, gate="contrastive",
                    gamma_scale="relative", alpha=default.meta["alpha"])
    out["erasekit gate (rank-one fit)"] = m.seconds
    with measure() as m:
        fit_steerer(forget, retain, direction, paper_gamma, paper_null_space, layers=paper.layers)
    out["paper gate (rank-one fit)"] = m.seconds
    with measure() as m:
        for l in paper.layers:
            P = null_space_projector(retain[l], paper_null_space).matrix()
            dense_gate_reference(forget[l], None, direction[l], "nullspace", gamma=paper_gamma, P=P)
    out["paper gate (authors' dense d×d route)"] = m.seconds
    return out


def generation_throughput(adapter: Any, prompts: Sequence[str], settings: Mapping[str, Callable[[], Any] | None],
                          reps: int = 5, max_new_tokens: int = 32, progress: bool = False) -> pd.DataFrame:
    """Generated tokens per second for each setting (a steering-context factory, or None = vanilla), the same
    batch of ``prompts`` generating exactly ``max_new_tokens`` each, ``reps`` interleaved repetitions after one
    warm-up. Columns: ``tokens/s (median)`` and ``vs vanilla`` (needs a ``"vanilla"`` setting)."""
    if "vanilla" not in settings:
        raise ValueError("settings needs a 'vanilla' entry (None) for the ratios")
    batch = adapter.encode(list(prompts))

    def run(ctx: Callable[[], Any] | None) -> Callable[[], None]:
        def call() -> None:
            with (ctx() if ctx is not None else contextlib.nullcontext()), torch.no_grad():
                adapter.generate(batch, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)
        return call

    times = interleaved({k: run(v) for k, v in settings.items()}, reps, progress=progress, device=adapter.device)
    tokens = len(prompts) * max_new_tokens
    thr = pd.DataFrame({k: {"tokens/s (median)": tokens / float(pd.Series(v).median())} for k, v in times.items()}).T
    thr["vs vanilla"] = thr["tokens/s (median)"] / thr.loc["vanilla", "tokens/s (median)"]
    return thr


def steering_state_bytes(steerer: InputAwareSteerer, at_scale: Mapping[str, tuple[int, int]] | None = None
                         ) -> pd.DataFrame:
    """Bytes of the steering state, rank one (two d-vectors per layer) vs dense d × d float32, for ``steerer``
    and for each ``{label: (d, steered layers)}`` of ``at_scale`` (default: LLaVA-1.5-7B, d = 4096, 31 layers)."""
    at_scale = {"LLaVA-1.5-7B (d=4096, 31 layers)": (4096, 31)} if at_scale is None else at_scale
    rows = {"this model": {"rank one (bytes)": steerer.state_bytes(),
                           "dense d×d float32 (bytes)": steerer.dense_state_bytes()}}
    for label, (d, n) in at_scale.items():
        rows[label] = {"rank one (bytes)": n * 2 * d * 4, "dense d×d float32 (bytes)": n * d * d * 4}
    mem = pd.DataFrame(rows).T
    mem["dense / rank one"] = mem["dense d×d float32 (bytes)"] / mem["rank one (bytes)"]
    return mem


def _ratios(tree: Mapping, path: tuple = ()) -> Iterator[tuple[str, float]]:
    # every measured ratio in a results file: entries named ratio_* / speedup_* holding a ratio of medians
    for k, v in tree.items():
        if isinstance(v, dict) and k.startswith(("ratio", "speedup")) and "ratio_of_medians" in v:
            yield " / ".join((*path, k)), v["ratio_of_medians"]
        elif isinstance(v, dict):
            yield from _ratios(v, (*path, k))


def benchmark_ratios(folder: str | Path) -> pd.DataFrame:
    """Every ratio recorded in ``folder/*.json`` (the ``benchmarks/`` results), with the machine and date it was
    measured on. Columns: ``benchmark, ratio, value, device, date`` (names with spaces, so a page can wrap them;
    the day of the run); empty when the folder has no results."""
    recs = []
    for f in sorted(Path(folder).glob("*.json")):
        r = json.loads(f.read_text())
        m = r.get("machine", {})
        for name, value in _ratios(r.get("results", {})):
            recs.append({"benchmark": f.stem.replace("_", " "), "ratio": name.replace("_", " "),
                         "value": round(float(value), 3),
                         "device": m.get("gpu") or m.get("device") or m.get("processor"),
                         "date": (m.get("date") or "")[:10] or None})
    return pd.DataFrame(recs, columns=["benchmark", "ratio", "value", "device", "date"])
