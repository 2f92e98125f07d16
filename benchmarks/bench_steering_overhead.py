"""Steering overhead: prefill and generation throughput with input-aware steering, per gate-reading mode, vs vanilla.

Same prompts (image + question, left padded, one batch) for every variant, timed interleaved (vanilla, steered,
frozen, anchor, ..., vanilla, ...) so load drifts hit every variant alike; ratios are paired medians of
vanilla_time / variant_time (= variant throughput / vanilla throughput).

Gated operators (``GatedOperator`` from ``InputAwareSteerer.operators``, erasekit's default contrastive gate fitted on
random activations, float32 on the model's device) steer ``--steer-layers``: ``half`` (default, the last half of the
layers, L/2..L-1), ``quarter`` (the last quarter) or ``authors`` (1..L-1). Reading modes of
``erasekit.hooks.steer(..., mode="prefill", read=...)``:

* ``steered`` (the authors): each layer's gate reads its own, already steered, incoming state; no extra work;
* ``frozen``: the unsteered stream forked at the first steered layer and run through the steered span (no KV cache)
  to read every gate; ``frozen_pass``: the earlier route, a whole extra unsteered prefill up to the last steered layer;
* ``anchor``: the first steered layer's gate, read once, pushes every steered layer; no extra pass.

Two measurements, each with its own interleaved timing:

* **prefill**: one forward of the prompt batch as generate's prefill does it (KV cache built, logits of the last
  position only), in prompt tokens/s: vanilla vs steered / frozen / anchor. This is where the reading modes differ.
* **generate**: greedy generation of a fixed number of new tokens (min_new_tokens = max_new_tokens), in new
  tokens/s: vanilla vs prefill-mode steered / frozen / anchor, and every-token steering (mode="all").

Checks recorded with the results: each mode changes the last-token logits, how many times the first steered layer
runs per prefill (2 for frozen, 1 otherwise), how many times layer 0 runs (once for the fork, twice for the pass),
the largest logit difference between the fork and the pass (the fork is exact: 0), and whether the cascade warning
fired.

    python benchmarks/bench_steering_overhead.py --scale organism
    python benchmarks/bench_steering_overhead.py --scale full            # CPU: reduced width (see _common)
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

from erasekit import measure as M  # noqa: E402

READS = ("steered", "frozen", "anchor")
# variant name -> (mode, read); None = vanilla. Names of the earlier version of this script kept for the first two.
GEN_VARIANTS = {"vanilla": None, "steered_prefill": ("prefill", "steered"),
                "steered_prefill_frozen": ("prefill", "frozen"),
                "steered_prefill_frozen_pass": ("prefill", "frozen", "pass"),
                "steered_prefill_anchor": ("prefill", "anchor"),
                "steered_all": ("all", "steered")}
# "frozen" forks the unsteered stream at the first steered layer (the default); "frozen_pass" is the earlier
# route, a whole extra unsteered prefill (erasekit.hooks.steer's frozen_route).
PREFILL_VARIANTS = {"vanilla": None, "steered": ("prefill", "steered"), "frozen": ("prefill", "frozen"),
                    "frozen_pass": ("prefill", "frozen", "pass"), "anchor": ("prefill", "anchor")}


def steer_layers(num_layers: int, which: str) -> list[int]:
    if which == "half":
        return list(range(num_layers // 2, num_layers))
    if which == "quarter":
        return list(range(num_layers - max(num_layers // 4, 1), num_layers))
    if which == "authors":
        return list(range(1, num_layers))
    raise ValueError(f"--steer-layers must be 'half', 'quarter' or 'authors', got {which!r}")


def main(argv: list[str] | None = None) -> dict:
    p = C.base_parser(__doc__.splitlines()[0])
    C.add_scale_args(p)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=None, help="default 32 (organism) / 16 (full on CPU)")
    p.add_argument("--reps", type=int, default=None, help="timed generate repetitions per variant (default 30 / 5)")
    p.add_argument("--prefill-reps", type=int, default=None,
                   help="timed prefill repetitions per variant (default 3 x --reps)")
    p.add_argument("--strength", type=float, default=0.25, help="lambda of Eq. 13")
    p.add_argument("--steer-layers", choices=["half", "quarter", "authors"], default="half",
                   help="half: last half L/2..L-1; quarter: the last quarter; authors: 1..L-1")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.new_tokens, args.reps, args.prefill_reps = 2, 4, 2, 2
    machine = C.setup(args)
    big = args.scale == "full"
    new_tokens = args.new_tokens or (16 if big and machine["device"] == "cpu" else 32)
    reps = args.reps or (5 if big else 30)
    prefill_reps = args.prefill_reps or 3 * reps

    import torch

    from erasekit.hooks import steer
    from erasekit.steering import GatedOperator

    adapter, shape, notes = C.model_from_args(args)
    layers = steer_layers(adapter.num_layers, args.steer_layers)
    anchor = layers[0]
    steerer = C.random_steerer(adapter.hidden_size, layers, seed=args.seed).to(
        device=adapter.device, dtype=torch.float32)
    ops = steerer.operators(args.strength)
    assert all(isinstance(o, GatedOperator) for o in ops.values())
    questions, images = C.organism_prompts(args.batch_size)
    if shape.image_size != 32:
        images = [im.resize((shape.image_size, shape.image_size)) for im in images]
    batch = adapter.encode(questions, images=images)
    prompt_tokens = int(batch["input_ids"].numel())

    def context(spec):
        mode, read, *route = spec
        return steer(adapter, ops, mode=mode, read=read, anchor=anchor if read == "anchor" else None,
                     frozen_route=route[0] if route else "fork")

    def prefill_once():
        # generate's prefill: KV cache built, logits of the last position only
        return adapter.model(**batch, use_cache=True, logits_to_keep=1)

    def prefill(spec):
        def go():
            with torch.no_grad():
                if spec is None:
                    return prefill_once()
                with context(spec):
                    return prefill_once()
        return go

    def generate(spec):
        def go():
            if spec is None:
                return adapter.generate(batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
            with context(spec):
                return adapter.generate(batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        return go

    # Checks: steering must change the computation (else the benchmark would time a no-op); frozen must run the
    # extra pass; record whether the cascade warning fires in each reading mode.
    calls = {"n": 0, "first": 0}

    def counter(key):
        def count(module, args_, kwargs_):
            calls[key] += 1
        return count

    checks: dict = {}
    with torch.no_grad():
        base = prefill_once().logits[:, -1].float()
        handle = adapter.layers[anchor].register_forward_pre_hook(counter("n"), with_kwargs=True)
        handle0 = adapter.layers[0].register_forward_pre_hook(counter("first"), with_kwargs=True)
        frozen_logits = {}
        try:
            for name, spec in PREFILL_VARIANTS.items():
                calls["n"] = calls["first"] = 0
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    logits = prefill(spec)().logits[:, -1].float()
                checks[name] = {
                    "max_abs_logit_change_vs_vanilla": float((logits - base).abs().max()),
                    "first_steered_layer_calls_per_prefill": calls["n"],
                    "layer_0_calls_per_prefill": calls["first"],
                    "cascade_warning": any("cascade" in str(w.message) for w in caught),
                }
                if name.startswith("frozen"):
                    frozen_logits[name] = logits
        finally:
            handle.remove()
            handle0.remove()
        checks["frozen_fork_vs_pass_max_abs_logit_diff"] = float(
            (frozen_logits["frozen"] - frozen_logits["frozen_pass"]).abs().max())
    for name in ("steered", "frozen", "frozen_pass", "anchor"):
        if not checks[name]["max_abs_logit_change_vs_vanilla"] > 0:
            raise RuntimeError(f"steering with read={name!r} did not change the logits: the timing would be a no-op")
    for name in ("frozen", "frozen_pass"):
        if checks[name]["first_steered_layer_calls_per_prefill"] != 2:
            raise RuntimeError(f"read='frozen' ({name}) ran the first steered layer {checks[name]} times per prefill, "
                               "not 2")
    if anchor > 0 and checks["frozen"]["layer_0_calls_per_prefill"] != 1:
        raise RuntimeError(f"the fork ran layer 0 {checks['frozen']['layer_0_calls_per_prefill']} times, not once")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cascade warning, recorded above; it would repeat on every call
        t_pre = M.interleaved({k: prefill(v) for k, v in PREFILL_VARIANTS.items()}, reps=prefill_reps, warmup=1,
                              progress=not args.no_progress, device=adapter.device, desc=f"prefill ({args.scale})")
        t_gen = M.interleaved({k: generate(v) for k, v in GEN_VARIANTS.items()}, reps=reps, warmup=1,
                              progress=not args.no_progress, device=adapter.device, desc=f"generate ({args.scale})")

    new = args.batch_size * new_tokens
    results: dict = {k: M.summarize(v, work=new) for k, v in t_gen.items()}  # generate, new tokens/s
    for k in GEN_VARIANTS:
        if k != "vanilla":
            results[f"ratio_{k}_over_vanilla"] = M.paired_ratio(t_gen[k], t_gen["vanilla"])
    pre = {k: M.summarize(v, work=prompt_tokens) for k, v in t_pre.items()}  # prefill, prompt tokens/s
    for k in PREFILL_VARIANTS:
        if k != "vanilla":
            pre[f"ratio_{k}_over_vanilla"] = M.paired_ratio(t_pre[k], t_pre["vanilla"])
    results["prefill"] = pre
    results["checks"] = checks
    results["goal_ratio"] = 0.99
    config = {"scale": args.scale, "reduced_size": bool(notes), "shape": C.shape_info(shape, adapter),
              "batch_size": args.batch_size, "prompt_tokens_per_row": int(batch["input_ids"].shape[1]),
              "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "reps": reps, "prefill_reps": prefill_reps,
              "steer_layers": args.steer_layers, "steered_layers": layers, "anchor": anchor,
              "gate": steerer.meta.get("gate"), "strength": args.strength, "quick": args.quick}
    notes = list(notes) + [
        "generate: new tokens/s (batch x new tokens per call); prefill: prompt tokens/s (batch x padded prompt "
        "length per forward, KV cache built, logits of the last position only).",
        "ratio_* = paired median of vanilla_time / variant_time over interleaved repetitions (>1: faster than vanilla).",  # noqa: E501
    ]
    print(f"{args.scale} ({machine['device']}), steering layers {layers[0]}..{layers[-1]} ({len(layers)} of "
          f"{adapter.num_layers}), batch {args.batch_size}:")
    print(f"  prefill ({prompt_tokens} prompt tokens, {prefill_reps} reps): vanilla "
          f"{pre['vanilla']['median_per_s']:.0f} tok/s")
    for k in ("steered", "frozen", "frozen_pass", "anchor"):
        r = pre[f"ratio_{k}_over_vanilla"]
        print(f"    read={k:11s} / vanilla = {r['median_paired_ratio']:.3f} (range {r['min_paired_ratio']:.3f}.."
              f"{r['max_paired_ratio']:.3f}); cascade warning: {checks[k]['cascade_warning']}")
    print(f"  frozen: fork vs pass, max |logit difference| {checks['frozen_fork_vs_pass_max_abs_logit_diff']:.3g}")
    print(f"  generate ({new_tokens} new tokens, {reps} reps): vanilla {results['vanilla']['median_per_s']:.1f} tok/s")
    for k in GEN_VARIANTS:
        if k != "vanilla":
            r = results[f"ratio_{k}_over_vanilla"]
            print(f"    {k:24s} / vanilla = {r['median_paired_ratio']:.3f} (range {r['min_paired_ratio']:.3f}.."
                  f"{r['max_paired_ratio']:.3f})")
    suffix = "" if args.steer_layers == "half" else f"_{args.steer_layers}"
    C.write_results(f"steering_overhead_{args.scale}{suffix}", args.out_dir, machine, config, results, notes)
    return results


if __name__ == "__main__":
    main()
