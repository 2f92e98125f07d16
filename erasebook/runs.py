"""Scored runs: every method through the same cached evaluation (paper §4, MLLMU-Bench protocol).

(g) :func:`evaluate_steering` scores the vanilla or a steered model on the held-out ``eval`` profiles;
:func:`results` lays several out as Table 1; :func:`choose_strengths` is the documented rule for λ per task on the
``tune`` profiles; (h) :func:`run_baseline` unlearns with a training baseline (:mod:`erasekit.baselines`) on the
``fit`` profiles and scores it by the same harness; :func:`example_generations` shows answers side by side.
Every evaluation is cached as parquet (:func:`erasebook.cache.cached_frame`) keyed by the exact prompts and images.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from erasekit.baselines import build_examples, unlearn
from erasekit.cache_keys import cache_key, image_digests
from erasekit.evaluate import TASKS, build_items, evaluate
from erasekit.files import atomic_write
from erasekit.generation import generate
from erasekit.scoring import is_refusal
from erasekit.strengths import TaskSteering
from erasekit.tables import results_table

from .cache import VERSION, cache_path, cached_frame, cached_weights
from .pipeline import group_items, group_rows
from .session import Session

__all__ = ["evaluate_steering", "results", "tuning_rows", "choose_strengths", "BaselineRun", "baseline_data",
           "run_baseline", "example_generations"]


def _evaluate_rows(session: Session, rows_by_group: Mapping[str, list], steering: TaskSteering | None, method: str, *,
                   forget_pct: int = 5,
                   modes: Sequence[str] = ("VQA", "QA"), tasks: Sequence[str] = TASKS, batch_size: int = 16,
                   max_new_tokens: int = 50, progress: bool = True, refresh: bool = False,
                   extra_key: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Cached :func:`erasekit.evaluate.evaluate` of ``{group: rows}`` (keyed by the exact prompts and images)."""
    items = {g: build_items({g: rows}, modes=modes, tasks=tasks) for g, rows in rows_by_group.items()}
    spec = {g: ([it.prompt for it in its], image_digests([it.image for it in its])) for g, its in items.items()}
    key = cache_key(step="evaluate", version=VERSION, model=session.model_key, spec=spec,
                    forget_pct=forget_pct, steering=None if steering is None else steering.key(),
                    max_new_tokens=max_new_tokens, modes=list(modes), tasks=list(tasks), **dict(extra_key or {}))
    def compute():
        inter = None if steering is None else steering.interventions(session.adapter)
        return evaluate(
            session.adapter,
            dict(rows_by_group),
            forget_pct,
            groups=list(rows_by_group),
            modes=modes,
            tasks=tasks,
            intervention=inter,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            progress=progress,
        )

    df = cached_frame("evaluate", key, compute, refresh)
    df["method"] = method
    return df


def evaluate_steering(
    session: Session,
    forget_pct: int = 5,
    steering: TaskSteering | None = None,
    method: str | None = None,
    *,
    groups: Sequence[str] = ("Fgt", "Test", "Ret", "Cele"),
    modes: Sequence[str] = ("VQA", "QA"),
    tasks: Sequence[str] = TASKS,
    retain_sample: int | None = None,
    celeb_sample: int | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 50,
    progress: bool = True,
    refresh: bool = False,
) -> pd.DataFrame:
    """(g) :func:`erasekit.evaluate.evaluate` (zero-shot MLLMU-Bench protocol), vanilla or with ``steering``.

    Ret / Cele are the held-out ``eval`` profiles of ``session.partition`` (the first ``retain_sample`` /
    ``celeb_sample`` of them): never in H_r, never in a tuning set.
    Returns one row per (question, image); cached as parquet (the generations are the expensive part).
    ``method`` labels the rows (default "Vanilla" / "Steered").
    """
    method = method or ("Vanilla" if steering is None else "Steered")
    rows = group_rows(session, forget_pct, groups, "eval", retain_sample, celeb_sample)
    return _evaluate_rows(session, rows, steering, method, forget_pct=forget_pct, modes=modes, tasks=tasks,
                          batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress, refresh=refresh)


def results(session: Session, forget_pct: int = 5, steering: TaskSteering | Mapping[str, TaskSteering] | None = None,
            **kwargs) -> pd.DataFrame:
    """Table-1 layout (:func:`erasekit.evaluate.results_table`) of Vanilla and each steering ({name: TaskSteering})."""
    runs = {"Vanilla": None}
    if isinstance(steering, TaskSteering):
        runs["Steered"] = steering
    elif steering is not None:
        runs.update(steering)
    frames = [evaluate_steering(session, forget_pct, s, method=name, **kwargs) for name, s in runs.items()]
    return results_table(pd.concat(frames, ignore_index=True))


