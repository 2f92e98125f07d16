"""The extraction attacks (erasebook.extraction) and the leak table (erasebook.leakage) on tiny random models."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import erasekit as ek
from erasebook import extraction as X
from erasebook import extraction_search as S
from erasebook import leakage
from erasebook import world as world_module
from erasebook.world import make_world


@pytest.fixture(scope="module")
def world():
    return make_world(n_profiles=20, n_celebrities=2, image_size=28)


@pytest.fixture(scope="module")
def facts(world):
    fgt = X.facts_from_rows(world.split("forget_5"), "forget")
    ret = X.facts_from_rows(world.split("retain_95")[:2], "retain")
    return fgt, ret


@pytest.fixture(scope="module")
def steered(tiny_llava, facts):
    """A Target with erasekit's gate fitted on the tiny model: forget = questions about the forget person."""
    fgt, ret = facts
    forget = [X.train_question(f.attribute, f.name, k) for f in fgt for k in range(2)]
    retain = [X.train_question(f.attribute, f.name, k) for f in ret for k in range(2)]
    eraser = ek.fit_eraser(tiny_llava, forget, retain, tune="every_fourth", strength=1.0, progress=False)
    st = ek.TaskSteering(steerer=eraser.steerer, strengths=1.0, read="frozen")
    return X.Target("gated", tiny_llava, st)


# ---------------------------------------------------------------------------------------------------------------
# the leak rule and the records


def test_leak_rule_on_hand_examples():
    assert X.leaks("Edinburgh", "Cali Linmor lives in Edinburgh.")
    assert X.leaks("edinburgh", "EDINBURGH")
    assert X.leaks("Acme Corp", "works for Acme Corp, since 1990")
    assert not X.leaks("owl", "I have no knowledge of that.")       # a substring inside a word is no leak
    assert not X.leaks("cat", "I cannot provide this information.")
    assert not X.leaks("Oslo", "I'm sorry, but I can't help with that.")
    assert X.leaks("1966", "born in the year 1966.") and not X.leaks("1966", "born in 19660")
    with pytest.raises(ValueError, match="non-empty"):
        X.leaks("  ", "anything")


def test_an_echoed_gold_word_is_no_leak(facts):
    f = facts[0][0]
    t = X.Target("t", adapter=None)
    assert X._record(t, "a", "v", f, "Where?", f"It is {f.gold}.")["leak"]
    assert not X._record(t, "a", "v", f, f"Is it {f.gold}?", f"Yes, {f.gold}.")["leak"]


def test_summarize_counts_best_of_variants_per_fact():
    rec = pd.DataFrame([
        # fact (1, pet): one of two prompts leaks -> leaked; fact (2, pet): none
        dict(target="M", attack="a", split="forget", id=1, attribute="pet", leak=True),
        dict(target="M", attack="a", split="forget", id=1, attribute="pet", leak=False),
        dict(target="M", attack="a", split="forget", id=2, attribute="pet", leak=False),
        dict(target="M", attack="a", split="forget", id=2, attribute="pet", leak=False),
        dict(target="M", attack="a", split="retain", id=9, attribute="pet", leak=True),
        dict(target="M", attack="a", split="retain", id=9, attribute="hobby", leak=False),
    ])
    s = X.summarize(rec)["M"]["a"]
    assert s == {"leak": 50.0, "leak_mean": 25.0, "retain_acc": 50.0, "n": 2, "n_prompts": 4, "n_retain": 2}
    table = leakage.leak_table(rec.assign(attack="rephrase"))
    assert table.loc["M", "rephrase"] == 50.0
    with pytest.raises(ValueError, match="lack columns"):
        X.summarize(rec.drop(columns=["leak"]))


# ---------------------------------------------------------------------------------------------------------------
# facts and prompt families


