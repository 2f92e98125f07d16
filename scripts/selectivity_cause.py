"""Why erasekit's gate lost its selectivity when the organism was retrained: the same code on each organism.

For every organism given (a folder with the organism's weights; the committed history has three: the first organism,
the one retrained for image questions, the one retrained for the benchmark's formats), with today's code and
``erasebook.recipes.GateConfig()`` at 5 % forget, on held-out profiles (text cloze questions, Fgt and the scored
Ret profiles, never in H_r or a rule):

* **the gate's rule**: the layers it keeps, the λ it chose per task, and its held-out gate AUC per layer
  (``gate_selectivity``'s ``params``, recomputed here from the same set-up);
* **can the gate tell them apart on the scored questions**: the AUC of the raw gate s(h) = g·h between forget and
  retain cloze questions at each steered layer, and the share of each above the gate's floor (a gate that opens);
* **does a push cause a refusal**: the share of forget and of retain cloze questions refused, still answered, or
  neither (a wrong or garbled answer) when ``λ d_l`` is added at the steered layers to EVERY question (no gate), for
  λ on the rule's grid — the push's causal effect without the gate — for erasekit's direction (refused harmful −
  answered harmless request) and for the paper's multimodal direction (Eq. 7), which erasekit's gate pushed along
  until the organism's first retraining;
* **how big a push is**: ``‖d_l‖`` of both directions against the median ``‖h_l‖`` of those questions (last token)
  per layer;
* **the gate's shape** (a diagnostic grid, reported whole and used for no choice): forget and retain cloze accuracy
  and refusals with erasekit's gate read as today (a ramp: ``max(s - τ, 0) / (1 - τ)``) or as a step
  (``s > τ``: the full λ once the gate opens), its floor τ at the 0.9 / 0.95 / 0.99 quantile of the tune retain
  gates, at λ 4, 8, 16 and the rule's cloze λ (the ramp at the 0.9 quantile and that λ is the gate as the book
  uses it).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/selectivity_cause.py first=git:78b6a61 images=git:214c2bf \
        formats=data/organism --out data/results/selectivity_cause.json

``git:<commit>`` takes the organism committed at that commit (``data/organism``), written to a temporary folder.

``--then COMMIT`` also scores the organisms with the code of that commit (a git worktree, its own step cache): its
``erasekit gate-selectivity`` on each organism, for the text cloze numbers of erasekit's gate then; the record that
commit holds (``data/results/gate_selectivity.json``) is kept beside them. ``--then-dir`` keeps those runs
(``then_<label>.json``) and reuses the ones already there. With ``--then eaca2c9`` (the first organism's record):

    OMP_NUM_THREADS=1 .venv/bin/python scripts/selectivity_cause.py first=git:78b6a61 images=git:214c2bf \
        formats=data/organism --then eaca2c9 --then-dir /tmp/then --out data/results/selectivity_cause.json

The set-up (direction, PGD images, gates, λ) is read from the step cache where ``erasekit gate-selectivity`` left it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

N_QUESTIONS = 40
GRID = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
SHAPE_QUANTILES = (0.9, 0.95, 0.99)
SHAPE_LAMBDAS = (4.0, 8.0, 16.0)


def auc(pos, neg) -> float:
    """P(a forget value > a retain value) + half the ties (Mann-Whitney)."""
    import torch

    pos, neg = torch.as_tensor(pos, dtype=torch.float64), torch.as_tensor(neg, dtype=torch.float64)
    gt = (pos[:, None] > neg[None, :]).double().mean()
    eq = (pos[:, None] == neg[None, :]).double().mean()
    return float(gt + 0.5 * eq)


def organism_folder(spec: str, tmp: Path) -> str:
    """``git:<commit>``: the organism committed there, written under ``tmp``; anything else: a folder as is."""
    import subprocess

    if not spec.startswith("git:"):
        return spec
    commit = spec[4:]
    root = Path(__file__).resolve().parents[1]
    names = subprocess.run(["git", "ls-tree", "--name-only", commit, "data/organism/"], cwd=root, check=True,
                           capture_output=True, text=True).stdout.split()
    if not names:
        raise ValueError(f"no data/organism at {commit}")
    folder = tmp / commit
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        blob = subprocess.run(["git", "show", f"{commit}:{name}"], cwd=root, check=True, capture_output=True).stdout
        (folder / Path(name).name).write_bytes(blob)
    return str(folder)


def code_then(commit: str, organisms: dict[str, str], out_dir: Path) -> dict:
    """erasekit's gate (text cloze, held-out profiles) as the code of ``commit`` scored each organism
    (``{label: folder}``), plus the record that commit holds."""
    import os
    import subprocess
    import sys
    import tempfile

    root = Path(__file__).resolve().parents[1]
    out: dict = {"commit": commit}
    rec = subprocess.run(["git", "show", f"{commit}:data/results/gate_selectivity.json"], cwd=root,
                         capture_output=True, text=True)
    if rec.returncode == 0:
        out["record"] = json.loads(rec.stdout)["default"]["QA"]["cloze"]
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=root, check=True,
                       capture_output=True)
        try:
            for label, folder in organisms.items():
                path = out_dir / f"then_{label}.json"
                if not path.exists():
                    env = {**os.environ, "PYTHONPATH": str(tree), "ERASEKIT_CACHE": str(Path(tmp) / "cache")}
                    subprocess.run([sys.executable, "-m", "erasekit.cli", "gate-selectivity", "--organism",
                                    str(Path(folder).resolve()), "--out", str(path)], cwd=tree, env=env, check=True)
                out[label] = json.loads(path.read_text())["default"]["QA"]["cloze"]
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=root, capture_output=True)
    return out


def measure(folder: str, n: int = N_QUESTIONS, grid=GRID) -> dict:
    import torch

    import erasebook as eb
    import erasebook.pipeline as pl
    import erasekit as ek
    from erasebook.recipes import GateConfig, gate_setup
    from erasekit.scoring import is_refusal

    t0 = time.perf_counter()
    session = eb.load_session(folder, None)
    setup = gate_setup(session, GateConfig(forget_pct=5), progress=False)
    steerer = setup.steerer("default")
    direction = setup.directions["default"]
    layers = list(steerer.layers)
    rows = pl.group_rows(session, 5, ("Fgt", "Ret"))
    items = {g: ek.evaluate.build_items({g: rows[g]}, modes=("QA",), tasks=("cloze",))[:n] for g in ("Fgt", "Ret")}
    prompts = {g: [it.prompt for it in its] for g, its in items.items()}
    targets = {g: [str(it.target).lower() for it in its] for g, its in items.items()}

    acts = {g: ek.collect_activations(session.adapter, prompts[g], None, layers=layers, batch_size=16,
                                      progress=False) for g in prompts}
    ops = steerer.operators(1.0)
    gate = {}
    for l in layers:
        raw = {g: ops[l].raw_gate(acts[g][l].float()) for g in acts}
        opened = {g: float((ops[l].gate_value(acts[g][l].float()) > 0).double().mean()) for g in acts}
        gate[str(l)] = {"auc_fgt_vs_ret": auc(raw["Fgt"], raw["Ret"]), "open_fgt": opened["Fgt"],
                        "open_ret": opened["Ret"], "median_raw_fgt": float(raw["Fgt"].median()),
                        "median_raw_ret": float(raw["Ret"].median()), "floor": steerer.floors.get(l)}
    norms = {str(l): {"refusal_contrast": float(direction[l].norm()),
                      "multimodal": float(setup.directions["paper"][l].norm()),
                      "median_h": float(torch.cat([acts[g][l] for g in acts]).float().norm(dim=-1).median())}
             for l in layers}

    push = {}
    for name, key in (("refusal_contrast", "default"), ("multimodal", "paper")):  # erasekit's and Eq. 7's direction
        rows_ = []
        for lam in grid:
            cons = ek.constant_operators(setup.directions[key], lam, layers)
            row = {"lambda": lam}
            for g in prompts:
                ctx = (lambda cons=cons: ek.steer(session.adapter, cons, mode="prefill")) if lam else None
                ans = ek.generate(session.adapter, prompts[g], context=ctx, max_new_tokens=12, progress=False)
                ref = [is_refusal(a) for a in ans]
                hit = [t in a.lower() for t, a in zip(targets[g], ans)]
                row[f"refused_{g}"] = 100 * sum(ref) / len(ans)
                row[f"answered_{g}"] = 100 * sum(hit) / len(ans)
                row[f"neither_{g}"] = 100 * sum(not r and not h for r, h in zip(ref, hit)) / len(ans)
            rows_.append(row)
        push[name] = rows_
    shape = []
    tune_items = ek.evaluate.build_items(pl.group_rows(session, 5, ("Ret",), role="tune"), modes=("QA",),
                                         tasks=("cloze",))[:2 * n]
    H_tune = ek.collect_activations(session.adapter, [it.prompt for it in tune_items], None, layers=layers,
                                    batch_size=16, progress=False)
    for q in SHAPE_QUANTILES:
        floored = steerer.with_floors(H_tune, q)
        for kind in ("ramp", "step"):
            for lam in sorted({*SHAPE_LAMBDAS, float(setup.strengths["default"]["cloze"])}):  # and the rule's λ
                ops = floored.operators(lam)
                if kind == "step":
                    for op in ops.values():
                        op.gate_value = types.MethodType(
                            lambda self, h, tau=op.floor: (self.map.gate_value(h) > tau).to(h.dtype), op)
                row = {"quantile": q, "gate": kind, "lambda": lam}
                for g in prompts:
                    ans = ek.generate(session.adapter, prompts[g], max_new_tokens=12, progress=False,
                                      context=lambda ops=ops: ek.steer(session.adapter, ops, mode="prefill",
                                                                       read="frozen"))
                    row[f"answered_{g}"] = 100 * sum(t in a.lower() for t, a in zip(targets[g], ans)) / len(ans)
                    row[f"refused_{g}"] = 100 * sum(map(is_refusal, ans)) / len(ans)
                shape.append(row)

    meta = steerer.meta
    sel = meta.get("selection", {})
    return {"layers": layers, "strengths": setup.strengths["default"], "gamma": sel.get("gamma"),
            "layer_auc_tuning": sel.get("auc", {}).get(str(sel.get("gamma"))), "gate_on_scored": gate,
            "norms": norms, "ungated_push": push, "gate_shape": shape,
            "n_questions": {g: len(p) for g, p in prompts.items()},
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("organisms", nargs="+", help="label=folder, in the organism's history order")
    p.add_argument("--n", type=int, default=N_QUESTIONS, help="cloze questions per group")
    p.add_argument("--then", help="also score the organisms with the code of this commit (its gate-selectivity)")
    p.add_argument("--then-organisms", nargs="+", default=["first", "formats"],
                   help="labels scored with --then's code (default: the first and today's organism)")
    p.add_argument("--then-dir", default=None, help="where --then's runs are written and reused")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    import torch

    out = {"_meta": {"forget_pct": 5, "task": "cloze (text)", "grid": list(GRID), "threads": torch.get_num_threads(),
                     "command": "scripts/selectivity_cause.py " + " ".join(
                         "<dir>" if a.startswith("/tmp") else a for a in (argv if argv is not None else sys.argv[1:]))}}
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folders = {}
        for spec in args.organisms:
            label, source = spec.split("=", 1)
            folders[label] = organism_folder(source, Path(tmp))
            out[label] = {"organism": source, **measure(folders[label], args.n)}
            print(label, json.dumps({k: out[label][k] for k in ("layers", "strengths", "seconds")}), flush=True)
        if args.then:
            then_dir = Path(args.then_dir) if args.then_dir else Path(tmp) / "then"
            out["_code_then"] = code_then(args.then, {k: folders[k] for k in args.then_organisms}, then_dir)
            print("code then", json.dumps(out["_code_then"]), flush=True)
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
