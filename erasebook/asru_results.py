"""ASRU on a session (the organism by default), scored like every other method, and the record
``data/results/asru.json`` (``erasekit asru``; notebook 08).

Data (held out as everywhere, :mod:`erasekit.heldout`):

* forget queries: the forget split's generation and cloze questions (``train_modes``; the organism's QA questions:
  it knows people by name, not by face -- README);
* retained supervision: ``retain_fraction`` (10 %) of the retain split's size, taken from the partition's ``fit``
  retain profiles, plus the same fraction of the celebrities from its ``fit`` celebrities -- never a scored
  (``eval``) or tuning profile; their ground truth is the retain-side reward's answer key;
* unlabelled retain-side queries (``teacher_fraction``, 55 %): the next ``fit`` profiles, without ground truth;
  stage 1 answers them; its non-refusals are distilled in the warm start (:func:`erasekit.asru.stage1_targets`) and
  are retain prompts of the RL stage, half of the people in the RL stage only (``ASRUConfig.rl_only_share``). For
  the warm start alone 30 % and 55 % did the same (tune-retain refusal 3.8 %, vanilla 0 %; 31.2 % without them;
  tune profiles only, never scored; :func:`warm_start_probe`, ``data/results/asru_warm_start.json``); 55 % is what
  lets half of them be kept for the RL stage, which the whole of ASRU needs (:class:`erasekit.asru.ASRUConfig`);
* scored: the ``eval`` profiles (Ret, Cele) and the forget split's Fgt / Test, by :func:`erasekit.evaluate.evaluate`
  with the settings of notebook 05, so vanilla, both gates and the baselines are cache hits.

:func:`method_scores` turns one method's evaluation frame into the record's scores: MLLMU-Bench scores per mode,
task and split (:func:`erasebook.recipes.score_summary`), the refusal boundary and generation quality per split
(:func:`erasekit.response_quality.quality_table`, text questions, generation + cloze, with fluency NLL under the
vanilla model).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from erasekit.asru import ASRUConfig, queries_from_items, train_asru
from erasekit.baselines.data import answer_prefix
from erasekit.cache_keys import cache_key
from erasekit.evaluate import TASKS, build_items, evaluate
from erasekit.files import atomic_write
from erasekit.models import adapter_for
from erasekit.response_quality import fluency_nll, quality_table
from erasekit.strengths import PAPER_STRENGTHS, TaskSteering

from .baseline_configs import organism_config
from .cache import VERSION, cache_path, cached_frame, cached_weights
from .pipeline import group_rows
from .recipes import GATE_NAMES, GateSetup, score_summary
from .session import Session

__all__ = ["describe_warm_start", "BACKEND_SETTINGS", "backends_frame", "paired_difference", "describe_backends",
           "backends_summary", "TRAIN", "ASRUData",
           "asru_queries", "stage1_strength", "asru_stage1", "asru_model", "asru_key",
           "warm_start_probe", "run_asru", "with_fluency", "method_scores", "asru_record", "ASRU_NAME", "PAPER_AUTHORS",
           "boundary_frame", "probe_frame", "PROBE_RL_KEYS", "cost_frame", "response_examples", "plot_reward_curve",
           "describe_asru", "contextual_examples"]

ASRU_NAME = "ASRU (steering + GRPO)"
# The recorded runs' data: 10 % labelled supervision (the issue's "small amount"), and unlabelled fit profiles that
# stage 1 answers for the warm start (see asru_queries; why: chapter 08).
TRAIN = {"retain_fraction": 0.1, "teacher_fraction": 0.55}
PAPER_AUTHORS = "MLLMEraser (paper gate, authors' λ)"


@dataclasses.dataclass
class ASRUData:
    """ASRU's training data at one forget %: ``forget`` queries, labelled ``retain`` supervision, ``unlabelled``
    retain-side queries (stage 1 answers them for the warm start) and ``ids``, the profile IDs of each part."""

    forget: list
    retain: list
    unlabelled: list
    ids: dict


def asru_queries(session: Session, forget_pct: int, retain_fraction: float = 0.1, teacher_fraction: float = 0.0,
                 train_modes: Sequence[str] = ("QA",), tasks: Sequence[str] = ("generation", "cloze")) -> ASRUData:
    """See the module docstring. ``teacher_fraction``: unlabelled profiles, as a fraction of the retain split's size
    (and of the celebrities, capped by the fit celebrities left after the supervision ones: 25 of 28 on the
    organism at 55 %), taken from the partition's ``fit`` profiles after the supervision ones; too few fit retain
    profiles for the supervision and unlabelled ones, or fit celebrities for the supervision, is an error."""
    if not 0 < retain_fraction <= 1:
        raise ValueError(f"retain_fraction must be in (0, 1], got {retain_fraction}")
    if not 0 <= teacher_fraction <= 1:
        raise ValueError(f"teacher_fraction must be in [0, 1], got {teacher_fraction}")
    fgt_rows = session.source.split(f"forget_{forget_pct}")
    fit = group_rows(session, forget_pct, ("Ret", "Cele"), "fit")
    size_r = len(session.source.split(f"retain_{100 - forget_pct}"))
    size_c = len(session.source.split("Retain_Set"))
    n_ret, n_cel = math.ceil(retain_fraction * size_r), math.ceil(retain_fraction * size_c)
    t_ret, t_cel = math.ceil(teacher_fraction * size_r), math.ceil(teacher_fraction * size_c)
    for g, n, t in (("Ret", n_ret, t_ret), ("Cele", n_cel, 0)):
        if n + t > len(fit[g]):
            raise ValueError(f"{n} supervision + {t} unlabelled {g} profiles asked, the partition has "
                             f"{len(fit[g])} fit {g} profiles: lower retain_fraction / teacher_fraction")
    t_cel = min(t_cel, len(fit["Cele"]) - n_cel)  # the few fit celebrities cap their unlabelled share
    sup = fit["Ret"][:n_ret] + fit["Cele"][:n_cel]
    tea = fit["Ret"][n_ret:n_ret + t_ret] + fit["Cele"][n_cel:n_cel + t_cel]
    names = {r["ID"]: r.get("name") for r in fgt_rows + sup + tea}
    items = lambda rows: build_items({"Ret": rows}, modes=train_modes, tasks=tasks)
    forget = queries_from_items(build_items({"Fgt": fgt_rows}, modes=train_modes, tasks=tasks), True, names)
    retain = queries_from_items(items(sup), False, names)
    unlabelled = queries_from_items(items(tea), False, names, labelled=False) if tea else []
    ids = {"forget": [r["ID"] for r in fgt_rows], "retain": [r["ID"] for r in fit["Ret"][:n_ret]],
           "celebrities": [r["ID"] for r in fit["Cele"][:n_cel]]}
    if tea:
        ids["unlabelled"] = [r["ID"] for r in tea]
    return ASRUData(forget, retain, unlabelled, ids)


def stage1_strength(session: Session, setup: GateSetup, forget_pct: int, grid: Sequence[float] | None = None,
                    max_retain_refusal: float = 0.1, n: int = 40, max_new_tokens: int = 24) -> dict:
    """Stage 1's λ: it must *induce refusals* (ASRU's card), which the MLLMU-Bench λ rule does not aim at.

    The front door's rule (:func:`erasekit.eraser.fit_eraser`) on erasekit's gate: the smallest λ of ``grid``
    (default: the λ rule's grid) with the highest refusal rate on the first ``n`` forget generation questions (the
    forget set is what is unlearned, so it may be used) among those whose refusal rate on ``n`` generation questions of
    the ``tune`` retain profiles stays within ``max_retain_refusal`` of the vanilla model's. Text questions (ASRU's
    training mode). Cached as JSON; returns ``{"chosen": λ, "scores": [[λ, forget, tune], ...], "rule": ...}``.
    """
    from erasekit.generation import generate
    from erasekit.strength_rule import refusal_rate, refusal_strength

    grid = sorted(setup.config.lambda_grid if grid is None else grid)
    forget = build_items({"Fgt": session.source.split(f"forget_{forget_pct}")}, modes=("QA",), tasks=("generation",))[
        :n
    ]
    tune_rows = group_rows(session, forget_pct, ("Ret",), "tune")
    tune = build_items(tune_rows, modes=("QA",), tasks=("generation",))[:n]
    steerer = setup.steerer("default", forget_pct)
    key = cache_key(step="asru_stage1_strength", version=VERSION, model=session.model_key, data=session.data_key,
                    steerer=steerer.meta.get("cache_key", ""), grid=[float(g) for g in grid],
                    max_retain_refusal=max_retain_refusal, forget=[i.prompt for i in forget],
                    tune=[i.prompt for i in tune], max_new_tokens=max_new_tokens)
    path = cache_path("asru", key).with_suffix(".json")
    if path.exists():
        return json.loads(path.read_text())

    def rate(items, lam):
        ctx = None
        if lam is not None:
            ts = TaskSteering(steerer, strengths=float(lam), read=setup.reads["default"])
            ops = ts.operators("generation", session.num_layers)
            ctx = lambda: ts.context(session.adapter, ops)
        answers = generate(session.adapter, [i.prompt for i in items], None, context=ctx,
                           max_new_tokens=max_new_tokens, progress=False)
        return refusal_rate(answers)

    base = rate(tune, None)
    scores = [[float(lam), rate(forget, lam), rate(tune, lam)] for lam in grid]
    out = {**refusal_strength(scores, base, max_retain_refusal), "tune_refusal_vanilla": base}
    atomic_write(path, json.dumps(out, indent=1))
    return out


def _stage1_context(session: Session, stage1: TaskSteering, stage1_task: str | None):
    """``query -> context manager``: stage 1 at the λ of ``stage1_task`` (None: of each query's own task)."""
    ops = {t: stage1.operators(t, session.num_layers) for t in ("generation", "cloze")}
    return lambda q: stage1.context(session.adapter, ops[stage1_task or q.task])


def _train(session: Session, data: ASRUData, stage1: TaskSteering, cfg: ASRUConfig, stage1_task: str | None,
           progress: bool):
    return train_asru(session.adapter, data.forget, data.retain, cfg, unlabelled=data.unlabelled,
                      stage1=_stage1_context(session, stage1, stage1_task), progress=progress)


def asru_stage1(session: Session, setup: GateSetup, forget_pct: int) -> tuple[TaskSteering, dict]:
    """Stage 1 of the recorded runs: erasekit's gate at :func:`stage1_strength`'s λ. Returns (steering, λ choice)."""
    lam1 = stage1_strength(session, setup, forget_pct)
    return setup.steering("default", forget_pct, strengths=lam1["chosen"]), lam1


def trained_asru(session: Session, forget_pct: int, stage1: TaskSteering, cfg: ASRUConfig = ASRUConfig(), *,
                 stage1_task: str | None = "generation", retain_fraction: float | None = None,
                 teacher_fraction: float | None = None, train_modes: Sequence[str] = ("QA",),
                 progress: bool = False) -> tuple[Any, dict]:
    """ASRU trained on :func:`asru_queries` with stage 1 = ``stage1`` (see :func:`run_asru` for ``stage1_task``;
    fractions None: :data:`TRAIN`'s): (adapter, summary: the reward curve, costs and the numbers of queries).
    Trained once per model, config, stage 1 and training data (:func:`erasebook.cache.cached_weights`): chapter 08
    scores it, chapter 09 attacks it."""
    data = asru_queries(session, forget_pct, TRAIN["retain_fraction"] if retain_fraction is None else retain_fraction,
                        TRAIN["teacher_fraction"] if teacher_fraction is None else teacher_fraction, train_modes)
    key = cache_key(step="asru_weights", version=VERSION, model=session.model_key, data=session.data_key,
                    config=cfg.as_record(), stage1=stage1.key(), stage1_task=stage1_task,
                    forget_pct=forget_pct, train_ids=data.ids, train_modes=list(train_modes))

    def train():
        res = _train(session, data, stage1, cfg, stage1_task, progress)
        return adapter_for(res.model, session.adapter.processor), {
            **res.summary(), "n_forget_queries": len(data.forget), "n_retain_queries": len(data.retain),
            "n_unlabelled_queries": len(data.unlabelled),
            "supervision_profiles": {k: len(v) for k, v in data.ids.items() if k != "forget"},
            "config": cfg.as_record(weights=False)}

    return cached_weights("asru_weights", key, train, session.adapter, session.model_key)


def asru_model(session: Session, setup: GateSetup, forget_pct: int, cfg: ASRUConfig = ASRUConfig(), *,
               progress: bool = False):
    """ASRU's unlearned model as :func:`asru_record` trains it (same stage 1, data and seed): what
    :mod:`erasebook.leakage` attacks."""
    stage1, _ = asru_stage1(session, setup, forget_pct)
    return trained_asru(session, forget_pct, stage1, cfg, progress=progress)[0]


def asru_key(session: Session, setup: GateSetup, forget_pct: int, cfg: ASRUConfig = ASRUConfig()) -> dict:
    """What defines :func:`asru_model`'s model, for caches keyed on it."""
    stage1, _ = asru_stage1(session, setup, forget_pct)
    ids = asru_queries(session, forget_pct, TRAIN["retain_fraction"], TRAIN["teacher_fraction"]).ids
    return {"asru": cfg.as_record(), "stage1": stage1.key(), "forget_pct": forget_pct,
            "data": session.data_key, "train_ids": ids}


# the RL knobs a warm_start_probe setting may set; a GRPO row records the values it ran with
PROBE_RL_KEYS = ("steps", "lr", "beta", "retain_share", "teacher_in_rl", "scale_rewards", "retain_nll",
                 "rl_only_share")


def warm_start_probe(session: Session, setup: GateSetup, forget_pct: int,
                     settings: Sequence[dict], n_tune: int | None = None) -> list[dict]:
    """Where over-refusal comes from: stage 1 + the warm start alone (no GRPO; with ``"grpo": True`` in a setting,
    the whole of ASRU) under each of ``settings`` (dicts of ``retain_fraction``, ``teacher_fraction``,
    ``warm_epochs``, ``warm_targets``, ``seed`` and :data:`PROBE_RL_KEYS`; a GRPO row records every RL knob's
    value; a warm start alone reads ``rl_only_share`` too, as :func:`erasekit.asru.train_asru` splits its
    targets), read on the training forget generation questions and on the ``tune`` retain profiles' generation
    questions (never scored; text).

    Returns one dict per setting: the setting, the numbers of targets, the greedy refusal and contextual-refusal
    rates on the forget questions, the refusal rate on tune-retain questions (and the vanilla model's), seconds."""
    import time

    from erasekit.asru import distil_stage1
    from erasekit.generation import generate
    from erasekit.response_quality import is_contextual_refusal
    from erasekit.strength_rule import refusal_rate as rate

    stage1, _ = asru_stage1(session, setup, forget_pct)
    tune = build_items(group_rows(session, forget_pct, ("Ret",), "tune"), modes=("QA",), tasks=("generation",))
    tune = tune[:n_tune] if n_tune else tune
    base = rate(generate(session.adapter, [i.prompt for i in tune], None, max_new_tokens=32))
    out = []
    for st in settings:
        t0 = time.perf_counter()
        cfg = dataclasses.replace(ASRUConfig(), **{k: st[k] for k in ("warm_epochs", "warm_targets", "seed",
                                                                     "backend") + PROBE_RL_KEYS if k in st})
        data = asru_queries(session, forget_pct, st.get("retain_fraction", TRAIN["retain_fraction"]),
                            st.get("teacher_fraction", TRAIN["teacher_fraction"]))
        if st.get("grpo"):  # the whole of ASRU (stage 1, warm start, GRPO), as run_asru trains it
            res = _train(session, data, stage1, cfg, "generation", False)
            model, n_forget_targets, n_teacher_targets = res.model, res.n_warm_targets, res.n_teacher_targets
        else:
            _, pairs, model, _ = distil_stage1(session.adapter, data.forget + data.retain + data.unlabelled,
                                               _stage1_context(session, stage1, "generation"),
                                               dataclasses.replace(cfg, rl_only_share=st.get("rl_only_share", 0.0)))
            n_forget_targets = sum(q.is_forget for q, _ in pairs)
            n_teacher_targets = sum(q.gold is None for q, _ in pairs)
        ad = adapter_for(model, session.adapter.processor)
        fq = [q for q in data.forget if q.task == "generation"]
        fo = generate(ad, [q.prompt for q in fq], None, max_new_tokens=32)
        to = generate(ad, [i.prompt for i in tune], None, max_new_tokens=32)
        rl = {k: getattr(cfg, k) for k in PROBE_RL_KEYS} if st.get("grpo") else {}
        out.append({**st, **rl, "supervision_profiles": len(data.ids["retain"]) + len(data.ids["celebrities"]),
                    "unlabelled_profiles": len(data.ids.get("unlabelled", [])),
                    "forget_targets": n_forget_targets, "teacher_targets": n_teacher_targets,
                    "forget_refusal": round(100 * rate(fo), 1),
                    "forget_contextual": round(100 * sum(is_contextual_refusal(o, q.question, q.gold, q.subject)
                                                         for q, o in zip(fq, fo)) / len(fq), 1),
                    "tune_retain_refusal": round(100 * rate(to), 1),
                    "tune_retain_refusal_vanilla": round(100 * base, 1),
                    "n_forget": len(fq), "n_tune": len(tune), "seconds": round(time.perf_counter() - t0, 1)})
    return out


def run_asru(session: Session, forget_pct: int, stage1: TaskSteering, cfg: ASRUConfig = ASRUConfig(), *,
             stage1_task: str | None = "generation", retain_fraction: float = TRAIN["retain_fraction"],
             teacher_fraction: float = TRAIN["teacher_fraction"], train_modes: Sequence[str] = ("QA",),
             modes: Sequence[str] = ("VQA", "QA"),
             tasks: Sequence[str] = TASKS, max_new_tokens: int = 32, batch_size: int = 16, progress: bool = False,
             refresh: bool = False) -> tuple[pd.DataFrame, dict]:
    """Train ASRU (stage 1 = ``stage1``) and score it on the held-out profiles.

    ``stage1_task``: stage 1 answers every forget query with ``stage1``'s λ of this task (default "generation",
    the free-text task: what is distilled is a refusal, and a cloze-task λ tuned for a one-word score can leave a
    non-refusal such as "I"); None: each query's own task's λ.

    Returns (evaluation frame, summary with the reward curve, time and memory); both cached together, keyed by the
    model, the config, the stage-1 steering, the training and the scored profiles."""
    data = asru_queries(session, forget_pct, retain_fraction, teacher_fraction, train_modes)
    ids = data.ids
    eval_rows = group_rows(session, forget_pct, ("Fgt", "Test", "Ret", "Cele"), "eval")
    eval_ids = {g: [r["ID"] for r in rs] for g, rs in eval_rows.items()}
    scored = set(eval_ids["Ret"]) | set(eval_ids["Cele"])
    if scored & (set(ids["retain"]) | set(ids["celebrities"]) | set(ids.get("unlabelled", []))):
        raise RuntimeError("a scored profile is in ASRU's training data")
    key = cache_key(step="asru", version=VERSION, model=session.model_key, data=session.data_key,
                    config=cfg.as_record(), stage1=stage1.key(), stage1_task=stage1_task,
                    forget_pct=forget_pct, train_ids=ids,
                    train_modes=list(train_modes), eval_ids=eval_ids, modes=list(modes), tasks=list(tasks),
                    max_new_tokens=max_new_tokens)
    summary_path = cache_path("asru", key).with_suffix(".json")
    box: dict = {}

    def compute():
        tuned, box["summary"] = trained_asru(session, forget_pct, stage1, cfg, stage1_task=stage1_task,
                                             retain_fraction=retain_fraction, teacher_fraction=teacher_fraction,
                                             train_modes=train_modes, progress=progress)
        return evaluate(tuned, eval_rows, forget_pct, groups=list(eval_rows), modes=modes, tasks=tasks,
                        batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress)

    if refresh or not summary_path.exists():
        frame = cached_frame("asru", key, compute, refresh=True)
        atomic_write(summary_path, json.dumps(box["summary"], indent=1))
    else:
        frame = cached_frame("asru", key, compute)
    frame["method"] = ASRU_NAME
    return frame, json.loads(summary_path.read_text())


def with_fluency(session: Session, frame: pd.DataFrame, tasks: Sequence[str] = ("generation", "cloze"),
                 batch_size: int = 16) -> pd.DataFrame:
    """``frame`` with a ``fluency_nll`` column: each response's mean NLL under the vanilla model (text questions of
    ``tasks``; NaN elsewhere), teacher forced on the evaluation prompt."""
    out = frame.copy()
    out["fluency_nll"] = math.nan
    sel = out.index[(out["mode"] == "QA") & out["task"].isin(list(tasks))]
    if len(sel):
        prefix = answer_prefix(session.adapter)
        nll = fluency_nll(session.adapter, list(out.loc[sel, "prompt"]),
                          [prefix + str(r).strip() for r in out.loc[sel, "response"]], batch_size=batch_size)
        out.loc[sel, "fluency_nll"] = nll
    return out


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 4)
    return v


