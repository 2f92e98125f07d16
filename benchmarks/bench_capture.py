"""Activation-capture throughput: ``collect_activations`` batched with left padding vs one prompt at a time.

Model: the organism's LLaVA architecture with random weights; prompts are evaluation-style questions about the
synthetic world's people with their 32x32 portraits (image + text, as the retain/forget activations are read).
All layers, last prompt token. Variants timed interleaved (batched, one-by-one, batched, ...); the script also
checks that both return the same activations (left padding must not change the last-token states).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

from erasekit import measure as M  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--n-prompts", type=int, default=64)
    p.add_argument("--batch-size", type=int, nargs="+", default=[8, 32], help="batched variants")
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args(argv)
    if args.quick:
        args.n_prompts, args.batch_size, args.reps = 8, [4], 2
    machine = C.setup(args)

    from erasekit.hooks import collect_activations

    shape = C.ORGANISM
    adapter = C.build_llava(shape, device=args.device, seed=args.seed)
    questions, images = C.organism_prompts(args.n_prompts)

    def collect(bs: int):
        return lambda: collect_activations(adapter, questions, images, layers=None, batch_size=bs, progress=False)

    ref = collect(1)()
    agree = {}
    for bs in args.batch_size:
        out = collect(bs)()
        agree[bs] = max(float((out[l] - ref[l]).abs().max() / ref[l].abs().max()) for l in ref)

    variants = {f"batch_{bs}": collect(bs) for bs in args.batch_size}
    variants["one_by_one"] = collect(1)
    times = M.interleaved(variants, reps=args.reps, warmup=1, progress=not args.no_progress, device=adapter.device,
                          desc="capture")
    results: dict = {k: M.summarize(v, work=args.n_prompts) for k, v in times.items()}
    for bs in args.batch_size:
        r = M.paired_ratio(times[f"batch_{bs}"], times["one_by_one"])
        results[f"speedup_batch_{bs}_over_one_by_one"] = r
        results[f"max_rel_diff_batch_{bs}_vs_one_by_one"] = agree[bs]
        print(f"batch {bs}: {results[f'batch_{bs}']['median_per_s']:.1f} prompts/s vs one by one "
              f"{results['one_by_one']['median_per_s']:.1f} prompts/s -> x{r['median_paired_ratio']:.2f} "
              f"(range {r['min_paired_ratio']:.2f}..{r['max_paired_ratio']:.2f}); max rel diff {agree[bs]:.1e}")
    config = {"shape": C.shape_info(shape, adapter), "n_prompts": args.n_prompts, "batch_sizes": args.batch_size,
              "reps": args.reps, "layers": "all", "position": "last", "quick": args.quick}
    C.write_results("capture", args.out_dir, machine, config, results)
    return results


if __name__ == "__main__":
    main()