def tuning_rows(session: Session, forget_pct: int = 5, n_retain: int | None = None) -> dict[str, list]:
    """Rows for choosing hyperparameters: ``{"Fgt": forget_k rows, "Ret": the tune profiles of session.partition}``.

    The forget set is what the user hands over, so tuning on it is legitimate; the retain side is the partition's
    ``tune`` role (the first ``n_retain`` of it), disjoint from the scored and the H_r profiles.
    """
    return group_rows(session, forget_pct, ("Fgt", "Ret"), "tune", n_retain)


def _task_scores(df: pd.DataFrame) -> pd.DataFrame:
    """Mean score per (split, task): accuracy (0-1) for classification/cloze, ROUGE-L for generation."""
    return df.groupby(["split", "task"])["score"].mean().unstack("task")


def choose_strengths(
    session: Session,
    make: Callable[[float], TaskSteering],
    grid: Sequence[float] = (0.1, 0.25, 0.5, 1.0, 2.0),
    forget_pct: int = 5,
    n_retain: int | None = None,
    max_retain_drop: float = 0.05,
    modes: Sequence[str] = ("VQA", "QA"),
    tasks: Sequence[str] = TASKS,
    batch_size: int = 16,
    max_new_tokens: int = 50,
    progress: bool = True,
) -> tuple[dict[str, float], pd.DataFrame]:
    """The documented rule for λ (per task): forget most while keeping retain utility.

    For each λ in ``grid``, ``make(λ)`` (a :class:`TaskSteering` with that strength for every task) is scored on
    :func:`tuning_rows`. Per task, the chosen λ has the lowest forget score among those whose retain score is at
    most ``max_retain_drop`` (absolute, on the 0-1 scale: 0.05 = 5 accuracy points or 0.05 ROUGE-L) below the
    vanilla model's; if no λ qualifies, the smallest λ in the grid. Ties go to the smaller λ.

    Scores average over ``modes`` (default: image and text questions, as the tables do).

    Returns ``({task: λ}, frame)`` with the forget / retain score of every (λ, task), Vanilla as λ = 0, and
    columns ``within budget`` and ``chosen``.
    """
    rows = tuning_rows(session, forget_pct, n_retain)
    kw = dict(forget_pct=forget_pct, modes=modes, tasks=tasks, batch_size=batch_size, max_new_tokens=max_new_tokens,
              progress=progress, extra_key={"purpose": "tune"})
    recs = []
    for lam in [0.0, *sorted(grid)]:
        steering = None if lam == 0 else make(lam)
        sc = _task_scores(_evaluate_rows(session, rows, steering, f"λ={lam:g}", **kw))
        for t in tasks:
            recs.append(
                {"lambda": lam, "task": t, "forget": float(sc.loc["Fgt", t]), "retain": float(sc.loc["Ret", t])}
            )
    table = pd.DataFrame(recs)
    base = table[table["lambda"] == 0].set_index("task")["retain"]
    table["within budget"] = table["retain"] >= table["task"].map(base) - max_retain_drop
    chosen = {}
    for t in tasks:
        ok = table[(table["task"] == t) & (table["lambda"] > 0) & table["within budget"]]
        chosen[t] = float(ok.sort_values(["forget", "lambda"]).iloc[0]["lambda"]) if len(ok) else float(min(grid))
    table["chosen"] = [chosen[t] == lam for lam, t in zip(table["lambda"], table["task"])]
    return chosen, table


# ----------------------------------------------------------------------------------------------------------------
# (h) training-based baselines, scored by the same harness


@dataclasses.dataclass
class BaselineRun:
    """One baseline at one forget ratio: its evaluation rows and what it cost (:meth:`UnlearnResult.summary`)."""

    frame: pd.DataFrame
    summary: dict


def baseline_data(
    session: Session,
    forget_pct: int,
    retain_train: int | None = 40,
    modes: Sequence[str] = ("VQA", "QA"),
) -> tuple[list, list]:
    """(forget examples, retain examples) for :func:`erasekit.baselines.unlearn`: all forget_k rows, and the
    ``fit`` retain profiles of ``session.partition`` (the first ``retain_train``; None: all) plus its ``fit``
    celebrities: the same retain data MLLMEraser's H_r sees, never a scored profile."""
    fgt = session.source.split(f"forget_{forget_pct}")
    rows = group_rows(session, forget_pct, ("Ret", "Cele"), "fit", retain_train)
    return build_examples(fgt, modes=modes), build_examples(rows["Ret"] + rows["Cele"], modes=modes)


