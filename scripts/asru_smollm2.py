"""ASRU on a real pretrained LM through its front door, per form: SmolLM2-135M-Instruct and the capitals it knows.

The capitals SmolLM2 answers to every direct question (erasebook.form_transfer.known_facts): the first N_FORGET
forget, the next N_FIT retain (the eraser's rules tune on every fourth of these countries, held out of H_r), the
rest scored (no fit, rule or training saw them). Stage 1 = ``fit_eraser`` on TRAIN_FORMS (the λ rule of
erasebook.form_transfer.FIT_KW_LM), then ``fit_asru`` on the same facts and forms. Scored per form family
(erasebook.form_transfer.model_form_scores): forget leak, held-out capitals answered, harmless requests in held-out
wordings refused, each beside the vanilla model; families outside TRAIN_FORMS are forms ASRU never trained on.
Writes data/results/asru_smollm2.json. The bar (issue "ASRU anywhere"): leak <= 20 % per form, retain within 5
points, harmless refusal <= 5 %.

    python scripts/asru_smollm2.py [--steps 20] [--seed 0] [--threads 2] [--warm-only] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import torch

from erasebook import paths
from erasebook.form_transfer import FIT_KW_LM, known_facts, model_form_scores
from erasekit import ASRUConfig, fit_asru, fit_eraser
from erasekit.files import atomic_write
from erasekit.forms import FAMILIES, capital_facts
from erasekit.models import adapter_for, load_model
from erasekit.models.smollm2 import smollm2_dir

N_FORGET, N_FIT = 12, 16
TRAIN_FORMS = ("question", "cloze", "completion")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="GRPO steps (ASRUConfig's default is 60)")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--warm-only", action="store_true",
                    help="stage 1 + the warm start alone (ASRUConfig(steps=0): no GRPO)")
    ap.add_argument("--out", default=str(paths.data_dir() / "results" / "asru_smollm2.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = smollm2_dir()
    if folder is None:
        sys.exit("SmolLM2 is not fetched (python -m erasekit.models.smollm2)")
    t0 = time.perf_counter()
    adapter = load_model(str(folder))
    known = known_facts(adapter, capital_facts())
    forget, retain, scored = known[:N_FORGET], known[N_FORGET:N_FORGET + N_FIT], known[N_FORGET + N_FIT:]
    if len(scored) < 4:
        sys.exit(f"SmolLM2 knows {len(known)} capitals; need {N_FORGET + N_FIT + 4}")
    eraser = fit_eraser(adapter, forget, retain, forms=TRAIN_FORMS, progress=False, **FIT_KW_LM)
    t_eraser = time.perf_counter() - t0
    cfg = ASRUConfig(steps=0 if args.warm_only else args.steps, max_new_tokens=args.max_new_tokens, seed=args.seed)
    fit = fit_asru(adapter, forget, retain, eraser=eraser, cfg=cfg, forms=TRAIN_FORMS,
                   max_new_tokens=args.max_new_tokens, progress=True)
    t_asru = time.perf_counter() - t0 - t_eraser
    model = adapter_for(fit.result.model, adapter.processor)
    families = tuple(f for f in FAMILIES if f != "portrait")
    scores = model_form_scores(adapter, model, forget, {"retain": scored}, families=families,
                               trained_forms=TRAIN_FORMS, max_new_tokens=12)
    record = {"model": "SmolLM2-135M-Instruct", "warm_only": args.warm_only, "forget": [f.subject for f in forget],
              "fit": [f.subject for f in retain], "scored": [f.subject for f in scored], "known": len(known),
              "train_forms": list(TRAIN_FORMS), "stage1": {"strength": eraser.strength, "fit_kw": dict(FIT_KW_LM),
                                                           "layers": list(eraser.steerer.layers)},
              "asru": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "weights"},
              "report": fit.report, "curve": fit.result.curve, "forms": scores,
              "seconds": {"eraser": round(t_eraser, 1), "asru": round(t_asru, 1),
                          "total": round(time.perf_counter() - t0, 1)},
              "threads": torch.get_num_threads(),
              "command": "python scripts/asru_smollm2.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    atomic_write(args.out, json.dumps(record, indent=1, default=float))
    for fam, r in scores.items():
        print(fam, {k: r[k] for k in ("forget_leak", "forget_vanilla", "retain", "retain_vanilla",
                                      "harmless_refusal", "held_out")})
    return record


if __name__ == "__main__":
    main()
