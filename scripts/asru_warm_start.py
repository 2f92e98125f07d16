"""Where ASRU's over-refusal comes from: stage 1 + the warm start alone (and the whole of ASRU), under the settings
that chose ASRU's data, warm-start and RL defaults (erasekit.asru_results.TRAIN, erasekit.asru.ASRUConfig). Reads
tune profiles only (never scored). Writes data/results/asru_warm_start.json; chapter 08 shows it. ~35 min on one CPU
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

SETTINGS = [
    {"retain_fraction": 0.1, "teacher_fraction": 0.0, "warm_epochs": 3, "warm_targets": "stage1"},
    {"retain_fraction": 0.1, "teacher_fraction": 0.0, "warm_epochs": 3, "warm_targets": "contextual"},
    {"retain_fraction": 0.1, "teacher_fraction": 0.0, "warm_epochs": 6, "warm_targets": "contextual"},
    {"retain_fraction": 0.2, "teacher_fraction": 0.0, "warm_epochs": 6, "warm_targets": "contextual"},
    {"retain_fraction": 0.3, "teacher_fraction": 0.0, "warm_epochs": 6, "warm_targets": "contextual"},
    {"retain_fraction": 0.1, "teacher_fraction": 0.3, "warm_epochs": 6, "warm_targets": "contextual"},
    {"retain_fraction": 0.1, "teacher_fraction": 0.55, "warm_epochs": 6, "warm_targets": "contextual"},
    # the whole of ASRU (GRPO too): unlabelled prompts in the RL stage or not, and the share of retain prompts
    {"retain_fraction": 0.1, "teacher_fraction": 0.3, "warm_epochs": 6, "warm_targets": "contextual", "grpo": True,
     "teacher_in_rl": False, "retain_share": 0.375},
    {"retain_fraction": 0.1, "teacher_fraction": 0.3, "warm_epochs": 6, "warm_targets": "contextual", "grpo": True,
     "teacher_in_rl": True, "retain_share": 0.375},
    {"retain_fraction": 0.1, "teacher_fraction": 0.3, "warm_epochs": 6, "warm_targets": "contextual", "grpo": True,
     "teacher_in_rl": True, "retain_share": 0.5},
    {"retain_fraction": 0.1, "teacher_fraction": 0.3, "warm_epochs": 6, "warm_targets": "contextual", "grpo": True,
     "teacher_in_rl": True, "retain_share": 0.625},
    # and the weight of the KL to the warm-start model (default 0.04, TRL's)
    {"retain_fraction": 0.1, "teacher_fraction": 0.3, "warm_epochs": 6, "warm_targets": "contextual", "grpo": True,
     "teacher_in_rl": True, "retain_share": 0.375, "beta": 0.2},
    {"retain_fraction": 0.1, "teacher_fraction": 0.3, "warm_epochs": 6, "warm_targets": "contextual", "grpo": True,
     "teacher_in_rl": True, "retain_share": 0.375, "beta": 1.0},
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
    record = {"forget_pct": args.forget_pct, "threads": args.threads, "rows": rows,
              "what": "stage 1 + warm start only (no GRPO): greedy refusal % on the training forget generation "
                      "questions and on the tune retain profiles' generation questions (text)"}
    atomic_write(args.out, json.dumps(record, indent=1, ensure_ascii=False))
    for r in rows:
        print(r)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
