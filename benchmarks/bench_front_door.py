"""The front door's λ rule (``fit_eraser(strength="auto")``): every answer at every λ vs only the deciding answers.

One real fit per model (:func:`erasekit.eraser.fit_eraser`, facts in several forms, the organism's located gate);
the rule's inputs (the fitted steerer and the sampled forget and tune prompts) are taken from that fit, and the
rule then runs on them by both routes, interleaved (generate, fast, generate, ...):

* ``generate`` (``strength_rule="generate"``): greedy answers to every forget and tune prompt at every λ of the
  grid and to the tune prompts unsteered, judged by :func:`erasekit.scoring.is_refusal`;
* ``fast`` (``strength_rule="fast"``, the default): :func:`erasekit.strength_rule.fast_refusal_strength`, the same
  choice from the answers that decide it.

Both λ are printed and recorded with the times and their ratio (generate / fast). Models:

* ``organism``: the committed organism (``data/organism``); its session's forget facts, the facts of the first
  24 ``fit`` profiles as retain and the ``tune`` profiles as tune, every form, the rule of
  :data:`erasebook.form_transfer.FIT_KW` (96 forget and 96 tune prompts, 16 new tokens, the default λ grid);
* ``smollm2``: SmolLM2-135M-Instruct where :func:`erasekit.models.smollm2.smollm2_dir` finds it (skipped
  otherwise): capitals it knows (:func:`erasebook.form_transfer.known_facts`), ``--smol-forget`` forget and
  ``--smol-retain`` retain countries, every text form, the rule of :data:`erasebook.form_transfer.FIT_KW_LM`,
  batches of 32 (as ``erasekit form-transfer``).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_front_door.py                    # ~11 min (SmolLM2 ~7)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_front_door.py --models organism  # ~4 min

Writes ``results/front_door_cpu.json`` (``front_door_cuda.json`` on a GPU).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

MODELS = ("organism", "smollm2")
ROUTES = ("generate", "fast")


def rule_inputs(adapter, forget, retain, **fit_kw) -> tuple[dict, float]:
    """Run ``fit_eraser(strength="auto")`` up to the λ rule and return the rule's arguments (and the fit's seconds
    before the rule): the rule is intercepted, so both routes later see exactly the fit's inputs."""
    import erasekit.eraser as E

    seen: dict = {}
    real = E.choose_strength

    def capture(adapter, steerer, read, forget, tune, **kw):
        seen.update(adapter=adapter, steerer=steerer, read=read, forget=forget, tune=tune, **kw)
        return {"chosen": float(min(kw["strength_grid"]))}

    E.choose_strength = capture
    try:
        t0 = time.perf_counter()
        E.fit_eraser(adapter, forget, retain, strength="auto", progress=False, **fit_kw)
        fit_s = time.perf_counter() - t0
    finally:
        E.choose_strength = real
    return seen, fit_s


def time_routes(inputs: dict, reps: int) -> dict:
    """Both routes on the same inputs, interleaved; seconds per repetition, chosen λ and the routes' records."""
    import erasekit.strength_rule as SR

    kw = {k: v for k, v in inputs.items() if k not in ("route",)}
    out: dict = {r: {"seconds": [], "chosen": []} for r in ROUTES}
    for _ in range(reps):
        for route in ROUTES:
            t0 = time.perf_counter()
            rec = SR.choose_strength(**kw, route=route)
            out[route]["seconds"].append(round(time.perf_counter() - t0, 3))
            out[route]["chosen"].append(rec["chosen"])
            out[route]["record"] = {k: v for k, v in rec.items() if k not in ("rule",)}
    return out


