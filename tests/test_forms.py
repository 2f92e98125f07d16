"""Forms as data (erasekit.forms), the front door fitted on facts, and leave-one-form-out's disjointness."""

from __future__ import annotations

import pytest

import erasekit as ek
from erasebook import form_transfer as FT
from erasebook.world import make_world
from erasekit import forms as F


def _world_facts(n=6):
    w = make_world(20, 1, seed=0)
    return FT.organism_facts(w.people[:n])


def test_every_family_renders_and_never_shows_the_value():
    facts = F.capital_facts()[:8]
    ps = F.render(facts, pool=facts)
    fams = {p.family for p in ps}
    assert fams == set(F.FAMILIES) - {"portrait"}  # no images: no portrait prompts
    for p in ps:
        value_shown = p.fact.value.lower() in p.text.lower()
        assert value_shown == (p.family == "choice"), (p.family, p.text)  # only options name values
    choice = [p for p in ps if p.family == "choice"]
    assert all(p.letter in "ABCD" and f"{p.letter}. {p.fact.value}" in p.text for p in choice)
    # a fact renders the same whatever else is rendered with it (per-fact seeds)
    assert [p.text for p in F.render(facts[:1], pool=facts)] == [p.text for p in ps if p.fact == facts[0]]


def test_portrait_family_attaches_the_image_and_hides_the_name():
    img = object()
    f = F.Fact("Cali Linmor", FT.organism_relations()["residence"], "Edinburgh", image=img)
    ps = F.render([f], ["portrait", "question"])
    portrait = [p for p in ps if p.family == "portrait"]
    assert portrait and all(p.image is img and "Cali" not in p.text for p in portrait)
    assert all(p.image is None for p in ps if p.family == "question")
    assert portrait[0].prompt == (portrait[0].text, img)


def test_answered_rule():
    f = F.capital_facts(["France"])[0]
    q = F.FormPrompt("", None, "question", f)
    assert F.answered(q, "It is Paris.") and not F.answered(q, "I cannot share that.")
    assert not F.answered(q, "Parisian food")  # whole word
    c = F.FormPrompt("", None, "choice", f, "C")
    assert F.answered(c, "C") and not F.answered(c, "A. Rome")


def test_bad_relations_and_families_say_what_is_wrong():
    with pytest.raises(ValueError, match="end with"):
        F.Relation("x", ("What is {s}?",), "{v} is {s}.")
    with pytest.raises(ValueError, match="must contain"):
        F.Relation("x", ("What is it?",), "{s} is {v}.")
    with pytest.raises(ValueError, match="unknown form families"):
        F.render(F.capital_facts()[:2], ["riddle"])
    with pytest.raises(ValueError, match="no built-in capital"):
        F.capital_facts(["Atlantis"])


def test_split_subjects_holds_out_whole_people():
    facts = _world_facts(8)
    kept, held = F.split_subjects(facts)
    assert held and kept
    assert not {f.subject for f in kept} & {f.subject for f in held}
    subjects = list(dict.fromkeys(f.subject for f in facts))
    assert {f.subject for f in held} == {subjects[3], subjects[7]}  # every fourth person, all 8 facts of each
    assert len(held) == 2 * 8


def test_front_door_takes_facts_renders_forms_and_tunes_on_other_people(tiny_causal_lm):
    facts = F.capital_facts()[:12]
    forget, retain = facts[:4], facts[4:]
    er = ek.fit_eraser(tiny_causal_lm, forget, retain, forms=("question", "cloze"), strength=1.0, progress=False)
    m = er.steerer.meta
    assert m["forms"] == ["question", "cloze"]
    assert m["n_forget"] == 4 * (2 + 2)  # 4 facts x (2 questions + 2 cloze templates)
    # retain: 8 subjects, every fourth held out for the rules -> 2 subjects tune, 6 fit (4 prompts each)
    assert m["n_tune"] == 2 * 4 and m["n_retain"] == 6 * 4
    with pytest.raises(TypeError, match="not a mix"):
        ek.fit_eraser(tiny_causal_lm, forget + ["What is X?"], retain, progress=False)
    with pytest.raises(ValueError, match="gate must be one of"):
        ek.fit_eraser(tiny_causal_lm, forget, retain, gate="magic", progress=False)