def method_scores(frame: pd.DataFrame) -> dict:
    """The record's scores of one method (one forget %): ``{"mllmu": {mode: {task: {split: score}}},
    "boundary": {split: {measure: value}}, "boundary_generation": ...}`` (accuracy %, ROUGE-L 0-1; boundary /
    quality on text questions, generation + cloze, and on the generation questions alone -- ASRU's target reads
    appropriate refusal on forget *generation* queries; percentages of responses, fractions for distinct-n /
    repetition / rigid share)."""
    def table(tasks):
        q = quality_table(frame[frame["mode"] == "QA"], by=("split",), tasks=tasks)
        return {row["split"]: {k: _clean(v) for k, v in row.items() if k != "split"} for row in q.to_dict("records")}

    return {"mllmu": score_summary(frame), "boundary": table(("generation", "cloze")),
            "boundary_generation": table(("generation",))}


def asru_record(session: Session, setup: GateSetup, forget_pcts: Sequence[int] = (5, 10, 15),
                cfg: ASRUConfig = ASRUConfig(), *, baselines: Sequence[str] = (), retain_train: int = 40,
                max_new_tokens: int | None = None, progress: bool = False) -> tuple[dict, dict, dict]:
    """Vanilla, MLLMEraser (paper gate: the λ rule's and the authors' λ), erasekit's gate, ``baselines`` and ASRU
    at each forget %.

    Returns ``(record, frames, summaries)``: ``record[str(pct)][method] = method_scores(...)`` (+ ``cost`` for
    ASRU and the baselines), ``frames[pct]`` the concatenated evaluation frames with ``fluency_nll``,
    ``summaries[pct]`` ASRU's summary (reward curve, time, memory).
    """
    mnt = setup.config.max_new_tokens if max_new_tokens is None else max_new_tokens
    kw = dict(max_new_tokens=mnt, progress=progress)
    from . import runs

    record: dict = {"config": cfg.as_record(weights=False),
                    "stage1": GATE_NAMES["default"], "max_new_tokens": mnt}
    frames, summaries = {}, {}
    for pct in forget_pcts:
        parts = [runs.evaluate_steering(session, pct, None, **kw)]
        parts += [runs.evaluate_steering(session, pct, setup.steering(g, pct), method=GATE_NAMES[g], **kw)
                  for g in ("paper", "default")]
        # the paper's gate at the authors' λ too: the λ rule picks a near-zero λ for it on the organism (notebook 05)
        parts.append(runs.evaluate_steering(session, pct, setup.steering("paper", pct, strengths=dict(PAPER_STRENGTHS)),
                                            method=PAPER_AUTHORS, **kw))
        costs = {}
        for name in baselines:
            run = runs.run_baseline(session, pct, organism_config(name, progress=progress),
                                    retain_train=retain_train, **kw)
            parts.append(run.frame)
            costs[name] = run.summary
        stage1, lam1 = asru_stage1(session, setup, pct)
        frame, summary = run_asru(session, pct, stage1, cfg, max_new_tokens=mnt, progress=progress)
        parts.append(frame)
        summaries[pct] = summary
        full = with_fluency(session, pd.concat(parts, ignore_index=True))
        frames[pct] = full
        rec = {}
        for method, g in full.groupby("method", sort=False):
            rec[method] = method_scores(g)
            if method in costs:
                rec[method]["cost"] = {k: costs[method][k] for k in costs[method] if "second" in k or "mib" in k
                                       or "memory" in k or "steps" in k}
        rec[ASRU_NAME]["cost"] = {"seconds": summary["seconds"], "peak_mib": summary["peak_mib"],
                                  "memory_kind": summary["memory_kind"]}
        rec[ASRU_NAME]["reward_curve"] = [{k: _clean(v) for k, v in c.items()} for c in summary["curve"]]
        rec[ASRU_NAME]["stage1_strength"] = lam1
        record[str(pct)] = rec
    return record, frames, summaries


