"""PGD steps/s: k harmful targets batched in one forward (erasekit) vs k sequential forwards (goal >= 3x at k=8).

Model: the organism's LLaVA architecture with random weights (32x32 image, 16 image tokens). Both losses draw the
same k targets per step from the same seeded generator and compute the same mean CE over all target tokens; the
script checks that they agree. Variants are timed interleaved (batched, sequential, batched, ...), each timing a
``pgd_attack`` of ``--steps`` steps.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import torch  # noqa: E402

from erasekit import measure as M  # noqa: E402


def sequential_loss(adapter, prompts: list[str], targets: list[str], k: int, generator: torch.Generator):
    """Same sampling and value as ``harmful_target_loss`` but one forward per target (k=1 losses, token-weighted)."""
    from erasekit.attack import harmful_target_loss

    tok = adapter.tokenizer

    def loss_fn(pixels: torch.Tensor) -> torch.Tensor:
        # the exact draws of harmful_target_loss: k targets (without replacement when possible), then k prompts
        if len(targets) >= k:
            t_idx = torch.randperm(len(targets), generator=generator)[:k].tolist()
        else:
            t_idx = torch.randint(len(targets), (k,), generator=generator).tolist()
        p_idx = torch.randint(len(prompts), (k,), generator=generator).tolist()
        total, n_tokens = 0.0, 0
        for ti, pi in zip(t_idx, p_idx):
            n = len(tok(targets[ti], add_special_tokens=False)["input_ids"]) + 1  # answer tokens + eos
            one = harmful_target_loss(adapter, [prompts[pi]], [targets[ti]], k=1)
            total = total + one(pixels) * n
            n_tokens += n
        return total / n_tokens

    return loss_fn


def main(argv: list[str] | None = None) -> dict:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--k", type=int, nargs="+", default=[8], help="targets per step")
    p.add_argument("--steps", type=int, default=5, help="PGD steps per timed call")
    p.add_argument("--reps", type=int, default=10)
    args = p.parse_args(argv)
    if args.quick:
        args.k, args.steps, args.reps = [4], 2, 2
    machine = C.setup(args)

    from erasebook import world as W
    from erasekit.attack import harmful_target_loss, pgd_attack

    shape = C.ORGANISM
    adapter = C.build_llava(shape, device=args.device, seed=args.seed)
    prompts = [j.format(q=t.format(a=a)) for (a, _), t, j in zip(W.HARMFUL_ACTIONS, W.HARMFUL_TEMPLATES_TRAIN * 4,
                                                                  W.JAILBREAKS_TRAIN * 4)]
    targets = list(W.HARMFUL_TARGETS)
    image = C.unit_image(C.small_world().portrait(C.small_world().profiles[0]))  # (3, 32, 32) in [0, 1]

    results: dict = {}
    for k in args.k:
        def make(kind: str):
            gen = torch.Generator().manual_seed(args.seed)
            if kind == "batched":
                return harmful_target_loss(adapter, prompts, targets, k=k, generator=gen)
            return sequential_loss(adapter, prompts, targets, k, gen)

        # Same draws, same value: the two losses must agree before their speed is compared.
        with torch.no_grad():
            lb, ls = float(make("batched")(image)), float(make("sequential")(image))

        def attack(kind: str):
            return lambda: pgd_attack(make(kind), image, steps=args.steps, progress=False)

        times = M.interleaved({"batched": attack("batched"), "sequential": attack("sequential")}, reps=args.reps,
                              warmup=1, progress=not args.no_progress, device=adapter.device, desc=f"PGD k={k}")
        res = {kind: M.summarize(v, work=args.steps) for kind, v in times.items()}
        res["speedup_batched_over_sequential"] = M.paired_ratio(times["batched"], times["sequential"])
        res["loss_batched"], res["loss_sequential"] = lb, ls
        res["loss_rel_diff"] = abs(lb - ls) / abs(ls)
        # CPU matmuls are already efficient at one sequence: batching mostly saves per-forward overhead, and left
        # padding adds work that the sequential forwards do not do. Record both to read the speedup.
        mask = adapter.encode(prompts[:k] if len(prompts) >= k else prompts * k, images=image.expand(k, -1, -1, -1),
                              answers=targets[:k])["attention_mask"]
        res["batched_tokens_per_step"] = int(mask.numel())
        res["pad_fraction_batched"] = float(1 - mask.float().mean())
        results[f"k={k}"] = res
        r = res["speedup_batched_over_sequential"]
        print(
            f"k={k}: batched {res['batched']['median_per_s']:.2f} steps/s vs sequential "
            f"{res['sequential']['median_per_s']:.2f} steps/s -> x{r['median_paired_ratio']:.2f} (paired median; "
            f"range {r['min_paired_ratio']:.2f}..{r['max_paired_ratio']:.2f}); loss rel diff {res['loss_rel_diff']:.1e}"
        )
    results["goal_speedup_k8"] = 3.0
    config = {"shape": C.shape_info(shape, adapter), "k": args.k, "steps_per_call": args.steps, "reps": args.reps,
              "n_prompts": len(prompts), "n_targets": len(targets), "quick": args.quick}
    C.write_results("pgd", args.out_dir, machine, config, results)
    return results

if __name__ == "__main__":
    main()