def test_paper_gate_route_reads_steered_states(tiny_causal_lm):
    facts = F.capital_facts()[:12]
    er = ek.fit_eraser(tiny_causal_lm, facts[:4], facts[4:], forms=("question",), gate="paper", strength=1.0,
                       progress=False)
    assert er.read == "steered" and er.steerer.meta["gate"] == "nullspace"
    assert er.steerer.layers == list(range(1, tiny_causal_lm.num_layers))


def test_leave_one_form_out_never_fits_the_scored_family(tiny_causal_lm, monkeypatch):
    from erasebook import form_transfer as T

    seen = []
    real = T.fit_eraser

    def spy(adapter, forget, retain, **kw):
        seen.append(tuple(kw["forms"]))
        return real(adapter, forget, retain, **kw)

    monkeypatch.setattr(T, "fit_eraser", spy)
    facts = F.capital_facts()[:16]
    rec = T.leave_one_form_out(tiny_causal_lm, facts[:4], facts[4:12], {"retain": facts[12:]},
                               families=("question", "cloze", "completion"), gates=("default",),
                               harmless=["How do I bake bread?"] * 2, fit_kw={"strength": 1.0},
                               max_new_tokens=2, progress=False)
    assert set(rec["default"]) == {"question", "cloze", "completion"}
    for fam, forms in zip(("question", "cloze", "completion"), seen):
        assert fam not in forms and rec["default"][fam]["fit_forms"] == list(forms)
    r = rec["default"]["cloze"]
    assert {"forget_leak", "forget_vanilla", "retain", "retain_vanilla", "harmless_refusal"} <= set(r)


def test_locator_reads_the_subject_position_and_survives_save_load(tiny_causal_lm, tmp_path):
    import torch

    from erasekit.locate import fit_locator, subject_index, token_states

    ad = tiny_causal_lm
    texts = ["Where does Alice Smith live?", "Tell me about Bob Jones please."]
    H, off = token_states(ad, texts, None, [1], batch_size=2)
    ends = [off[i + 1] - 1 - subject_index(ad, t, s) for i, (t, s) in enumerate(zip(texts, ["Alice Smith",
                                                                                         "Bob Jones"]))]
    tail = ad.tokenizer(" please.", add_special_tokens=False)["input_ids"]
    assert ends[1] < off[2] - 1 - len(tail) + 1  # the subject ends before " please."
    y = torch.zeros(H[1].shape[0], dtype=torch.bool)
    y[torch.tensor(ends)] = True
    loc = fit_locator(H[1], y, ridge=1e-6)
    # left-padded batch: the locator's argmax over real tokens is the subject's last token
    h = torch.stack([torch.nn.functional.pad(H[1][off[i]:off[i + 1]], (0, 0, T - (off[i + 1] - off[i]), 0))
                     for i, T in enumerate([max(off[1], off[2] - off[1])] * 2)])
    mask = torch.stack([torch.arange(h.shape[1]) >= h.shape[1] - (off[i + 1] - off[i]) for i in range(2)])
    pos = loc.position(h, mask)
    assert [int(p) - (h.shape[1] - (off[i + 1] - off[i])) for i, p in enumerate(pos)] == \
        [e - off[i] for i, e in enumerate(ends)]
    facts = F.capital_facts()[:12]
    er = ek.fit_eraser(ad, facts[:4], facts[4:], forms=("question", "cloze"), strength=1.0, progress=False)
    assert er.steerer.meta["read_at"] == "subject" and set(er.steerer.locators) == set(er.steerer.layers)
    er.save(tmp_path / "e")
    back = ek.Eraser.load(tmp_path / "e")
    assert all(torch.equal(back.steerer.locators[l].weight, er.steerer.locators[l].weight) for l in er.steerer.layers)
    prompts = [p.text for p in F.render(facts[:2], ["question"])]
    assert back.generate(ad, prompts, max_new_tokens=3, progress=False) == \
        er.generate(ad, prompts, max_new_tokens=3, progress=False)
    # the hook reads the gate at the located position: the recorded gate equals the gate of that state
    vals = er.gate_values(ad, prompts[:1])
    l0 = er.steerer.layers[0]
    Hq, oq = token_states(ad, prompts[:1], None, [l0])
    at = er.steerer.locators[l0].read(Hq[l0][None], None)
    assert torch.allclose(vals[l0], er.steerer[l0].gate_value(at), atol=1e-5)
    with pytest.raises(ValueError, match="needs forget, retain"):
        ek.fit_eraser(ad, ["a"] * 4, ["b"] * 4, tune="every_fourth", read_at="subject", progress=False)


