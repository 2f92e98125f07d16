"""Command-line entry points: ``erasekit build-organism``, ``write-world``, ``vanilla-quality``,
``gate-selectivity``, ``asru``, ``attacks``, ``form-transfer``, ``rule-holdout``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

# Passive OpenMP waiting: on a 2-core machine shared with other jobs, spinning threads starve each other
# (measured: 13 s/step instead of 0.9 s/step for the organism with another process on one core).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import paths  # noqa: E402


def _build_organism(args) -> int:
    from .organism import OrganismConfig, train_organism

    out = args.out or str(paths.organism_dir())
    if args.if_missing and os.path.exists(os.path.join(out, "config.json")):
        print(f"organism present at {out}; not retraining (drop --if-missing to retrain)")
        return 0
    overrides = {k: v for k, v in (("steps", args.steps), ("n_profiles", args.profiles),
                                   ("n_celebrities", args.celebrities), ("threads", args.threads),
                                   ("choice_steps", args.choice_steps), ("choice_lr", args.choice_lr),
                                   ("choice_hint", args.choice_hint), ("align_steps", args.align_steps),
                                   ("format_steps", args.format_steps))
                 if v is not None}
    cfg = dataclasses.replace(OrganismConfig(), **overrides)
    log = train_organism(out, cfg, log_file=args.log, checkpoint_dir=args.checkpoint_dir, device=args.device,
                         stage_c_from=args.stage_c_from)
    last = (log.get("formats_phase2") or log.get("formats") or {}).get("steps") or log["steps"]
    print(json.dumps({"out": out, "train_seconds": log["train_seconds"], "last": last[-1]}))
    return 0


def _write_world(args) -> int:
    from .export import write_world
    from .organism import load_world_for

    world = load_world_for(str(args.organism or paths.organism_dir()))
    write_world(world, args.out)
    print(f"wrote MLLMU-Bench-format parquet files to {args.out}")
    return 0


def _vanilla_quality(args) -> int:
    from .quality import vanilla_quality

    table = vanilla_quality(str(args.organism or paths.organism_dir()), out=args.out)
    print(table.to_string())
    return 0


def _gate_selectivity(args) -> int:
    from .recipes import GateConfig, gate_selectivity, gate_setup, write_json
    from .session import load_session

    session = load_session(args.organism, None)
    record = gate_selectivity(session, gate_setup(session, GateConfig(forget_pct=args.forget_pct)))
    out = args.out or str(paths.data_dir() / "results" / "gate_selectivity.json")
    write_json(record, out)
    print(json.dumps({g: {m: record[g].get(m, {}).get("cloze") for m in ("QA", "VQA")} for g in
                      ("vanilla", "paper", "default")}, indent=1))
    print(f"wrote {out}")
    return 0


def _per_model(args, filename: str, organism, smollm2, *, meta_key, command, merge: bool = False,
               report=None) -> int:
    """Run an experiment on each of ``args.models`` and record it in ``data/results/<filename>`` (``args.out``):
    ``organism(session)`` / ``smollm2(adapter)`` give a model's result (SmolLM2 is skipped, with a message, where
    it is not fetched); the record is re-read just before each write (another model's run may have written its key
    meanwhile), ``merge`` keeps the model's earlier keys; ``_meta[meta_key(model)]`` holds the seconds, threads,
    forget % and ``command(model)``; ``report(result, model)`` is printed after each model."""
    import time

    import torch

    from .recipes import write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or str(paths.data_dir() / "results" / filename)
    for model in args.models:
        t0 = time.perf_counter()
        if model == "organism":
            from .session import load_session

            result = organism(load_session(args.organism, None))
        else:
            from erasekit.models import load_model
            from erasekit.models.smollm2 import smollm2_dir

            folder = smollm2_dir()
            if folder is None:
                print("SmolLM2 is not fetched (python -m erasekit.models.smollm2); skipping it", file=sys.stderr)
                continue
            result = smollm2(load_model(str(folder)))
        record = json.loads(open(out).read()) if os.path.exists(out) else {}
        record[model] = {**record.get(model, {}), **result} if merge else result
        record.setdefault("_meta", {})[meta_key(model)] = {
            "seconds": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads(),
            "forget_pct": args.forget_pct if model == "organism" else None, "command": command(model)}
        write_json(record, out)
        if report is not None:
            print(report(result, model))
    print(f"wrote {out}")
    return 0


def _form_transfer(args) -> int:
    from .form_transfer import organism_asru_transfer, organism_transfer, smollm2_transfer

    def command(model):
        held = " --held-out " + " ".join(args.held_out) if args.held_out and model == "smollm2" else ""
        return f"erasekit form-transfer --models {model} --gates {' '.join(args.gates)}{held}"

    gates = [g for g in args.gates if g != "asru"]

    def organism(session):
        out = organism_transfer(session, args.forget_pct, gates=gates) if gates else {}
        if "asru" in args.gates:
            out["asru"] = organism_asru_transfer(session, args.forget_pct)
        return out

    def smollm2(adapter):
        if "asru" in args.gates:
            print("ASRU on SmolLM2 is scripts/asru_smollm2.py (data/results/asru_smollm2.json)", file=sys.stderr)
        return smollm2_transfer(adapter, gates=gates, only=args.held_out) if gates else {}

    # merge: a run of some methods keeps the others' results
    return _per_model(args, "form_transfer.json", organism, smollm2,
                      meta_key=lambda model: f"{model} " + " ".join(args.gates), command=command, merge=True)


def _rule_holdout(args) -> int:
    from .rule_holdout import describe_rule_holdout, organism_rule_holdout, smollm2_rule_holdout

    return _per_model(args, "rule_holdout.json", lambda session: organism_rule_holdout(session, args.forget_pct),
                      smollm2_rule_holdout, meta_key=lambda model: model,
                      command=lambda model: f"erasekit rule-holdout --models {model}", report=describe_rule_holdout)


def _asru(args) -> int:
    import torch

    from erasekit.asru import ASRUConfig

    from .asru_results import asru_record
    from .recipes import GateConfig, gate_setup, write_json
    from .session import load_session

    if args.threads:
        torch.set_num_threads(args.threads)
    session = load_session(args.organism, None)
    cfg = ASRUConfig(**({"steps": args.steps} if args.steps else {}))
    record, _, summaries = asru_record(session, gate_setup(session, GateConfig()), args.forget_pcts, cfg,
                                       baselines=args.baselines)
    record["threads"] = torch.get_num_threads()
    out = args.out or str(paths.data_dir() / "results" / "asru.json")
    write_json(record, out)
    print(json.dumps({pct: {"seconds": s["seconds"], "reward first/last": [s["curve"][0]["reward"],
                                                                            s["curve"][-1]["reward"]]}
                      for pct, s in summaries.items()}, indent=1))
    print(f"wrote {out}")
    return 0


def _argv_of(args) -> list[str]:
    """The options of an ``attacks`` call, as given (for the record)."""
    out = [f"--profile {args.profile}", f"--forget-pct {args.forget_pct}"]
    if args.baselines is not None:
        out.append(f"--baselines '{args.baselines}'")
    return out


def _attacks(args) -> int:
    import time

    import torch

    from .leakage import (
        BASELINES,
        AttackConfig,
        attack_records,
        attacks_record,
        leak_table,
        method_targets,
        write_attacks_json,
    )
    from .recipes import GateConfig, gate_setup
    from .session import load_session

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    session = load_session(args.organism, None)
    cfg = AttackConfig.ci() if args.profile == "ci" else AttackConfig()
    cfg = dataclasses.replace(cfg, forget_pct=args.forget_pct)
    setup = gate_setup(session, GateConfig(forget_pct=args.forget_pct))
    baselines = BASELINES if args.baselines is None else [b for b in args.baselines.split(",") if b]
    methods = method_targets(session, setup, baselines, forget_pct=args.forget_pct, progress=args.progress)
    records, seconds = attack_records(session, methods, cfg, progress=args.progress, refresh=args.refresh)
    record = attacks_record(records, cfg, seconds)
    record["_meta"]["total_seconds"] = round(time.perf_counter() - t0, 1)
    record["_meta"]["baselines_not_run"] = [b for b in BASELINES if b not in baselines]
    record["_meta"]["command"] = "erasekit attacks " + " ".join(_argv_of(args))
    out = args.out or str(paths.data_dir() / "results" / "attacks.json")
    write_attacks_json(record, out)
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print("leak (%)\n", leak_table(records))
        print("retain accuracy under the attack (%)\n", leak_table(records, "retain_acc"))
    print(f"wrote {out} ({record['_meta']['total_seconds']} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="erasekit", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build-organism", help="build the world and train the model organism from nothing")
    b.add_argument("--out", help="output folder (default: data/organism)")
    b.add_argument("--if-missing", action="store_true", help="do nothing if the folder already holds a model")
    b.add_argument("--steps", type=int)
    b.add_argument("--profiles", type=int)
    b.add_argument("--celebrities", type=int)
    b.add_argument("--threads", type=int)
    b.add_argument("--log", help="append JSON lines of the training log to this file")
    b.add_argument("--checkpoint-dir", help="keep/resume the state after the language stage here (re-run stages B2 "
                                            "and C alone)")
    b.add_argument("--choice-steps", type=int, help="steps of the multiple-choice stage B2")
    b.add_argument("--choice-lr", type=float, help="learning rate of stage B2")
    b.add_argument("--choice-hint", type=float, help="share of stage B2's multiple-choice turns that state the value")
    b.add_argument("--align-steps", type=int, help="steps of the vision-alignment stage C")
    b.add_argument("--format-steps", type=int, help="steps of phase 1 of the formats stage D")
    b.add_argument("--stage-c-from", help="an organism folder trained with the same stages A-C (or after "
                                          "stage D's phase 1): only the rest of stage D runs, from its weights")
    b.add_argument("--device", help="train on this torch device (e.g. cuda)")
    b.set_defaults(fn=_build_organism)
    w = sub.add_parser("write-world", help="write the organism's world as MLLMU-Bench parquet files")
    w.add_argument("out")
    w.add_argument("--organism")
    w.set_defaults(fn=_write_world)
    q = sub.add_parser("vanilla-quality", help="measure the organism against the quality bars and record it")
    q.add_argument("--organism")
    q.add_argument("--out", help="JSON file to write (default: data/results/vanilla_quality.json)")
    q.set_defaults(fn=_vanilla_quality)
    g = sub.add_parser("gate-selectivity", help="score the paper's gate and erasekit's default on held-out profiles "
                                              "and record data/results/gate_selectivity.json")
    g.add_argument("--organism")
    g.add_argument("--forget-pct", type=int, default=5)
    g.add_argument("--out", help="JSON file to write (default: data/results/gate_selectivity.json)")
    g.set_defaults(fn=_gate_selectivity)
    a = sub.add_parser("asru", help="train ASRU (steering + GRPO) at each forget %%, score it with vanilla, both "
                                    "gates and the baselines, and record data/results/asru.json")
    a.add_argument("--organism")
    a.add_argument("--forget-pcts", type=int, nargs="+", default=[5, 10, 15])
    a.add_argument("--steps", type=int, help="GRPO steps (default: erasekit.asru.ASRUConfig)")
    a.add_argument("--baselines", nargs="*", default=["GA", "GA_Diff", "KL_Min", "NPO", "MMUnlearner", "MANU"])
    a.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the shared 2-core machine)")
    a.add_argument("--out", help="JSON file to write (default: data/results/asru.json)")
    a.set_defaults(fn=_asru)
    t = sub.add_parser("form-transfer", help="leave-one-form-out: fit the front door on every form family but one, "
                                             "score that one; record data/results/form_transfer.json")
    t.add_argument("--models", nargs="+", choices=("organism", "smollm2"), default=["organism", "smollm2"])
    t.add_argument("--organism")
    t.add_argument("--forget-pct", type=int, default=5)
    t.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    t.add_argument("--gates", nargs="+", choices=("default", "paper", "asru"), default=["default", "paper"],
                   help="the methods to run: the two gates (refitted per held-out form) and ASRU (chapter 08's "
                        "model, organism only); the record keeps the others' earlier results")
    t.add_argument("--held-out", nargs="+", help="smollm2 only: score just these families (each fitted on the rest)")
    t.add_argument("--out", help="JSON file to write (default: data/results/form_transfer.json)")
    t.set_defaults(fn=_form_transfer)
    r = sub.add_parser("rule-holdout", help="does the front door's λ rule predict refusals of people it never saw? "
                                            "record data/results/rule_holdout.json")
    r.add_argument("--models", nargs="+", choices=("organism", "smollm2"), default=["organism", "smollm2"])
    r.add_argument("--organism")
    r.add_argument("--forget-pct", type=int, default=5)
    r.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    r.add_argument("--out", help="JSON file to write (default: data/results/rule_holdout.json)")
    r.set_defaults(fn=_rule_holdout)
    k = sub.add_parser("attacks", help="run the extraction attacks on every method and record "
                                       "data/results/attacks.json")
    k.add_argument("--organism")
    k.add_argument("--forget-pct", type=int, default=5)
    k.add_argument("--profile", choices=("full", "ci"), default="full", help="ci: fewer facts and steps")
    k.add_argument("--baselines", help="comma-separated training baselines (default: all six; '' for none)")
    k.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    k.add_argument("--refresh", action="store_true", help="recompute instead of reading the step cache")
    k.add_argument("--progress", action="store_true")
    k.add_argument("--out", help="JSON file to write (default: data/results/attacks.json)")
    k.set_defaults(fn=_attacks)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
