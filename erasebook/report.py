"""What the result chapters show: tables and the sentences that read them, computed from the run (tested).

The notebooks carry their question, parameters and prose; every number a sentence quotes is produced here from
the evaluation frames and fitted steerers of :mod:`erasebook.recipes`, so no notebook cell formats long f-strings and
:mod:`tests.test_recipes` exercises each function.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch

from erasekit import tuning

from . import pipeline as pl
from . import separability as sep
from .paper import paper_results_table
from .recipes import GATE_NAMES, GateSetup

__all__ = [
    "MAX_COLUMNS",
    "column_parts",
    "runtime_note",
    "wrap_labels",
    "describe_refusal_quality",
    "heldout_auc_per_layer",
    "describe_costs",
    "describe_throughput",
    "profile_questions",
    "strengths_frame",
    "describe_choices",
    "describe_table1",
    "heldout_auc_by_split",
    "paper_beside_ours",
    "tradeoff_points",
    "describe_tradeoff",
    "case_studies",
    "describe_categories",
    "describe_projector",
    "gate_values_by_group",
    "describe_gates",
    "cascade_table",
    "describe_cascade",
    "describe_examples",
    "separability_table",
    "steering_norms_by_group",
    "describe_separability",
    "steered_embedding",
]


# Value columns a table may have to be read in the book's content column (1400 px window).
MAX_COLUMNS = 10


def column_parts(frame: pd.DataFrame, max_cols: int = MAX_COLUMNS) -> list[pd.DataFrame]:
    """A wide table as a few narrower ones with the same rows: columns split between groups of the first column
    level (a group is never cut), into as few parts as fit ``max_cols`` columns each, groups shared out evenly.
    A group wider than ``max_cols`` is a ValueError (transpose or select instead)."""
    keys = list(dict.fromkeys(frame.columns.get_level_values(0))) if frame.columns.nlevels > 1 else None
    if keys is None:
        keys, width = list(frame.columns), {c: 1 for c in frame.columns}
    else:
        width = {k: int((frame.columns.get_level_values(0) == k).sum()) for k in keys}
    if max(width.values(), default=0) > max_cols:
        raise ValueError(f"a column group is {max(width.values())} columns wide, more than {max_cols}")
    n = 1
    while True:
        per = -(-len(keys) // n)  # groups per part
        parts = [keys[i:i + per] for i in range(0, len(keys), per)]
        if all(sum(width[k] for k in p) <= max_cols for p in parts):
            break
        n += 1
    if frame.columns.nlevels > 1:
        return [frame.loc[:, [c for c in frame.columns if c[0] in p]] for p in parts]
    return [frame.loc[:, p] for p in parts]


def runtime_note(profile: str | None = None) -> str:
    """The chapter's own run, measured: seconds since the kernel imported erasebook, the profile (default: the
    ``ERASEKIT_PROFILE`` environment variable, else "full"), torch's
    threads, and how many expensive steps it computed or read from the step cache (:data:`erasebook.cache.STATS`).
    A chapter's last cell shows it, so the page states the time of the build that made it."""
    import datetime
    import os

    import erasebook

    from .cache import STATS

    secs = time.perf_counter() - erasebook.STARTED
    hits = sum(v for k, v in STATS.items() if k.endswith(":hit"))
    misses = sum(v for k, v in STATS.items() if k.endswith(":miss"))
    threads = torch.get_num_threads()
    profile = profile or os.environ.get("ERASEKIT_PROFILE", "full")
    return (f"*This page ran in {secs:,.0f} s ({profile} profile, {threads} CPU thread"
            f"{'s' if threads != 1 else ''}; {misses} expensive step{'s' if misses != 1 else ''} computed, {hits} "
            f"read from the step cache), {datetime.date.today().isoformat()}.*")