# ----------------------------------------------------------------------------------------------------------------
# what chapter 08 shows (tables, examples, the reward curve, sentences read from the record)

_BOUNDARY_COLS = {"appropriate_refusal": "appropriate refusal %", "over_refusal": "over-refusal %",
                  "refusal": "any refusal %", "hallucination": "hallucination %", "degenerate": "degenerate %",
                  "rigid_refusal_share": "rigid share", "distinct_2": "distinct-2", "repetition": "repetition",
                  "fluency_nll": "fluency NLL (vanilla)"}


def boundary_frame(record: dict, pct: int, splits: Sequence[str] = ("Fgt", "Test", "Ret", "Cele")) -> pd.DataFrame:
    """One row per (method, split) of the record at ``pct``: the refusal boundary, leaks (the split's cloze
    accuracy on text questions) and generation quality (text questions, generation + cloze)."""
    rows = []
    for method, s in record[str(pct)].items():
        for split in splits:
            b = s["boundary"].get(split)
            if b is None:
                continue
            cloze = s["mllmu"].get("QA", {}).get("cloze", {}).get(split)
            row = {"method": method, "split": split, "cloze % (QA)": cloze}
            row.update({label: b.get(k) for k, label in _BOUNDARY_COLS.items()})
            rows.append(row)
    return pd.DataFrame(rows).set_index(["method", "split"])