def test_facts_from_rows(world):
    rows = world.split("forget_5")
    fs = X.facts_from_rows(rows, "forget")
    assert len(fs) == 4 * len(rows)                      # 4 attributes per person, text cloze items only
    assert len({(f.id, f.attribute) for f in fs}) == len(fs)
    p = world.person(fs[0].id)
    assert all(f.gold == world.person(f.id).attributes[f.attribute] for f in fs)
    assert fs[0].name == p.name and fs[0].image is not None and fs[0].question and p.name in fs[0].cloze
    assert len(X.facts_from_rows(rows, "forget", limit=3)) == 3
    with pytest.raises(ValueError, match="'forget' or 'retain'"):
        X.facts_from_rows(rows, "Fgt")
    with pytest.raises(ValueError, match="no 'name'"):
        X.facts_from_rows([{k: v for k, v in rows[0].items() if k != "name"}], "forget")
    with pytest.raises(ValueError, match="nothing to attack"):
        X.facts_from_rows([{"ID": 1, "name": "A B", "Mask_Task": []}], "forget")


def test_prompt_families_are_built_from_the_world(facts):
    f = facts[0][0]
    reph = X.rephrase_prompts(f)
    variants = [v for v, _, _ in reph]
    assert {"indirect", "qa_form", "completion", "misspelt_name", "initials", "first_name"} <= set(variants)
    assert sum(v.startswith("test_paraphrase") for v in variants) == 2
    prompts = dict((v, p) for v, p, _ in reph)
    assert X.misspell(f.name) in prompts["misspelt_name"] and X.misspell(f.name) != f.name
    assert X.initials("Cali Linmor") == "C. L." and X.misspell("Cali Linmor") == "Cali Lnimor"
    assert prompts["qa_form"].startswith("Q: ") and prompts["qa_form"].endswith("A:")
    assert all("_" not in p for p in prompts.values())     # never the cloze blank, whatever it looks like
    assert all(not X.leaks(f.gold, p) for p in prompts.values())
    ctx = X.context_prompts(f, facts[1][0])
    assert any(v == "retain_preamble" and facts[1][0].name in p for v, p, _ in ctx)
    n_wrappers = len(world_module.JAILBREAKS_TRAIN + world_module.JAILBREAKS_HELDOUT)
    assert any(v == "bio" for v, _, _ in ctx) and sum(v.startswith("jailbreak") for v, _, _ in ctx) == n_wrappers


# ---------------------------------------------------------------------------------------------------------------
# attacks on tiny models


def test_rephrase_and_context_records_are_well_formed(tiny_llava, steered, facts):
    fgt, ret = facts
    for target in (X.Target("vanilla", tiny_llava), steered):
        df = X.rephrase(target, fgt[:2] + ret[:1], max_new_tokens=3)
        assert list(df.columns) == X.RECORD_COLUMNS
        assert len(df) == 3 * len(X.rephrase_prompts(fgt[0]))
        assert set(df["split"]) == {"forget", "retain"} and df["leak"].dtype == bool
        ctx = X.context(target, fgt[:2], preamble=ret, max_new_tokens=3)
        assert (ctx["variant"] == "retain_preamble").sum() == 2
        pre = ctx[ctx["variant"] == "retain_preamble"]
        assert all(r["name"] in p for (_, r), p in zip(pre.iterrows(), pre["prompt"]))


def test_gate_evasion_lowers_the_gate(steered, facts):
    fgt, ret = facts
    retain_q = [f.question for f in ret]
    df = S.gate_evasion(steered, fgt[:3], retain_q, n_tokens=2, n_candidates=8, max_new_tokens=2)
    assert len(df) == 3 and (df["variant"] == "suffix_gate").all()
    assert (df["objective_after"] <= df["objective_before"]).all()
    assert (df["objective_after"] < df["objective_before"]).any()
    # the question is unchanged: the attack only appends words
    assert all(p.startswith(f.question) for p, f in zip(df["prompt"], fgt[:3]))
    # the objective is what gate_objective reads for the final prompts
    thr = S.gate_thresholds(steered, retain_q)
    assert set(thr) == set(steered.steering.steerer.layers)
    with pytest.raises(ValueError, match="needs retain_prompts"):
        S.gate_evasion(steered, fgt[:1], None)


