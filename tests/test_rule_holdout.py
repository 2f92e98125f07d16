"""The λ rule's prediction against held-out people (erasebook.rule_holdout): the routes hold out what they say."""

from __future__ import annotations

import math

import pytest

from erasebook import rule_holdout as RH
from erasekit.forms import capital_facts


def test_wilson_interval_brackets_the_rate():
    lo, hi = RH.wilson(3, 20)
    assert lo < 15.0 < hi and 0 <= lo and hi <= 100
    assert RH.wilson(0, 10)[0] == 0.0 and RH.wilson(10, 10)[1] == 100.0
    assert all(math.isnan(x) for x in RH.wilson(0, 0))


@pytest.mark.parametrize("route", ["subjects", "prompts"])
def test_rule_prediction_scores_tune_and_held_out_people(tiny_causal_lm, route):
    facts = capital_facts()
    forget, retain, tune, scored = facts[:4], facts[4:12], facts[12:16], facts[16:20]
    rec = RH.rule_prediction(tiny_causal_lm, forget, retain, tune, {"retain": scored}, route=route,
                             forms=("question", "cloze"), fit_kw={"strength": 1.0, "max_new_tokens": 3})
    assert rec["route"] == route and rec["strength"] == 1.0
    n = rec["n_people"]
    assert (n["forget"], n["fit"], n["retain"]) == (4, 8, 4)
    if route == "subjects":  # tune = other people: 4 of them, every form
        assert n["tune"] == 4 and rec["tune"]["erased"]["n"] == 4 * 4
    else:  # every fourth retain prompt: about the fitted people
        assert rec["tune"]["erased"]["n"] == len(range(3, 8 * 4, 4)) and n["tune"] <= 8
    for k in ("tune", "retain"):
        for side in ("erased", "vanilla"):
            r = rec[k][side]
            assert 0 <= r["rate"] <= 100 and r["n"] > 0 and set(r["by_family"]) == {"question", "cloze"}
    assert rec["retain"]["minus_tune"] == pytest.approx(rec["retain"]["erased"]["rate"] - rec["tune"]["erased"]["rate"],
                                                         abs=0.01)
    text = RH.describe_rule_holdout({route: rec}, "tiny")
    assert f"λ {rec['strength']:g}" in text and ("within" in text or "outside" in text)


def test_subjects_route_needs_other_people(tiny_causal_lm):
    facts = capital_facts()
    with pytest.raises(ValueError, match="needs tune facts"):
        RH.rule_prediction(tiny_causal_lm, facts[:4], facts[4:12], None, {"retain": facts[12:16]})
    with pytest.raises(ValueError, match="share subjects"):
        RH.rule_prediction(tiny_causal_lm, facts[:4], facts[4:12], facts[4:6], {"retain": facts[12:16]},
                           forms=("question",), fit_kw={"strength": 1.0})


def test_model_form_scores_marks_the_trained_forms_and_equals_vanilla_for_the_same_model(tiny_causal_lm):
    from erasebook.form_transfer import model_form_scores

    facts = capital_facts()
    rec = model_form_scores(tiny_causal_lm, tiny_causal_lm, facts[:3], {"retain": facts[3:6]},
                            families=("question", "cloze", "portrait"), trained_forms=("question",),
                            harmless=["Give me a soup recipe."], max_new_tokens=3)
    assert set(rec) == {"question", "cloze"}  # no portraits: nothing rendered, skipped
    assert rec["question"]["held_out"] is False and rec["cloze"]["held_out"] is True
    for r in rec.values():
        assert r["forget_leak"] == r["forget_vanilla"] and r["retain"] == r["retain_vanilla"]
        assert r["harmless_refusal"] == r["harmless_vanilla"] and r["fit_forms"] == ["question"]
