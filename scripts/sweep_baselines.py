"""Choose each training baseline's configuration on the organism by a small sweep (issue: baselines).

For every method, run :func:`erasekit.baselines.sweep` over a small grid on the 5 % forget split and pick, with
:func:`erasekit.baselines.pick_config`, the run that forgets most (teacher-forced exact-answer accuracy on the
forget examples) while keeping the retain accuracy within 5 points of the vanilla model's. Retain accuracy is
measured on retain profiles the baselines do NOT train on. Writes data/results/baseline_sweep.json, which
:func:`erasebook.baseline_configs.organism_config` reads.

    python scripts/sweep_baselines.py            # ~10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import time

from erasebook import runs
from erasebook.session import load_session
from erasekit import baselines as B
from erasekit.evaluate import sample_rows
from erasekit.files import atomic_write

GRIDS = {
    "GA": {"lr": [1e-4, 3e-4, 1e-3], "epochs": [1, 3]},
    "GA_Diff": {"lr": [1e-4, 3e-4, 1e-3], "epochs": [1, 3]},
    "KL_Min": {"lr": [1e-4, 3e-4, 1e-3], "epochs": [1, 3]},
    "NPO": {"lr": [1e-4, 3e-4, 1e-3], "epochs": [1, 3]},
    "MMUnlearner": {"lr": [3e-5, 1e-4, 3e-4], "epochs": [1, 3]},
    "MANU": {"prune_fraction": [0.01, 0.02, 0.05, 0.1]},
}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="*", default=list(GRIDS))
    ap.add_argument("--forget-pct", type=int, default=5)
    ap.add_argument("--retain-train", type=int, default=40)
    ap.add_argument("--max-retain-drop", type=float, default=0.05)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "data", "results",
                                                   "baseline_sweep.json"))
    args = ap.parse_args(argv)
    session = load_session()
    forget, retain = runs.baseline_data(session, args.forget_pct, args.retain_train)
    # The held-out side of the rule: the partition's "tune" profiles (never trained on, never scored by the tables).
    held = runs.tuning_rows(session, args.forget_pct)["Ret"]
    eval_retain = sample_rows(B.build_examples(held), 160, 0, "sweep-examples")
    out = {"forget_pct": args.forget_pct, "retain_train": args.retain_train, "max_retain_drop": args.max_retain_drop,
           "rule": "lowest teacher-forced forget accuracy with held-out retain accuracy >= vanilla - max_retain_drop",
           "methods": {}}
    for m in args.methods:
        t0 = time.time()
        base = B.CONFIGS[m](progress=False)
        rows = B.sweep(session.adapter, forget, retain, base, GRIDS[m], eval_retain=eval_retain)
        best = B.pick_config(rows, args.max_retain_drop)
        chosen = {k: best[k] for k in GRIDS[m]}
        out["methods"][m] = {"grid": GRIDS[m], "rows": rows, "chosen": chosen, "within_budget": best["within_budget"],
                             "seconds": round(time.time() - t0, 1)}
        print(m, chosen, "within budget" if best["within_budget"] else "NOT within budget",
              {k: round(best[k], 3) for k in ("forget_acc", "retain_acc")}, flush=True)
    atomic_write(args.out, json.dumps(out, indent=1, default=float))
    return out


if __name__ == "__main__":
    main()
