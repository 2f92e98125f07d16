"""erasebook.findings: the book's verdicts follow stated rules on the recorded numbers (a changed number changes
the sentence), and the committed records read through."""

import copy

import pytest

from erasebook import findings as F
from erasebook import paths


def _sel(fgt, test, ret, cele):
    van = {"Fgt": 100.0, "Test": 100.0, "Ret": 100.0, "Cele": 100.0}
    gate = {"Fgt": fgt, "Test": test, "Ret": ret, "Cele": cele}
    return {"forget_pct": 5, "vanilla": {"QA": {"cloze": van}}, "default": {"QA": {"cloze": gate}}}


def test_selection_rule_decides_the_verdict():
    assert F.selects(_sel(5, 10, 95, 92)["default"]["QA"]["cloze"], _sel(0, 0, 0, 0)["vanilla"]["QA"]["cloze"])[0]
    ok = F.gate_finding(_sel(5, 10, 95, 92))
    assert "erasekit's gate selects" in ok and "Missed" not in ok
    bad = F.gate_finding(_sel(55, 60, 87.5, 97.5))
    assert "does not select" in bad and "forget 55.0 %" in bad and "test 60.0 %" in bad and "retain 100 → 87.5" in bad
    # exactly at the bars passes; one point past a bar fails, and only that bar is named
    assert "selects." in F.gate_finding(_sel(F.SELECT_BARS["Fgt"], F.SELECT_BARS["Test"], 100 - F.RETAIN_DROP, 100))
    one = F.gate_finding(_sel(5, 10, 100 - F.RETAIN_DROP - 1, 100))
    assert "does not select" in one and "celebrities" not in one.split("Missed")[1]


def test_attack_rule_and_missing_records():
    rec = {"Vanilla": {k: {"leak": 100.0} for k in ("rephrase", "context")},
           "erasekit gate": {"rephrase": {"leak": 10.0}, "context": {"leak": 20.0}}}
    assert "erasekit's gate holds" in F.attacks_finding(rec)
    worse = copy.deepcopy(rec)
    worse["erasekit gate"]["context"]["leak"] = 21.0
    assert "erasekit's gate leaks" in F.attacks_finding(worse)
    assert "no record" in F.attacks_finding(None) and "no record" in F.asru_finding(None)
    assert "no record" in F.cost_finding(None)


def test_committed_records_read_into_findings_and_html():
    records = F.load_records(paths.data_dir() / "results", paths.REPO_ROOT / "benchmarks" / "results")
    lines = F.findings(records)
    assert len(lines) == 7 and all(line.startswith("* **") for line in lines)
    sel = records["sel"]
    c = sel["default"]["QA"]["cloze"]
    assert f"forget {sel['vanilla']['QA']['cloze']['Fgt']:.0f} → {c['Fgt']:.1f} %" in lines[0]
    assert F.selects(c, sel["vanilla"]["QA"]["cloze"])[0] == ("does not select" not in lines[0])
    html = F.findings_html(lines)
    assert html.count("<li>") == 7 and 'class="erasekit-findings"' in html and "**" not in html
    nums = F.glue_numbers(records)
    assert nums["default_Fgt"] == c["Fgt"] and nums["forget_pct"] == sel["forget_pct"]
    with pytest.raises(FileNotFoundError):
        F.load_records(paths.REPO_ROOT / "no-such-folder")


def test_table1_sentence_says_what_the_numbers_show():
    """Chapter 05's reading of a gate (erasebook.report._effect) follows the same rules: 'erases forget and retain
    alike' only when both fall by more than the retain budget."""
    import pandas as pd

    from erasebook.report import _effect

    cols = pd.MultiIndex.from_tuples([("cloze", s) for s in ("Fgt", "Test", "Ret", "Cele")])
    rows = pd.MultiIndex.from_tuples([("QA", m) for m in ("Vanilla", "alike", "little", "selects", "partly", "costly")])
    t = pd.DataFrame([[100, 100, 100, 100], [10, 10, 20, 20], [100, 95, 100, 100], [5, 10, 95, 95],
                      [50, 50, 95, 100], [100, 100, 50, 50]], index=rows, columns=cols, dtype=float)
    assert _effect(t, "alike") == "erases forget and retain alike"
    assert _effect(t, "little") == "changes little"
    assert _effect(t, "selects") == "selects"
    assert _effect(t, "partly") == "lowers forget, not to the selection rule's bars"
    assert _effect(t, "costly") == "costs retain answers without erasing forget"


