"""Fitting the steering gate at every layer: erasekit's default gate vs the authors' dense route, side by side.

Per layer, on random activations H_r (N_r, d), H_f (N_f, d) (float32, as captured) and a random direction d, three
columns are timed interleaved (default, rank one, dense, default, rank one, dense, ... for ``--reps`` rounds):

* **default** (erasekit's default gate): ``fit_contrastive_gate(H_f, H_r, d, gamma, alpha)`` in float64,
  g = (H_f^T H_f + c H_r^T H_r + gamma' I)^-1 H_f^T 1 with c = alpha N_f / N_r and the relative ridge
  gamma' = gamma tr(H_f^T H_f + c H_r^T H_r) / d: one Gram and one Cholesky per layer, no eigendecomposition.
* **rank one** (the paper's gate, Eq. 12, in rank-one form): ``null_space_projector(H_r, ratio)`` (QR of H_r, SVD of
  the d x d R) then ``fit_input_aware(..., null_space=P)``, an N_f x N_f solve.
* **dense** (the authors' released code, shared/METHOD.md Sec. 3): the d x d Gram H_r H_r^T, its SVD, P = U2 U2^T
  from the ``ratio * d`` smallest singular vectors, then W = D H_f^T P (P H_f H_f^T P + gamma P)^+ with a d x d
  ``torch.linalg.pinv`` and D = d 1^T; steering applies W P h.

The headline is ``ratio_dense_over_default``: the dense route's time for all layers over the default gate's time
for all layers, both from this one run. The default gate is always run on every layer; the two SVD routes run on
``--timed-layers`` / ``--rank-one-layers`` of them (default: all) and, when fewer, their all-layer time is the mean
per-layer time x layers, marked ``extrapolated`` in the JSON and the printout.

Correctness, on probes (64 forget rows, 64 retain rows, 64 random vectors), as max_i ||f(h_i) - f_ref(h_i)|| /
max_i ||f_ref(h_i)||:

* default gate vs a dense float64 reference of the *same* objective, W_ref = D H_f (H_f^T H_f + c H_r^T H_r +
  ridge I)^-1 with the ridge the fit reports, formed as a (d, d) matrix by ``torch.linalg.solve`` (LU) on the
  d x d system (every layer; ``--no-reference`` skips it);
* rank one vs dense route (the paper's gate both ways; on the layers where the dense route runs).

    python benchmarks/bench_fit.py --device cuda                               # d=4096, N_r=6000, N_f=300, 32 layers
    python benchmarks/bench_fit.py --d 1024 --n-r 1500 --n-f 100 --layers 2    # small CPU run
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import torch  # noqa: E402

from erasekit.measure import measure, sync  # noqa: E402

ROUTES = ("default", "rank_one", "dense")


def default_route(H_f, H_r, direction, gamma: float, alpha: float, device=None):
    """erasekit's default gate (contrastive, relative gamma), float64: returns (map, {stage: seconds})."""
    from erasekit.steering import fit_contrastive_gate

    sync(device)
    t0 = time.perf_counter()
    f = fit_contrastive_gate(H_f, H_r, direction, gamma=gamma, alpha=alpha, gamma_scale="relative")
    sync(device)
    return f, {"fit_s": time.perf_counter() - t0}


def rank_one_route(H_f, H_r, direction, gamma: float, ratio: float, device=None):
    """The paper's gate in erasekit's rank-one form: returns (map, {stage: seconds})."""
    from erasekit.nullspace import null_space_projector
    from erasekit.steering import fit_input_aware

    sync(device)
    t0 = time.perf_counter()
    P = null_space_projector(H_r, ratio)
    sync(device)
    t1 = time.perf_counter()
    f = fit_input_aware(H_f, None, direction, gamma, null_space=P)
    sync(device)
    t2 = time.perf_counter()
    return f, {"null_space_s": t1 - t0, "fit_s": t2 - t1}


