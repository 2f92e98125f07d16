"""The record and the chapter's tables from evaluation frames (no model): method_scores, boundary_frame,
cost_frame, response_examples, describe_asru, plot_reward_curve."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest

from erasebook import asru_results as R
from erasebook.recipes import GATE_NAMES


def _frame(method, fgt_resp, ret_resp):
    rows = []
    for split, resp, tgt in (("Fgt", fgt_resp, "Oslo"), ("Ret", ret_resp, "Rome")):
        for task in ("generation", "cloze"):
            q = "Where was Jane Doe born?" if split == "Fgt" else "Where was John Roe born?"
            correct = tgt in resp
            rows.append({"method": method, "split": split, "mode": "QA", "task": task, "question": q, "prompt": q,
                         "response": resp, "target": tgt, "score": float(correct), "correct": correct})
    return pd.DataFrame(rows)


@pytest.fixture
def record():
    frames = {
        "Vanilla": _frame("Vanilla", "Jane Doe was born in Oslo.", "John Roe was born in Rome."),
        GATE_NAMES["default"]: _frame(GATE_NAMES["default"], "I cannot provide this information.", "Rome"),
        R.PAPER_AUTHORS: _frame(R.PAPER_AUTHORS, "Jane Doe was born in Paris.", "Rome"),
        R.ASRU_NAME: _frame(R.ASRU_NAME, "I can't share where Jane Doe was born.", "I cannot say."),
    }
    rec = {"5": {m: R.method_scores(f) for m, f in frames.items()}}
    rec["5"][R.ASRU_NAME]["cost"] = {"seconds": {"total": 12.5}, "peak_mib": 100.0, "memory_kind": "rss"}
    return rec, pd.concat(frames.values(), ignore_index=True)


def test_method_scores_and_boundary_frame(record):
    rec, _ = record
    b = R.boundary_frame(rec, 5)
    assert b.loc[(R.ASRU_NAME, "Fgt"), "appropriate refusal %"] == 100.0  # names the question's content
    assert b.loc[(GATE_NAMES["default"], "Fgt"), "appropriate refusal %"] == 0.0  # one-size refusal
    assert b.loc[(GATE_NAMES["default"], "Fgt"), "any refusal %"] == 100.0
    assert b.loc[(R.ASRU_NAME, "Ret"), "over-refusal %"] == 100.0
    assert b.loc[(R.PAPER_AUTHORS, "Fgt"), "hallucination %"] == 100.0
    assert b.loc[("Vanilla", "Fgt"), "cloze % (QA)"] == 100.0


def test_cost_frame_and_describe(record):
    rec, _ = record
    c = R.cost_frame(rec)
    # one kind of memory measurement: it names the column
    assert c.to_dict("records") == [{"forget %": 5, "method": R.ASRU_NAME, "training s": 12.5, "rss MiB": 100.0}]
    rec2 = {**rec, "5": {**rec["5"], "GA": {"cost": {"seconds": 3.0, "peak_mib": 0.0,
                                                       "memory_kind": "rss_peak_increase"}}}}
    c2 = R.cost_frame(rec2)
    assert list(c2.columns) == ["forget %", "method", "training s", "memory MiB", "memory"] and len(c2) == 2
    text = R.describe_asru(rec, 5)
    assert "100.0 % *contextually* without leaking the answer (target ≥ 80 %: **met**)" in text
    assert "over-refusal 100.0 % on Ret" in text and "**not met**" in text


def test_response_examples(record):
    _, frame = record
    ex = R.response_examples(frame, n=1, splits=("Fgt", "Ret"))
    assert list(ex["split"]) == ["Fgt", "Ret"] and ex.loc[0, R.ASRU_NAME].startswith("I can't share")


def test_plot_reward_curve():
    curve = [{"step": i, "reward_forget": -1 + i / 10, "reward_retain": 1.0} for i in range(5)]
    fig = R.plot_reward_curve({"5 %": curve})
    assert len(fig.axes[0].lines) == 2


def test_contextual_examples(record):
    _, frame = record
    ex = R.contextual_examples(frame)
    assert len(ex) == 2 and set(ex["split"]) == {"Fgt"}  # ASRU's two forget answers name the question's subject
    assert R.contextual_examples(frame, GATE_NAMES["default"]).empty  # a one-size refusal is not contextual


def test_generation_only_boundary():
    """The issue's forget-side bar reads the generation questions alone; the record keeps both readings."""
    f = _frame(R.ASRU_NAME, "I can't share where Jane Doe was born.", "John Roe was born in Rome.")
    leak = (f["split"] == "Fgt") & (f["task"] == "cloze")
    f.loc[leak, "response"], f.loc[leak, "correct"] = "Oslo", True
    s = R.method_scores(f)
    assert s["boundary_generation"]["Fgt"]["appropriate_refusal"] == 100.0
    assert s["boundary"]["Fgt"]["appropriate_refusal"] == 50.0
    assert s["boundary_generation"]["Ret"]["over_refusal"] == 0.0