def test_attack_bullets_follow_their_rules():
    """Chapter 09's bullets (erasebook.leakage.describe_attack_summary): 'refuses retain people too' only when the
    authors'-λ gate keeps >10 points fewer retain answers than vanilla under the same prompts; within / above the
    bar from the leaks; 'shallow' only when every baseline leaks >= 50 % under rephrasing."""
    import pandas as pd

    from erasebook.leakage import describe_attack_summary

    def rec(leak, ret):
        return {"leak": leak, "leak_mean": leak / 2, "retain_acc": ret, "n": 8}

    summary = {"Vanilla": {"rephrase": rec(100, 46), "context": rec(100, 63)},
               "paper": {"rephrase": rec(100, 44), "context": rec(100, 59)},
               "authors": {"rephrase": rec(100, 44), "context": rec(100, 59)},
               "ours": {"rephrase": rec(10, 46), "context": rec(15, 60)},
               "GA": {"rephrase": rec(90, 40), "relearn_retain": rec(80, 40), "relearn_forget": rec(85, 40)}}
    empty = pd.DataFrame(columns=["attack", "target", "split", "objective_before", "objective_after"])
    text = describe_attack_summary(summary, empty, "ours", "paper", "authors", trained=["GA"], bar=20)
    assert "refuses retain people too" not in text and "its leak is the number to read" in text
    assert "within the 20 % bar" in text and "shallow" in text
    summary["authors"] = {"rephrase": rec(100, 10), "context": rec(100, 20)}
    summary["ours"]["context"] = rec(40, 60)
    summary["GA"]["rephrase"] = rec(30, 40)
    text = describe_attack_summary(summary, empty, "ours", "paper", "authors", trained=["GA"], bar=20)
    assert "refuses retain people too" in text and "above the 20 % bar" in text and "shallow" not in text


def test_runtime_note_reports_the_run(monkeypatch):
    """A chapter's last cell states its own measured run: seconds, profile, threads, step-cache hits and misses."""
    import time

    import erasebook
    from erasebook import cache, report

    # 12 s before now (not before the import: other tests in this process may have run since)
    monkeypatch.setattr(erasebook, "STARTED", time.perf_counter() - 12.0)
    monkeypatch.setattr(cache, "STATS", cache.STATS.__class__({"a:hit": 3, "b:miss": 1, "b:hit": 2}))
    monkeypatch.setenv("ERASEKIT_PROFILE", "ci")
    note = report.runtime_note()
    assert note.startswith("*This page ran in 1") and "ci profile" in note
    assert "1 expensive step computed, 5 read from the step cache" in note


def test_selectivity_cause_is_read_by_rule():
    """describe_selectivity_cause: a direction 'only derails answers' when no λ makes half the forget questions
    refuse, else the smallest λ that does, with the retain refusals at it; the code-then scores follow."""
    def push(refused):
        return [{"lambda": lam, "refused_Fgt": r, "refused_Ret": r / 2, "neither_Fgt": 100 - r, "answered_Fgt": 0.0}
                for lam, r in zip((0.0, 1.0, 2.0, 4.0), refused)]

    org = {"layers": [5], "strengths": {"cloze": 4.0},
           "gate_on_scored": {"5": {"open_fgt": 0.9, "open_ret": 0.2, "auc_fgt_vs_ret": 0.85}},
           "ungated_push": {"multimodal": push([0, 10, 20, 30]), "refusal_contrast": push([0, 10, 60, 90])}}
    org["gate_shape"] = [{"quantile": q, "gate": g, "lambda": lam, "answered_Fgt": f, "answered_Ret": r}
                         for q in (0.9, 0.99) for g, f, r in (("ramp", 55.0, 82.5), ("step", 15.0, 80.0))
                         for lam in (4.0, 8.0)]
    org["ungated_push"]["refusal_contrast"][0]["answered_Ret"] = 100.0
    cause = {"formats": org, "first": org, "_code_then": {"commit": "abc", "record": {"Fgt": 7.5, "Ret": 97.5},
                                                          "first": {"Fgt": 7.5, "Ret": 97.5},
                                                          "formats": {"Fgt": 40.0, "Ret": 90.0}}}
    text = F.describe_selectivity_cause(cause)
    assert "along the paper's multimodal direction no λ up to 4 makes 50 % refuse — it only derails" in text
    assert "along erasekit's refusal contrast λ 2 makes 60 % of forget and 30 % of retain questions refuse" in text
    assert "opens on 90 % of the scored forget and 20 % of the retain" in text
    assert "commit abc" in text and "forget cloze 7.5 %" in text and "40.0 % of forget cloze answers" in text
    assert "forget cloze falls from 55.0 % to 15.0 % while retain goes from 82.5 % to 80.0 %" in text
    assert "retain stays between 80.0 and 82.5 % (vanilla 100 %)" in text
    assert "changing the code moved it by +47.5 points, retraining the organism moved the old code by +32.5" in text
    assert "today's organism refuses at no λ, so the old code's 40.0 % comes from answers derailed" in text
    curves = F.push_curves(cause)
    assert curves["today's, refusal contrast"][2.0] == 60 and len(curves) == 4
    assert "No measurement" in F.describe_selectivity_cause({})


def test_rule_finding_predicts_only_within_the_bar():
    from erasebook.rule_holdout import PREDICTION_BAR

    def rec(pred, held):
        r = {"strength": 4.0, "tune": {"erased": {"rate": pred}}, "retain": {"erased": {"rate": held},
                                                                            "vanilla": {"rate": 0.0}}}
        return {"organism": {"subjects": r}}

    assert "it predicts held-out" in F.rule_finding(rec(2.0, 2.0 + PREDICTION_BAR))
    assert "does not predict" in F.rule_finding(rec(2.0, 2.1 + PREDICTION_BAR))
    assert "no record" in F.rule_finding(None) and "no record" in F.rule_finding({"organism": {}})
