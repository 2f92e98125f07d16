"""Why stage 1's λ rule (and ASRU's defaults) under-predict held-out over-refusal: every tune and held-out retain
person's text generation questions answered by stage 1 and by ASRU's model, refusals counted per person
(erasebook.over_refusal.tune_vs_heldout). Writes data/results/over_refusal_sample.json.

    python scripts/over_refusal_sample.py [--forget-pct 5] [--threads 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from erasebook import paths
from erasebook.asru_results import asru_model
from erasebook.over_refusal import describe_tune_vs_heldout, tune_vs_heldout
from erasebook.recipes import gate_setup
from erasebook.session import load_session
from erasekit.files import atomic_write


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--forget-pct", type=int, default=5)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", default=str(paths.data_dir() / "results" / "over_refusal_sample.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    session = load_session(None, None)
    setup = gate_setup(session)
    record = tune_vs_heldout(session, setup, args.forget_pct, model=asru_model(session, setup, args.forget_pct))
    record.update(seconds=round(time.perf_counter() - t0, 1), threads=torch.get_num_threads(),
                  command="python scripts/over_refusal_sample.py --forget-pct " + str(args.forget_pct))
    atomic_write(args.out, json.dumps(record, indent=1))
    print(describe_tune_vs_heldout(record))
    return record


if __name__ == "__main__":
    main()
