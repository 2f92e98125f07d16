"""Why the organism misses eval.py's classification: option style x instruction line x scaffold, letter accuracy.

For 80 text multiple-choice questions of forget_15 people, the organism's first answer letter against the right
one when the options are written "A. x" or "A: x", the instruction line is erasekit's own (trained with the answer
"B. Zurich": letter then value), eval.py's "Just give ONE letter ..." or a stage-D line (both trained with the
letter alone), in erasekit's chat scaffold or eval.py's ("USER:\\n...\\nASSISTANT:").

    python scripts/organism_letter_matrix.py                  # the committed organism
    python scripts/organism_letter_matrix.py --phase3 500     # + continue stage D 500 steps, 90 % letter-only MC

``--phase3 N`` trains a copy (never the committed organism) for N more stage-D steps with 90 % of the profile
questions multiple choice (lr 4e-4, cosine; stage D's phase-2 lines; 1,790 s for 500 steps on 2 shared CPU cores)
and measures it too. Writes data/results/organism_letter_matrix.json.
"""

import argparse
import dataclasses
import itertools
import json
import tempfile

import torch

from erasebook import paths
from erasebook import world as W
from erasebook.format_checks import generate_raw
from erasebook.organism import load_world_for
from erasekit.evaluate import benchmark_rows
from erasekit.files import atomic_write
from erasekit.models import load_model

LINES = {"erasekit (answer: letter + value)": W.CLASSIFY_SUFFIX,
         "eval.py (answer: letter)": "Just give ONE letter representing the answer directly.",
         "stage D line (answer: letter)": "Answer with A, B, C or D."}


def matrix(folder: str, n: int = 80) -> dict:
    adapter, world = load_model(folder), load_world_for(folder)
    rows = benchmark_rows(world, forget_pct=15, groups=("Fgt",))["Fgt"]
    qs = [q for r in rows for q in r["Classification_Task"]["Pure_Text_Questions"]][:n]
    out = {}
    for style, (line_name, line), scaffold in itertools.product(("{k}. {v}", "{k}: {v}"), LINES.items(),
                                                               ("chat", "eval.py")):
        prompts = []
        for q in qs:
            body = q["Question"] + "\n" + "\n".join(style.format(k=k, v=v) for k, v in q["Options"].items())
            body += "\n" + line
            prompts.append(f"USER: {body} ASSISTANT:" if scaffold == "chat" else f"USER:\n{body}\nASSISTANT:")
        answers = generate_raw(adapter, prompts, [None] * len(prompts), max_new_tokens=6)
        right = sum(a.strip()[:1] == q["Correct_Answer"] for a, q in zip(answers, qs))
        out[f"{style.replace('{k}', 'A').replace('{v}', 'x')} | {line_name} | {scaffold}"] = round(
            100 * right / len(qs), 1
        )
    return out


def phase3(steps: int, out_dir: str) -> dict:
    from transformers import LlavaForConditionalGeneration

    from erasebook import organism as O

    cfg = O.OrganismConfig()
    torch.manual_seed(cfg.seed)
    world = W.make_world(cfg.n_profiles, cfg.n_celebrities, seed=cfg.world_seed, image_size=cfg.image_size)
    tok = O.build_tokenizer(world, cfg.vocab_size)
    proc = O.build_processor(tok, cfg.image_size, cfg.patch_size)
    model = O.build_model(cfg, tok)
    src = str(paths.organism_dir())
    model.load_state_dict(LlavaForConditionalGeneration.from_pretrained(src, dtype=torch.float32).state_dict())
    cfg3 = dataclasses.replace(cfg, format2_steps=steps, format2_lr=4e-4, format2_cls=0.9)
    log = O.train_formats(model, O.TrainingStream(world, proc, cfg), world, proc, cfg3, phase=3, progress=False)
    prev = json.loads(open(f"{src}/training_log.json").read())
    O.save_organism(out_dir, model, proc, {**prev, "formats_phase3": log}, cfg)
    return {"steps": steps, "lr": 4e-4, "mc_share": 0.9, "seconds": log["seconds"], "last": log["steps"][-1]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase3", type=int, default=0)
    ap.add_argument("--phase3-from", help="a folder --phase3 trained earlier (measure it instead of retraining)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    record = {"committed organism": matrix(str(paths.organism_dir()))}
    if args.phase3_from:
        log = json.loads(open(f"{args.phase3_from}/training_log.json").read())["formats_phase3"]
        steps = log["steps"][-1]["step"]
        record["phase 3 training"] = {"steps": steps, "lr": 4e-4, "mc_share": 0.9, "seconds": log["seconds"],
                                      "last": log["steps"][-1]}
        record[f"after {steps} more steps"] = matrix(args.phase3_from)
    elif args.phase3:
        with tempfile.TemporaryDirectory() as tmp:
            record["phase 3 training"] = phase3(args.phase3, tmp + "/org")
            record[f"after {args.phase3} more steps"] = matrix(tmp + "/org")
    out = paths.data_dir() / "results" / "organism_letter_matrix.json"
    atomic_write(out, json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
