"""Where ASRU's over-refusal comes from: stage 1 + the warm start alone (and the whole of ASRU), under the settings
that chose ASRU's data, warm-start and RL defaults (erasebook.asru_results.TRAIN, erasekit.asru.ASRUConfig). Reads
tune profiles only (never scored). Writes data/results/asru_warm_start.json; chapter 08 shows it. ~95 min on one CPU
thread (--select runs some settings, --merge joins such runs).

    python scripts/asru_warm_start.py [--threads 1] [--out FILE] [--select 0,3,...] [--merge FILE ...]
"""

from __future__ import annotations

import argparse
import json

import torch

from erasebook import asru_results, paths, recipes
from erasebook.session import load_session
from erasekit.files import atomic_write

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
    # ASRU's own warm start (half of the 130 unlabelled people kept for the RL stage), and the two leading settings
    # again at other seeds (LoRA init, warm-start order, GRPO sampling)
    {"retain_fraction": 0.1, "teacher_fraction": 0.55, "warm_epochs": 6, "warm_targets": "contextual",
     "rl_only_share": 0.5},
    {**BASE, **WIDER, "beta": 1.0, "seed": 1},
    {**BASE, **WIDER, "beta": 1.0, "seed": 2},
    {**BASE, **WIDER, "seed": 1},
    {**BASE, **WIDER, "seed": 2},
]


# what a setting leaves out means this (a row holds its setting's items, and a GRPO row every RL knob)
IMPLIED = {"grpo": False, "rl_only_share": 0.0, "seed": 0}


def _row_of(setting: dict, rows: list[dict]) -> dict:
    """The one row of ``rows`` that ran ``setting``."""
    keys = set(setting) | set(IMPLIED)
    hits = [r for r in rows if all(r.get(k, IMPLIED.get(k)) == setting.get(k, IMPLIED.get(k)) for k in keys)]
    if len(hits) != 1:
        raise SystemExit(f"{len(hits)} rows match the setting {setting}: merge files of this script's SETTINGS only")
    return hits[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--forget-pct", type=int, default=5)
    ap.add_argument("--out", default=str(paths.data_dir() / "results" / "asru_warm_start.json"))
    ap.add_argument("--select", help="comma-separated indices of SETTINGS to run (default: all)")
    ap.add_argument("--merge", nargs="+", metavar="FILE",
                    help="no run: write the rows of these files (earlier runs of this script) in SETTINGS order")
    args = ap.parse_args()
    if args.merge:
        found = [r for f in args.merge for r in json.loads(open(f).read())["rows"]]
        rows = [_row_of(st, found) for st in SETTINGS]
        threads = sorted({json.loads(open(f).read())["threads"] for f in args.merge})
        threads = threads[0] if len(threads) == 1 else threads
    else:
        chosen = SETTINGS if not args.select else [SETTINGS[int(i)] for i in args.select.split(",")]
        torch.set_num_threads(args.threads)
        session = load_session()
        setup = recipes.gate_setup(session, recipes.GateConfig(forget_pct=args.forget_pct))
        rows = asru_results.warm_start_probe(session, setup, args.forget_pct, chosen)
        threads = args.threads
    record = {"forget_pct": args.forget_pct, "threads": threads, "base": BASE, "rows": rows,
              "what": "stage 1 + warm start (and, in GRPO rows, the whole of ASRU): greedy refusal % on the training "
                      "forget generation questions and on the tune retain profiles' generation questions (text)"}
    atomic_write(args.out, json.dumps(record, indent=1, ensure_ascii=False))
    for r in rows:
        print(r)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
