"""Greedy-generation throughput with input-aware steering vs without (goal: steered / vanilla >= 0.99).

Same prompts (image + question, left padded, one batch), same number of new tokens every call (min_new_tokens =
max_new_tokens, so a steered run that would stop early at eos does not look faster), variants timed interleaved:
vanilla, steered (prefill), steered (all), vanilla, ... The steerer is a rank-one InputAwareSteerer fitted on
random activations at layers 1..L-1 (the authors' layers), moved to the model's device in float32.

    python benchmarks/bench_steering_overhead.py --scale organism
    python benchmarks/bench_steering_overhead.py --scale full            # CPU: reduced width (see _common)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = C.base_parser(__doc__.splitlines()[0])
    C.add_scale_args(p)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=None, help="default 32 (organism) / 16 (full on CPU)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per variant (default 30 / 5)")
    p.add_argument("--strength", type=float, default=0.25, help="lambda of Eq. 13")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.new_tokens, args.reps = 2, 4, 2
    machine = C.setup(args)
    big = args.scale == "full"
    new_tokens = args.new_tokens or (16 if big and machine["device"] == "cpu" else 32)
    reps = args.reps or (5 if big else 30)

    import torch

    from erasekit.hooks import steer

    adapter, shape, notes = C.model_from_args(args)
    layers = list(range(1, adapter.num_layers))
    steerer = C.random_steerer(adapter.hidden_size, layers, seed=args.seed).to(
        device=adapter.device, dtype=torch.float32)
    ops = steerer.operators(args.strength)
    questions, images = C.organism_prompts(args.batch_size)
    if shape.image_size != 32:
        images = [im.resize((shape.image_size, shape.image_size)) for im in images]
    batch = adapter.encode(questions, images=images)

    def run(mode: str | None):
        def go():
            if mode is None:
                return adapter.generate(batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
            with steer(adapter, ops, mode=mode):
                return adapter.generate(batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        return go

    # Steering must actually change the computation, else the benchmark would time a no-op.
    with torch.no_grad():
        base = adapter.model(**batch).logits[:, -1]
        with steer(adapter, ops, mode="prefill"):
            steered = adapter.model(**batch).logits[:, -1]
    changed = float((steered - base).abs().max())

    variants = {"vanilla": run(None), "steered_prefill": run("prefill"), "steered_all": run("all")}
    times = C.interleaved(variants, reps=reps, warmup=1, progress=not args.no_progress, device=adapter.device,
                          desc=f"generate ({args.scale})")
    tokens = args.batch_size * new_tokens
    results: dict = {k: C.summarize(v, work=tokens) for k, v in times.items()}
    for k in ("steered_prefill", "steered_all"):
        results[f"ratio_{k}_over_vanilla"] = C.paired_ratio(times[k], times["vanilla"])
    results["goal_ratio"] = 0.99
    results["max_abs_logit_change_from_steering"] = changed
    config = {"scale": args.scale, "reduced_size": bool(notes), "shape": C.shape_info(shape, adapter), "batch_size": args.batch_size,
              "prompt_tokens": int(batch["input_ids"].shape[1]), "new_tokens": new_tokens, "reps": reps,
              "steered_layers": layers, "strength": args.strength, "quick": args.quick}
    for k in ("steered_prefill", "steered_all"):
        r = results[f"ratio_{k}_over_vanilla"]
        print(f"{args.scale}: {k} / vanilla tokens/s = {r['median_paired_ratio']:.4f} (paired median; "
              f"range {r['min_paired_ratio']:.3f}..{r['max_paired_ratio']:.3f}); vanilla "
              f"{results['vanilla']['median_per_s']:.1f} tok/s")
    C.write_results(f"steering_overhead_{args.scale}", args.out_dir, machine, config, results, notes)
    return results


if __name__ == "__main__":
    main()
