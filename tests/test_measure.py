"""erasekit.measure: wall time and peak memory of a block, interleaved timing and its ratios."""

from __future__ import annotations

import pytest

from erasekit import measure as M

_BUFFER_CHECK = """
import time, torch
from erasekit import measure as M
base = M.rss_bytes()
with M.measure("cpu") as m:
    x = torch.ones(64 * 2**20 // 4)  # 64 MiB, above glibc's mmap threshold
    time.sleep(0.1)  # the sampler (every 5 ms) runs while the buffer is alive
    del x
print(repr((m.cuda, m.memory_kind, m.seconds, m.baseline_bytes, m.peak_bytes, base, m.peak_delta_bytes,
            m.peak_memory_mb)))
"""


def test_measure_sees_a_large_cpu_buffer():
    # A fresh interpreter: after earlier tests free gigabytes, this process's allocator can hand the buffer pages
    # that are already resident (measured: a delta of 8 KiB after the SmolLM2 tests), which is not what is tested.
    import ast
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _BUFFER_CHECK], capture_output=True, text=True, check=True)
    cuda, kind, seconds, baseline, peak, base, delta, mb = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert not cuda and kind == "rss_peak_increase"
    assert seconds >= 0.1
    assert peak >= baseline > 0 and peak >= base
    assert delta >= 48 * 2**20  # most of the 64 MiB was resident
    assert mb == pytest.approx(delta / 2**20)


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