_MEMORY_HEADER = {"rss_peak_increase": "RSS increase MiB (CPU)", "cuda_max_allocated": "peak CUDA memory MiB"}


def cost_frame(record: dict) -> pd.DataFrame:
    """Training time and memory of ASRU and the baselines at each forget % (steering: no training). The memory
    column says what was measured (:attr:`erasekit.measure.Measurement.memory_kind`) in its header when every row
    measured the same kind, else in a column of its own. On the CPU it is the RSS increase over the training's
    start: 0 when the training fit in memory the process already held, not a footprint of 0."""
    rows = []
    for pct, methods in record.items():
        if not str(pct).isdigit():
            continue
        for method, s in methods.items():
            c = s.get("cost")
            if not c:
                continue
            secs = c["seconds"]["total"] if isinstance(c.get("seconds"), dict) else c.get("seconds")
            mib = c.get("peak_mib", c.get("peak_memory_mb"))
            rows.append({"forget %": int(pct), "method": method, "training s": secs, "memory MiB": mib,
                         "memory": c.get("memory_kind")})
    out = pd.DataFrame(rows, columns=["forget %", "method", "training s", "memory MiB", "memory"])
    kinds = set(out["memory"].dropna())
    if len(kinds) == 1:
        kind = kinds.pop()
        out = out.drop(columns="memory").rename(columns={"memory MiB": _MEMORY_HEADER.get(kind, f"{kind} MiB")})
    return out


