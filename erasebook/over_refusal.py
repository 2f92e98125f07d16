"""Who is over-refused: per held-out retain person, how many of their questions a method refuses, and how close
their name is to a forget person's (chapter 08's measurement of where ASRU's residual over-refusal comes from).

A refusal on the retain side is an identity error when it takes a whole person (every question about them), and a
phrasing error when it takes one question of many. :func:`refusals_by_person` counts per person;
:func:`nearest_name` measures name overlap as the Jaccard similarity of character trigrams (lower case, the space
kept: "Kano Selgar" and "Fano Selhol" share "ano", "no ", "o s", " se", "sel"), the organism's names being built
from shared syllables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

from erasekit.scoring import is_refusal
from erasekit.tuning import auc

__all__ = ["trigram_similarity", "nearest_name", "refusals_by_person", "over_refusal_people", "describe_over_refusal"]


def _trigrams(name: str) -> set[str]:
    n = f" {name.lower().strip()} "
    return {n[i:i + 3] for i in range(len(n) - 2)}


def trigram_similarity(a: str, b: str) -> float:
    """Jaccard similarity of the two names' character trigrams (padded with a space), in [0, 1].

    >>> trigram_similarity("Kano Selgar", "Kano Selgar"), round(trigram_similarity("Kano Selgar", "Fano Selhol"), 2)
    (1.0, 0.29)
    """
    for v in (a, b):
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"names must be non-empty strings, got {v!r}")
    x, y = _trigrams(a), _trigrams(b)
    return len(x & y) / len(x | y)


def nearest_name(name: str, others: Iterable[str]) -> tuple[str, float]:
    """The most similar of ``others`` to ``name`` (:func:`trigram_similarity`) and its similarity."""
    others = list(others)
    if not others:
        raise ValueError("nearest_name needs at least one name to compare with")
    best = max(others, key=lambda o: trigram_similarity(name, o))
    return best, trigram_similarity(name, best)


def refusals_by_person(responses: Mapping[str, pd.DataFrame | Sequence], names: Mapping, forget_names: Iterable[str]
                       ) -> pd.DataFrame:
    """One row per person: their name, the nearest forget person's name and its similarity, the number of questions,
    and per method the number refused.

    Args:
        responses: ``{method: frame}`` with columns ``id`` (the person) and ``response`` -- e.g. the retain-split
            rows of :func:`erasekit.evaluate.evaluate` for one mode and task; every frame over the same questions.
        names: ``{id: name}`` of the people in the frames.
        forget_names: the forget set's names.
    """
    forget_names = list(forget_names)
    if not responses:
        raise ValueError("refusals_by_person needs at least one method's responses")
    rows: dict = {}
    for method, frame in responses.items():
        missing = {"id", "response"} - set(frame.columns)
        if missing:
            raise ValueError(f"{method}: the frame lacks the columns {sorted(missing)}")
        for pid, g in frame.groupby("id", sort=True):
            if pid not in names:
                raise ValueError(f"{method}: person {pid!r} has no name in `names`")
            row = rows.setdefault(pid, {"id": pid, "name": names[pid], "questions": len(g)})
            row[f"refused: {method}"] = int(g["response"].fillna("").astype(str).map(is_refusal).sum())
    out = pd.DataFrame(list(rows.values()))
    near = [nearest_name(n, forget_names) for n in out["name"]]
    out.insert(2, "nearest forget name", [n for n, _ in near])
    out.insert(3, "name similarity", [round(s, 3) for _, s in near])
    return out.sort_values("name similarity", ascending=False).reset_index(drop=True)


def over_refusal_people(session, setup, forget_pct: int, frame: pd.DataFrame, method: str, *, mode: str = "QA",
                        task: str = "generation", max_new_tokens: int = 32) -> pd.DataFrame:
    """:func:`refusals_by_person` over the held-out (``eval``) retain people: ``method``'s responses from ``frame``
    (an evaluation frame holding it) beside stage 1's -- erasekit's gate at ASRU's stage-1 λ
    (:func:`erasebook.asru_results.asru_stage1`), generated here on the same prompts (text questions only)."""
    from erasekit.generation import generate

    from .asru_results import asru_stage1
    from .pipeline import group_rows

    if mode != "QA":
        raise ValueError("over_refusal_people reads text questions (mode 'QA'): stage 1 is generated without images")
    rows = frame[(frame["method"] == method) & (frame["split"] == "Ret") & (frame["mode"] == mode)
                 & (frame["task"] == task)]
    if rows.empty:
        raise ValueError(f"the frame has no {mode}/{task} Ret rows of {method!r}; methods: "
                         f"{sorted(frame['method'].unique())}")
    stage1, _ = asru_stage1(session, setup, forget_pct)
    ops = stage1.operators(task, session.num_layers)
    out = generate(session.adapter, list(rows["prompt"]), None, max_new_tokens=max_new_tokens,
                   context=lambda: stage1.context(session.adapter, ops))
    names = {r["ID"]: r["name"] for r in group_rows(session, forget_pct, ("Ret",), "eval")["Ret"]}
    forget = [r["name"] for r in session.source.split(f"forget_{forget_pct}")]
    return refusals_by_person({method: rows, "stage 1": rows.assign(response=out)}, names, forget)


def describe_over_refusal(table: pd.DataFrame, method: str) -> str:
    """Markdown: how ``method``'s retain refusals in a :func:`over_refusal_people` table spread over people, how
    many of them stage 1 refuses too, and whether name similarity to a forget person predicts them."""
    a, s = table[f"refused: {method}"], table["refused: stage 1"]
    hit = a > 0
    whole = (a == table["questions"]).sum()
    sim = table["name similarity"]
    name_auc = auc(sim[hit].to_numpy(float), sim[~hit].to_numpy(float)) if hit.any() and not hit.all() else float("nan")
    top = table.nlargest(int(hit.sum()) or 1, "name similarity")
    return (f"{method} refuses {int(a.sum())} of the {int(table['questions'].sum())} questions, spread over "
            f"{int(hit.sum())} of the {len(table)} held-out retain people ({int(whole)} refused on every question); "
            f"stage 1 refuses {int(s.sum())} questions of {int((s > 0).sum())} people, {int(((s > 0) & hit).sum())} "
            f"of them among {method}'s. Name similarity to the nearest forget person separates the refused people "
            f"from the others with a rank AUC of {name_auc:.2f}; of the {len(top)} people with the most similar names, "
            f"{int((top[f'refused: {method}'] > 0).sum())} are among them.")