def summarize(name: str, inputs: dict, fit_s: float, timed: dict, extra: dict) -> dict:
    import statistics

    g, f = timed["generate"], timed["fast"]
    ratios = [a / b for a, b in zip(g["seconds"], f["seconds"])]
    res = {
        "generate_s": g["seconds"], "fast_s": f["seconds"],
        "median_ratio_generate_over_fast": round(statistics.median(ratios), 2),
        "chosen_generate": g["chosen"], "chosen_fast": f["chosen"],
        "same_choice": all(a == b for a, b in zip(g["chosen"], f["chosen"])),
        "fit_before_rule_s": round(fit_s, 1),
        "n_forget_rule": len(inputs["forget"][0]), "n_tune_rule": len(inputs["tune"][0]),
        "strength_grid": [float(x) for x in inputs["strength_grid"]],
        "max_new_tokens": inputs["max_new_tokens"], "batch_size": inputs["batch_size"],
        "layers": list(inputs["steerer"].layers), "read": inputs["read"],
        "generate_scores": g["record"].get("scores"),
        "fast_record": {k: v for k, v in f["record"].items() if k != "seconds"},
        **extra,
    }
    print(f"{name}: rule generate {statistics.median(g['seconds']):.1f} s (λ={g['chosen'][0]}) vs fast "
          f"{statistics.median(f['seconds']):.1f} s (λ={f['chosen'][0]}): x{res['median_ratio_generate_over_fast']:.1f}"
          f"; same λ: {res['same_choice']}; {f['record'].get('rows_generated')} rows answered by the fast route")
    return res


def organism(args) -> dict:
    import erasebook as eb
    from erasebook.form_transfer import FIT_KW, organism_form_facts

    session = eb.load_session(device=args.device)
    facts = organism_form_facts(session)
    forget, retain, tune = facts["forget"], facts["retain"][: 8 * 24], facts["tune"]
    fit_kw = dict(FIT_KW)
    if args.quick:
        forget, retain, tune = forget[:16], retain[:48], tune[:16]
        fit_kw.update(rule_prompts=24, strength_grid=(1.0, 4.0, 16.0))
    inputs, fit_s = rule_inputs(session.adapter, forget, retain, tune=tune, **fit_kw)
    return summarize("organism", inputs, fit_s, time_routes(inputs, args.reps),
                     {"n_forget_facts": len(forget), "n_retain_facts": len(retain), "n_tune_facts": len(tune),
                      "fit_kw": {k: list(v) if isinstance(v, tuple) else v for k, v in fit_kw.items()}})


def smollm2(args) -> dict | None:
    import erasekit as ek
    from erasebook.form_transfer import FIT_KW_LM, known_facts
    from erasekit.forms import FAMILIES, capital_facts
    from erasekit.models.smollm2 import smollm2_dir

    folder = smollm2_dir()
    if folder is None:
        print("smollm2: not cached (erasekit.models.smollm2.fetch_smollm2), skipped")
        return None
    adapter = ek.load_model(str(folder), device=args.device or "cpu")
    known = known_facts(adapter, capital_facts())
    forget, retain = known[: args.smol_forget], known[args.smol_forget: args.smol_forget + args.smol_retain]
    forms = [f for f in FAMILIES if f != "portrait"]
    fit_kw = {**FIT_KW_LM, "forms": forms, "batch_size": 32}
    inputs, fit_s = rule_inputs(adapter, forget, retain, **fit_kw)
    return summarize("smollm2", inputs, fit_s, time_routes(inputs, args.smol_reps),
                     {"n_forget_facts": len(forget), "n_retain_facts": len(retain), "known_facts": len(known),
                      "fit_kw": {k: list(v) if isinstance(v, tuple) else v for k, v in fit_kw.items()}})


def main(argv: list[str] | None = None) -> dict:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--reps", type=int, default=3, help="organism: interleaved repetitions of both routes")
    p.add_argument("--smol-reps", type=int, default=1, help="SmolLM2: interleaved repetitions of both routes")
    p.add_argument("--smol-forget", type=int, default=8, help="SmolLM2: forget countries")
    p.add_argument("--smol-retain", type=int, default=12, help="SmolLM2: retain countries (every 4th tunes)")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.reps, args.smol_reps = ["organism"], 1, 1
    machine = C.setup(args)
    results: dict = {}
    for name in args.models:
        r = organism(args) if name == "organism" else smollm2(args)
        if r is not None:
            results[name] = r
    config = {"models": args.models, "reps": args.reps, "smol_reps": args.smol_reps, "quick": args.quick,
              "routes": list(ROUTES),
              "smol_forget": args.smol_forget, "smol_retain": args.smol_retain}
    notes = [("Times are the λ rule alone (the fit before it runs once and is reported as fit_before_rule_s); "
              "ratio = generate seconds / fast seconds, paired per repetition.")]
    name = "front_door_cuda" if C.resolve_device(args.device).type == "cuda" else "front_door_cpu"
    C.write_results(name, args.out_dir, machine, config, results, notes)
    return results


if __name__ == "__main__":
    main()