def response_examples(frame: pd.DataFrame, n: int = 2, task: str = "generation", mode: str = "QA",
                      splits: Sequence[str] = ("Fgt", "Test", "Ret", "Cele"),
                      methods: Sequence[str] | None = None) -> pd.DataFrame:
    """The first ``n`` questions of ``task`` per split, one column per method (its response), plus the target."""
    df = frame[(frame["task"] == task) & (frame["mode"] == mode)]
    methods = list(methods or df["method"].unique())
    rows = []
    for split in splits:
        qs = df[df["split"] == split].drop_duplicates("prompt")["prompt"].tolist()[:n]
        for p in qs:
            sub = df[(df["split"] == split) & (df["prompt"] == p)]
            row = {"split": split, "question": sub["question"].iloc[0], "ground truth": sub["target"].iloc[0]}
            for m in methods:
                r = sub[sub["method"] == m]["response"]
                row[m] = str(r.iloc[0]).strip() if len(r) else None
            rows.append(row)
    return pd.DataFrame(rows)


def plot_reward_curve(curves: dict, ax: Any = None, keys: Sequence[str] = ("reward_forget", "reward_retain")):
    """Mean reward per GRPO step (forget and retain side) for ``{label: curve}``; returns the figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.2), layout="constrained")
    else:
        fig = ax.figure
    styles = {"reward_forget": "-", "reward_retain": "--", "reward": ":"}
    for i, (label, curve) in enumerate(curves.items()):
        steps = [c["step"] for c in curve]
        for k in keys:
            ax.plot(steps, [c[k] for c in curve], styles.get(k, "-"), color=f"C{i}",
                    label=f"{label}: {k.replace('reward_', '')}")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean reward of the sampled responses")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # never over the curves
    ax.grid(alpha=0.3)
    return fig


_PROBE_NAMES = {"steps": "steps", "lr": "lr", "beta": "β", "retain_share": "retain share",
                "teacher_in_rl": "unlabelled in RL", "scale_rewards": "std-scaled advantages",
                "retain_nll": "retain NLL", "rl_only_share": "RL-only unlabelled"}


def probe_frame(probe: dict) -> pd.DataFrame:
    """The table of ``scripts/asru_warm_start.py``'s record: one row per setting; a GRPO row's RL knobs are written
    as their differences from the record's ``base`` (the setting every GRPO row starts from)."""
    if "base" not in probe or any(k not in r for r in probe["rows"] if r.get("grpo") for k in PROBE_RL_KEYS):
        raise ValueError("the probe record lacks its 'base' or a GRPO row's RL knobs: regenerate it with "
                         "scripts/asru_warm_start.py")
    base, rows = probe["base"], []
    for r in probe["rows"]:
        diff = [f"{_PROBE_NAMES[k]} {r[k]:g}" if isinstance(r[k], float) else f"{_PROBE_NAMES[k]} {r[k]}"
                for k in PROBE_RL_KEYS if r.get("grpo") and r[k] != base.get(k)]
        diff += [f"seed {r['seed']}"] if r.get("seed", 0) != base.get("seed", 0) else []
        held = f"; {r['rl_only_share']:g} of the unlabelled people held out" if r.get("rl_only_share") else ""
        rows.append({"GRPO": bool(r.get("grpo")), "warm start (targets, epochs)": f"{r['warm_targets']}, "
                     f"{r['warm_epochs']}", "labelled profiles": r["supervision_profiles"],
                     "unlabelled profiles": r["unlabelled_profiles"],
                     "RL setting": ("; ".join(diff) or "base") if r.get("grpo") else f"no RL{held}",
                     "forget refusal %": r["forget_refusal"], "forget contextual %": r["forget_contextual"],
                     "tune-retain refusal %": r["tune_retain_refusal"]})
    return pd.DataFrame(rows)