def dense_route(H_f, H_r, direction, gamma: float, ratio: float, device=None):
    """The authors' route in the paper's layout (H as d x N), float64: returns (W P, {stage: seconds})."""
    sync(device)
    t0 = time.perf_counter()
    Hr = H_r.to(torch.float64).T  # (d, N_r)
    d = Hr.shape[0]
    gram = Hr @ Hr.T  # (d, d)
    U, _, _ = torch.linalg.svd(gram)  # singular values descending
    k = int(ratio * d)
    U2 = U[:, d - k:]  # the k smallest
    P = U2 @ U2.T
    sync(device)
    t1 = time.perf_counter()
    Hf = H_f.to(torch.float64).T  # (d, N_f)
    D = direction.to(device=Hf.device, dtype=torch.float64)[:, None].expand(d, Hf.shape[1])
    PHf = P @ Hf
    M = PHf @ PHf.T + gamma * P  # P H_f H_f^T P + gamma P
    W = D @ (Hf.T @ P) @ torch.linalg.pinv(M)
    WP = W @ P  # what the steering applies: f(h) = W P h
    sync(device)
    t2 = time.perf_counter()
    return WP, {"null_space_s": t1 - t0, "fit_s": t2 - t1}


def contrastive_reference(H_f, H_r, direction, ridge: float, alpha: float) -> torch.Tensor:
    """The default gate's dense map from its defining formula, (d, d) float64 on H_f's device:
    W_ref = D H_f (H_f^T H_f + c H_r^T H_r + ridge I)^-1, D = d 1^T, c = alpha N_f / N_r, by an LU solve."""
    Hf, Hr = H_f.to(torch.float64), H_r.to(torch.float64)
    d = Hf.shape[1]
    c = alpha * Hf.shape[0] / Hr.shape[0]
    A = Hf.T @ Hf + c * (Hr.T @ Hr) + ridge * torch.eye(d, dtype=torch.float64, device=Hf.device)
    D = direction.to(device=Hf.device, dtype=torch.float64)[:, None].expand(d, Hf.shape[0])  # (d, N_f)
    # W A = D H_f  <=>  A W^T = (D H_f)^T  (A symmetric)
    return torch.linalg.solve(A, (D @ Hf).T).T


def relative_ridge(H_f, H_r, gamma: float, alpha: float) -> float:
    """gamma * tr(H_f^T H_f + c H_r^T H_r) / d, computed independently of erasekit (a check of meta['ridge'])."""
    Hf, Hr = H_f.to(torch.float64), H_r.to(torch.float64)
    c = alpha * Hf.shape[0] / Hr.shape[0]
    return gamma * float(Hf.pow(2).sum() + c * Hr.pow(2).sum()) / Hf.shape[1]


def max_rel_diff(f_fast: torch.Tensor, f_ref: torch.Tensor) -> float:
    """max_i ||f_fast(h_i) - f_ref(h_i)|| / max_i ||f_ref(h_i)|| over probe rows."""
    return float((f_fast - f_ref).norm(dim=1).max() / f_ref.norm(dim=1).max())


