"""Ablations (paper §5.4 and Tables 2/3/9/10; chapter 07): one thing changed at a time, scored on the held-out
profiles, and the paper gate's held-out AUC over its own knobs (null-space size, γ) without generation.

:func:`ablation_table` scores ``{name: TaskSteering}`` variants; :func:`pgd_budget_variants` builds the multimodal
direction from PGD images of each ε budget; :func:`nullspace_gate_grid` measures the paper gate over null-space
ratio × γ and the exact null space of a small H_r.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from erasekit.nullspace import projector_summary
from erasekit.strengths import TaskSteering
from erasekit.tables import results_table
from erasekit.tuning import heldout_gate_auc

from . import pipeline as pl
from . import runs
from .paper import paper_table
from .recipes import GateSetup, gate_variant

__all__ = ["ablation_table", "describe_ablation", "pgd_budget_variants", "nullspace_gate_grid",
           "describe_nullspace_ablation", "PAPER_ABLATIONS", "paper_ablations", "describe_paper_beside_ours"]


def ablation_table(setup: GateSetup, variants: dict, modes: Sequence[str] = ("QA",),
                   tasks: Sequence[str] = ("classification", "generation", "cloze"), forget_pct: int | None = None,
                   ) -> pd.DataFrame:
    """Vanilla and each ``{name: Steering}`` scored on the held-out profiles; rows = variants, columns (task, split)
    (accuracy %, ROUGE-L), averaged over ``modes``."""
    pct = setup.config.forget_pct if forget_pct is None else forget_pct
    kw = dict(modes=modes, tasks=tasks, max_new_tokens=setup.config.max_new_tokens, progress=False)
    frames = [runs.evaluate_steering(setup.session, pct, None, method="Vanilla", **kw)]
    frames += [runs.evaluate_steering(setup.session, pct, s, method=name, **kw) for name, s in variants.items()]
    df = pd.concat(frames, ignore_index=True)
    return results_table(df.assign(mode="QA")).xs("QA", level="mode")  # one row per variant, modes pooled


def describe_ablation(table: pd.DataFrame, reference: str) -> str:
    """Per variant: cloze drop (points) on Fgt / Test / Ret / Cele and generation ROUGE-L on Fgt / Ret, against
    ``reference`` (a row) — what changing one thing does."""
    def drop(m, split):
        return float(table.loc["Vanilla", ("cloze", split)] - table.loc[m, ("cloze", split)])

    rows = [m for m in table.index if m != "Vanilla"]
    parts = [f"{m}: {drop(m, 'Fgt'):.0f} / {drop(m, 'Test'):.0f} / {drop(m, 'Ret'):.0f} / {drop(m, 'Cele'):.0f}"
             f" (ROUGE-L Fgt {table.loc[m, ('generation', 'Fgt')]:.2f}, Ret {table.loc[m, ('generation', 'Ret')]:.2f})"
             for m in rows]
    ref = drop(reference, "Fgt") - max(drop(reference, "Ret"), drop(reference, "Cele"))
    better = [m for m in rows if m != reference
              and drop(m, "Fgt") - max(drop(m, "Ret"), drop(m, "Cele")) > ref + 2]
    return ("Cloze accuracy drop from vanilla (points) on forget / test / retain / celebrities — " + "; ".join(parts)
            + f". Selectivity (forget drop minus the larger retain-side drop): {ref:.0f} points for {reference}; "
            + (f"more selective: {', '.join(better)}." if better else "no variant is more selective."))


def describe_nullspace_ablation(auc: pd.DataFrame, recs: pd.DataFrame, exact_auc: float, small, default) -> str:
    """Why the paper's gate fails on the organism, in numbers (notebook 07)."""
    best = default.meta["selection"]
    best_auc = max(float(a) for a in best["auc"][str(best["gamma"])].values())
    n_small = small.meta["n_retain"] + small.meta["n_celebrity"]
    return (f"The paper gate's held-out AUC spans {auc.min().min():.2f}–{auc.max().max():.2f} over null-space ratios "
            f"{', '.join(f'{r:g}' for r in auc.index)} and γ {', '.join(f'{g:g}' for g in auc.columns)}; P keeps "
            f"{recs['forget energy kept (%)'].min():.2g}–{recs['forget energy kept (%)'].max():.2g} % of the forget "
            f"activations' energy. The exact null space of a small H_r ({n_small} rows, fewer than d) gives "
            f"{exact_auc:.2f}. erasekit's contrastive gate reaches {best_auc:.2f} on the same held-out measure. "
            "Forget and retain questions share their templates and differ only in the person; the person's identity "
            "lives in directions where the retain set (other people) also varies, which P removes by construction. "
            "On LLaVA-1.5-7B (d = 4096) the paper finds enough room left; on a 192-dimensional organism there is "
            "none.")


def pgd_budget_variants(setup: GateSetup, eps_grid: Sequence[float | None], progress: bool = False
                        ) -> tuple[dict[str, TaskSteering], pd.DataFrame]:
    """erasekit's default steering with the direction made from PGD images of each L∞ budget in ``eps_grid``
    (None: unconstrained), everything else as set up. Returns ``({name: steering}, table of the mean PGD loss drop
    per budget)`` (paper Table 3: the perturbation budget)."""
    cfg, variants, recs = setup.config, {}, []
    for eps in eps_grid:
        adv = pl.adversarial_images(setup.session, eps=eps, alpha=cfg.pgd_alpha, steps=cfg.pgd_steps,
                                    n_images=cfg.n_images, k=cfg.k, progress=progress)
        name = "unconstrained" if eps is None else f"ε = {round(eps * 255)}/255"
        variants[f"direction from PGD {name}"] = gate_variant(
            setup,
            direction=pl.multimodal_direction(
                setup.session, adv, n_pairs=cfg.n_pairs, filter=cfg.direction_filter, progress=progress
            ),
        )
        recs.append({"ε": name, "PGD loss drop": float((adv.loss_history[:, 0] - adv.loss_history[:, -1]).mean())})
    return variants, pd.DataFrame(recs).set_index("ε")