def _probe_rows(probe: dict, **want) -> list[dict]:
    """The probe record's rows whose settings equal ``want`` (a GRPO row's unset RL knobs read as the record's
    ``base``; ``grpo`` False and ``seed`` 0 where absent)."""
    base = probe["base"]
    out = []
    for r in probe["rows"]:
        def get(k, r=r):
            if k == "grpo":
                return bool(r.get("grpo"))
            if k == "seed":
                return r.get("seed", 0)
            return r.get(k, base.get(k) if r.get("grpo") else None)
        if all(get(k) == v for k, v in want.items()):
            out.append(r)
    return out


def describe_warm_start(probe: dict) -> str:
    """What ``scripts/asru_warm_start.py``'s record says, every number read from it: the warm start's targets and
    negatives, then GRPO with every unlabelled person in the warm start, half of them held out, a stronger KL, and
    the seeds. A setting the record lacks is left out of the text."""
    base = probe["base"]

    def one(key, **want):
        rows = _probe_rows(probe, **want)
        return rows[0][key] if rows else None

    def pct(v):
        return "–" if v is None else f"{v:.1f} %"

    parts = []
    verbatim = one("forget_contextual", warm_targets="stage1")
    short = one("forget_contextual", warm_targets="contextual", warm_epochs=3, teacher_fraction=0.0, grpo=False)
    long_ = _probe_rows(probe, warm_targets="contextual", warm_epochs=base["warm_epochs"], teacher_fraction=0.0,
                        retain_fraction=base["retain_fraction"], grpo=False)
    if verbatim is not None and long_:
        parts.append(
            f"Read it top to bottom: verbatim stage-1 targets give {pct(verbatim)} contextual refusals; a clause "
            f"naming the person gives the policy one to start from ({pct(short)} after {3} warm-start epochs, "
            f"{pct(long_[0]['forget_contextual'])} after {base['warm_epochs']}); and with only the labelled "
            f"supervision people as negatives the distilled model refuses {pct(long_[0]['tune_retain_refusal'])} "
            "of *other* people's questions (it learns \"refuse people\", not \"refuse these people\").")
    more = sorted((r["retain_fraction"], r["tune_retain_refusal"]) for r in _probe_rows(
        probe, warm_targets="contextual", warm_epochs=base["warm_epochs"], teacher_fraction=0.0, grpo=False)
        if r["retain_fraction"] != base["retain_fraction"])
    teach = sorted((r["teacher_fraction"], r["tune_retain_refusal"]) for r in _probe_rows(
        probe, warm_targets="contextual", warm_epochs=base["warm_epochs"], grpo=False,
        retain_fraction=base["retain_fraction"], rl_only_share=None) if r["teacher_fraction"] > 0)
    if more or teach:
        parts.append("More labelled people shrink that (" + ", ".join(
            f"{f:g} of the retain split labelled: {pct(v)}" for f, v in more) + "); so do stage 1's own answers on "
            "unlabelled people, without any ground truth (" + ", ".join(
                f"{f:g} of it unlabelled: {pct(v)}" for f, v in teach) + ").")
    full = [r["tune_retain_refusal"] for r in _probe_rows(probe, grpo=True, rl_only_share=0.0, seed=0)]
    held = one("tune_retain_refusal", grpo=True, rl_only_share=0.5, beta=base["beta"], lr=base["lr"],
               retain_share=base["retain_share"], seed=0)
    strong = [(r["beta"], r["tune_retain_refusal"]) for r in _probe_rows(probe, grpo=True, rl_only_share=0.0, seed=0)
              if r["beta"] > base["beta"] and r["retain_share"] == base["retain_share"]]
    both = _probe_rows(probe, grpo=True, rl_only_share=0.5, seed=0, retain_share=base["retain_share"],
                       lr=base["lr"])
    both = [r for r in both if r["beta"] > base["beta"]]
    if full:
        text = (f"GRPO then left the tune-retain refusal between {min(full):.1f} and {max(full):.1f} % in every "
                f"setting that kept all unlabelled people in the warm start ({len(full)} settings: retain shares, KL "
                "weights, fewer steps, advantages not divided by the group's std, an answer NLL on the retain "
                "targets in each update).")
        if held is not None:
            text += (f" Keeping half of the unlabelled people out of the warm start (RL retain prompts only, stage "
                     f"1's answers as their key) gave {pct(held)}")
            if strong:
                text += ", a stronger KL to the warm-start model alone " + ", ".join(
                    f"{pct(v)} (β {b:g})" for b, v in strong)
            if both:
                text += f", both together {pct(both[0]['tune_retain_refusal'])} (β {both[0]['beta']:g})"
            text += "."
        parts.append(text)
    if both:
        b = both[0]["beta"]
        seeds = {r.get("seed", 0): r["tune_retain_refusal"] for r in _probe_rows(probe, grpo=True, rl_only_share=0.5,
                                                                           beta=b, lr=base["lr"])}
        runner = {r.get("seed", 0): r["tune_retain_refusal"] for r in _probe_rows(
            probe, grpo=True, rl_only_share=0.5, beta=base["beta"], lr=base["lr"], retain_share=base["retain_share"])}
        if len(seeds) > 1:
            mean = sum(seeds.values()) / len(seeds)
            rmean = sum(runner.values()) / max(len(runner), 1)
            parts.append(
                f"The seed rows temper that: over seeds {', '.join(map(str, sorted(seeds)))} the same setting refuses "
                + ", ".join(f"{seeds[k]:.1f}" for k in sorted(seeds)) + f" % of the tune-retain questions (mean "
                f"{mean:.1f} %), its runner-up without the stronger KL " + ", ".join(
                    f"{runner[k]:.1f}" for k in sorted(runner)) + f" % (mean {rmean:.1f} %)"
                + (": the choice holds on average, but seed 0's number is not what to expect."
                   if mean > seeds[0] else "."))
    norl = _probe_rows(probe, grpo=False, rl_only_share=0.5)
    if norl and both:
        parts.append(
            f"And ASRU's own warm start without any RL (half of the unlabelled people held out) refuses "
            f"{pct(norl[0]['tune_retain_refusal'])} of the tune-retain questions with "
            f"{pct(norl[0]['forget_contextual'])} contextual forget refusals, against "
            f"{pct(both[0]['tune_retain_refusal'])} and "
            f"{pct(both[0]['forget_contextual'])} for the whole of ASRU at seed 0: at this KL weight GRPO moves its "
            f"own warm start by {both[0]['forget_contextual'] - norl[0]['forget_contextual']:+.1f} contextual and "
            f"{both[0]['tune_retain_refusal'] - norl[0]['tune_retain_refusal']:+.1f} tune-refusal points.")
    return "\n\n".join(parts)


