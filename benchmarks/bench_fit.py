"""Fitting the input-aware map: erasekit's rank-one route vs the authors' dense route (Eq. 12), all layers.

Per layer, on random activations H_r (N_r, d), H_f (N_f, d) and a random direction d:

* rank one (erasekit): ``null_space_projector(H_r, ratio)`` (thin SVD of H_r, float64), then
  ``fit_input_aware(..., null_space=P)``: g = P H_f (H_f^T P H_f + gamma I)^-1 1, an N_f x N_f Cholesky solve.
* dense (authors' released code, see shared/METHOD.md Sec. 3): the d x d Gram H_r H_r^T, its SVD, P = U2 U2^T from
  the ``ratio * d`` smallest singular vectors, then W = D H_f^T P (P H_f H_f^T P + gamma P)^+ with a d x d
  ``torch.linalg.pinv`` and D = d 1^T; steering uses W P h.

Both are timed per stage (null space, then the fit given P, which is also the cost of each extra gamma of a sweep)
with the peak RSS increase, and compared through f(h) on probes (forget rows, retain rows, random vectors):
max_i ||f_dense(h_i) - f_rank1(h_i)|| / max_i ||f_rank1(h_i)||.

At d=4096 the dense route takes minutes per layer on a small CPU: only ``--timed-layers`` layers are run and the
all-layer time is extrapolated (per-layer time x 32), as the JSON says.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import torch  # noqa: E402


def rank_one_route(H_f, H_r, direction, gamma: float, ratio: float):
    """erasekit: returns (map, {stage: seconds})."""
    from erasekit.nullspace import null_space_projector
    from erasekit.steering import fit_input_aware

    t0 = time.perf_counter()
    P = null_space_projector(H_r, ratio)
    t1 = time.perf_counter()
    f = fit_input_aware(H_f, None, direction, gamma, null_space=P)
    t2 = time.perf_counter()
    return f, {"null_space_s": t1 - t0, "fit_s": t2 - t1}


def dense_route(H_f, H_r, direction, gamma: float, ratio: float):
    """The authors' route in the paper's layout (H as d x N), float64: returns (W P, {stage: seconds})."""
    t0 = time.perf_counter()
    Hr = H_r.to(torch.float64).T  # (d, N_r)
    d = Hr.shape[0]
    gram = Hr @ Hr.T  # (d, d)
    U, _, _ = torch.linalg.svd(gram)  # singular values descending
    k = int(ratio * d)
    U2 = U[:, d - k:]  # the k smallest
    P = U2 @ U2.T
    t1 = time.perf_counter()
    Hf = H_f.to(torch.float64).T  # (d, N_f)
    D = direction.to(torch.float64)[:, None].expand(d, Hf.shape[1])
    PHf = P @ Hf
    M = PHf @ PHf.T + gamma * P  # P H_f H_f^T P + gamma P
    W = D @ (Hf.T @ P) @ torch.linalg.pinv(M)
    WP = W @ P  # what the steering applies: f(h) = W P h
    t2 = time.perf_counter()
    return WP, {"null_space_s": t1 - t0, "fit_s": t2 - t1}


def null_space_alternatives(d: int, n_r: int, seed: int, reps: int = 3) -> dict:
    """Profile of the rank-one route's dominant cost, erasekit's thin SVD of H_r (N_r x d), against two ways to get
    the same right singular vectors: QR of H_r then SVD of the d x d R (same subspace, no (N_r, d) U), and the
    authors' SVD of the d x d Gram. Reports seconds (best of ``reps``) and the projector difference."""
    g = torch.Generator().manual_seed(seed)
    H = torch.randn(n_r, d, generator=g, dtype=torch.float64)
    k = int(0.3 * d)

    def svd_h():
        return torch.linalg.svd(H, full_matrices=False)[2]

    def qr_svd():
        return torch.linalg.svd(torch.linalg.qr(H, mode="r")[1])[2]

    def gram_svd():
        return torch.linalg.svd(H.T @ H)[2]

    out: dict = {"d": d, "n_retain": n_r}
    ref = None
    for name, fn in (("svd_of_H_r", svd_h), ("qr_then_svd_of_R", qr_svd), ("svd_of_gram", gram_svd)):
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            vh = fn()
            best = min(best, time.perf_counter() - t0)
        u2 = vh.flip(0).T[:, :k]
        proj = u2 @ u2.T
        ref = proj if ref is None else ref
        out[name] = {"seconds": best, "projector_max_abs_diff_vs_svd_of_H_r": float((proj - ref).abs().max())}
    return out