def _baseline_training(session: Session, forget_pct: int, config: Any, retain_train: int | None) -> dict:
    """What defines one baseline's training (for the cache keys of its weights and of its scores)."""
    cfg = dataclasses.asdict(config)
    cfg.pop("progress", None)
    return {"method": config.method, "config": cfg, "forget_pct": forget_pct, "retain_train": retain_train,
            "data": session.data_key,
            "train_ids": {g: [r["ID"] for r in rs] for g, rs in
                          group_rows(session, forget_pct, ("Ret", "Cele"), "fit", retain_train).items()}}


def trained_baseline(session: Session, forget_pct: int, config: Any, retain_train: int | None = 40
                     ) -> tuple[Any, dict]:
    """One baseline unlearned on :func:`baseline_data` (:func:`erasekit.baselines.unlearn`): (adapter, the
    training's :meth:`UnlearnResult.summary`). Trained once per model, config and training data: the changed
    weights are cached (:func:`erasebook.cache.cached_weights`), so the chapter that scores a baseline and the one
    that attacks it share one training."""
    key = cache_key(step="baseline_weights", version=VERSION, model=session.model_key,
                    **_baseline_training(session, forget_pct, config, retain_train))

    def train():
        res = unlearn(session.adapter, *baseline_data(session, forget_pct, retain_train), config)
        return res.adapter, res.summary()

    return cached_weights("baseline_weights", key, train, session.adapter, session.model_key)


def run_baseline(session: Session, forget_pct: int, config: Any, *, retain_train: int | None = 40,
                 retain_sample: int | None = None, celeb_sample: int | None = None,
                 groups: Sequence[str] = ("Fgt", "Test", "Ret", "Cele"), modes: Sequence[str] = ("VQA", "QA"),
                 tasks: Sequence[str] = TASKS, batch_size: int = 16, max_new_tokens: int = 50,
                 progress: bool = True, refresh: bool = False) -> BaselineRun:
    """Unlearn with one baseline (:func:`erasekit.baselines.unlearn`) and score it like every other method.

    The unlearned model lives only in memory (the organism on disk is never touched); the evaluation rows and the
    cost summary are cached together, keyed by the model, the config, the training data and the evaluation spec.
    """
    eval_rows = group_rows(session, forget_pct, groups, "eval", retain_sample, celeb_sample)
    key = cache_key(step="baseline", version=VERSION, model=session.model_key,
                    **_baseline_training(session, forget_pct, config, retain_train),
                    eval_ids={g: [r["ID"] for r in rs] for g, rs in eval_rows.items()}, modes=list(modes),
                    tasks=list(tasks), max_new_tokens=max_new_tokens)
    summary_path = cache_path("baseline", key).with_suffix(".json")
    box: dict = {}

    def compute():
        adapter, box["summary"] = trained_baseline(session, forget_pct, config, retain_train)
        return evaluate(adapter, eval_rows, forget_pct, groups=list(eval_rows), modes=modes, tasks=tasks,
                        batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress)

    if refresh or not summary_path.exists():  # the frame and its summary are (re)made together
        frame = cached_frame("baseline", key, compute, refresh=True)
        atomic_write(summary_path, json.dumps(box["summary"], indent=1))
    else:
        frame = cached_frame("baseline", key, compute)
    frame["method"] = config.method
    return BaselineRun(frame, json.loads(summary_path.read_text()))



def example_generations(session: Session, forget_pct: int, steering: TaskSteering, n: int = 2,
                        groups: Sequence[str] = ("Fgt", "Test", "Ret", "Cele"), task: str = "generation",
                        mode: str = "VQA", max_new_tokens: int = 50) -> pd.DataFrame:
    """The first ``n`` questions of ``task`` per group, answered by the vanilla and the steered model.

    Columns: ``group, question, ground truth, vanilla, steered, steered refuses``.
    """
    items = group_items(session, forget_pct, groups, n, n, (mode,), (task,))
    recs = []
    ops = steering.operators(task, session.num_layers)
    for g in groups:
        its = items[g][:n]
        if not its:
            continue
        ims = None if all(it.image is None for it in its) else [it.image for it in its]
        prompts = [it.prompt for it in its]
        van = generate(session.adapter, prompts, ims, max_new_tokens=max_new_tokens)
        ste = generate(session.adapter, prompts, ims, context=lambda: steering.context(session.adapter, ops),
                       max_new_tokens=max_new_tokens)
        for it, a, b in zip(its, van, ste):
            recs.append({"group": g, "question": it.question, "ground truth": it.target, "vanilla": a.strip(),
                         "steered": b.strip(), "steered refuses": is_refusal(b)})
    return pd.DataFrame(recs)
