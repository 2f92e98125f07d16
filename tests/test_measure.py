"""erasekit.measure: wall time and peak memory of a block, interleaved timing and its ratios."""

from __future__ import annotations

import time

import pytest
import torch

from erasekit import measure as M


def test_measure_sees_a_large_cpu_buffer():
    base = M.rss_bytes()
    with M.measure("cpu") as m:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, above glibc's mmap threshold
        time.sleep(0.03)  # the sampler runs at least once while the buffer is alive
        del x
    assert not m.cuda and m.memory_kind == "rss_peak_increase"
    assert m.seconds >= 0.03
    assert m.peak_bytes >= m.baseline_bytes > 0 and m.peak_bytes >= base
    assert m.peak_delta_bytes >= 48 * 2**20  # most of the 64 MiB was resident
    assert m.peak_memory_mb == pytest.approx(m.peak_delta_bytes / 2**20)


def test_measure_fills_the_result_after_an_exception():
    with pytest.raises(RuntimeError, match="boom"):
        with M.measure() as m:
            raise RuntimeError("boom")
    assert m.seconds >= 0 and m.peak_bytes >= m.baseline_bytes > 0


def test_interleaved_summary_and_ratios():
    calls = []
    times = M.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=3, warmup=1,
                          progress=False)
    assert calls == ["a", "b"] * 4  # warm-up round, then a, b, a, b, ...
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for v in times.values() for t in v)
    s = M.summarize([1.0, 3.0, 2.0], work=4)
    assert (s["median_s"], s["min_s"], s["max_s"], s["reps"], s["median_per_s"]) == (2.0, 1.0, 3.0, 3, 2.0)
    r = M.paired_ratio([1.0, 2.0, 4.0], [2.0, 4.0, 8.0])  # den takes twice as long: num is 2x faster
    assert r["ratio_of_medians"] == r["ratio_of_mins"] == r["median_paired_ratio"] == 2.0