def _get(record, pct, method, split, key, part="boundary"):
    v = record[str(pct)].get(method, {}).get(part, {}).get(split, {}).get(key)
    return math.nan if v is None else float(v)


def _cloze(record, pct, method, split):
    v = record[str(pct)].get(method, {}).get("mllmu", {}).get("QA", {}).get("cloze", {}).get(split)
    return math.nan if v is None else float(v)


# What ASRU is asked to reach on the organism (describe_asru reads each as met / not met): contextual refusal of
# forget generation questions (%, at least), over-refusal on retain and celebrity questions (%, at most), cloze
# cost on them (points, at most).
ASRU_TARGETS = {"contextual_refusal": 80.0, "over_refusal": 5.0, "cloze_drop": 5.0}


def describe_asru(record: dict, pct: int = 5, vanilla: str = "Vanilla") -> str:
    """Markdown: ASRU's targets (:data:`ASRU_TARGETS`) at ``pct`` read from the record (ASRU vs vanilla and
    MLLMEraser's two gates)."""
    a, p, d = ASRU_NAME, PAPER_AUTHORS, GATE_NAMES["default"]
    tc, to, td = (ASRU_TARGETS[k] for k in ("contextual_refusal", "over_refusal", "cloze_drop"))
    f = lambda v, u="": "n/a" if math.isnan(v) else f"{v:.1f}{u}"  # noqa: E731
    appr, refu = _get(record, pct, a, "Fgt", "appropriate_refusal"), _get(record, pct, a, "Fgt", "refusal")
    if "boundary_generation" not in record[str(pct)].get(a, {}):
        raise ValueError("the record has no 'boundary_generation' (ASRU's target reads forget generation "
                         "questions): regenerate it with `erasekit asru`")
    gen = lambda m, s, k: _get(record, pct, m, s, k, "boundary_generation")  # noqa: E731
    appr_gen, refu_gen = gen(a, "Fgt", "appropriate_refusal"), gen(a, "Fgt", "refusal")
    leak = _cloze(record, pct, a, "Fgt")
    over = {s: _get(record, pct, a, s, "over_refusal") for s in ("Ret", "Cele")}
    over_gen = {s: gen(a, s, "over_refusal") for s in ("Ret", "Cele")}
    drop = {s: _cloze(record, pct, vanilla, s) - _cloze(record, pct, a, s) for s in ("Ret", "Cele")}
    flu = {m: _get(record, pct, m, "Fgt", "fluency_nll") for m in (a, p, d)}
    hal = {m: _get(record, pct, m, "Fgt", "hallucination") for m in (a, p, d)}
    deg = {m: _get(record, pct, m, "Fgt", "degenerate") for m in (a, p, d)}
    rig = {m: _get(record, pct, m, "Fgt", "rigid_refusal_share") for m in (a, d)}
    ok = lambda c: "**met**" if c else "**not met**"  # noqa: E731
    worst_over = max(list(over.values()) + list(over_gen.values()), key=lambda v: math.inf if math.isnan(v) else v)
    lines = [
        f"At {pct} % (text questions, held-out profiles):",
        f"* forget side, the target's measure (forget *generation* questions): ASRU refuses {f(refu_gen, ' %')} of "
        "them, "
        f"{f(appr_gen, ' %')} *contextually* without leaking the answer (target ≥ {tc:.0f} %: {ok(appr_gen >= tc)}). "
        "With "
        f"the cloze questions counted too: {f(refu, ' %')} refused, {f(appr, ' %')} contextually; the forget "
        f"cloze questions still answered correctly (leaks) are {f(leak, ' %')} (vanilla "
        f"{f(_cloze(record, pct, vanilla, 'Fgt'), ' %')}, erasekit's gate {f(_cloze(record, pct, d, 'Fgt'), ' %')}).",
        f"* retain side: over-refusal {f(over['Ret'], ' %')} on Ret and {f(over['Cele'], ' %')} on Cele (generation + "
        f"cloze), {f(over_gen['Ret'], ' %')} / {f(over_gen['Cele'], ' %')} on the generation questions alone (target "
        f"≤ {to:.0f} % on both readings: {ok(worst_over <= to)}); cloze {f(drop['Ret'])} / {f(drop['Cele'])} points "
        f"below vanilla on Ret / Cele (target ≤ {td:.0f}: {ok(max(drop.values()) <= td)}).",
        f"* quality on forget queries (generation + cloze): fluency NLL under the vanilla model {f(flu[a])} for ASRU "
        f"vs {f(flu[d])} (erasekit's gate) and {f(flu[p])} (paper gate, authors' λ) — lower is more fluent; "
        f"hallucination {f(hal[a], ' %')} vs {f(hal[d], ' %')} / {f(hal[p], ' %')}; degenerate {f(deg[a], ' %')} vs "
        f"{f(deg[d], ' %')} / {f(deg[p], ' %')}; share of refusals that are one identical string {f(rig[a])} vs "
        f"{f(rig[d])}.",
    ]
    return "\n".join(lines)