def layer_data(d: int, n_r: int, n_f: int, seed: int, device=None):
    """Random float32 activations with an uneven spectrum (a few large directions, as residual streams have), drawn
    on the CPU (the same numbers on every device) and moved to ``device`` before any timing."""
    g = torch.Generator().manual_seed(seed)
    scales = 1.0 + 20.0 * torch.exp(-torch.arange(d, dtype=torch.float32) / 8)
    H_r = torch.randn(n_r, d, generator=g) * scales
    H_f = torch.randn(n_f, d, generator=g) * scales
    direction = torch.randn(d, generator=g)
    probes = torch.cat([H_f[:64], H_r[:64], torch.randn(64, d, generator=g) * scales]).to(torch.float64)
    return tuple(t.to(device) for t in (H_f, H_r, direction, probes))


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def run_config(name: str, d: int, n_layers: int, n_r: int, n_f: int, dense_layers: int, rank_one_layers: int,
               reps: int, gamma: float, alpha: float, paper_gamma: float, ratio: float, seed: int,
               device: torch.device, reference: bool, progress: bool) -> dict:
    """Time the three routes on every layer (the SVD routes on their first ``*_layers`` layers) and check them."""
    from tqdm.auto import tqdm

    # Fewer retain rows than d leave an exact null space larger than the ratio asks for: P is then not unique.
    ambiguous = d - n_r > int(ratio * d)
    per_layer = []
    for layer in tqdm(range(n_layers), desc=f"fit {name}", disable=not progress):
        H_f, H_r, direction, probes = layer_data(d, n_r, n_f, seed + layer, device)
        todo = {"default": lambda: default_route(H_f, H_r, direction, gamma, alpha, device)}
        if layer < rank_one_layers:
            todo["rank_one"] = lambda: rank_one_route(H_f, H_r, direction, paper_gamma, ratio, device)
        if layer < dense_layers:
            todo["dense"] = lambda: dense_route(H_f, H_r, direction, paper_gamma, ratio, device)
        stages: dict[str, list[dict]] = {k: [] for k in todo}
        mem: dict[str, int] = {}
        out = {}
        for _ in range(reps):  # interleaved: default, rank one, dense, default, ...
            for route, fn in todo.items():
                with measure(device, interval=0.002) as m:
                    res, st = fn()
                st["total_s"] = sum(st.values())
                stages[route].append(st)
                mem[route] = max(mem.get(route, 0), m.peak_delta_bytes)
                out[route] = res
                del res
        row: dict = {"layer": layer}
        for route, sts in stages.items():
            med = {k: _median([s[k] for s in sts]) for k in sts[0]}
            res = out[route]
            row[route] = {**med, "peak_mem_delta_mib": C.mib(mem[route]),
                          "state_bytes": (res.state_bytes() if route != "dense" else res.numel() * res.element_size())}
        row["ratio_dense_over_default_paired"] = (
            _median([b["total_s"] / a["total_s"] for a, b in zip(stages["default"], stages["dense"])])
            if "dense" in stages else None)
        f = out["default"]
        row["default"].update(route=f.meta["route"], ridge=f.meta["ridge"], gate_forget_mean=f.meta["gate_forget_mean"],
                              gate_retain_mean=f.meta["gate_retain_mean"])
        row["ridge_rel_diff_vs_independent"] = abs(f.meta["ridge"] - relative_ridge(H_f, H_r, gamma, alpha)) / \
            f.meta["ridge"]
        if reference:
            W_ref = contrastive_reference(H_f, H_r, direction, f.meta["ridge"], alpha)
            row["max_rel_diff_default_vs_dense_reference"] = max_rel_diff(f(probes), probes @ W_ref.T)
            del W_ref
        if "dense" in out and "rank_one" in out and not ambiguous:
            row["max_rel_diff_rank_one_vs_dense_route"] = max_rel_diff(out["rank_one"](probes), probes @ out["dense"].T)
        per_layer.append(row)
        del out, probes, todo  # H_f, H_r: the routes' closures hold them; the next layer replaces them
        if device.type == "cuda":
            torch.cuda.empty_cache()

    measured = {r: sum(1 for row in per_layer if r in row) for r in ROUTES}
    summary = {}
    for route in ROUTES:
        rows = [row[route] for row in per_layer if route in row]
        s = {f"mean_per_layer_{k}": sum(r[k] for r in rows) / len(rows) for k in rows[0] if k.endswith("_s")}
        measured_sum = sum(r["total_s"] for r in rows)
        s.update(measured_layers=len(rows), measured_layers_total_s=measured_sum,
                 all_layers_total_s=measured_sum if len(rows) == n_layers else s["mean_per_layer_total_s"] * n_layers,
                 all_layers_extrapolated=len(rows) < n_layers,
                 peak_mem_delta_mib=max(r["peak_mem_delta_mib"] for r in rows))
        summary[route] = s
    both = [row for row in per_layer if "dense" in row]
    tot = {r: summary[r]["all_layers_total_s"] for r in ROUTES}
    res = {
        "d": d, "layers": n_layers, "n_retain": n_r, "n_forget": n_f, "device": str(device),
        "default_gate": {"gate": "contrastive", "gamma": gamma, "gamma_scale": "relative", "alpha": alpha,
                         "route": per_layer[0]["default"]["route"]},
        "paper_gate": {"gamma": paper_gamma, "gamma_scale": "absolute", "null_space_ratio": ratio},
        "reps_per_layer": reps, "measured_layers": measured,
        "extrapolated": {r: summary[r]["all_layers_extrapolated"] for r in ROUTES},
        "all_layers_total_s": tot,
        "ratio_dense_over_default": tot["dense"] / tot["default"],
        "ratio_dense_over_default_on_measured_layers": (sum(r["dense"]["total_s"] for r in both)
                                                        / sum(r["default"]["total_s"] for r in both)),
        "ratio_dense_over_default_paired_median": _median([r["ratio_dense_over_default_paired"] for r in both]),
        "ratio_dense_over_rank_one": tot["dense"] / tot["rank_one"],
        "ratio_rank_one_over_default": tot["rank_one"] / tot["default"],
        "max_rel_diff_default_vs_dense_reference": (max(r["max_rel_diff_default_vs_dense_reference"]
                                                        for r in per_layer) if reference else None),
        "max_rel_diff_rank_one_vs_dense_route": max((r["max_rel_diff_rank_one_vs_dense_route"] for r in per_layer
                                                     if "max_rel_diff_rank_one_vs_dense_route" in r), default=None),
        "rank_one_vs_dense_note": (None if not ambiguous else
                                   f"not compared: N_r = {n_r} < d = {d}, so the exact null space has dimension >= "
                                   f"{d - n_r} > ratio * d = {int(ratio * d)} and both routes keep an arbitrary part "
                                   "of it (LAPACK's choice among zero eigenvalues): their gates differ legitimately"),
        "max_ridge_rel_diff_vs_independent": max(r["ridge_rel_diff_vs_independent"] for r in per_layer),
        "per_layer_mean": summary,
        "per_layer": per_layer,
    }
    goal_speed, goal_diff = 10.0, 1e-6
    res["goal"] = {"ratio_dense_over_default": goal_speed, "max_rel_diff": goal_diff}
    res["goal_met"] = {
        "speed": res["ratio_dense_over_default"] >= goal_speed,
        "speed_measured_not_extrapolated": not any(res["extrapolated"][r] for r in ("default", "dense")),
        "accuracy": None if not reference else res["max_rel_diff_default_vs_dense_reference"] <= goal_diff,
    }

    def tag(r: str) -> str:
        m = measured[r]
        return f"measured on all {n_layers} layers" if m == n_layers else \
            f"EXTRAPOLATED: {m} of {n_layers} layers measured, x{n_layers / m:.1f}"

    print(f"{name}: d={d}, N_r={n_r}, N_f={n_f}, {n_layers} layers, {device} float64, {reps} rep(s) per layer")
    for r, label in (("default", "default gate (contrastive)"), ("rank_one", "paper gate, rank one"),
                     ("dense", "authors' dense route")):
        print(f"  {label:28s} {tot[r]:10.3f} s all layers ({summary[r]['mean_per_layer_total_s']:.4f} s/layer, "
              f"peak +{summary[r]['peak_mem_delta_mib']:.0f} MiB)  [{tag(r)}]")
    ref = res["max_rel_diff_default_vs_dense_reference"]
    r1 = res["max_rel_diff_rank_one_vs_dense_route"]
    print(f"  ratio dense / default = {res['ratio_dense_over_default']:.1f}x end to end"
          f"{' (dense extrapolated)' if res['extrapolated']['dense'] else ''}; on the {len(both)} layer(s) both ran: "
          f"{res['ratio_dense_over_default_on_measured_layers']:.1f}x; dense / rank one "
          f"{res['ratio_dense_over_rank_one']:.1f}x")
    print(f"  max rel diff: default vs dense fp64 reference (LU solve) "
          f"{'n/a' if ref is None else f'{ref:.2e}'}; rank one vs dense route {'n/a' if r1 is None else f'{r1:.2e}'}")
    return res


