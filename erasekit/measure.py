"""Measuring work: wall time and peak memory of a block (:func:`measure`), and interleaved timing of variants
(:func:`interleaved` repetitions side by side, :func:`summarize` medians, :func:`paired_ratio` ratios).

Peak memory is the CUDA allocator's (``torch.cuda.max_memory_allocated``) on a GPU, else the peak resident set
size (RSS) of this process, sampled on a background thread. torch's CPU allocator is invisible to tracemalloc, so
RSS is what shows its big buffers (arrays above glibc's mmap threshold are returned to the OS when freed, so the
RSS at entry is a clean baseline).

Example::

    with measure(adapter.device) as m:
        train()
    print(m.seconds, m.peak_delta_bytes / 2**20, m.memory_kind)

    times = interleaved({"vanilla": run_plain, "steered": run_steered}, reps=10)
    print(paired_ratio(times["steered"], times["vanilla"])["ratio_of_medians"])
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["Measurement", "measure", "rss_bytes", "sync", "interleaved", "summarize", "paired_ratio"]


# ----------------------------------------------------------------------------------------------------------------
# wall time and peak memory


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; falls back to the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclasses.dataclass
class Measurement:
    """What :func:`measure` saw; filled when the block exits.

    ``cuda``: the memory numbers are the CUDA allocator's (``baseline_bytes`` = allocated at entry,
    ``peak_bytes`` = ``max_memory_allocated``), else the process RSS (at entry, and the sampled peak).
    """

    cuda: bool
    seconds: float = 0.0
    baseline_bytes: int = 0
    peak_bytes: int = 0

    @property
    def peak_delta_bytes(self) -> int:
        """Peak memory minus the memory at entry."""
        return self.peak_bytes - self.baseline_bytes

    @property
    def memory_kind(self) -> str:
        """What :attr:`peak_memory_mb` reports: ``"cuda_max_allocated"`` or ``"rss_peak_increase"``."""
        return "cuda_max_allocated" if self.cuda else "rss_peak_increase"

    @property
    def peak_memory_mb(self) -> float:
        """The CUDA allocator's peak (all allocations, not only the block's) on a GPU; the RSS peak increase over
        the entry on the CPU. In MiB."""
        return (self.peak_bytes if self.cuda else self.peak_delta_bytes) / 2**20


@contextmanager
def measure(device: torch.device | str | None = None, interval: float = 0.005) -> Iterator[Measurement]:
    """Wall time and peak memory of the block on ``device`` (None: the CPU).

    On CUDA the device is synchronised at entry and exit and its peak statistics are reset at entry; elsewhere a
    daemon thread samples the RSS every ``interval`` seconds. Yields a :class:`Measurement` filled on exit (also
    after an exception).
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    m = Measurement(cuda=dev.type == "cuda" and torch.cuda.is_available())
    stop = threading.Event()
    thread = None
    if m.cuda:
        torch.cuda.synchronize(dev)
        m.baseline_bytes = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        m.baseline_bytes = m.peak_bytes = rss_bytes()

        def sample() -> None:
            while not stop.is_set():
                m.peak_bytes = max(m.peak_bytes, rss_bytes())
                stop.wait(interval)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
    t0 = time.perf_counter()
    try:
        yield m
    finally:
        if m.cuda:
            torch.cuda.synchronize(dev)
            m.peak_bytes = torch.cuda.max_memory_allocated(dev)
        else:
            stop.set()
            if thread is not None:
                thread.join()
            m.peak_bytes = max(m.peak_bytes, rss_bytes())
        m.seconds = time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------------------------
# interleaved timing


def sync(device: torch.device | str | None = None) -> None:
    """Wait for queued CUDA work (no-op on CPU) so wall-clock timings are honest."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: Mapping[str, Callable[[], Any]], reps: int, warmup: int = 1, progress: bool = True,
                device: torch.device | str | None = None, desc: str = "timing") -> dict[str, list[float]]:
    """Time each callable ``reps`` times, interleaved (a, b, c, a, b, c, ...), after ``warmup`` untimed rounds.

    Returns ``{name: [seconds per call]}``. Interleaving makes slow drifts (other processes, thermal state) hit
    every variant alike, which is what a ratio needs.
    """
    from tqdm.auto import tqdm

    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            sync(device)
    for _ in tqdm(range(reps), desc=desc, disable=not progress):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def summarize(seconds: list[float], work: float = 1.0) -> dict[str, float]:
    """Median / min / max seconds per call and the median throughput ``work / seconds`` (units per second)."""
    med = statistics.median(seconds)
    return {
        "median_s": med,
        "min_s": min(seconds),
        "max_s": max(seconds),
        "reps": len(seconds),
        "median_per_s": work / med,
    }


def paired_ratio(num: list[float], den: list[float]) -> dict[str, float]:
    """Throughput ratio of variant ``num`` over ``den`` from per-rep seconds: median(den_i / num_i) (the headline
    number: pairing cancels load changes between repetitions), median(den) / median(num) and min(den) / min(num)."""
    per_rep = [d / n for n, d in zip(num, den)]
    return {"ratio_of_medians": statistics.median(den) / statistics.median(num),
            "ratio_of_mins": min(den) / min(num),  # least disturbed calls: the intrinsic cost under contention
            "median_paired_ratio": statistics.median(per_rep),
            "min_paired_ratio": min(per_rep), "max_paired_ratio": max(per_rep)}
