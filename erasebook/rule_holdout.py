"""Does the front door's λ rule predict over-refusal on people it never saw?

The refusal rule (:func:`erasekit.strength_rule.refusal_strength`) picks λ from the refusal rate of its ``tune``
prompts. That rate is a prediction: how often the erased model will refuse people who are not in the forget set.
This module measures the prediction against what happens on people no fit and no rule saw, by two routes:

* ``"subjects"``: forget, retain and tune given as facts (:class:`erasekit.forms.Fact`), the tune facts about
  people who are in neither H_r nor the forget set (the front door's default for facts);
* ``"prompts"``: the same people's questions given as strings with ``tune="every_fourth"``: every fourth retain
  prompt tunes the rule, so the rule reads prompts about the people of H_r (the front door refuses this split
  unless told, because of what this route measures).

For each route: the chosen λ, the refusal rate of the forget prompts at that λ (is anything erased at all), of the
whole tune set (the prediction; the rule itself reads a sample of it), and of held-out retain people and of
celebrities (the outcome), each beside the vanilla model's and per form family. ``erasekit rule-holdout`` writes
``data/results/rule_holdout.json``; the bar (issue "ASRU anywhere"): held-out retain refusal within
:data:`PREDICTION_BAR` points of the tune set's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from erasekit.eraser import fit_eraser
from erasekit.forms import FAMILIES, Fact, FormPrompt, render
from erasekit.scoring import is_refusal

__all__ = ["PREDICTION_BAR", "refusal_by_family", "rule_prediction", "organism_rule_holdout",
           "smollm2_rule_holdout", "wilson", "describe_rule_holdout"]

PREDICTION_BAR = 5.0  # points: |held-out retain refusal - tune refusal| at the chosen λ


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson 95 % interval of a rate ``k / n``, in %."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (round(100 * max(c - h, 0.0), 1), round(100 * min(c + h, 1.0), 1))


def refusal_by_family(adapter: Any, prompts: Sequence[FormPrompt], eraser=None, *, max_new_tokens: int = 16,
                      batch_size: int = 32) -> dict:
    """Refusal of ``prompts`` (under ``eraser``, or vanilla): ``{"refused", "n", "rate", "ci", "by_family"}``."""
    from .form_transfer import form_answers

    refused = [is_refusal(a) for a in form_answers(adapter, prompts, eraser, max_new_tokens, batch_size)]
    fams: dict[str, list[bool]] = {}
    for p, r in zip(prompts, refused):
        fams.setdefault(p.family, []).append(r)
    k, n = sum(refused), len(refused)
    return {"refused": k, "n": n, "rate": round(100.0 * k / max(n, 1), 2), "ci": wilson(k, n),
            "by_family": {f: round(100.0 * sum(v) / len(v), 2) for f, v in fams.items()}}


def rule_prediction(adapter: Any, forget: Sequence[Fact], retain: Sequence[Fact], tune: Sequence[Fact] | None,
                    scored: Mapping[str, Sequence[Fact]], *, route: str = "subjects",
                    forms: Sequence[str] = FAMILIES, fit_kw: Mapping[str, Any] | None = None,
                    batch_size: int = 32) -> dict:
    """Fit the front door by ``route`` (module docstring) and score the rule's prediction.

    ``route="subjects"``: facts in ``forms``, ``tune`` facts about other people; ``route="prompts"``: the facts'
    ``forms`` prompts as strings, ``tune`` ignored (every fourth retain prompt, ``tune="every_fourth"``).
    ``scored``: ``{name: facts}`` of people in no fit and no rule, scored in the same ``forms``.
    """
    if route not in ("subjects", "prompts"):
        raise ValueError(f"route must be 'subjects' or 'prompts', got {route!r}")
    kw = dict(fit_kw or {})
    mnt = int(kw.get("max_new_tokens", 16))
    pool = [*forget, *retain, *(tune or ()), *(f for fs in scored.values() for f in fs)]
    forget_prompts = render(forget, forms, pool=pool)
    t0 = time.time()
    if route == "subjects":
        if not tune:
            raise ValueError("route 'subjects' needs tune facts about people in neither forget nor retain")
        er = fit_eraser(adapter, list(forget), list(retain), tune=list(tune), forms=forms, batch_size=batch_size,
                        progress=False, **kw)
        tune_prompts = render(tune, forms, pool=pool)
    else:
        r_prompts = render(retain, forms, pool=pool)
        er = fit_eraser(adapter, [p.prompt for p in forget_prompts],
                        [p.prompt for p in r_prompts], tune="every_fourth", batch_size=batch_size, progress=False,
                        **kw)
        tune_prompts = r_prompts[3::4]  # the front door's every-fourth split of the retain prompts
    fit_seconds = round(time.time() - t0, 1)
    score = dict(max_new_tokens=mnt, batch_size=batch_size)
    sets = {"forget": forget_prompts, "tune": tune_prompts,
            **{k: render(v, forms, pool=pool) for k, v in scored.items()}}
    rec: dict = {"route": route, "strength": er.strength, "layers": list(er.steerer.layers),
                 "rule": er.steerer.meta.get("strength_rule", {}).get("rule"), "forms": list(forms),
                 "n_people": {"forget": len({f.subject for f in forget}), "fit": len({f.subject for f in retain}),
                              "tune": len({p.fact.subject for p in tune_prompts}),
                              **{k: len({f.subject for f in v}) for k, v in scored.items()}},
                 "fit_seconds": fit_seconds}
    for name, ps in sets.items():
        rec[name] = {"erased": refusal_by_family(adapter, ps, er, **score),
                     "vanilla": refusal_by_family(adapter, ps, None, **score)}
    for name in scored:
        rec[name]["minus_tune"] = round(rec[name]["erased"]["rate"] - rec["tune"]["erased"]["rate"], 2)
    rec["seconds"] = round(time.time() - t0, 1)
    return rec


def organism_rule_holdout(session, forget_pct: int = 5, n_fit: int = 16, n_scored: int = 20,
                          routes: Sequence[str] = ("subjects", "prompts")) -> dict:
    """:func:`rule_prediction` on the organism: forget = the forget split's facts, H_r = the first ``n_fit``
    ``fit`` profiles, tune = the ``tune`` profiles (route ``"subjects"``), scored = ``n_scored`` ``eval`` retain
    people and celebrities; text forms (the portrait form too for ``"subjects"``); erasekit's gate with the book's
    direction for it, the λ rule of :data:`erasebook.form_transfer.FIT_KW`."""
    from .form_transfer import FIT_KW, organism_form_facts
    from .recipes import gate_setup

    setup = gate_setup(session)
    facts = organism_form_facts(session, forget_pct, n_scored)
    fit = facts["retain"][: 8 * n_fit]
    scored = {"retain": facts["retain_scored"], "cele": facts["cele"]}
    kw = {**FIT_KW, "direction": setup.directions["default"]}
    out = {}
    for route in routes:
        # strings carry no subject to locate: the prompts route reads the last token in text forms
        forms = FAMILIES if route == "subjects" else tuple(f for f in FAMILIES if f != "portrait")
        out[route] = rule_prediction(session.adapter, facts["forget"], fit, facts["tune"], scored, route=route,
                                     forms=forms, fit_kw=kw)
    return out


def smollm2_rule_holdout(adapter, n_forget: int = 8, n_fit: int = 14, n_tune: int = 8,
                         routes: Sequence[str] = ("subjects", "prompts")) -> dict:
    """:func:`rule_prediction` on a pretrained LM with the capitals it knows (SmolLM2-135M-Instruct: 38 of the
    built-in ones): the first ``n_forget`` forget, the next ``n_fit`` H_r, the next ``n_tune`` tune (route
    ``"subjects"``), the rest scored (at least 4); text forms, the front
    door's default direction, the λ rule of :data:`erasebook.form_transfer.FIT_KW_LM`."""
    from erasekit.forms import capital_facts

    from .form_transfer import FIT_KW_LM, known_facts

    known = known_facts(adapter, capital_facts())
    need = n_forget + n_fit + n_tune + 4
    if len(known) < need:
        raise ValueError(f"the model knows {len(known)} of the built-in capitals; need {need}")
    a, b, c = n_forget, n_forget + n_fit, n_forget + n_fit + n_tune
    forms = tuple(f for f in FAMILIES if f != "portrait")
    out = {route: rule_prediction(adapter, known[:a], known[a:b], known[b:c], {"retain": known[c:]}, route=route,
                                  forms=forms, fit_kw=FIT_KW_LM) for route in routes}
    out["_facts"] = {"known": len(known), "forget": [f.subject for f in known[:a]],
                     "fit": [f.subject for f in known[a:b]], "tune": [f.subject for f in known[b:c]],
                     "scored": [f.subject for f in known[c:]]}
    return out


def describe_rule_holdout(record: Mapping[str, Mapping], label: str) -> str:
    """One sentence per route, every number from ``record`` (one model's :func:`rule_prediction` results)."""
    names = {"subjects": "tuned on other people (facts)", "prompts": "tuned on every fourth retain prompt"}
    parts = []
    for route, r in record.items():
        if route.startswith("_"):
            continue
        pred = r["tune"]["erased"]["rate"]
        held = r["retain"]["erased"]
        gap = held["rate"] - pred
        verdict = "within" if abs(gap) <= PREDICTION_BAR else "outside"
        fgt = f" (forget questions refused {r['forget']['erased']['rate']:.1f} %)" if "forget" in r else ""
        parts.append(f"{label}, {names.get(route, route)}: λ {r['strength']:g}{fgt}; the tune set refuses "
                     f"{pred:.1f} %, held-out retain people {held['rate']:.1f} % (95 % CI {held['ci'][0]:.1f}–"
                     f"{held['ci'][1]:.1f}, n = {held['n']}; vanilla {r['retain']['vanilla']['rate']:.1f} %): "
                     f"{gap:+.1f} points, {verdict} the ±{PREDICTION_BAR:.0f}-point bar.")
    return " ".join(parts)