def warmup(device: torch.device, reference: bool) -> None:
    """One untimed call of every route at a small size: library loading and handle creation (cuBLAS, cuSOLVER)
    stay out of the timings."""
    H_f, H_r, direction, probes = layer_data(256, 400, 40, 12345, device)
    f, _ = default_route(H_f, H_r, direction, 1e-3, 1.0, device)
    rank_one_route(H_f, H_r, direction, 0.1, 0.3, device)
    dense_route(H_f, H_r, direction, 0.1, 0.3, device)
    if reference:
        contrastive_reference(H_f, H_r, direction, f.meta["ridge"], 1.0)
    sync(device)


def main(argv: list[str] | None = None) -> dict:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=4096, help="hidden size (LLaVA-1.5-7B: 4096)")
    p.add_argument("--n-r", "--n-retain", dest="n_r", type=int, default=6000, help="retain rows N_r")
    p.add_argument("--n-f", "--n-forget", dest="n_f", type=int, default=300, help="forget rows N_f")
    p.add_argument("--layers", type=int, default=32, help="layers fitted ('all layers': 32 for a 7B model)")
    p.add_argument("--timed-layers", type=int, default=None,
                   help="layers on which the dense route runs (default: all); fewer -> its all-layer time is "
                        "extrapolated and marked so")
    p.add_argument("--rank-one-layers", type=int, default=None,
                   help="layers on which the paper's rank-one route runs (default: same as --timed-layers)")
    p.add_argument("--reps", type=int, default=1, help="interleaved rounds per layer (median per layer)")
    p.add_argument("--gamma", type=float, default=1e-3, help="default gate's relative gamma (erasekit default)")
    p.add_argument("--alpha", type=float, default=1.0, help="default gate's retain weight (erasekit default)")
    p.add_argument("--paper-gamma", type=float, default=0.1, help="paper gate's absolute gamma (authors' LLaVA)")
    p.add_argument("--ratio", type=float, default=0.3, help="paper gate's null-space fraction of d (authors' LLaVA)")
    p.add_argument("--no-reference", action="store_true", help="skip the dense fp64 reference of the default gate")
    p.add_argument("--no-organism", action="store_true", help="skip the organism-size configuration")
    p.add_argument("--organism-reps", type=int, default=3)
    args = p.parse_args(argv)
    if args.quick:  # d > N_f + N_r: the default gate takes its kernel (N x N) route; the organism row the normal one
        args.d, args.n_r, args.n_f, args.layers, args.organism_reps = 512, 300, 40, 2, 1
    machine = C.setup(args)
    device = C.resolve_device(args.device)
    prog = not args.no_progress
    reference = not args.no_reference
    dense_layers = min(args.layers, args.timed_layers or args.layers)
    rank_one_layers = min(args.layers, args.rank_one_layers or dense_layers)
    common = dict(n_r=args.n_r, n_f=args.n_f, gamma=args.gamma, alpha=args.alpha, paper_gamma=args.paper_gamma,
                  ratio=args.ratio, seed=args.seed, device=device, reference=reference, progress=prog)
    warmup(device, reference)
    results: dict = {}
    if not args.no_organism:
        org = C.ORGANISM
        results["organism"] = run_config("organism", org.hidden_size, org.num_layers, dense_layers=org.num_layers,
                                         rank_one_layers=org.num_layers, reps=args.organism_reps, **common)
    results["target"] = run_config("target", args.d, args.layers, dense_layers=dense_layers,
                                   rank_one_layers=rank_one_layers, reps=args.reps, **common)
    t = results["target"]
    results["headline"] = {
        "d": t["d"], "layers": t["layers"], "n_retain": t["n_retain"], "n_forget": t["n_forget"],
        "device": str(device), "gpu": machine.get("gpu"),
        "default_all_layers_s": t["all_layers_total_s"]["default"],
        "dense_all_layers_s": t["all_layers_total_s"]["dense"],
        "ratio_dense_over_default": t["ratio_dense_over_default"],
        "dense_extrapolated": t["extrapolated"]["dense"],
        "max_rel_diff_default_vs_dense_reference": t["max_rel_diff_default_vs_dense_reference"],
        "goal_met": t["goal_met"],
    }
    notes = [
        f"{device.type} float64 linear algebra; inputs float32 (as captured), drawn on the CPU and moved to the device "
        "before timing; each route timed from its float32 inputs to its fitted state (gate vector, or W P).",
        "default = erasekit.steering.fit_contrastive_gate (relative gamma); rank_one = null_space_projector + "
        "fit_input_aware (the paper's gate); dense = Gram SVD + ratio projector + d x d pinv (the authors' code).",
        "measured_layers / extrapolated say per route which all-layer times are measured and which are mean per-layer "
        "time x layers.",
        "peak memory: CUDA allocator peak increase on a GPU, sampled RSS increase on the CPU.",
    ]
    for k, r in results.items():
        if k in ("organism", "target") and any(r["extrapolated"].values()):
            ex = [x for x, v in r["extrapolated"].items() if v]
            what = ", ".join(f"{x} measured on {r['measured_layers'][x]} of {r['layers']} layers" for x in ex)
            notes.append(f"{k}: EXTRAPOLATED all-layer times (mean per layer x layers) for {what}.")
    config = {k: v for k, v in vars(args).items() if k not in ("out_dir",)}
    config.update(dense_layers=dense_layers, rank_one_layers=rank_one_layers)
    C.write_results("fit", args.out_dir, machine, config, results, notes)
    return results


if __name__ == "__main__":
    main()