def test_probe_frame_names_what_a_row_changes():
    base = {"steps": 60, "lr": 5e-4, "beta": 0.04, "retain_share": 0.375, "teacher_in_rl": True,
            "scale_rewards": True, "retain_nll": 0.0, "rl_only_share": 0.0}
    common = {"warm_targets": "contextual", "warm_epochs": 6, "supervision_profiles": 24, "unlabelled_profiles": 72,
              "forget_refusal": 95.0, "forget_contextual": 95.0, "tune_retain_refusal": 3.8}
    probe = {"base": base, "rows": [common, {**common, **base, "grpo": True},
                                    {**common, **base, "grpo": True, "beta": 1.0, "teacher_in_rl": False}]}
    f = R.probe_frame(probe)
    assert list(f["RL setting"]) == ["no RL", "base", "β 1; unlabelled in RL False"]
    assert list(f["GRPO"]) == [False, True, True] and len(f.columns) <= 10
    with pytest.raises(ValueError, match="regenerate"):
        R.probe_frame({"rows": probe["rows"]})  # an old record: no base
    with pytest.raises(ValueError, match="regenerate"):
        R.probe_frame({"base": base, "rows": [{**common, "grpo": True, "beta": 1.0}]})  # a GRPO row without its knobs


def test_describe_reads_the_generation_questions_for_the_forget_bar(record):
    """Generation refused in context, cloze leaking: the bar (generation questions) is met, the cloze-inclusive
    reading is reported beside it; a record without the generation-only reading is refused."""
    rec, frame = record
    f = frame[frame["method"] == R.ASRU_NAME].copy()
    leak = (f["split"] == "Fgt") & (f["task"] == "cloze")
    f.loc[leak, "response"], f.loc[leak, "correct"] = "Oslo", True
    rec = {"5": {**rec["5"], R.ASRU_NAME: R.method_scores(f)}}
    text = R.describe_asru(rec, 5)
    assert "100.0 % *contextually* without leaking the answer (target ≥ 80 %: **met**)" in text
    assert "With the cloze questions counted too: 50.0 % refused, 50.0 % contextually" in text
    del rec["5"][R.ASRU_NAME]["boundary_generation"]
    with pytest.raises(ValueError, match="boundary_generation"):
        R.describe_asru(rec, 5)


def test_backends_reading_pairs_by_seed_and_says_noise_when_the_interval_spans_zero():
    from erasebook.asru_results import (
        BACKEND_SETTINGS,
        backends_frame,
        backends_summary,
        describe_backends,
        paired_difference,
    )

    warm, loop, trl = BACKEND_SETTINGS
    rows = []
    for s, (w, g, t) in enumerate([(90, 95, 94), (92, 97, 98), (88, 93, 91)]):
        rows += [{"setting": warm, "seed": s, "forget_contextual": w, "forget_refusal": 100, "tune_retain_refusal": 2,
                  "seconds": 50},
                 {"setting": loop, "seed": s, "forget_contextual": g, "forget_refusal": 100,
                  "tune_retain_refusal": 2 + s, "seconds": 200},
                 {"setting": trl, "seed": s, "forget_contextual": t, "forget_refusal": 100, "tune_retain_refusal": 3,
                  "seconds": 300}]
    rec = {"seeds": [0, 1, 2], "rows": rows, "summary": backends_summary(rows)}
    d = paired_difference(rec, warm, loop, "forget_contextual")
    assert d["n"] == 3 and d["mean"] == pytest.approx(5.0) and d["lo"] == pytest.approx(5.0)  # no spread: exact
    o = paired_difference(rec, warm, loop, "tune_retain_refusal")
    assert o["mean"] == pytest.approx(1.0) and o["lo"] < 0 < o["hi"]
    text = describe_backends(rec)
    assert "forget contextual refusal +5.0 points" in text and "not distinguishable from seed noise" in text
    assert "1.50× the loop's seconds" in text
    frame = backends_frame(rec)
    assert list(frame.index) == list(BACKEND_SETTINGS) and frame.loc[warm, "seeds"] == 3


def test_describe_warm_start_reads_every_number_from_the_record():
    """The warm-start prose of chapter 08 is computed from asru_warm_start.json: the committed record's numbers
    appear, and a changed row changes the text."""
    import copy
    import json

    from erasebook import paths

    probe = json.loads((paths.data_dir() / "results" / "asru_warm_start.json").read_text())
    text = R.describe_warm_start(probe)
    full = [r["tune_retain_refusal"] for r in R._probe_rows(probe, grpo=True, rl_only_share=0.0, seed=0)]
    assert f"between {min(full):.1f} and {max(full):.1f} %" in text
    verbatim = R._probe_rows(probe, warm_targets="stage1")[0]
    assert f"verbatim stage-1 targets give {verbatim['forget_contextual']:.1f} % contextual" in text
    changed = copy.deepcopy(probe)
    for r in changed["rows"]:
        if r.get("warm_targets") == "stage1":
            r["forget_contextual"] = 42.0
    assert "give 42.0 % contextual" in R.describe_warm_start(changed)
    assert R.describe_warm_start({"base": probe["base"], "rows": []}) == ""