def contextual_examples(frame: pd.DataFrame, method: str = ASRU_NAME, n: int = 8) -> pd.DataFrame:
    """The forget-side text-question responses of ``method`` that count as contextual refusals (the operational
    definition of :mod:`erasekit.response_quality`), first ``n``: what the proxy accepts, to read by eye."""
    from erasekit.response_quality import FORGET_GROUPS, is_contextual_refusal

    df = frame[(frame["method"] == method) & (frame["mode"] == "QA") & frame["split"].isin(FORGET_GROUPS)
               & frame["task"].isin(["generation", "cloze"])]
    keep = [is_contextual_refusal(str(r), str(q), None) and not bool(c)
            for r, q, c in zip(df["response"], df["question"], df["correct"])]
    return df[keep][["split", "task", "question", "response"]].head(n).reset_index(drop=True)


# ----------------------------------------------------------------------------------------------------------------
# Does RL add anything, and does TRL train stage 2 as the loop does (scripts/asru_backends.py)

BACKEND_SETTINGS = ("warm start alone", "+ GRPO (erasekit loop)", "+ GRPO (TRL GRPOTrainer)")
BACKEND_METRICS = {"forget_contextual": "forget contextual refusal %", "forget_refusal": "forget refusal %",
                   "tune_retain_refusal": "tune-retain refusal %", "seconds": "seconds"}


def _t_half(xs: Sequence[float]) -> float | None:
    """Half-width of the two-sided 95 % t-interval of the mean of ``xs`` (the normal's quantile beyond 5 degrees
    of freedom); None for fewer than two values."""
    import statistics

    if len(xs) < 2:
        return None
    t95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57}.get(len(xs) - 1, 1.96)
    return t95 * statistics.stdev(xs) / math.sqrt(len(xs))


def backends_summary(rows: Sequence[dict]) -> dict:
    """Per setting and metric of :data:`BACKEND_METRICS`: mean and 95 % t-interval half-width over seeds."""
    import statistics

    out: dict = {}
    for name in dict.fromkeys(r["setting"] for r in rows):
        rs = [r for r in rows if r["setting"] == name]
        out[name] = {"n_seeds": len(rs)}
        for m in BACKEND_METRICS:
            xs = [float(r[m]) for r in rs]
            half = _t_half(xs)
            out[name][m] = {"mean": round(statistics.fmean(xs), 2), "ci95": None if half is None else round(half, 2)}
    return out


def backends_frame(record: dict) -> pd.DataFrame:
    """``data/results/asru_backends.json`` as a table: one row per setting, mean ± 95 % t-interval over seeds."""
    rows = {}
    for name, s in record["summary"].items():
        rows[name] = {label: (f"{s[m]['mean']:.1f}" + (f" ± {s[m]['ci95']:.1f}" if s[m]["ci95"] is not None else ""))
                      for m, label in BACKEND_METRICS.items()}
        rows[name]["seeds"] = s["n_seeds"]
    return pd.DataFrame(rows).T


def paired_difference(record: dict, a: str, b: str, metric: str) -> dict:
    """``b - a`` per seed (rows paired by seed), its mean and 95 % t-interval: ``{"mean", "lo", "hi", "n"}``."""
    import statistics

    by = {(r["setting"], r["seed"]): float(r[metric]) for r in record["rows"]}
    d = [by[(b, s)] - by[(a, s)] for s in record["seeds"] if (a, s) in by and (b, s) in by]
    if not d:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    half = _t_half(d)
    half = math.inf if half is None else half
    m = statistics.fmean(d)
    return {"mean": m, "lo": m - half, "hi": m + half, "n": len(d)}


def _difference_words(diff: dict, unit: str = "points") -> str:
    if diff["n"] == 0:
        return "not measured"
    if diff["lo"] == diff["hi"]:
        return f"{diff['mean']:+.1f} {unit} in every one of {diff['n']} seeds"
    span = f"{diff['mean']:+.1f} {unit} (95 % CI {diff['lo']:+.1f} to {diff['hi']:+.1f}, {diff['n']} seeds)"
    return span if diff["lo"] > 0 or diff["hi"] < 0 else f"{span}: not distinguishable from seed noise"


def describe_backends(record: dict) -> str:
    """Two sentences by rule: what GRPO adds to its own warm start (paired by seed: contextual refusal of the
    forget questions, refusal of tune-retain people), and how TRL's trainer compares with erasekit's loop."""
    warm, loop, trl = BACKEND_SETTINGS
    c = paired_difference(record, warm, loop, "forget_contextual")
    o = paired_difference(record, warm, loop, "tune_retain_refusal")
    text = (f"GRPO (erasekit's loop) against its own warm start: forget contextual refusal {_difference_words(c)}; "
            f"tune-retain refusal {_difference_words(o)}.")
    tc = paired_difference(record, loop, trl, "forget_contextual")
    to = paired_difference(record, loop, trl, "tune_retain_refusal")
    ts = paired_difference(record, loop, trl, "seconds")
    if tc["n"]:
        s = record["summary"]
        ratio = s[trl]["seconds"]["mean"] / s[loop]["seconds"]["mean"]
        text += (f" TRL's GRPOTrainer against the loop, same warm start, schedule and reward: forget contextual "
                 f"refusal {_difference_words(tc)}; tune-retain refusal {_difference_words(to)}; "
                 f"{ratio:.2f}× the loop's seconds ({_difference_words(ts, 's')}).")
    return text