def nullspace_gate_grid(setup: GateSetup, ns_grid: Sequence[float], gamma_grid: Sequence[float],
                        exact_retain: int = 4, exact_celeb: int = 3, progress: bool = False) -> dict:
    """The paper gate's held-out AUC (forget questions vs tune retain questions, k-fold) at its last steered layer,
    over null-space ratio × absolute γ, with the forget energy each projector keeps; and the exact null space of a
    small H_r (``exact_retain`` + ``exact_celeb`` fit profiles, fewer rows than d) at γ = 0.1.

    Returns ``{"auc": ratio × γ frame, "records": long frame, "exact_auc": float, "small": ForgetRetain,
    "layer": int}``.
    """
    pct, modes = setup.config.forget_pct, setup.config.fit_modes
    acts = pl.forget_retain_activations(setup.session, pct, modes=modes, progress=progress)
    tune = pl.query_activations(setup.session, pct, ("Ret",), modes=modes, role="tune", progress=progress)["Ret"]
    layer = setup.steerer("paper").layers[-1]
    recs = []
    for ns in ns_grid:
        kept = float(projector_summary(acts, ns, [layer])["forget energy kept (%)"].iloc[0])
        for g in gamma_grid:
            a = heldout_gate_auc(acts.forget, acts.retain, tune, setup.direction, [layer], gate="nullspace",
                                 gamma=g, gamma_scale="absolute", null_space=ns)[layer]
            recs.append({"null-space ratio": ns, "γ": g, "forget energy kept (%)": kept, "held-out AUC": a})
    records = pd.DataFrame(recs)
    small = pl.forget_retain_activations(setup.session, pct, exact_retain, exact_celeb, modes=modes, progress=progress)
    exact = heldout_gate_auc(small.forget, small.retain, tune, setup.direction, [layer], gate="nullspace", gamma=0.1,
                             gamma_scale="absolute", null_space="exact")[layer]
    return {"auc": records.pivot_table(index="null-space ratio", columns="γ", values="held-out AUC"),
            "records": records, "exact_auc": float(exact), "small": small, "layer": layer}


PAPER_ABLATIONS = {"table2": "Table 2 (Qwen-2.5-VL-7B, 5 %): direction and input-awareness",
                   "table3": "Table 3 (LLaVA-1.5-7B, 10 %): PGD budget ε",
                   "table9": "Table 9 (LLaVA-1.5-7B, 10 %): steered layers",
                   "table10": "Table 10 (LLaVA-1.5-7B, 10 %): linear vs MLP map"}


def paper_ablations(task: str = "cloze") -> pd.DataFrame:
    """The paper's own ablation tables (image questions, ``task`` scores as printed), one row per (table,
    variant), with each variant's drop from that table's Vanilla on Fgt and on Ret: what the authors measured,
    to read beside chapter 07's numbers (organism, text questions)."""
    frames = []
    for name, label in PAPER_ABLATIONS.items():
        t = paper_table(name, task=task).pivot_table(index="method", columns="split", values="value", sort=False)
        t = t[["Fgt", "Test", "Ret", "Cele"]]
        t["Fgt drop"] = t.loc["Vanilla", "Fgt"] - t["Fgt"]
        t["Ret drop"] = t.loc["Vanilla", "Ret"] - t["Ret"]
        frames.append(t.drop(index="Vanilla").assign(table=label).set_index("table", append=True).swaplevel())
    return pd.concat(frames).round(2)


def describe_paper_beside_ours(paper: pd.DataFrame, ours: pd.DataFrame, pairs: dict[tuple[str, str], str],
                               reference: str) -> str:
    """One sentence per paper ablation row in ``pairs`` ``{(paper table key, paper variant): our row}``: the cloze
    drop from vanilla on Fgt and Ret in the paper (image questions) and ours (``ours``: an :func:`ablation_table`
    frame with a Vanilla row, text questions, held-out profiles), against each side's full method."""
    ours = ours[~ours.index.duplicated()]  # the reference row may come from several ablation tables

    def our_drop(row: str, split: str) -> float:
        return float(ours.loc["Vanilla", ("cloze", split)] - ours.loc[row, ("cloze", split)])

    parts = []
    for (table, variant), row in pairs.items():
        p = paper.xs(PAPER_ABLATIONS[table], level="table")
        full = "Ours" if "Ours" in p.index else "all" if "all" in p.index else "eps=16/255"
        parts.append(
            f"{variant} — paper: Fgt −{p.loc[variant, 'Fgt drop']:.0f} / Ret −{p.loc[variant, 'Ret drop']:.0f} points "
            f"(full method −{p.loc[full, 'Fgt drop']:.0f} / −{p.loc[full, 'Ret drop']:.0f}); organism ({row}): "
            f"Fgt −{our_drop(row, 'Fgt'):.0f} / Ret −{our_drop(row, 'Ret'):.0f} (erasekit gate "
            f"−{our_drop(reference, 'Fgt'):.0f} / −{our_drop(reference, 'Ret'):.0f})")
    return ("Cloze accuracy drops from vanilla, the paper's ablations beside ours: " + "; ".join(parts) + ". "
            "The paper's rows are image questions on 7B models, ours text questions on the organism: compare the "
            "direction of each effect, not its size.")
