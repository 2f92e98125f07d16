"""ASRU on a session (the organism by default), scored like every other method, and the record
``data/results/asru.json`` (``erasekit asru``; notebook 08).

Data (held out as everywhere, :mod:`erasekit.heldout`):

* forget queries: the forget split's generation and cloze questions (``train_modes``; the organism's QA questions:
  it knows people by name, not by face -- README);
* retained supervision: ``retain_fraction`` (10 %) of the retain split's size, taken from the partition's ``fit``
  retain profiles, plus the same fraction of the celebrities from its ``fit`` celebrities -- never a scored
  (``eval``) or tuning profile; their ground truth is the retain-side reward's answer key;
* scored: the ``eval`` profiles (Ret, Cele) and the forget split's Fgt / Test, by :func:`erasekit.evaluate.evaluate`
  with the settings of notebook 05, so vanilla, both gates and the baselines are cache hits.

:func:`method_scores` turns one method's evaluation frame into the record's scores: MLLMU-Bench scores per mode,
task and split (:func:`erasekit.recipes.score_summary`), the refusal boundary and generation quality per split
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

from .asru import ASRUConfig, queries_from_items, train_asru
from .baselines import organism_config
from .baselines.data import _answer_prefix
from .cache import VERSION, cache_path, cached_frame
from .cache_keys import cache_key
from .evaluate import TASKS, build_items, evaluate
from .files import atomic_write
from .models import adapter_for
from .pipeline import group_rows
from .recipes import GATE_NAMES, GateSetup, score_summary
from .response_quality import fluency_nll, quality_table
from .session import Session
from .strengths import TaskSteering

__all__ = ["asru_queries", "run_asru", "with_fluency", "method_scores", "asru_record", "ASRU_NAME"]

ASRU_NAME = "ASRU (steering + GRPO)"


def asru_queries(session: Session, forget_pct: int, retain_fraction: float = 0.1,
                 train_modes: Sequence[str] = ("QA",), tasks: Sequence[str] = ("generation", "cloze")):
    """(forget queries, retain supervision queries, ids): see the module docstring."""
    if not 0 < retain_fraction <= 1:
        raise ValueError(f"retain_fraction must be in (0, 1], got {retain_fraction}")
    fgt_rows = session.source.split(f"forget_{forget_pct}")
    fit = group_rows(session, forget_pct, ("Ret", "Cele"), "fit")
    n_ret = math.ceil(retain_fraction * len(session.source.split(f"retain_{100 - forget_pct}")))
    n_cel = math.ceil(retain_fraction * len(session.source.split("Retain_Set")))
    if n_ret > len(fit["Ret"]):
        raise ValueError(f"{n_ret} supervision profiles asked, the partition has {len(fit['Ret'])} fit profiles")
    sup = fit["Ret"][:n_ret] + fit["Cele"][:n_cel]
    names = {r["ID"]: r.get("name") for r in fgt_rows + sup}
    forget = queries_from_items(build_items({"Fgt": fgt_rows}, modes=train_modes, tasks=tasks), True, names)
    retain = queries_from_items(build_items({"Ret": sup}, modes=train_modes, tasks=tasks), False, names)
    ids = {"forget": [r["ID"] for r in fgt_rows], "retain": [r["ID"] for r in fit["Ret"][:n_ret]],
           "celebrities": [r["ID"] for r in fit["Cele"][:n_cel]]}
    return forget, retain, ids


def run_asru(session: Session, forget_pct: int, stage1: TaskSteering, cfg: ASRUConfig = ASRUConfig(), *,
             retain_fraction: float = 0.1, train_modes: Sequence[str] = ("QA",), modes: Sequence[str] = ("VQA", "QA"),
             tasks: Sequence[str] = TASKS, max_new_tokens: int = 32, batch_size: int = 16, progress: bool = False,
             refresh: bool = False) -> tuple[pd.DataFrame, dict]:
    """Train ASRU (stage 1 = ``stage1``, the steering for each query's task) and score it on the held-out
    profiles. Returns (evaluation frame, summary with the reward curve, time and memory); both cached together,
    keyed by the model, the config, the stage-1 steering, the training and the scored profiles."""
    forget, retain, ids = asru_queries(session, forget_pct, retain_fraction, train_modes)
    eval_rows = group_rows(session, forget_pct, ("Fgt", "Test", "Ret", "Cele"), "eval")
    eval_ids = {g: [r["ID"] for r in rs] for g, rs in eval_rows.items()}
    scored = set(eval_ids["Ret"]) | set(eval_ids["Cele"])
    if scored & (set(ids["retain"]) | set(ids["celebrities"])):
        raise RuntimeError("a scored profile is in ASRU's supervision set")
    key = cache_key(step="asru", version=VERSION, model=session.model_key, data=session.data_key,
                    config=dataclasses.asdict(cfg), stage1=stage1.key(), forget_pct=forget_pct, train_ids=ids,
                    train_modes=list(train_modes), eval_ids=eval_ids, modes=list(modes), tasks=list(tasks),
                    max_new_tokens=max_new_tokens)
    summary_path = cache_path("asru", key).with_suffix(".json")
    box: dict = {}

    def compute():
        ops = {t: stage1.operators(t, session.num_layers) for t in ("generation", "cloze")}
        res = train_asru(session.adapter, forget, retain, cfg,
                         stage1=lambda q: stage1.context(session.adapter, ops[q.task]), progress=progress)
        box["summary"] = {**res.summary(), "n_forget_queries": len(forget), "n_retain_queries": len(retain),
                          "supervision_profiles": {k: len(v) for k, v in ids.items() if k != "forget"},
                          "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "weights"}}
        tuned = adapter_for(res.model, session.adapter.processor)
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
        prefix = _answer_prefix(session.adapter)
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
    "boundary": {split: {measure: value}}}`` (accuracy %, ROUGE-L 0-1; boundary / quality on text questions,
    generation + cloze; percentages of responses, fractions for distinct-n / repetition / rigid share)."""
    q = quality_table(frame[frame["mode"] == "QA"], by=("split",))
    boundary = {row["split"]: {k: _clean(v) for k, v in row.items() if k != "split"} for row in q.to_dict("records")}
    return {"mllmu": score_summary(frame), "boundary": boundary}


def asru_record(session: Session, setup: GateSetup, forget_pcts: Sequence[int] = (5, 10, 15),
                cfg: ASRUConfig = ASRUConfig(), *, baselines: Sequence[str] = (), retain_train: int = 40,
                max_new_tokens: int | None = None, progress: bool = False) -> tuple[dict, dict, dict]:
    """Vanilla, MLLMEraser (paper gate), erasekit's gate, ``baselines`` and ASRU at each forget %.

    Returns ``(record, frames, summaries)``: ``record[str(pct)][method] = method_scores(...)`` (+ ``cost`` for
    ASRU and the baselines), ``frames[pct]`` the concatenated evaluation frames with ``fluency_nll``,
    ``summaries[pct]`` ASRU's summary (reward curve, time, memory).
    """
    mnt = setup.config.max_new_tokens if max_new_tokens is None else max_new_tokens
    kw = dict(max_new_tokens=mnt, progress=progress)
    from . import runs

    record: dict = {"config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "weights"},
                    "stage1": GATE_NAMES["default"], "max_new_tokens": mnt}
    frames, summaries = {}, {}
    for pct in forget_pcts:
        parts = [runs.evaluate_steering(session, pct, None, **kw)]
        parts += [runs.evaluate_steering(session, pct, setup.steering(g, pct), method=GATE_NAMES[g], **kw)
                  for g in ("paper", "default")]
        costs = {}
        for name in baselines:
            run = runs.run_baseline(session, pct, organism_config(name, progress=progress),
                                    retain_train=retain_train, **kw)
            parts.append(run.frame)
            costs[name] = run.summary
        frame, summary = run_asru(session, pct, setup.steering("default", pct), cfg, max_new_tokens=mnt,
                                  progress=progress)
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
        record[str(pct)] = rec
    return record, frames, summaries