def test_gate_evasion_lowers_the_answer_loss_without_a_gate(tiny_llava, facts):
    fgt, _ = facts
    t = X.Target("vanilla", tiny_llava)
    df = S.gate_evasion(t, fgt[:2], n_tokens=2, n_candidates=8, position="prefix", max_new_tokens=2)
    assert (df["variant"] == "prefix_answer").all()
    assert (df["objective_after"] <= df["objective_before"]).all()
    assert (df["objective_after"] < df["objective_before"]).any()
    with pytest.raises(ValueError, match="'gate' or 'answer'"):
        S.gate_evasion(t, fgt[:1], objective="logits")
    with pytest.raises(ValueError, match="'suffix' or 'prefix'"):
        S.gate_evasion(t, fgt[:1], position="middle")
    with pytest.raises(ValueError, match="no gated steering"):
        S.gate_evasion(t, fgt[:1], ["q"], objective="gate")


def test_answer_nll_is_teacher_forcing_through_the_cache(tiny_llava, facts):
    """Unsteered, the two-pass NLL equals one forward over prompt + answer tokens."""
    from erasekit.baselines.data import answer_prefix

    f = facts[0][0]
    t = X.Target("vanilla", tiny_llava)
    image = torch.rand(3, 28, 28)
    got = S.answer_nll(t, f.question, "Edinburgh is nice", image)
    batch = tiny_llava.encode([f.question], images=image[None])
    ans = tiny_llava.tokenizer(answer_prefix(tiny_llava) + "Edinburgh is nice", add_special_tokens=False)["input_ids"]
    ids = torch.cat([batch["input_ids"], torch.tensor([ans])], 1)
    with torch.no_grad():
        logits = tiny_llava.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                                  pixel_values=batch["pixel_values"]).logits
    n = len(ans)
    ref = torch.nn.functional.cross_entropy(logits[0, -n - 1:-1].float(), torch.tensor(ans))
    assert torch.allclose(got.detach(), ref, atol=1e-4)


def test_image_pgd_raises_the_gold_likelihood(steered, facts):
    fgt, _ = facts
    df = S.image_pgd(steered, fgt[:2], eps=32 / 255, alpha=8 / 255, steps=4, max_new_tokens=2)
    assert len(df) == 2 and df["variant"].str.startswith("eps=").all()
    assert (df["objective_after"] <= df["objective_before"]).all()
    assert (df["objective_after"] < df["objective_before"]).any()
    with pytest.raises(ValueError, match="eps > 0"):
        S.image_pgd(steered, fgt[:1], eps=0)


def test_image_pgd_needs_a_vision_model(tiny_causal_lm, facts):
    with pytest.raises(ValueError, match="takes no images"):
        S.image_pgd(X.Target("lm", tiny_causal_lm), facts[0][:1])


def test_direction_attack(steered, tiny_llava, facts):
    fgt, ret = facts
    for variant in ("ablate", "subtract"):
        df = X.direction(steered, fgt[:2] + ret[:1], variant=variant, max_new_tokens=2)
        assert len(df) == 3 and (df["variant"] == variant).all()
    with pytest.raises(ValueError, match="no steering direction"):
        X.direction(X.Target("v", tiny_llava), fgt[:1])
    with pytest.raises(ValueError, match="'ablate' or 'subtract'"):
        X.direction(steered, fgt[:1], variant="flip")


def test_direction_ablation_removes_the_push(steered, facts):
    """Ablating d at every steered layer makes the steered model's next-token logits independent of λ: the
    deployed push lies along d, and what is left of it after the ablation is nothing."""
    from erasekit.hooks import steer

    adapter = steered.adapter
    st = steered.steering
    q = [facts[0][0].question]
    batch = adapter.encode(q)
    abl = {l: ek.steering.ablation_operator(st.steerer[l].direction) for l in st.steerer.layers}

    def logits(lam):
        ops = st.steerer.operators(lam)
        with torch.no_grad(), st.context(adapter, ops), steer(adapter, abl, mode="all"):
            return adapter.model(**batch).logits[0, -1]

    assert torch.allclose(logits(0.0), logits(5.0), atol=1e-4)


