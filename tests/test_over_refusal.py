"""Who is over-refused: name similarity, the rank AUC and the per-person refusal table."""

from __future__ import annotations

import doctest

import pandas as pd
import pytest

from erasebook import over_refusal as O


def test_doctests():
    assert doctest.testmod(O).failed == 0


def test_trigram_similarity_orders_names():
    assert O.trigram_similarity("Kano Selgar", "Fano Selhol") > O.trigram_similarity("Kano Selgar", "Nool Corwes")
    assert O.trigram_similarity("Ann Lee", "ann lee") == 1.0
    with pytest.raises(ValueError, match="non-empty"):
        O.trigram_similarity("", "Ann")


def test_describe_over_refusal_auc_edges():
    """The name-similarity AUC is erasekit.tuning.auc; without refused or unrefused people it is not defined."""
    t = pd.DataFrame({"id": [1, 2], "name": ["a", "b"], "nearest forget name": ["x"] * 2,
                      "name similarity": [0.1, 0.2], "questions": [4, 4], "refused: stage 1": [0, 0]})
    assert "rank AUC of 0.00" in O.describe_over_refusal(t.assign(**{"refused: M": [1, 0]}), "M")
    assert "rank AUC of 1.00" in O.describe_over_refusal(t.assign(**{"refused: M": [0, 1]}), "M")
    assert "rank AUC of nan" in O.describe_over_refusal(t.assign(**{"refused: M": [1, 1]}), "M")


def test_refusals_by_person_counts_per_method():
    q = pd.DataFrame({"id": [1, 1, 2, 2], "response": ["I'm sorry, but I can't help with that.", "Rome",
                                                      "Oslo", "Paris"]})
    t = O.refusals_by_person({"A": q, "B": q.assign(response="Rome")}, {1: "Kano Selgar", 2: "Nool Corwes"},
                             ["Fano Selhol", "Bevi Torros"])
    row = t.set_index("id").loc[1]
    assert row["refused: A"] == 1 and row["refused: B"] == 0 and row["questions"] == 2
    assert row["nearest forget name"] == "Fano Selhol" and t.iloc[0]["id"] == 1  # most similar first
    with pytest.raises(ValueError, match="no name"):
        O.refusals_by_person({"A": q}, {1: "Kano Selgar"}, ["Fano Selhol"])


def test_describe_over_refusal_reads_the_table():
    t = pd.DataFrame({"id": [1, 2, 3], "name": ["a", "b", "c"], "nearest forget name": ["x"] * 3,
                      "name similarity": [0.4, 0.1, 0.05], "questions": [4, 4, 4],
                      "refused: M": [4, 0, 1], "refused: stage 1": [2, 0, 0]})
    text = O.describe_over_refusal(t, "M")
    assert "refuses 5 of the 12 questions, spread over 2 of the 3" in text and "(1 refused on every question)" in text
    assert "stage 1 refuses 2 questions of 1 people, 1 of them" in text and "rank AUC of 0.50" in text


def test_p_sample_misses_and_the_tune_reading():
    from erasebook.over_refusal import describe_tune_vs_heldout, p_sample_misses

    assert p_sample_misses(10, 0, 5) == 1.0 and p_sample_misses(4, 1, 4) == 0.0
    assert abs(p_sample_misses(30, 3, 5) - (27 * 26 * 25 * 24 * 23) / (30 * 29 * 28 * 27 * 26)) < 1e-12
    with pytest.raises(ValueError, match="0 <= m <= n"):
        p_sample_misses(3, 4, 1)
    rec = {"rule_questions": 40, "rule_people": 5, "methods": {"stage 1": {
        "tune": {"questions": 80, "refused": 0, "people": 10, "people_refused": 0},
        "heldout": {"questions": 80, "refused": 13, "people": 10, "people_refused": 2},
        "rule_sample": {"people": 5, "refused": 0}, "p_rule_sees_none": p_sample_misses(20, 2, 5),
        "p_tune_this_low": p_sample_misses(20, 2, 10, 0)}}}
    text = describe_tune_vs_heldout(rec)
    assert "13 of 80 held-out ones (2 of 10 people)" in text and "probability 0.55: chance alone" in text
    rec["methods"]["ASRU"] = {**rec["methods"]["stage 1"], "p_tune_this_low": 0.05}
    assert "as few as 0 refused people with probability 0.05: unlikely by chance" in describe_tune_vs_heldout(rec)
    # at_most sums the CDF: 2 of 4 marked, 2 drawn, at most 1 marked = 1 - P(both marked) = 1 - 1/6
    assert abs(p_sample_misses(4, 2, 2, at_most=1) - 5 / 6) < 1e-12
