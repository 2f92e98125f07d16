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

__all__ = ["trigram_similarity", "nearest_name", "refusals_by_person", "over_refusal_people", "describe_over_refusal",
           "p_sample_misses", "tune_vs_heldout", "describe_tune_vs_heldout"]


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


def p_sample_misses(n: int, m: int, k: int, at_most: int = 0) -> float:
    """The chance that ``k`` of ``n`` people drawn without replacement include at most ``at_most`` (default none)
    of ``m`` marked ones (the hypergeometric CDF); nan when ``k > n``.

    >>> round(p_sample_misses(30, 3, 5), 3), p_sample_misses(10, 0, 5), p_sample_misses(4, 1, 4)
    (0.567, 1.0, 0.0)
    >>> p_sample_misses(4, 2, 2, at_most=2)
    1.0
    """
    from math import comb

    if not 0 <= m <= n or k < 0:
        raise ValueError(f"need 0 <= m <= n and k >= 0, got n={n}, m={m}, k={k}")
    if k > n:
        return float("nan")
    return sum(comb(m, j) * comb(n - m, k - j) for j in range(0, min(at_most, m, k) + 1)) / comb(n, k)


def tune_vs_heldout(session, setup, forget_pct: int = 5, model=None, rule_questions: int = 40,
                    max_new_tokens: int = 32) -> dict:
    """Why the tune people under-predict held-out over-refusal: stage 1 (and ``model``, e.g. ASRU's adapter, if
    given) answers the text generation questions of EVERY ``tune`` and every held-out (``eval``) retain person, and
    the refusals are counted per person.

    Returns ``{"rule_people": k, "methods": {method: {"tune"|"heldout": {"questions", "refused", "people",
    "people_refused", "per_person": [...]}, "rule_sample": {...}, "p_rule_sees_none": p, "p_tune_this_low": p}}}``:
    ``rule_sample`` is
    what stage 1's λ rule read (the first ``rule_questions`` tune questions: ``k`` people), ``p_rule_sees_none``
    the hypergeometric chance that ``k`` people drawn at random from the tune and held-out people together include
    none that the method refuses at all. Refusals cluster by person (identity errors), so a sample of
    ``rule_questions`` questions carries the information of ``k`` draws, not ``rule_questions``."""
    from erasekit.evaluate import build_items
    from erasekit.generation import generate

    from .asru_results import asru_stage1
    from .pipeline import group_rows

    groups = {"tune": group_rows(session, forget_pct, ("Ret",), "tune")["Ret"],
              "heldout": group_rows(session, forget_pct, ("Ret",), "eval")["Ret"]}
    items = {g: build_items({"Ret": rows}, modes=("QA",), tasks=("generation",)) for g, rows in groups.items()}
    stage1, lam = asru_stage1(session, setup, forget_pct)
    ops = stage1.operators("generation", session.num_layers)
    runs = {"stage 1": (session.adapter, lambda: stage1.context(session.adapter, ops))}
    if model is not None:
        runs["ASRU"] = (model, None)
    per_q = len(items["tune"]) // max(len(groups["tune"]), 1)
    k = -(-rule_questions // per_q)  # people whose questions the rule read (rounded up)
    out: dict = {"forget_pct": forget_pct, "stage1_strength": lam["chosen"], "questions_per_person": per_q,
                 "rule_questions": rule_questions, "rule_people": k, "methods": {}}
    for name, (adapter, ctx) in runs.items():
        rec: dict = {}
        for g, its in items.items():
            answers = generate(adapter, [i.prompt for i in its], None, context=ctx, max_new_tokens=max_new_tokens,
                               progress=False)
            counts: dict = {}
            for it, a in zip(its, answers):
                counts.setdefault(it.id, [0, 0])
                counts[it.id][0] += int(is_refusal(a))
                counts[it.id][1] += 1
            per = [counts[r["ID"]][0] for r in groups[g] if r["ID"] in counts]
            rec[g] = {"questions": len(its), "refused": sum(per), "people": len(per),
                      "people_refused": sum(c > 0 for c in per), "per_person": per}
        first = rec["tune"]["per_person"][:k]
        rec["rule_sample"] = {"people": len(first), "refused": sum(first)}
        n_all = rec["tune"]["people"] + rec["heldout"]["people"]
        m = rec["tune"]["people_refused"] + rec["heldout"]["people_refused"]
        rec["p_rule_sees_none"] = p_sample_misses(n_all, m, k)
        # the whole tune set: as few refused people as observed, were tune and held-out people one population
        rec["p_tune_this_low"] = p_sample_misses(n_all, m, rec["tune"]["people"], rec["tune"]["people_refused"])
        out["methods"][name] = rec
    return out


def describe_tune_vs_heldout(record: Mapping, alpha: float = 0.1) -> str:
    """Markdown from :func:`tune_vs_heldout`'s record, every number read from it. Stage 1 is read against its λ
    rule's sample (the first questions of the tune set); every other method against the whole tune set (ASRU's
    defaults were chosen on it). A probability below ``alpha`` is called unlikely under one population."""
    parts = []
    k = record["rule_people"]
    for name, r in record["methods"].items():
        t, h = r["tune"], r["heldout"]
        text = (f"**{name}** refuses {t['refused']} of {t['questions']} tune questions ({t['people_refused']} of "
                f"{t['people']} people) and {h['refused']} of {h['questions']} held-out ones ({h['people_refused']} "
                f"of {h['people']} people).")
        p = r["p_rule_sees_none"] if name == "stage 1" else r["p_tune_this_low"]
        if name == "stage 1":
            text += (f" Its λ rule read {record['rule_questions']} tune questions, {k} people, and saw "
                     f"{r['rule_sample']['refused']} refusals; were tune and held-out people one population, {k} "
                     f"people drawn from it would include no refused person with probability {p:.2f}")
        else:
            text += (f" Were tune and held-out people one population, the {t['people']} tune people would include as "
                     f"few as {t['people_refused']} refused people with probability {p:.2f}")
        text += (": unlikely by chance; these tune people are not a fair sample of other people for it." if p < alpha
                 else ": chance alone explains the gap.")
        parts.append(text)
    return " ".join(parts)