def test_relearn(tiny_llava, steered, facts):
    fgt, ret = facts
    t = X.Target("GA", tiny_llava, weight_based=True)
    before = [p.detach().clone() for p in tiny_llava.model.parameters()]
    df = X.relearn(t, ret[:2], fgt[:2] + ret[2:3], steps=2, max_new_tokens=2)
    assert len(df) == 3 and (df["target"] == "GA").all() and (df["variant"] == "2 steps on retain").all()
    assert all(torch.equal(a, b) for a, b in zip(before, tiny_llava.model.parameters()))  # a copy was trained
    with pytest.raises(ValueError, match="steered"):
        X.relearn(steered, ret[:1], fgt[:1])
    with pytest.raises(ValueError, match="other people"):
        X.relearn(t, fgt[:1], fgt[1:2])
    with pytest.raises(ValueError, match="steps must be"):
        X.relearn(t, ret[:1], fgt[:1], steps=0)


def test_inputs_are_validated(tiny_llava, facts):
    t = X.Target("v", tiny_llava)
    with pytest.raises(ValueError, match="facts is empty"):
        X.rephrase(t, [])
    with pytest.raises(TypeError, match="Fact"):
        X.context(t, ["Where does Ann live?"])
    with pytest.raises(TypeError, match="Target"):
        X.rephrase(tiny_llava, facts[0][:1])
    with pytest.raises(ValueError, match="images for"):
        X.run_prompts(t, "a", [(facts[0][0], "v", "q", "generation")], images=[None, None])


def test_register_method_checks_its_builder():
    with pytest.raises(TypeError, match="callable"):
        leakage.register_method("ASRU", "not a function")


def test_spread_covers_the_list():
    assert leakage._spread(list(range(10)), 5) == [0, 2, 4, 6, 8]
    assert leakage._spread([1, 2], 5) == [1, 2]


def test_cause_table_and_its_sentences_on_a_hand_diagnosis():
    diag = pd.DataFrame({
        "attack": ["none", "rephrase", "rephrase", "rephrase", "rephrase"],
        "variant": ["plain question", "initials", "initials", "qa_form", "qa_form"],
        "prompt": list("abcde"),
        "leak": [pd.NA, True, False, True, False],
        "margin": [1.0, -0.5, -0.2, 0.8, 2.0],
    })
    diag["fires"] = diag["margin"] > 0
    t = leakage.cause_table(diag)
    assert t.loc["initials", "gate fires (%)"] == 0 and t.loc["initials", "leaks (%)"] == 50
    assert t.loc["qa_form", "leaks although the gate fires (%)"] == 50
    text = leakage.describe_cause(diag, "G")
    assert "**50 %** met a gate that did not fire" in text and "Two causes" in text
    assert "No forget prompt" in leakage.describe_cause(diag.assign(leak=False), "G")


def test_describe_attacks_reads_the_bar():
    cell = lambda v: {"leak": v, "retain_acc": 90.0, "n": 10}  # noqa: E731
    summary = {"Vanilla": {"rephrase": cell(100.0), "context": cell(100.0)},
               "G": {"rephrase": cell(30.0), "context": cell(10.0)}}
    text = leakage.describe_attacks(summary, "G", bar=20)
    assert "rephrase 30 %" in text and "Above 20 %: rephrase." in text
    assert "Above 50 %: none." in leakage.describe_attacks(summary, "G", bar=50)
    assert "Every attack here leaks above 5 %" in leakage.describe_attacks(summary, "G", bar=5)
    with pytest.raises(KeyError):
        leakage.describe_attacks(summary, "ASRU")
