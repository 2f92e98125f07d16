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
                                                               "steered_prefill_frozen", "steered_prefill_anchor",
                                                               "ratio_steered_prefill_over_vanilla",
                                                               "ratio_steered_prefill_frozen_over_vanilla",
                                                               "ratio_steered_prefill_anchor_over_vanilla",
                                                               "ratio_steered_all_over_vanilla", "prefill",
                                                               "checks"}),
    "bench_fit": ("fit", {"organism", "target", "headline"}),
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
    if script == "bench_steering_overhead":  # every reading mode steers; frozen runs its extra pass, anchor none
        checks = payload["results"]["checks"]
        assert all(checks[k]["max_abs_logit_change_vs_vanilla"] > 0 for k in ("steered", "frozen", "anchor"))
        assert checks["frozen"]["first_steered_layer_calls_per_prefill"] == 2
        assert checks["anchor"]["first_steered_layer_calls_per_prefill"] == 1


def test_quick_results_are_sane(tmp_path):
    """The correctness checks the benchmarks carry: the routes they compare compute the same thing."""
    fit = _load("bench_fit").main(["--quick", "--no-progress", "--out-dir", str(tmp_path)])
    for cfg in ("organism", "target"):
        r = fit[cfg]
        # the default gate equals the dense fp64 reference of its own objective, and the fit's ridge is the one asked
        assert r["max_rel_diff_default_vs_dense_reference"] < 1e-6, cfg
        assert r["max_ridge_rel_diff_vs_independent"] < 1e-12, cfg
        assert not any(r["extrapolated"].values()), cfg
        assert r["ratio_dense_over_default"] > 0
    # the paper's gate both ways (organism: N_r > d, so the ratio null space is unique)
    assert fit["organism"]["max_rel_diff_rank_one_vs_dense_route"] < 1e-6
    assert fit["target"]["default_gate"]["route"] == "kernel (N x N)"  # --quick: d > N_f + N_r
    assert fit["organism"]["default_gate"]["route"] == "normal (d x d)"
    mem = _load("bench_memory").main(["--quick", "--no-progress", "--out-dir", str(tmp_path)])
    assert mem["llava15_7b"]["ratio_dense_over_rank_one"] == 2048
    assert mem["organism"]["dense_bytes_float64"] == 6 * 192 * 192 * 8


@pytest.mark.slow
def test_front_door_quick_run_chooses_the_same_strength_by_both_routes(tmp_path):
    """bench_front_door (the λ rule by both routes on a small organism fit, ~40 s): same λ, both times recorded."""
    _load("bench_front_door").main(["--quick", "--no-progress", "--threads", "1", "--device", "cpu",
                                    "--out-dir", str(tmp_path)])
    payload = json.loads((tmp_path / "front_door_cpu.json").read_text())
    assert MACHINE_KEYS <= set(payload["machine"])
    r = payload["results"]["organism"]
    assert r["same_choice"] and r["chosen_generate"] == r["chosen_fast"]
    assert r["generate_s"] and r["fast_s"] and r["median_ratio_generate_over_fast"] > 0