def test_transfer_verdict_and_text_follow_the_numbers():
    from erasebook.form_transfer import describe_transfer, transfer_table, transfer_verdict

    def r(leak, ret, harmless=0.0):
        return {"forget_leak": leak, "forget_vanilla": 100.0, "retain": ret, "retain_vanilla": 90.0,
                "harmless_refusal": harmless, "strength": 2.0}

    rec = {"default": {"cloze": r(10.0, 88.0), "context": r(60.0, 70.0, 10.0)}}
    v = transfer_verdict(rec, "default")
    assert v["met"] == ["cloze"] and set(v["missed"]["context"]) == {"leak 60 %", "retain -20 points",
                                                                     "harmless refused 10 %"}
    text = describe_transfer(rec, "default", "erasekit")
    assert "10–60 %" in text and "met on 1 of 2 forms" in text and "context at 60 %" in text
    rec["default"]["context"] = r(5.0, 89.0)
    assert "is met on all 2 forms" in describe_transfer(rec, "default", "erasekit")
    t = transfer_table(rec)
    assert t.loc["context", ("default", "leak %")] == 5.0


@pytest.mark.slow
def test_smollm2_locator_finds_the_country_in_a_form_it_never_saw():
    """SmolLM2-135M-Instruct (setup fetches it; skipped where absent): fitted on question and cloze forms of 12
    capitals, the located read lands on the country's last token in completion and indirect prompts."""
    import torch

    from erasekit.locate import subject_index, token_states
    from erasekit.models.smollm2 import smollm2_dir

    folder = smollm2_dir()
    if folder is None:
        pytest.skip("SmolLM2 not fetched (python -m erasekit.models.smollm2)")
    torch.set_num_threads(2)
    ad = ek.load_model(str(folder))
    facts = F.capital_facts()[:16]
    er = ek.fit_eraser(ad, facts[:6], facts[6:], forms=("question", "cloze"), strength=1.0, progress=False,
                       layers=[4, 8, 12])
    assert er.steerer.meta["read_at"] == "subject"
    ps = F.render(facts[:8], ["completion", "indirect"])
    texts = [p.text for p in ps]
    hits = []
    for l in er.steerer.layers:
        H, off = token_states(ad, texts, None, [l])
        for i, p in enumerate(ps):
            rows = H[l][off[i]:off[i + 1]]
            at = int(er.steerer.locators[l].scores(rows).argmax())
            hits.append(at == (off[i + 1] - off[i]) - 1 - subject_index(ad, p.text, p.fact.subject))
    assert sum(hits) / len(hits) >= 0.8, sum(hits) / len(hits)


def test_subject_index_is_the_names_last_token_before_punctuation():
    from erasebook import paths
    from erasekit.locate import subject_index
    from erasekit.models import load_model

    ad = load_model(str(paths.organism_dir()))
    for text in ("Remind me: what is the job of Loca Pervan?", "What was the job of Loca Pervan again?",
                 "Fill in the blank: Loca Pervan works as a __."):
        full = ad.build_prompts([text], [False])[0]
        ids = ad._tokenize(full)
        k = subject_index(ad, text, "Loca Pervan")
        assert ad.tokenizer.convert_ids_to_tokens([ids[len(ids) - 1 - k]])[0].endswith("Pervan"), text
    assert subject_index(ad, "Who is he?", "Loca Pervan") == 0  # absent: the last token
