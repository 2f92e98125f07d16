"""erasebook.recipes on the tiny random LLaVA + a tiny world: the shared gate set-up, the selectivity record, and
the tables and sentences the result chapters show (they must run, carry the measured numbers, and be consistent)."""

from __future__ import annotations

import dataclasses
import warnings

import pandas as pd
import pytest
import torch

import erasekit as ek
from erasebook import ablations, recipes, report, runs
from erasebook import cache as ekcache
from erasebook.session import load_session
from erasebook.world import make_world


@pytest.fixture(scope="module")
def setup(tiny_llava, tmp_path_factory):
    import os

    old = os.environ.get("ERASEKIT_CACHE")
    os.environ["ERASEKIT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    ekcache._MEMO.clear()
    session = load_session(tiny_llava, make_world(20, 4, image_size=28))
    cfg = recipes.GateConfig(lambda_grid=(0.5, 2.0), max_new_tokens=2, pgd_steps=2, n_images=1, k=1, n_pairs=4,
                             direction_filter=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = recipes.gate_setup(session, cfg)
    yield s
    ekcache._MEMO.clear()
    if old is None:
        os.environ.pop("ERASEKIT_CACHE", None)
    else:
        os.environ["ERASEKIT_CACHE"] = old


def test_gate_setup_fits_both_gates_by_their_rules(setup):
    assert set(setup.strengths) == {"paper", "default"}
    paper, default = setup.steerer("paper"), setup.steerer("default")
    assert paper.meta["gate"] == "nullspace" and default.meta["gate"] == "contrastive"
    assert default.floors and set(default.meta["selection"]["layers"]) == set(default.layers)
    assert setup.steering("default").read == "frozen" and setup.steering("paper").read == "steered"
    frame = report.strengths_frame(setup)
    assert set(frame.index.get_level_values("gate")) == set(recipes.GATE_NAMES.values())
    text = report.describe_choices(setup)
    assert f"layers {default.layers}" in text and "λ =" in text


def test_gate_selectivity_record_shape_and_disjointness(setup):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rec = recipes.gate_selectivity(setup.session, setup)
    assert rec["ret_disjoint_from_fit"] is True
    for key in ("vanilla", "paper", "default"):
        assert set(rec[key]["QA"]) == {"classification", "generation", "recall", "cloze", "refused", "wrong"}
        assert set(rec[key]["QA"]["cloze"]) == {"Fgt", "Test", "Ret", "Cele"}
    assert rec["default"]["params"]["read"] == "frozen" and rec["paper"]["params"]["null_space"] == 0.3
    assert 0 <= rec["vanilla"]["QA"]["cloze"]["Fgt"] <= 100 and 0 <= rec["vanilla"]["QA"]["generation"]["Ret"] <= 1


def test_result_tables_and_sentences(setup):
    kw = dict(max_new_tokens=2, progress=False, modes=("QA",))
    frames = {
        5: pd.concat(
            [runs.evaluate_steering(setup.session, 5, None, **kw)]
            + [
                runs.evaluate_steering(setup.session, 5, setup.steering(g), method=recipes.GATE_NAMES[g], **kw)
                for g in ("paper", "default")
            ],
            ignore_index=True,
        )
    }
    tables = {5: ek.results_table(frames[5])}
    text = report.describe_table1(tables)
    assert "**5 %**" in text and recipes.GATE_NAMES["default"] in text
    aucs = report.heldout_auc_by_split(setup, [5, 10])
    assert set(aucs) == {5, 10} and all(0 <= a <= 1 for a in aucs.values())
    assert "held-out gate AUC" in report.describe_table1(tables, aucs)
    points = report.tradeoff_points(frames)
    assert set(points["method"]) == {"Vanilla", *recipes.GATE_NAMES.values()}
    assert "retain-minus-forget" in report.describe_tradeoff(points)
    beside = report.paper_beside_ours(tables[5])
    sources = list(beside.index.get_level_values("source"))
    assert "paper, Table 6" in sources and "ours" in sources
    assert beside.attrs["caption"].startswith("Text questions (QA)")
    # each paper row directly above ours for the same method: the paper's MLLMEraser beside our paper gate
    pg = beside.xs(recipes.GATE_NAMES["paper"], level="method")
    assert len(pg) == 2 and pg.index[0].startswith("paper") and pg.index[1].startswith("ours")
    cases = report.case_studies(frames[5], [recipes.GATE_NAMES["default"]])
    assert {"ground truth", "vanilla", recipes.GATE_NAMES["default"]} <= set(cases.columns)


def test_ablation_and_cascade_helpers(setup):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        variants = {"ours": setup.steering("default"), "no floor": recipes.gate_variant(setup, floor=False),
                    "steered read": recipes.gate_variant(setup, read="steered")}
        table = ablations.ablation_table(setup, variants, tasks=("generation", "cloze"))
        reads = report.cascade_table(setup)
    assert list(table.index) == ["Vanilla", "ours", "no floor", "steered read"]
    assert "Selectivity" in ablations.describe_ablation(table, "ours")
    assert {"steered", "frozen", "fitting data"} <= set(reads.index.get_level_values("reading"))
    assert "extra prefill" in report.describe_cascade(reads)


def test_chapter07_grids(setup):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        variants, pgd = ablations.pgd_budget_variants(setup, [setup.config.eps])
        text_only = dataclasses.replace(setup, config=dataclasses.replace(setup.config, fit_modes=("QA",)))
        grid = ablations.nullspace_gate_grid(text_only, [0.3, 0.5], [0.1, 1.0], exact_retain=1, exact_celeb=1)
    assert list(variants) == [f"direction from PGD ε = {round(setup.config.eps * 255)}/255"]
    assert list(pgd.columns) == ["PGD loss drop"]
    assert grid["auc"].shape == (2, 2) and ((grid["auc"] >= 0) & (grid["auc"] <= 1)).all().all()
    assert 0 <= grid["exact_auc"] <= 1 and grid["layer"] == setup.steerer("paper").layers[-1]
    assert "held-out AUC spans" in ablations.describe_nullspace_ablation(
        grid["auc"], grid["records"], grid["exact_auc"], grid["small"], setup.steerer("default"))


def test_describe_refusal_quality():
    import pandas as pd

    rows = []
    for m, ref, ctx, hal, over in (("Vanilla", 0, 0, 0, 0), ("gate", 65, 10, 26, 2.5)):
        for split, side in (("Fgt", "forget"), ("Test", "forget"), ("Ret", "retain"), ("Cele", "retain")):
            rows.append({"method": m, "split": split, "side": side, "refusal": ref, "contextual_refusal": ctx,
                         "hallucination": hal, "over_refusal": over, "rigid_refusal_share": 0.5})
    text = report.describe_refusal_quality(pd.DataFrame(rows))
    assert "gate: refuses 65 % of forget questions, 10 % contextually, answers 26 % confidently wrong" in text
    assert "Vanilla" not in text and "50 % of its refusals are one same string" in text
    assert "over-refuses 2.5 % (retain)" in text and "mostly stock refusals" in text


def test_vqa_sentences_follow_the_numbers():
    """The image-question verdicts are read from the table, not typed: chance vs a measured drop."""
    methods = ["Vanilla", recipes.GATE_NAMES["paper"], recipes.GATE_NAMES["default"]]
    idx = pd.MultiIndex.from_tuples([("VQA", m) for m in methods], names=["mode", "method"])
    cols = pd.MultiIndex.from_tuples([("cloze", g) for g in ("Fgt", "Ret", "Cele")], names=["task", "split"])
    low = pd.DataFrame([[12, 13, 11], [12, 12, 11], [11, 13, 10]], index=idx, columns=cols, dtype=float)
    assert "too close to nothing" in report._describe_vqa(low, 5)
    high = pd.DataFrame([[90, 88, 86], [85, 80, 80], [20, 84, 83]], index=idx, columns=cols, dtype=float)
    text = report._describe_vqa(high, 5)
    assert "Fgt 90 → 20" in text and "too close" not in text
    aucs = pd.DataFrame({"AUC": [0.9, 0.55]}, index=pd.MultiIndex.from_tuples(
        [("g", "QA", 3), ("g", "VQA", 3)], names=["gate", "mode", "layer"]))
    assert "do not (0.55)" in report._compare_modes(aucs)
    aucs["AUC"] = [0.9, 0.85]
    assert "0.85 for" in report._compare_modes(aucs)


def test_score_summary_reports_how_generation_fails():
    import pandas as pd

    from erasebook.recipes import score_summary

    rows = [("QA", "generation", "Fgt", 0.2, False, "refusal"), ("QA", "generation", "Fgt", 0.3, False, "wrong"),
            ("QA", "generation", "Fgt", 1.0, True, "correct"), ("QA", "generation", "Fgt", 0.1, False, "refusal"),
            ("QA", "cloze", "Fgt", 1.0, True, "correct"), ("QA", "cloze", "Fgt", 0.0, False, "wrong")]
    frame = pd.DataFrame(rows, columns=["mode", "task", "split", "score", "correct", "category"])
    out = score_summary(frame)["QA"]
    assert out["cloze"]["Fgt"] == 50.0 and out["recall"]["Fgt"] == 25.0
    assert out["refused"]["Fgt"] == 50.0 and out["wrong"]["Fgt"] == 25.0  # generation answers only
    assert out["generation"]["Fgt"] == 0.4


def test_asru_stage1_strength_rule_and_cache(setup, monkeypatch):
    """ASRU's stage-1 λ: chosen from the grid by the stated refusal rule, recorded with its scores, cached."""
    from erasebook import asru_results

    out = asru_results.stage1_strength(setup.session, setup, 5, grid=(0.5, 2.0), n=4, max_new_tokens=2)
    assert [s[0] for s in out["scores"]] == [0.5, 2.0] and out["chosen"] in (0.5, 2.0)
    ok = [s for s in out["scores"] if s[2] <= out["tune_refusal_vanilla"] + 0.1] or out["scores"][:1]
    best = max(s[1] for s in ok)
    assert out["chosen"] == min(s[0] for s in ok if s[1] == best)
    assert all(0 <= s[1] <= 1 and 0 <= s[2] <= 1 for s in out["scores"])
    import erasekit.generation

    def no_generation(*a, **k):
        raise AssertionError("a cached choice must not generate")

    with monkeypatch.context() as m:
        m.setattr(erasekit.generation, "generate", no_generation)
        again = asru_results.stage1_strength(setup.session, setup, 5, grid=(0.5, 2.0), n=4, max_new_tokens=2)
    assert again == out
    other = asru_results.stage1_strength(setup.session, setup, 5, grid=(2.0,), n=4, max_new_tokens=2)
    assert other["chosen"] == 2.0 and len(other["scores"]) == 1


def test_asru_is_attacked_as_a_weight_based_method(setup, monkeypatch):
    """The attack suite trains ASRU as asru_record does (same stage 1, data, seed) and attacks its weights."""
    from erasebook import asru_results, leakage
    from erasekit.asru import ASRUConfig

    # the tiny world has fewer fit profiles than the organism's 55 % of unlabelled people
    monkeypatch.setitem(asru_results.TRAIN, "teacher_fraction", 0.2)

    cfg = ASRUConfig(steps=1, prompts_per_step=2, group_size=2, max_new_tokens=4, warm_epochs=1, warm_batch=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        methods = leakage.method_targets(setup.session, setup, baselines=(), asru=cfg)
        assert asru_results.ASRU_NAME in methods and "Vanilla" in methods
        m = methods[asru_results.ASRU_NAME]
        stage1 = asru_results.asru_stage1(setup.session, setup, 5)[0]
        assert m.key["asru"]["steps"] == 1 and m.key["stage1"] == stage1.key()
        target = m.build()
        from erasebook.cache import STATS
        misses, hits = STATS["asru_weights:miss"], STATS["asru_weights:hit"]
        again = m.build()   # chapter 09 after chapter 08: the trained weights are read back, not retrained
        assert (STATS["asru_weights:miss"], STATS["asru_weights:hit"]) == (misses, hits + 1)
    assert target.weight_based and target.steering is None
    rebuilt = again.adapter.model.state_dict()
    assert all(torch.equal(v, rebuilt[k]) for k, v in target.adapter.model.state_dict().items())
    vanilla = setup.session.adapter.model.state_dict()
    trained = target.adapter.model.state_dict()
    assert any(not torch.equal(vanilla[k], trained[k]) for k in vanilla if k in trained)
    assert asru_results.ASRU_NAME not in leakage.method_targets(setup.session, setup, baselines=(), asru=None)
    with pytest.raises(TypeError, match="ASRUConfig"):
        leakage.method_targets(setup.session, setup, baselines=(), asru={"steps": 1})


def test_asru_training_data_is_held_out(setup):
    """ASRU's supervision and unlabelled profiles come from the partition's fit role: never a scored (eval) or a
    tuning profile; the two parts are disjoint; asking for more than the fit role holds is a clear error."""
    from erasebook import asru_results
    from erasebook.pipeline import group_rows

    s = setup.session
    data = asru_results.asru_queries(s, 5, retain_fraction=0.1, teacher_fraction=0.2)
    used = set(data.ids["retain"]) | set(data.ids["celebrities"])
    unl = set(data.ids["unlabelled"])
    assert used and unl and not used & unl
    for role in ("eval", "tune"):
        rows = group_rows(s, 5, ("Ret", "Cele"), role)
        assert not (used | unl) & {r["ID"] for rs in rows.values() for r in rs}
    assert all(q.gold is None and not q.is_forget for q in data.unlabelled)
    assert all(q.gold for q in data.retain) and all(q.is_forget for q in data.forget)
    with pytest.raises(ValueError, match="fit Ret profiles"):
        asru_results.asru_queries(s, 5, retain_fraction=0.5, teacher_fraction=0.9)


def test_warm_start_probe_reports_each_setting(setup):
    from erasebook import asru_results

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = asru_results.warm_start_probe(setup.session, setup, 5, [
            {"retain_fraction": 0.1, "teacher_fraction": 0.0, "warm_epochs": 1, "warm_targets": "stage1"},
            {"retain_fraction": 0.1, "teacher_fraction": 0.2, "warm_epochs": 1}], n_tune=3)
    assert len(rows) == 2 and rows[0]["teacher_targets"] == 0 and rows[1]["unlabelled_profiles"] > 0
    for r in rows:
        assert 0 <= r["forget_refusal"] <= 100 and 0 <= r["tune_retain_refusal"] <= 100 and r["n_tune"] == 3
        assert r["forget_contextual"] <= r["forget_refusal"]


def test_refusal_check_sentence_follows_a_stated_effect_size():
    """02's verdict: 'causally tied' only when adding and ablating each move refusal by MIN_EFFECT_POINTS or more;
    +3 points (one prompt of 32) is called what it is."""
    import pandas as pd

    from erasebook.safety import MIN_EFFECT_POINTS, describe_refusal_check

    idx = pd.MultiIndex.from_tuples([("harmless", "none"), ("harmless", "add 1·d"), ("harmful", "none"),
                                     ("harmful", "ablate d")])

    def say(v):
        return describe_refusal_check(pd.DataFrame({"refusal_rate": v, "n": [32, 32, 88, 88]}, index=idx), 1.0)

    assert "causally tied" not in say([0, 3.1, 100, 96.6]) and "Neither" in say([0, 3.1, 100, 96.6])
    assert "causally tied" in say([0, 50, 100, 10])
    assert "only ablating" in say([0, 3.1, 100, 10]) and "only adding" in say([0, 50, 100, 96])
    assert "only part" in say([0, 40, 100, 60]) and MIN_EFFECT_POINTS == 10


def test_steered_examples_sentence_counts_what_the_push_did():
    import pandas as pd

    from erasebook.safety import describe_steered_examples

    ex = pd.DataFrame({"vanilla": ["Paris.", "A cat.", "Blue."],
                       "add": ["I'm sorry, but I can't help with that.", "goldfish apologize", "Blue."]})
    text = describe_steered_examples(ex, "add")
    assert "turns 1 into a refusal, changes 1 without refusing" in text and "leaves 1" in text