def wrap_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with ``_`` in its column labels (every level) read as spaces, so a page can wrap a long header."""
    def fix(c):
        return tuple(fix(x) for x in c) if isinstance(c, tuple) else (c.replace("_", " ") if isinstance(c, str) else c)

    out = frame.copy()
    out.columns = pd.MultiIndex.from_tuples([fix(c) for c in frame.columns], names=frame.columns.names) \
        if frame.columns.nlevels > 1 else [fix(c) for c in frame.columns]
    return out


def strengths_frame(setup: GateSetup) -> pd.DataFrame:
    """λ per task chosen by the rule for each gate, with the forget / retain tuning scores at that λ."""
    recs = []
    for gate, table in setup.tuning.items():
        for task, lam in setup.strengths[gate].items():
            row = table[(table["task"] == task) & (table["lambda"] == lam)].iloc[0]
            van = table[(table["task"] == task) & (table["lambda"] == 0)].iloc[0]
            recs.append({"gate": GATE_NAMES[gate], "task": task, "λ": lam,
                         "forget (vanilla → steered)": f"{van['forget']:.2f} → {row['forget']:.2f}",
                         "retain (vanilla → steered)": f"{van['retain']:.2f} → {row['retain']:.2f}",
                         "within budget": bool(row["within budget"])})
    return pd.DataFrame(recs).set_index(["gate", "task"])


def describe_choices(setup: GateSetup) -> str:
    """One paragraph: what each rule chose and what it means on the tuning profiles."""
    parts = []
    st = setup.steerer("default")
    sel = st.meta.get("selection", {})
    if sel:
        best = max(float(a) for a in sel["auc"][str(sel["gamma"])].values())
        parts.append(f"erasekit's gate: γ = {sel['gamma']:g} (relative), layers {sel['layers']} (held-out AUC of the "
                     f"best layer {best:.2f}; a layer is steered within 0.05 of it), floors "
                     + ", ".join(f"{t:.2f}" for t in st.floors.values()) + ".")
    for gate in setup.strengths:
        table = setup.tuning[gate]
        none = [t for t in setup.strengths[gate]
                if not table[(table["task"] == t) & (table["lambda"] > 0)]["within budget"].any()]
        lam = ", ".join(f"{t} {v:g}" for t, v in setup.strengths[gate].items())
        cl = table[(table["task"] == "cloze")].set_index("lambda")
        chosen = setup.strengths[gate]["cloze"]
        parts.append(f"{GATE_NAMES[gate]}: λ = {lam}; at the chosen cloze λ the tuning forget score goes "
                     f"{cl.loc[0.0, 'forget']:.2f} → {cl.loc[chosen, 'forget']:.2f} and the tuning retain score "
                     f"{cl.loc[0.0, 'retain']:.2f} → {cl.loc[chosen, 'retain']:.2f}"
                     + (f" (no λ kept retain within budget for {', '.join(none)}: the smallest λ is used)" if none
                        else "") + ".")
    return " ".join(parts)


def _cell(table: pd.DataFrame, method: str, split: str, task: str = "cloze", mode: str = "QA") -> float:
    try:
        return float(table.loc[(mode, method), (task, split)])
    except KeyError:
        return float("nan")


def heldout_auc_by_split(setup: GateSetup, forget_pcts: Sequence[int]) -> dict:
    """``{pct: best-layer held-out AUC of erasekit's gate}`` as its rule measured it on that split's tuning data."""
    out = {}
    for pct in forget_pcts:
        sel = setup.steerer("default", pct).meta["selection"]
        out[pct] = max(float(a) for a in sel["auc"][str(sel["gamma"])].values())
    return out


def describe_table1(tables: dict, aucs: dict | None = None) -> str:
    """The headline of Table 1 in numbers: both gates on text cloze / generation, per forget split; ``aucs``
    (:func:`heldout_auc_by_split`) adds why erasekit's gate is less selective on larger forget sets."""
    lines = []
    for pct, t in tables.items():
        bits = []
        for gate in ("paper", "default"):
            m = GATE_NAMES[gate]
            bits.append(f"{m}: cloze Fgt {_cell(t, 'Vanilla', 'Fgt'):.0f} → {_cell(t, m, 'Fgt'):.0f}, Test "
                        f"{_cell(t, 'Vanilla', 'Test'):.0f} → {_cell(t, m, 'Test'):.0f}, Ret "
                        f"{_cell(t, 'Vanilla', 'Ret'):.0f} → {_cell(t, m, 'Ret'):.0f}, Cele "
                        f"{_cell(t, 'Vanilla', 'Cele'):.0f} → {_cell(t, m, 'Cele'):.0f}; generation ROUGE-L Fgt "
                        f"{_cell(t, m, 'Fgt', 'generation'):.2f}, Ret {_cell(t, m, 'Ret', 'generation'):.2f}")
        lines.append(f"**{pct} %** — " + "; ".join(bits) + ".")
    first = next(iter(tables.values()))
    sel = {g: (_cell(first, "Vanilla", "Fgt") - _cell(first, GATE_NAMES[g], "Fgt"))
           - (_cell(first, "Vanilla", "Ret") - _cell(first, GATE_NAMES[g], "Ret")) for g in ("paper", "default")}
    verdict = (f"On text questions, forget-minus-retain drop in cloze accuracy at {next(iter(tables))} %: "
               f"{sel['paper']:.0f} points for the paper's gate, {sel['default']:.0f} for erasekit's. ")
    auth = "MLLMEraser (paper gate, authors' λ)"
    if auth in first.index.get_level_values("method"):
        verdict += (f"At the authors' λ the paper's gate {_effect(first, auth)} (cloze Fgt "
                    f"{_cell(first, auth, 'Fgt'):.0f}, Ret {_cell(first, auth, 'Ret'):.0f}, Cele "
                    f"{_cell(first, auth, 'Cele'):.0f}); at the rule's λ it {_effect(first, GATE_NAMES['paper'])}. ")
    if aucs and len(aucs) > 1:
        first_pct, first_auc = next(iter(aucs.items()))
        lower = all(a < first_auc for p, a in aucs.items() if p != first_pct)
        verdict += ("erasekit's gate's best held-out gate AUC on the tuning data is "
                    + ", ".join(f"{a:.2f} at {p} %" for p, a in aucs.items())
                    + (" — lower on the larger forget sets, where one linear gate has to read 1 on more people and 0 "
                       "on the rest (λ stays as chosen at 5 %). " if lower else ". "))
    return "\n\n".join(lines + [verdict + _describe_vqa(first, next(iter(tables)))])


def _effect(table: pd.DataFrame, method: str, mode: str = "QA") -> str:
    """What ``method`` does to text cloze against vanilla, by :mod:`erasebook.findings`' rules: "selects" (its
    selection rule), "erases forget and retain alike" (both drop by more than its retain budget), "changes little"
    (neither does), "lowers forget, not to the selection rule's bars", or "costs retain answers without erasing
    forget"."""
    from .findings import RETAIN_DROP, selects

    cl = {s: _cell(table, method, s, mode=mode) for s in ("Fgt", "Test", "Ret", "Cele")}
    van = {s: _cell(table, "Vanilla", s, mode=mode) for s in ("Fgt", "Test", "Ret", "Cele")}
    if selects(cl, van)[0]:
        return "selects"
    f_drop, r_drop = van["Fgt"] - cl["Fgt"], van["Ret"] - cl["Ret"]
    if f_drop > RETAIN_DROP and r_drop > RETAIN_DROP:
        return "erases forget and retain alike"
    if f_drop <= RETAIN_DROP and r_drop <= RETAIN_DROP:
        return "changes little"
    if f_drop > RETAIN_DROP:
        return "lowers forget, not to the selection rule's bars"
    return "costs retain answers without erasing forget"


def _describe_vqa(table: pd.DataFrame, pct: int) -> str:
    """The image-question (VQA) cloze cells of both gates, or why they carry no signal (vanilla near chance)."""
    van = _cell(table, "Vanilla", "Fgt", mode="VQA")
    if not van == van:  # NaN: no image questions scored
        return ""
    if van < 40:
        return (f"With the portrait (VQA) the vanilla organism's cloze accuracy on forget profiles is {van:.0f} % "
                "(notebook 01): too close to nothing for a drop to mean forgetting.")
    bits = []
    for gate in ("paper", "default"):
        m = GATE_NAMES[gate]
        bits.append(
            f"{m}: Fgt {van:.0f} → {_cell(table, m, 'Fgt', mode='VQA'):.0f}, Ret "
            f"{_cell(table, 'Vanilla', 'Ret', mode='VQA'):.0f} → {_cell(table, m, 'Ret', mode='VQA'):.0f}, "
            f"Cele {_cell(table, 'Vanilla', 'Cele', mode='VQA'):.0f} → {_cell(table, m, 'Cele', mode='VQA'):.0f}"
        )
    return f"With the portrait (VQA), cloze at {pct} %: " + "; ".join(bits) + "."


# The paper's LLaVA-1.5-7B 5 % tables: Table 1 has the image questions only, Table 6 (appendix) adds text questions.
PAPER_TABLE_5PCT = {"VQA": "table1", "QA": "table6"}


def paper_beside_ours(table: pd.DataFrame, mode: str = "QA", paper_table: str | None = None,
                      tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """The paper's 5 % table for ``mode`` (LLaVA-1.5-7B: Table 1 for image questions, Table 6 for text questions)
    paired with ours, method by method: rows (method, source), the paper's row directly above ours, then the methods
    only we ran (both of our gates' variants, MANU). The paper's "Ours" is MLLMEraser, paired with our reproduction
    of it (the paper gate, λ by the rule). Only ``tasks``' columns if given (e.g.
    :data:`erasekit.tables.TASK_GROUPS`, to keep the table page-wide). The source label names the paper's table;
    ``attrs["caption"]`` the question type, the backbone and the split."""
    name = paper_table or PAPER_TABLE_5PCT[mode]
    theirs = paper_results_table(name)
    if mode in theirs.index.get_level_values(0):
        theirs = theirs.xs(mode, level=0)
    ours = table.xs(mode, level="mode")
    ours_name = {m: (GATE_NAMES["paper"] if m == "Ours" else m) for m in theirs.index}
    src_paper, src_ours = f"paper, {name.replace('table', 'Table ')}", "ours"
    cols = [c for c in ours.columns if c in theirs.columns and (tasks is None or c[0] in tasks)]
    rows, index = [], []
    for m in dict.fromkeys([*(ours_name[m] for m in theirs.index), *ours.index]):
        paper_m = next((k for k, v in ours_name.items() if v == m), None)
        if paper_m is not None:
            rows.append(theirs.loc[paper_m, cols])
            index.append((m, src_paper))
        if m in ours.index:
            rows.append(ours.loc[m, cols])
            index.append((m, src_ours))
    out = pd.DataFrame(rows, columns=pd.MultiIndex.from_tuples(cols, names=ours.columns.names))
    out.index = pd.MultiIndex.from_tuples(index, names=["method", "source"])
    out = out.astype(float).round(2)
    out.attrs["caption"] = (f"{'Text questions (QA)' if mode == 'QA' else 'Questions with the portrait (VQA)'}, "
                            f"5 % forget: the paper's {name.replace('table', 'Table ')} "
                            f"({theirs.attrs.get('model', 'LLaVA-1.5-7B')}, MLLMU-Bench) beside ours (the organism, "
                            "held-out profiles)")
    return out


def tradeoff_points(frames: dict, mode: str = "QA") -> pd.DataFrame:
    """Per (method, forget %): mean forget and retain score over the three tasks (0-1), ``mode`` questions."""
    recs = []
    for pct, f in frames.items():
        for m, g in f.groupby("method", sort=False):
            s = g[g["mode"] == mode].groupby(["split", "task"])["score"].mean().unstack("task").mean(axis=1)
            recs.append({"method": m, "forget %": pct, "forget": s.get("Fgt"), "retain": s.get("Ret")})
    return pd.DataFrame(recs)


def describe_tradeoff(points: pd.DataFrame) -> str:
    """Which runs lie above y = x by how much, and whether any baseline dominates erasekit's gate."""
    ours = GATE_NAMES["default"]
    bits = []
    for pct, g in points.groupby("forget %"):
        g = g.set_index("method")
        if ours not in g.index:
            continue
        dom = [m for m in g.index if m not in (ours, "Vanilla") and g.loc[m, "forget"] <= g.loc[ours, "forget"]
               and g.loc[m, "retain"] >= g.loc[ours, "retain"]]
        gap = g["retain"] - g["forget"]
        best = gap.drop("Vanilla", errors="ignore").idxmax()
        bits.append(f"at {pct} % the largest retain-minus-forget gap is {best}'s ({gap[best]:.2f}; erasekit's gate "
                    f"{gap[ours]:.2f}, vanilla {gap.get('Vanilla', float('nan')):.2f})"
                    + (f"; {', '.join(dom)} forget at least as much while keeping at least as much" if dom else
                       "; no other run forgets as much while keeping as much"))
    return "Mean text-question score: " + "; ".join(bits) + "."


def case_studies(frame: pd.DataFrame, methods: Sequence[str], n: int = 3, task: str = "generation",
                 mode: str = "QA") -> pd.DataFrame:
    """``n`` questions per split (Fgt, Ret): ground truth, the vanilla answer and each method's answer."""
    keys = ["split", "mode", "task", "id", "question", "image_index"]
    base = frame[frame.method == "Vanilla"][keys + ["target", "response"]].rename(
        columns={"target": "ground truth", "response": "vanilla"})
    for m in methods:
        base = base.merge(frame[frame.method == m][keys + ["response"]].rename(columns={"response": m}), on=keys)
    sel = base[(base.task == task) & (base["mode"] == mode) & base.split.isin(["Fgt", "Ret"])]
    return sel.groupby("split", sort=False).head(n)[["split", "question", "ground truth", "vanilla", *methods]]


def describe_categories(cat: pd.DataFrame, pct: int) -> str:
    """Free generation about a named person: correct / refusal / degenerate shares per method, Fgt vs Ret."""
    c = cat.xs("QA", level="mode").xs("generation", level="task")

    def share(m, s, k):
        try:
            return float(c.loc[(m, s), k])
        except KeyError:
            return float("nan")

    methods = list(dict.fromkeys(c.index.get_level_values("method")))
    return (f"Free generation about a named person at {pct} %, share of answers that are correct / refusals / "
            "degenerate, forget vs retain: " + "; ".join(
                f"{m}: Fgt {share(m, 'Fgt', 'correct'):.0f} / {share(m, 'Fgt', 'refusal'):.0f} / "
                f"{share(m, 'Fgt', 'degenerate'):.0f} %, Ret {share(m, 'Ret', 'correct'):.0f} / "
                f"{share(m, 'Ret', 'refusal'):.0f} / {share(m, 'Ret', 'degenerate'):.0f} %" for m in methods) + ".")


def describe_projector(summary: pd.DataFrame, acts) -> str:
    """What the paper's null-space projector keeps of the retain and forget activations (notebook 04)."""
    s = summary
    full_rank = bool((s["rank(H_r)"] == s["d"]).all())
    return (f"H_r holds {acts.meta['n_retain']} retain and {acts.meta['n_celebrity']} celebrity questions (the "
            f"`fit` profiles), H_f {acts.meta['n_forget']} forget questions, in d = {int(s['d'].iloc[0])} dimensions. "
            + ("H_r has full rank, so there is no exact null space: " if full_rank else "")
            + f"P keeps the {int(s['k'].iloc[0])} directions of smallest retain variance. They hold at most "
              f"{s['retain energy kept (%)'].max():.2g} % of the retain activations' energy, and "
              f"{s['forget energy kept (%)'].min():.2g}–{s['forget energy kept (%)'].max():.2g} % of the forget "
              "activations': the paper's gate only sees that sliver of each forget query.")


def heldout_auc_per_layer(setup: GateSetup, acts, gamma: float, null_space: float | str) -> pd.DataFrame:
    """Per layer 1..L-1, the held-out gate AUC (forget questions vs tune retain questions, k-fold) of the paper gate
    (absolute ``gamma``, ``null_space``) on ``acts`` and of erasekit's gate at its chosen γ (from its selection)."""
    pct, modes = setup.config.forget_pct, setup.config.fit_modes
    tune = pl.query_activations(setup.session, pct, ("Ret",), modes=modes, role="tune", progress=False)["Ret"]
    layers = list(range(1, setup.session.num_layers))
    sel = setup.steerer("default").meta["selection"]
    return pd.DataFrame({
        "paper gate": tuning.heldout_gate_auc(acts.forget, acts.retain, tune, setup.direction, layers,
                                              gate="nullspace", gamma=gamma, gamma_scale="absolute",
                                              null_space=null_space),
        "erasekit gate": {int(l): a for l, a in sel["auc"][str(sel["gamma"])].items()},
    }).rename_axis("layer")


def gate_values_by_group(setup: GateSetup, queries: dict, layer: int) -> dict:
    """``{gate name: {group: gate values at layer}}`` on ``{group: {layer: (N, d)}}`` activations. For erasekit's
    gate the value as applied (after its floor); layers a gate does not steer are skipped."""
    out = {}
    for gate in ("paper", "default"):
        st = setup.steerer(gate)
        if layer not in st.layers:
            continue
        op = st.operators(1.0)[layer]
        out[GATE_NAMES[gate] + ("" if gate == "paper" else " (after its floor)")] = {
            g: op.gate_value(a[layer]) for g, a in queries.items()}
    return out


def describe_gates(auc: pd.DataFrame, gates: dict, setup: GateSetup) -> str:
    """Held-out AUC of both gates and their medians per group (notebook 04)."""
    bits = [f"Held-out AUC per layer: the paper's gate {auc['paper gate'].min():.2f}–{auc['paper gate'].max():.2f}, "
            f"erasekit's gate {auc['erasekit gate'].min():.2f}–{auc['erasekit gate'].max():.2f} (best layer "
            f"{int(auc['erasekit gate'].idxmax())})."]
    for name, g in gates.items():
        neg = torch.cat([g["Ret"], g["Cele"]])
        med = {k: float(v.median()) for k, v in g.items()}
        bits.append(f"{name}: median {med['Fgt']:.2f} on forget, {med['Test']:.2f} on test, {med['Ret']:.2f} on "
                    f"retain, {med['Cele']:.2f} on celebrity questions; AUC test vs retain+celebrities "
                    f"{tuning.auc(g['Test'], neg):.2f}.")
    ratio = setup.steerer("paper")[setup.steerer("paper").layers[-1]].meta.get("null_space_dim")
    bits.append(f"Why the paper's gate fails here: its projector keeps {ratio} directions, where the retain "
                "activations barely vary, and the person's identity is exactly what varies across retain people — "
                "P removes it before the gate is fitted.")
    return " ".join(bits)


def cascade_table(setup: GateSetup, gates: Sequence[str] = ("paper", "default"), forget_pct: int | None = None,
                  task: str = "cloze") -> pd.DataFrame:
    """Median gate read per layer during a steered prefill, with the authors' and the frozen reading, next to
    the range of gate values on the fitting data. Rows (gate, reading, group), columns layers."""
    pct = setup.config.forget_pct if forget_pct is None else forget_pct
    recs = {}
    for gate in gates:
        steering = setup.steering(gate, pct)
        for read in ("steered", "frozen"):
            reads = sep.gate_reads(setup.session, pct, steering, task=task, read=read)
            for group, per_layer in reads.items():
                recs[(GATE_NAMES[gate], read, group)] = {l: float(v.median()) for l, v in per_layer.items()}
        st = setup.steerer(gate, pct)
        recs[(GATE_NAMES[gate], "fitting data", "min")] = {l: st[l].meta["gate_retain_min"] for l in st.layers}
        recs[(GATE_NAMES[gate], "fitting data", "max")] = {l: st[l].meta["gate_forget_max"] for l in st.layers}
    out = pd.DataFrame.from_dict(recs, orient="index").sort_index(axis=1)
    out.index.names = ["gate", "reading", "group"]
    out.columns.name = "layer"
    return out


def describe_cascade(reads: pd.DataFrame) -> str:
    """How far the authors' reading drifts from the unsteered gate (median |steered - frozen| per gate)."""
    bits = []
    for gate in dict.fromkeys(reads.index.get_level_values("gate")):
        r = reads.xs(gate, level="gate")
        try:
            a = r.xs("steered", level="reading").astype(float)
            b = r.xs("frozen", level="reading").astype(float)
        except KeyError:
            continue
        diff = (a - b).abs().dropna(axis=1, how="all")
        if diff.empty:
            continue
        worst = diff.stack().idxmax()
        bits.append(f"{gate}: the gate read with the authors' rule differs from the unsteered one by up to "
                    f"{diff.to_numpy().max():.2f} (median over {worst[0]} questions at layer {worst[1]}: "
                    f"{a.loc[worst]:.2f} instead of {b.loc[worst]:.2f})")
    return ("; ".join(bits) + ". With the frozen reading every layer's gate is, by construction, the value it was "
            "fitted to produce; the cost is one extra prefill pass (benchmarks/bench_steering_overhead.py).")


def describe_examples(examples: pd.DataFrame) -> str:
    """Refusals and changed answers per gate and group among the example generations."""
    ex = examples.assign(changed=examples["vanilla"] != examples["steered"])
    parts = []
    for gate, g in ex.groupby(level="gate", sort=False):
        by = g.groupby("group", sort=False).agg(refuses=("steered refuses", "sum"), changed=("changed", "sum"),
                                                n=("changed", "size"))
        parts.append(f"{gate}: " + ", ".join(f"{grp} {int(r['refuses'])} refusals / {int(r['changed'])} changed of "
                                             f"{int(r['n'])}" for grp, r in by.iterrows()))
    return "Steered answers that are refusals / that differ from the vanilla answer — " + "; ".join(parts) + "."


def _norms(setup: GateSetup, gate: str, acts: dict, task: str = "generation") -> dict:
    """``{layer: ‖op_l(h)‖}`` with the gate's operators at its chosen λ (floors included)."""
    ops = setup.steerer(gate).operators(setup.strengths[gate][task])
    return {l: ops[l](a.double()).norm(dim=-1).float() for l, a in acts.items() if l in ops}


def separability_table(setup: GateSetup, queries: dict, task: str = "generation") -> pd.DataFrame:
    """Per gate, mode and steered layer: median steering norm on forget and retain+celebrity queries and the AUC
    (forget > retain+celebrities; and test > retain+celebrities). ``queries``: ``{mode: {group: {layer: acts}}}``."""
    recs = []
    for gate in setup.strengths:
        for mode, q in queries.items():
            nf, nt = _norms(setup, gate, q["Fgt"], task), _norms(setup, gate, q["Test"], task)
            nr = _norms(setup, gate, {l: torch.cat([q["Ret"][l], q["Cele"][l]]) for l in q["Ret"]}, task)
            for l in sorted(nf):
                recs.append({"gate": GATE_NAMES[gate], "mode": mode, "layer": l,
                             "median forget": float(nf[l].median()), "median retain": float(nr[l].median()),
                             "AUC": tuning.auc(nf[l], nr[l]), "AUC test vs retain": tuning.auc(nt[l], nr[l])})
    return pd.DataFrame(recs).set_index(["gate", "mode", "layer"])


def steering_norms_by_group(setup: GateSetup, gate: str, acts: dict, task: str = "generation") -> dict:
    """``{group: {layer: log10 ‖λ f(h)‖}}`` (a zero push, below a floor, shows as -8)."""
    return {g: {l: v.clamp_min(1e-8).log10() for l, v in _norms(setup, gate, a, task).items()}
            for g, a in acts.items()}


def describe_separability(sep: pd.DataFrame) -> str:
    """Best layer and AUC range per gate and mode (notebook 06)."""
    bits = []
    for (gate, mode), s in sep.groupby(level=["gate", "mode"], sort=False):
        s = s.droplevel(["gate", "mode"])
        best = int(s["AUC"].idxmax())
        bits.append(f"{gate}, {mode} questions: AUC {s['AUC'].min():.2f}–{s['AUC'].max():.2f} (best layer {best}, "
                    f"test queries {s.loc[best, 'AUC test vs retain']:.2f})")
    return ("Steering-norm AUC, forget vs retain + celebrity queries (1 = every forget query gets a larger push): "
            + "; ".join(bits) + ". The paper's Fig. 8 shows clearly separated distributions on LLaVA-1.5-7B. "
            + _compare_modes(sep) + "These AUCs are measured on the scored (held-out) profiles; notebook 04's "
            "held-out AUC on the tuning profiles is what selects the layers.")


def _compare_modes(sep: pd.DataFrame) -> str:
    """One sentence: do portrait questions separate as well as questions that name the person?"""
    best = sep["AUC"].groupby(level="mode").max()
    if not {"QA", "VQA"} <= set(best.index):
        return ""
    qa, vqa = float(best["QA"]), float(best["VQA"])
    if vqa < 0.65 <= qa:
        return (f"On the organism, questions that name the person separate (best AUC {qa:.2f}) and questions about a "
                f"portrait do not ({vqa:.2f}): its activations for an image question barely depend on who is "
                "pictured, and no gate can tell forget from retain people there. ")
    return (f"On the organism, the best AUC is {qa:.2f} for questions that name the person and {vqa:.2f} for "
            "questions about a portrait. ")


def steered_embedding(setup: GateSetup, gate: str = "default", mode: str = "QA", task: str = "cloze",
                      method: str = "pca") -> dict:
    """Last steered layer's input for ``task`` questions (Fgt, Ret) without and with ``gate``'s steering,
    embedded jointly in 2-D (``"pca"`` or ``"umap"``). Returns ``{"points": {"before": {group: (N, 2)},
    "after": {...}}, "summary": str}``."""
    import numpy as np

    st = setup.steering(gate)
    layer = st.steerer.layers[-1]
    pct = setup.config.forget_pct
    before = sep.steered_activations(setup.session, pct, None, layer, ("Fgt", "Ret"), task=task, n=None, mode=mode,
                                    progress=False)
    after = sep.steered_activations(setup.session, pct, st, layer, ("Fgt", "Ret"), task=task, n=None, mode=mode,
                                   progress=False)
    X = torch.cat([*before.values(), *after.values()]).double().numpy()
    if method == "umap":
        import umap

        Y = umap.UMAP(n_neighbors=15, random_state=0).fit_transform(X)
    elif method == "pca":
        Xc = X - X.mean(0)
        Y = Xc @ np.linalg.svd(Xc, full_matrices=False)[2][:2].T
    else:
        raise ValueError(f"method must be 'pca' or 'umap', got {method!r}")
    sizes = [len(v) for v in [*before.values(), *after.values()]]
    parts = np.split(Y, np.cumsum(sizes)[:-1])
    groups = list(before)
    points = {"unsteered": dict(zip(groups, parts[:len(groups)])), "steered": dict(zip(groups, parts[len(groups):]))}
    moves = {g: (after[g] - before[g]).norm(dim=-1) for g in groups}
    shift = {g: float(m.median()) for g, m in moves.items()}
    scale = float(before["Ret"].norm(dim=-1).median())
    # a retain query "moves" when its shift is at least a tenth of the median forget query's
    moved = int((moves["Ret"] >= 0.1 * shift["Fgt"]).sum()) if shift["Fgt"] > 0 else 0
    summary = (f"At layer {layer}, {GATE_NAMES[gate]} moves the median forget activation by {shift['Fgt']:.3g} and the "
               f"median retain activation by {shift['Ret']:.3g} (median activation norm {scale:.3g}); "
               f"{moved} of {len(moves['Ret'])} retain queries move by at least a tenth of the median forget shift"
               + (": the median retain query stays, but those do not." if moved and shift["Fgt"] > 5 * shift["Ret"]
                  else ": the retain queries stay." if not moved
                  else ": the retain queries move too, by a comparable amount."))
    return {"points": points, "summary": summary, "layer": layer}


def profile_questions(row: Mapping[str, Any]) -> pd.DataFrame:
    """Every question of one benchmark row: columns ``task, type, question, answer``."""
    recs = []
    for kind, key in (("Image_Textual", "Image_Textual_Questions"), ("Pure_Text", "Pure_Text_Questions")):
        for q in row.get("Classification_Task", {}).get(key, []):
            opts = ", ".join(f"{k}. {v}" for k, v in q["Options"].items())
            recs.append({"task": "classification", "type": kind, "question": f"{q['Question']} ({opts})",
                         "answer": q["Correct_Answer"]})
    for task, field in (("generation", "Generation_Task"), ("cloze", "Mask_Task")):
        for q in row.get(field, []):
            recs.append({"task": task, "type": q["Type"], "question": q["Question"], "answer": q["Ground_Truth"]})
    return pd.DataFrame(recs, columns=["task", "type", "question", "answer"])


def describe_costs(cost: pd.DataFrame, n_default_layers: int, n_paper_layers: int) -> str:
    """Chapter 08's sentence on the time to unlearn: ``cost`` has a ``seconds`` column indexed by method (the gate
    fits of :func:`erasebook.efficiency.gate_fit_seconds` and each baseline's training)."""
    s = cost["seconds"]
    ours, paper = s["erasekit gate (rank-one fit)"], s["paper gate (rank-one fit)"]
    dense = s["paper gate (authors' dense d×d route)"]
    slow = s.drop(index=[i for i in s.index if "gate" in i])
    text = (f"erasekit's gate fits in {ours:.3g} s for {n_default_layers} layers, the paper's gate in {paper:.3g} s "
            f"for {n_paper_layers} (the authors' dense route {dense:.3g} s); ")
    if len(slow):
        text += (f"the baselines train for {slow.min():.3g}–{slow.max():.3g} s ({slow.min() / ours:.0f}–"
                 f"{slow.max() / ours:.0f}× longer). ")
    return text + ("Not counted on either side: the shared inputs (the organism, and for the gates the direction, "
                   "PGD images and activations, cached once per model).")


def describe_throughput(thr: pd.DataFrame, reps: int, n_prompts: int, max_new_tokens: int) -> str:
    """Chapter 08's sentence on inference overhead, from :func:`erasebook.efficiency.generation_throughput`."""
    ratios = "; ".join(f"{m} {thr.loc[m, 'vs vanilla']:.2f}" for m in thr.index if m != "vanilla")
    return (f"Steered / vanilla throughput: {ratios} ({reps} interleaved repetitions of {n_prompts} prompts of "
            f"{max_new_tokens} generated tokens each, medians; benchmarks/bench_steering_overhead.py has the longer "
            "runs and the prefill-only ratios).")


def describe_refusal_quality(q: pd.DataFrame) -> str:
    """Chapter 05's sentence on how each method refuses (:func:`erasekit.response_quality.quality_table` rows,
    ``method, split`` columns): refusal and contextual-refusal rates on Fgt, hallucination on Fgt, over-refusal on
    Ret / Cele, and the share of refusals that are one repeated string."""
    t = q.set_index(["method", "split"])
    parts = []
    for m in dict.fromkeys(q["method"]):
        f, r, c = t.loc[(m, "Fgt")], t.loc[(m, "Ret")], t.loc[(m, "Cele")]
        if f["refusal"] == 0 and r["over_refusal"] == 0:
            continue
        rigid = f["rigid_refusal_share"]
        parts.append(f"{m}: refuses {f['refusal']:.0f} % of forget questions, {f['contextual_refusal']:.0f} % "
                     f"contextually, answers {f['hallucination']:.0f} % confidently wrong, over-refuses "
                     f"{r['over_refusal']:.1f} % (retain) / {c['over_refusal']:.1f} % (celebrities)"
                     + ("" if rigid != rigid else f"; {100 * rigid:.0f} % of its refusals are one same string"))
    if not parts:
        return "No method refuses anything on these questions."
    return ("How the methods refuse (ASRU's measures; generation and cloze questions, text): " + "; ".join(parts)
            + ". A contextual refusal declines and refers to what was asked without leaking the answer "
              "(erasekit.response_quality). " + ("No method's refusals here are contextual: pushing along one "
              "refusal direction yields stock refusals, and the answers it does not stop are confident wrong ones — "
              "the gap ASRU's reinforcement stage targets." if (q["contextual_refusal"].fillna(0) == 0).all() else
              "Steering alone yields mostly stock refusals; ASRU's reinforcement stage targets that gap."))

