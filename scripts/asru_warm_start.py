"""Where ASRU's over-refusal comes from: stage 1 + the warm start alone (and the whole of ASRU), under the settings
that chose ASRU's data, warm-start and RL defaults (erasekit.asru_results.TRAIN, erasekit.asru.ASRUConfig). Reads
tune profiles only (never scored). Writes data/results/asru_warm_start.json; chapter 08 shows it. ~75 min on one CPU
thread.

    python scripts/asru_warm_start.py [--threads 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import json

import torch

from erasekit import asru_results, paths, recipes
from erasekit.files import atomic_write
from erasekit.session import load_session

# every GRPO row starts from BASE (the RL setting of the first record, spelt out so that later changes of the
# defaults do not change what a row means) and changes what it names
BASE = {"retain_fraction": 0.1, "teacher_fraction": 0.3, "warm_epochs": 6, "warm_targets": "contextual", "grpo": True,
        "steps": 60, "lr": 5e-4, "beta": 0.04, "retain_share": 0.375, "teacher_in_rl": True, "scale_rewards": True,
        "retain_nll": 0.0, "rl_only_share": 0.0}
WIDER = {"teacher_fraction": 0.55, "rl_only_share": 0.5}  # half of 130 unlabelled people kept for the RL stage only

SETTINGS = [
    # stage 1 + the warm start alone: targets, epochs, labelled and unlabelled people
    {"retain_fraction": 0.1, "teacher_fraction": 0.0, "warm_epochs": 3, "warm_targets": "stage1"},
    {"retain_fraction": 0.1, "teacher_fraction": 0.0, "warm_epochs": 3, "warm_targets": "contextual"},
    {"retain_fraction": 0.1, "teacher_fraction": 0.0, "warm_epochs": 6, "warm_targets": "contextual"},
    {"retain_fraction": 0.2, "teacher_fraction": 0.0, "warm_epochs": 6, "warm_targets": "contextual"},
    {"retain_fraction": 0.3, "teacher_fraction": 0.0, "warm_epochs": 6, "warm_targets": "contextual"},
    {"retain_fraction": 0.1, "teacher_fraction": 0.3, "warm_epochs": 6, "warm_targets": "contextual"},
    {"retain_fraction": 0.1, "teacher_fraction": 0.55, "warm_epochs": 6, "warm_targets": "contextual"},
    # the whole of ASRU (GRPO too)
    {**BASE, "teacher_in_rl": False},
    BASE,
    {**BASE, "retain_share": 0.5},
    {**BASE, "retain_share": 0.625},
    {**BASE, "beta": 0.2},
    {**BASE, "beta": 1.0},
    {**BASE, "steps": 20},
    {**BASE, "scale_rewards": False},
    {**BASE, "retain_nll": 1.0},
    {**BASE, "retain_nll": 1.0, "retain_share": 0.5},
    {**BASE, **WIDER},
    {**BASE, **WIDER, "retain_share": 0.5},
    {**BASE, **WIDER, "beta": 1.0},
    {**BASE, **WIDER, "lr": 2e-4},
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--forget-pct", type=int, default=5)
    ap.add_argument("--out", default=str(paths.data_dir() / "results" / "asru_warm_start.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    session = load_session()
    setup = recipes.gate_setup(session, recipes.GateConfig(forget_pct=args.forget_pct))
    rows = asru_results.warm_start_probe(session, setup, args.forget_pct, SETTINGS)
    record = {"forget_pct": args.forget_pct, "threads": args.threads, "base": BASE, "rows": rows,
              "what": "stage 1 + warm start only (no GRPO): greedy refusal % on the training forget generation "
                      "questions and on the tune retain profiles' generation questions (text)"}
    atomic_write(args.out, json.dumps(record, indent=1, ensure_ascii=False))
    for r in rows:
        print(r)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