def layer_data(d: int, n_r: int, n_f: int, seed: int):
    """Random activations with an uneven spectrum (a few large directions, as residual streams have)."""
    g = torch.Generator().manual_seed(seed)
    scales = 1.0 + 20.0 * torch.exp(-torch.arange(d, dtype=torch.float32) / 8)
    H_r = torch.randn(n_r, d, generator=g) * scales
    H_f = torch.randn(n_f, d, generator=g) * scales
    direction = torch.randn(d, generator=g)
    probes = torch.cat([H_f[:64], H_r[:64], torch.randn(64, d, generator=g) * scales]).to(torch.float64)
    return H_f, H_r, direction, probes


def compare(f, WP: torch.Tensor, probes: torch.Tensor) -> dict[str, float]:
    r1 = f(probes)  # (n, d) float64
    dense = probes @ WP.T
    scale = float(r1.norm(dim=1).max())
    return {"max_rel_diff": float((dense - r1).norm(dim=1).max()) / scale,
            "gate_forget_mean": float(f.gate_value(probes[:64]).mean())}


def run_scale(name: str, d: int, n_layers: int, n_r: int, n_f: int, timed_layers: int, reps: int, gamma: float,
              ratio: float, seed: int, progress: bool) -> dict:
    from tqdm.auto import tqdm

    per_layer = []
    for layer in tqdm(range(timed_layers), desc=f"fit {name}", disable=not progress):
        H_f, H_r, direction, probes = layer_data(d, n_r, n_f, seed + layer)
        stages: dict[str, list[dict]] = {"rank_one": [], "dense": []}
        mem: dict[str, int] = {}
        out = {}
        for _ in range(reps):  # interleaved: rank one, dense, rank one, dense, ...
            for route, fn in (("rank_one", rank_one_route), ("dense", dense_route)):
                with C.peak_rss() as m:
                    res, st = fn(H_f, H_r, direction, gamma, ratio)
                stages[route].append(st)
                mem[route] = max(mem.get(route, 0), m["peak_delta_bytes"])
                out[route] = res
        row = {"layer": layer, **compare(out["rank_one"], out["dense"], probes)}
        for route, sts in stages.items():
            med = {k: sorted(s[k] for s in sts)[len(sts) // 2] for k in sts[0]}
            row[route] = {**med, "total_s": med["null_space_s"] + med["fit_s"],
                          "peak_rss_delta_mib": C.mib(mem[route]),
                          "state_bytes": (out[route].state_bytes() if route == "rank_one"
                                          else out[route].numel() * out[route].element_size())}
        per_layer.append(row)
        del out, H_f, H_r

    def mean(route: str, key: str) -> float:
        return sum(r[route][key] for r in per_layer) / len(per_layer)

    summary = {}
    for route in ("rank_one", "dense"):
        summary[route] = {k: mean(route, k) for k in ("null_space_s", "fit_s", "total_s")}
        summary[route]["all_layers_total_s"] = summary[route]["total_s"] * n_layers
        summary[route]["peak_rss_delta_mib"] = max(r[route]["peak_rss_delta_mib"] for r in per_layer)
    res = {
        "d": d, "layers": n_layers, "n_retain": n_r, "n_forget": n_f, "gamma": gamma, "ratio": ratio,
        "timed_layers": timed_layers, "reps_per_layer": reps,
        "extrapolated": timed_layers < n_layers,
        "per_layer": per_layer, "per_layer_mean": summary,
        "speedup_total": summary["dense"]["total_s"] / summary["rank_one"]["total_s"],
        "speedup_fit_given_P": summary["dense"]["fit_s"] / summary["rank_one"]["fit_s"],
        "speedup_null_space": summary["dense"]["null_space_s"] / summary["rank_one"]["null_space_s"],
        "max_rel_diff": max(r["max_rel_diff"] for r in per_layer),
    }
    print(f"{name}: d={d} L={n_layers}: total {summary['rank_one']['all_layers_total_s']:.2f}s (rank one) vs "
          f"{summary['dense']['all_layers_total_s']:.2f}s (dense){' [extrapolated]' if res['extrapolated'] else ''}"
          f" -> x{res['speedup_total']:.2f}; fit given P x{res['speedup_fit_given_P']:.0f}; null space "
          f"x{res['speedup_null_space']:.2f}; peak RSS {summary['rank_one']['peak_rss_delta_mib']:.0f} vs "
          f"{summary['dense']['peak_rss_delta_mib']:.0f} MiB; max rel diff {res['max_rel_diff']:.2e}")
    return res


def main(argv: list[str] | None = None) -> dict:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--n-retain", type=int, default=6000)
    p.add_argument("--n-forget", type=int, default=300)
    p.add_argument("--gamma", type=float, default=0.1, help="authors' LLaVA script")
    p.add_argument("--ratio", type=float, default=0.3, help="null-space fraction of d (authors' LLaVA setting)")
    p.add_argument("--big-d", type=int, default=4096)
    p.add_argument("--big-layers", type=int, default=32)
    p.add_argument("--timed-layers", type=int, default=1, help="layers actually run at the big size")
    p.add_argument("--organism-reps", type=int, default=3)
    args = p.parse_args(argv)
    if args.quick:
        args.n_retain, args.n_forget, args.big_d, args.timed_layers, args.organism_reps = 600, 40, 256, 1, 1
    machine = C.setup(args)
    torch.set_num_threads(max(1, args.threads))
    prog = not args.no_progress
    common = dict(n_r=args.n_retain, n_f=args.n_forget, gamma=args.gamma, ratio=args.ratio, seed=args.seed,
                  progress=prog)
    org = C.ORGANISM
    results = {
        "organism": run_scale("organism", org.hidden_size, org.num_layers, timed_layers=org.num_layers,
                              reps=args.organism_reps, **common),
        "llava15_7b": run_scale("llava15_7b", args.big_d, args.big_layers,
                                timed_layers=min(args.timed_layers, args.big_layers), reps=1, **common),
    }
    results["null_space_profile"] = [null_space_alternatives(d, args.n_retain, args.seed, reps=3 if d < 1024 else 1)
                                     for d in ((192, 512) if args.quick else (192, 1024))]
    for r in results["null_space_profile"]:
        print(f"null space d={r['d']}, N_r={r['n_retain']}: SVD of H_r {r['svd_of_H_r']['seconds']:.3f}s, QR + SVD of R "
              f"{r['qr_then_svd_of_R']['seconds']:.3f}s, SVD of Gram {r['svd_of_gram']['seconds']:.3f}s")
    results["goal"] = {"speedup_at_4096": 10.0, "max_rel_diff": 1e-6}
    notes = ["CPU float64; all routes single process; peak memory = peak RSS increase over the call (sampled).",
             "dense route: torch.linalg.svd of the d x d Gram and torch.linalg.pinv (SVD) of the d x d matrix."]
    if results["llava15_7b"]["extrapolated"]:
        notes.append(f"llava15_7b: only {results['llava15_7b']['timed_layers']} of {args.big_layers} layers were run; "
                     "all_layers_total_s = mean per-layer time x layers (extrapolated).")
    config = {k: v for k, v in vars(args).items() if k not in ("out_dir",)}
    C.write_results("fit", args.out_dir, machine, config, results, notes)
    return results


if __name__ == "__main__":
    main()
