"""Does RL add anything to ASRU's warm start, and does TRL's GRPOTrainer train stage 2 as erasekit's loop does?

On the organism at 5 % (ASRU's data and defaults, erasebook.asru_results.TRAIN / erasekit.asru.ASRUConfig), per
seed: stage 1 + the warm start alone, the whole of ASRU with stage 2 by erasekit's loop, and with stage 2 by TRL's
GRPOTrainer (ASRUConfig(backend="trl")). Read on the training forget generation questions (refusal, contextual
refusal) and on the TUNE retain profiles' generation questions (over-refusal; never scored profiles, so the
choice of backend is a rule on tune data). Writes data/results/asru_backends.json: the rows, per-setting means with
a 95 % t-interval over seeds, and the seconds per row (one thread).

    python scripts/asru_backends.py [--seeds 0 1 2] [--threads 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from erasebook import asru_results, paths, recipes
from erasebook.session import load_session
from erasekit.asru import ASRUConfig
from erasekit.files import atomic_write


def settings(seeds) -> list[dict]:
    """Per seed: the warm start alone, + GRPO by erasekit's loop, + GRPO by TRL (ASRU's training data and defaults)."""
    rows = []
    for s in seeds:
        rows += [{"setting": "warm start alone", "seed": s, "rl_only_share": ASRUConfig().rl_only_share},
                 {"setting": "+ GRPO (erasekit loop)", "seed": s, "grpo": True, "backend": "erasekit"},
                 {"setting": "+ GRPO (TRL GRPOTrainer)", "seed": s, "grpo": True, "backend": "trl"}]
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--forget-pct", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(paths.data_dir() / "results" / "asru_backends.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    session = load_session()
    setup = recipes.gate_setup(session, recipes.GateConfig())
    rows = []
    for st in settings(args.seeds):
        row = asru_results.warm_start_probe(session, setup, args.forget_pct, [{k: v for k, v in st.items()
                                                                                if k != "setting"}])[0]
        rows.append({"setting": st["setting"], **row})
        print(json.dumps({k: rows[-1].get(k) for k in ("setting", "seed", *asru_results.BACKEND_METRICS)}),
              flush=True)
    record = {"forget_pct": args.forget_pct, "seeds": args.seeds, "threads": torch.get_num_threads(),
              "read_on": "training forget generation questions; tune retain profiles' generation questions",
              "rows": rows, "summary": asru_results.backends_summary(rows),
              "total_seconds": round(time.perf_counter() - t0, 1),
              "command": "python scripts/asru_backends.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    atomic_write(args.out, json.dumps(record, indent=1, default=float))
    print(json.dumps(record["summary"], indent=1))
    return record


if __name__ == "__main__":
    main()
