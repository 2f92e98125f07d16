"""The two gates end to end, as the notebooks and ``erasekit gate-selectivity`` use them.

One call, :func:`gate_setup`, builds everything the result chapters share from a :class:`GateConfig`: the PGD
images and the multimodal erasure direction (Eq. 5-7), the paper's steerer (null-space gate, Eq. 10-12, the
authors' settings) and erasekit's default steerer (contrastive gate, :func:`erasekit.tuning.choose_gate`), and λ
per task for each by the same rule (:func:`erasebook.runs.choose_strengths`, on tuning profiles only). Every
step is cached by the pipeline, so a second notebook pays nothing.

:func:`gate_selectivity` scores both against the vanilla model on the held-out profiles and returns the record
written to ``data/results/gate_selectivity.json``; :func:`gate_variant` is erasekit's steering with one thing
changed (the ablations). The tables and sentences the chapters show from these live in :mod:`erasebook.report`.

Gate settings (METHOD.md §3, §8):

============  ==========================================  ==============================================
              ``"paper"`` (MLLMEraser, reproduced)          ``"default"`` (erasekit)
============  ==========================================  ==============================================
direction     Eq. 7: clean image + harmful − PGD image +    refused harmful − answered harmless request,
              jailbreak (:func:`pl.multimodal_direction`)   ± a clean image (:func:`pl.refusal_contrast_direction`)
gate          null space P of H_r (ratio 0.3), Eq. 12       contrastive ridge, retain rows kept (alpha = 1)
γ             0.1 absolute (authors' LLaVA script)          relative, chosen by held-out AUC
layers        1..L-1                                        within 0.05 AUC of the best layer
gate reading  "steered" (each layer's cascaded input)       "frozen" (an unsteered prefill pass)
floor         none                                          q90 of the gate on tune retain questions
λ             the rule, per task                            the same rule, per task
============  ==========================================  ==============================================
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import pandas as pd

from erasekit.eraser import PAPER_GATE, Eraser
from erasekit.files import atomic_write
from erasekit.strengths import PAPER_STRENGTHS, TaskSteering

from . import pipeline as pl
from . import runs
from .session import Session

__all__ = ["GATE_NAMES", "GateConfig", "GateSetup", "gate_setup", "gate_selectivity", "gate_variant",
           "score_summary", "write_json"]

GATE_NAMES = {"paper": "MLLMEraser (paper gate)", "default": "erasekit gate"}


@dataclasses.dataclass(frozen=True)
class GateConfig:
    """What the result chapters share. ``profile="ci"`` (env ``ERASEKIT_PROFILE``) keeps the same code paths."""

    forget_pct: int = 5                       # the split λ and the gates' hyperparameters are tuned on
    fit_modes: tuple = ("VQA", "QA")          # questions whose activations form H_f / H_r / the tune negatives
    tune_modes: tuple = ("QA",)               # modes the λ rule scores (text only: half the tuning cost)
    # λ grid of the rule. It reaches 32: the retrained organism (which knows its facts with and without the portrait)
    # needs λ = 16 before the erasekit gate moves forget cloze on tuning data (100 % up to λ = 4, 35 % at 16).
    lambda_grid: tuple = (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 8.0, 16.0, 32.0)
    max_retain_drop: float = 0.05             # the λ rule's retain budget (0-1 scale)
    max_new_tokens: int = 32
    # the paper's gate, as the authors' LLaVA script sets it
    paper_gamma: float = 0.1
    paper_null_space: float = 0.3
    # PGD (notebook 03's settings, so its cache is reused)
    eps: float = 16 / 255
    pgd_alpha: float = 1 / 255
    pgd_steps: int = 100
    n_images: int = 4
    k: int = 8
    # the direction's prompt pairs: all (None), behaviour-filtered as the authors do (False on an untrained model)
    n_pairs: int | None = None
    direction_filter: bool = True
    # erasekit's gate pushes along "refusal_contrast" (refused harmful − answered harmless); "multimodal" gives it the
    # paper's Eq. 7 direction (the first round's choice). On the organism Eq. 7 / Eq. 3 pushes turn answers wrong but
    # never into refusals; the contrast refuses (README, "Two gates").
    default_direction: str = "refusal_contrast"


@dataclasses.dataclass
class GateSetup:
    """The shared steering set-up: direction, both steerers, their λ per task and the λ-rule tables."""

    session: Session
    config: GateConfig
    direction: Any          # the paper's multimodal direction (Eq. 7)
    directions: dict        # the direction each gate pushes along: {"paper": Eq. 7, "default": erasekit's}
    steerers: dict
    strengths: dict
    tuning: dict
    reads: dict

    def steerer(self, gate: str, forget_pct: int | None = None):
        """The fitted steerer of ``gate`` for ``forget_pct`` (its H_f is that split's forget questions)."""
        pct = self.config.forget_pct if forget_pct is None else forget_pct
        if (gate, pct) not in self.steerers:
            self.steerers[(gate, pct)] = _fit(self.session, self.config, self.directions[gate], gate, pct)
        return self.steerers[(gate, pct)]

    def eraser(self, gate: str, forget_pct: int | None = None, strength: float = 1.0) -> Eraser:
        """The fitted ``gate`` as the front door returns it (:class:`erasekit.Eraser`, at ``strength``)."""
        return Eraser(self.steerer(gate, forget_pct), strength, self.reads[gate])

    def steering(self, gate: str, forget_pct: int | None = None, strengths: Any = None) -> TaskSteering:
        """A :class:`erasekit.strengths.TaskSteering` for ``gate`` ("paper" / "default") with its chosen λ per
        task: the eraser's hooks (:meth:`erasekit.Eraser.context`) at each task's λ."""
        return TaskSteering.from_eraser(self.eraser(gate, forget_pct),
                                        self.strengths[gate] if strengths is None else strengths)


def _fit(session: Session, cfg: GateConfig, direction, gate: str, pct: int):
    if gate == "paper":
        if (cfg.paper_gamma, cfg.paper_null_space) == (PAPER_GATE["gamma"], PAPER_GATE["null_space"]):
            return pl.paper_steerer(session, direction, pct, fit_modes=cfg.fit_modes, progress=False)
        acts = pl.forget_retain_activations(session, pct, modes=cfg.fit_modes, progress=False)
        return pl.input_aware_steerer(session, direction, acts, gamma=cfg.paper_gamma, null_space=cfg.paper_null_space)
    if gate == "default":
        return pl.default_steerer(session, direction, pct, fit_modes=cfg.fit_modes, progress=False)
    raise ValueError(f"gate must be one of {sorted(GATE_NAMES)}, got {gate!r}")


def gate_setup(session: Session, config: GateConfig | None = None, gates: Sequence[str] = ("paper", "default"),
               progress: bool = False) -> GateSetup:
    """Direction, both steerers at ``config.forget_pct`` and λ per task for each (cached steps)."""
    cfg = config or GateConfig()
    adv = pl.adversarial_images(session, eps=cfg.eps, alpha=cfg.pgd_alpha, steps=cfg.pgd_steps, n_images=cfg.n_images,
                                k=cfg.k, progress=progress)
    direction = pl.multimodal_direction(
        session, adv, n_pairs=cfg.n_pairs, filter=cfg.direction_filter, progress=progress
    )
    if cfg.default_direction == "refusal_contrast":
        ours = pl.refusal_contrast_direction(session, n_images=cfg.n_images, filter=cfg.direction_filter,
                                             progress=progress)
    elif cfg.default_direction == "multimodal":
        ours = direction
    else:
        raise ValueError(f"default_direction must be 'refusal_contrast' or 'multimodal', got {cfg.default_direction!r}")
    setup = GateSetup(session, cfg, direction, {"paper": direction, "default": ours}, {}, {}, {},
                      {"paper": "steered", "default": "frozen"})
    for gate in gates:
        strengths, table = runs.choose_strengths(
            session, lambda lam, gate=gate: TaskSteering.from_eraser(setup.eraser(gate), lam),
            cfg.lambda_grid, forget_pct=cfg.forget_pct, max_retain_drop=cfg.max_retain_drop,
            modes=cfg.tune_modes, max_new_tokens=cfg.max_new_tokens, progress=progress)
        setup.strengths[gate], setup.tuning[gate] = strengths, table
    return setup


def score_summary(frame: pd.DataFrame) -> dict:
    """``{mode: {task: {split: score}}}``: accuracy in percent, ROUGE-L on 0-1 (the JSON record's shape),
    ``recall``: the generation's key-value recall in percent (:func:`erasekit.tables.results_table`), and
    ``refused`` / ``wrong``: the share of generation answers that are refusals / confident wrong answers."""
    out: dict = {}
    for (mode, task, split), v in frame.groupby(["mode", "task", "split"])["score"].mean().items():
        out.setdefault(mode, {}).setdefault(task, {})[split] = round(float(v) * (1 if task == "generation" else 100),
                                                                      3 if task == "generation" else 2)
    gen = frame[frame["task"] == "generation"]
    for (mode, split), v in gen.groupby(["mode", "split"])["correct"].mean().items():
        out.setdefault(mode, {}).setdefault("recall", {})[split] = round(float(v) * 100, 2)
    # how the generation answers fail: refusals vs confident wrong answers (erasekit.scoring.categorize)
    for cat, key in (("refusal", "refused"), ("wrong", "wrong")) if "category" in gen else ():
        for (mode, split), v in (gen["category"] == cat).groupby([gen["mode"], gen["split"]]).mean().items():
            out.setdefault(mode, {}).setdefault(key, {})[split] = round(float(v) * 100, 2)
    return out


def gate_selectivity(session: Session, setup: GateSetup | None = None, forget_pct: int | None = None,
                     retain_sample: int | None = None, celeb_sample: int | None = None) -> dict:
    """Vanilla, the paper's gate and erasekit's default on the held-out profiles (the JSON record).

    ``{"<gate>": {"params": {...}, "QA": {task: {split: score}}, "VQA": {...}}, "vanilla": {...},
    "ret_disjoint_from_fit": bool, ...}``; accuracies in percent, ROUGE-L 0-1.
    """
    setup = setup or gate_setup(session)
    pct = setup.config.forget_pct if forget_pct is None else forget_pct
    kw = dict(retain_sample=retain_sample, celeb_sample=celeb_sample, max_new_tokens=setup.config.max_new_tokens,
              progress=False)
    record: dict = {"forget_pct": pct, "vanilla": score_summary(runs.evaluate_steering(session, pct, None, **kw))}
    scored = pl.group_rows(session, pct, ("Ret", "Cele"), "eval", retain_sample, celeb_sample)
    scored_ids = {r["ID"] for rs in scored.values() for r in rs}
    tune_ids = {r["ID"] for r in runs.tuning_rows(session, pct)["Ret"]}
    fit_rows = pl.group_rows(session, pct, ("Ret", "Cele"), "fit")
    fit_ids = {r["ID"] for rs in fit_rows.values() for r in rs}
    disjoint = not scored_ids & tune_ids and not scored_ids & fit_ids
    for gate in setup.strengths:
        st = setup.steerer(gate, pct)
        frame = runs.evaluate_steering(session, pct, setup.steering(gate, pct), method=GATE_NAMES[gate], **kw)
        disjoint = disjoint and not scored_ids & set(st.meta.get("retain_ids", fit_ids))
        params = {"gate": st.meta.get("gate"), "direction": setup.directions[gate].meta.get("kind"),
                  "layers": st.layers, "read": setup.reads[gate],
                  "strengths": setup.strengths[gate], "gamma": st.meta.get("gamma"),
                  "gamma_scale": st.meta.get("gamma_scale")}
        if gate == "paper":
            params["null_space"] = st.meta.get("null_space")
        else:
            sel = st.meta.get("selection", {})
            params.update(alpha=st.meta.get("alpha"), floors=st.floors, selection_rule=sel.get("rule"),
                          # the held-out gate AUC per gamma and layer the rule chose from (why these layers)
                          layer_auc=sel.get("auc"))
        record[gate] = {"name": GATE_NAMES[gate], "params": params, **score_summary(frame)}
    if "paper" in setup.strengths:  # the paper's gate at the authors' λ, for the record (not chosen by a rule)
        frame = runs.evaluate_steering(session, pct, setup.steering("paper", pct, strengths=dict(PAPER_STRENGTHS)),
                                     method="MLLMEraser (paper gate, authors' λ)", **kw)
        record["paper_authors_lambda"] = {"name": "MLLMEraser (paper gate, authors' λ)",
                                          "params": {**record["paper"]["params"],
                                                     "strengths": dict(PAPER_STRENGTHS)},
                                          **score_summary(frame)}
    record["ret_disjoint_from_fit"] = bool(disjoint)
    record["n_scored"] = {g: len(rs) for g, rs in scored.items()}
    return record


def write_json(record: dict, path: str | os.PathLike) -> None:
    """Write ``record`` as indented JSON, atomically (:func:`erasekit.files.atomic_write`)."""
    atomic_write(path, json.dumps(record, indent=1) + "\n")


def gate_variant(setup: GateSetup, *, read: str | None = None, floor: bool = True, layers: Sequence[int] | None = None,
                 gamma: float | None = None, gamma_scale: str = "relative", alpha: float | None = None,
                 direction: Any = None, forget_pct: int | None = None) -> TaskSteering:
    """erasekit's default steering with one thing changed (notebook 07's gate-family ablations).

    Unchanged arguments keep the default's choice: its γ, layers, α, floors (refitted on the same tune questions
    when the map changes), frozen reading and λ per task.
    """
    pct = setup.config.forget_pct if forget_pct is None else forget_pct
    base = setup.steerer("default", pct)
    sel = base.meta["selection"]
    acts = pl.forget_retain_activations(setup.session, pct, modes=setup.config.fit_modes, progress=False)
    st = pl.input_aware_steerer(setup.session, setup.directions["default"] if direction is None else direction, acts,
                         gamma=sel["gamma"] if gamma is None else gamma, gate="contrastive", gamma_scale=gamma_scale,
                         alpha=base.meta["alpha"] if alpha is None else alpha,
                         layers=sel["layers"] if layers is None else list(layers))
    if floor:
        tune = pl.query_activations(setup.session, pct, ("Ret",), modes=setup.config.fit_modes, role="tune",
                                    progress=False)["Ret"]
        st = st.with_floors(tune, base.meta.get("floor_quantile", 0.9))
    return TaskSteering(st, strengths=setup.strengths["default"], read=setup.reads["default"] if read is None else read)
