"""Where the organism's option letter goes under MLLMU-Bench's eval.py prompts (forget_15 people, classification).

Writes data/results/organism_letter_bias.json: for few-shot (eval.py as it runs) and zero-shot (its prompts without
shots), the share of right picks, the distribution of picked letters against the right ones, and (few-shot) how
often the pick equals the letter of the last shot's "Correct Answer" line or any shot's letter.
Run: python scripts/organism_letter_bias.py  (about a minute on 2 CPU cores)
"""

import collections
import json
import re

from erasebook import paths
from erasebook.organism import load_world_for
from erasekit.evaluate import BENCHMARK, Protocol, bench_response, evaluate
from erasekit.files import atomic_write
from erasekit.models import load_model


def main() -> None:
    folder = str(paths.organism_dir())
    adapter, world = load_model(folder), load_world_for(folder)
    record = {"organism": paths.repo_relative(folder), "forget_pct": 15}
    for name, protocol in (("few-shot", BENCHMARK), ("zero-shot", Protocol("benchmark", cls_shots=0, cloze_shots=0))):
        df = evaluate(adapter, world, 15, groups=("Fgt",), tasks=("classification",), protocol=protocol,
                      progress=False, batch_size=32)
        pick = df["response"].map(lambda r: bench_response(r)[:1].upper())
        rec = {"n": len(df), "right (%)": round(100 * float((pick == df["target"]).mean()), 1),
               "picked": dict(sorted(collections.Counter(pick).items())),
               "right letters": dict(sorted(collections.Counter(df["target"]).items()))}
        if name == "few-shot":
            shots = df["prompt"].map(lambda s: re.findall(r"Correct Answer: ([A-D])", s))
            rec["pick is the last shot's letter (%)"] = round(
                100 * float((pick == shots.map(lambda x: x[-1])).mean()), 1
            )
            rec["pick is among the shots' letters (%)"] = round(
                100 * float(sum(p in set(x) for p, x in zip(pick, shots)) / len(df)), 1)
        record[name] = rec
    out = paths.data_dir() / "results" / "organism_letter_bias.json"
    atomic_write(str(out), json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
