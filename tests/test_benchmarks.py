"""Smoke test of benchmarks/: every script runs with --quick into a temp dir and writes the expected JSON keys.

The scripts run in this process (importing torch/transformers once) to keep the whole file well under 30 s.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
MACHINE_KEYS = {"platform", "cpu_count", "torch", "device", "load_average_1_5_15", "load_average_end", "date"}

# script -> (json file name, keys expected in "results")
CASES = {
    "bench_steering_overhead": ("steering_overhead_organism", {"vanilla", "steered_prefill", "steered_all",
                                                               "ratio_steered_prefill_over_vanilla",
                                                               "ratio_steered_all_over_vanilla"}),
    "bench_fit": ("fit", {"organism", "llava15_7b", "null_space_profile"}),
    "bench_memory": ("memory", {"models"}),
    "bench_pgd": ("pgd", {"k=4"}),
    "bench_capture": ("capture", {"batch_4", "one_by_one", "speedup_batch_4_over_one_by_one"}),
}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", sorted(CASES))
def test_quick_run_writes_json(script, tmp_path):
    out_name, keys = CASES[script]
    _load(script).main(["--quick", "--no-progress", "--threads", "1", "--device", "cpu", "--out-dir", str(tmp_path)])
    payload = json.loads((tmp_path / f"{out_name}.json").read_text())
    assert payload["benchmark"] == out_name
    assert MACHINE_KEYS <= set(payload["machine"])
    assert keys <= set(payload["results"]), sorted(payload["results"])


def test_quick_results_are_sane(tmp_path):
    """The correctness checks the benchmarks carry: the routes they compare compute the same thing."""
    fit = _load("bench_fit").main(["--quick", "--no-progress", "--out-dir", str(tmp_path)])
    assert fit["organism"]["max_rel_diff"] < 1e-6 and fit["llava15_7b"]["max_rel_diff"] < 1e-6
    mem = _load("bench_memory").main(["--quick", "--no-progress", "--out-dir", str(tmp_path)])
    assert mem["llava15_7b"]["ratio_dense_over_rank_one"] == 2048
    assert mem["organism"]["dense_bytes_float64"] == 6 * 192 * 192 * 8
