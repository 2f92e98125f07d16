"""The front door (erasekit.eraser): fit from prompts on any adapter, generate with the erasure on, save / load."""

from __future__ import annotations

import pytest
import torch

import erasebook as eb
import erasekit as ek
from erasekit.scoring import is_refusal


def _prompts(n, who):
    return [f"Where does {who} number {i} live?" for i in range(n)]


def test_fit_generate_save_load_on_tiny_models(any_adapter, tmp_path):
    image = torch.rand(3, 28, 28) if any_adapter.is_multimodal else None
    forget = _prompts(6, "Alice") + ([("Who is this?", image)] if image is not None else [])
    retain = _prompts(8, "Bob")
    eraser = ek.fit_eraser(any_adapter, forget, retain, tune="every_fourth", strength=1.0, progress=False)
    assert eraser.strength == 1.0 and eraser.read == "frozen" and eraser.steerer.layers
    assert eraser.steerer.meta["n_tune"] == 2 and eraser.steerer.meta["n_retain"] == 6  # every 4th retain held out
    out = eraser.generate(any_adapter, forget[:3], max_new_tokens=3, batch_size=2, progress=False)
    assert len(out) == 3 and all(isinstance(o, str) for o in out)
    gates = eraser.gate_values(any_adapter, forget[:2] + retain[:2])
    assert set(gates) == set(eraser.steerer.layers) and all(v.shape == (4,) for v in gates.values())
    eraser.save(tmp_path / "e")
    back = ek.Eraser.load(tmp_path / "e")
    assert back.strength == 1.0 and back.read == "frozen"
    assert all(torch.equal(back.steerer[l].gate, eraser.steerer[l].gate) for l in eraser.steerer.layers)
    assert back.generate(any_adapter, forget[:3], max_new_tokens=3, progress=False) == \
        eraser.generate(any_adapter, forget[:3], max_new_tokens=3, progress=False)


def test_rules_never_tune_on_the_fitted_subjects_unless_told(tiny_causal_lm):
    """Strings carry no subject: without tune= the front door refuses (every fourth retain prompt would be about
    the people of H_r); tune facts sharing a subject with the fit, or tune prompts that are retain prompts, are
    refused; the told split and given tune sets are recorded."""
    from erasekit.forms import capital_facts

    forget, retain = _prompts(4, "Alice"), _prompts(8, "Bob")
    with pytest.raises(ValueError, match="cannot tell whose they are.*tune='every_fourth'"):
        ek.fit_eraser(tiny_causal_lm, forget, retain, strength=1.0, progress=False)
    with pytest.raises(ValueError, match="2 tune prompts are also retain prompts"):
        ek.fit_eraser(tiny_causal_lm, forget, retain, tune=retain[:2], strength=1.0, progress=False)
    facts = capital_facts()[:12]
    with pytest.raises(ValueError, match=r"tune facts share subjects with forget/retain \(\w+, \w+, \w+\)"):
        ek.fit_eraser(tiny_causal_lm, facts[:4], facts[4:], tune=facts[:1] + facts[10:], forms=("question",),
                      strength=1.0, progress=False)
    told = ek.fit_eraser(tiny_causal_lm, forget, retain, tune="every_fourth", strength=1.0, progress=False)
    given = ek.fit_eraser(tiny_causal_lm, forget, retain, tune=_prompts(3, "Carol"), strength=1.0, progress=False)
    split = ek.fit_eraser(tiny_causal_lm, facts[:4], facts[4:], forms=("question",), strength=1.0, progress=False)
    assert told.steerer.meta["tune_from"] == "every fourth retain prompt" and told.steerer.meta["n_tune"] == 2
    assert given.steerer.meta["tune_from"] == "given" and given.steerer.meta["n_tune"] == 3
    assert split.steerer.meta["tune_from"] == "every fourth retain subject"
    told_facts = ek.fit_eraser(tiny_causal_lm, facts[:4], facts[4:], tune="every_fourth", forms=("question",),
                               strength=1.0, progress=False)
    assert told_facts.steerer.meta["tune_from"] == "every fourth retain subject"


def test_a_prompt_is_its_text_and_its_image():
    """The tune/retain overlap check compares image CONTENT: one question asked about two portraits is two
    prompts (MLLMU-Bench's image questions do not name the person), the same portrait loaded twice is one."""
    from PIL import Image

    from erasekit.eraser import _check_tune

    jane, john = Image.new("RGB", (8, 8), (200, 10, 10)), Image.new("RGB", (8, 8), (10, 10, 200))
    q = "What is this person's job?"
    forget = [(q, Image.new("RGB", (8, 8), (0, 0, 0)))] * 4
    assert _check_tune(forget, [(q, jane), "Who is Bob?"], [(q, john), "Who is Carol?"]) is False
    with pytest.raises(ValueError, match="1 tune prompts are also retain prompts"):
        _check_tune(forget, [(q, jane), "Who is Bob?"], [(q, jane.copy()), "Who is Carol?"])


def test_bad_inputs_say_what_to_do(tiny_causal_lm, tmp_path):
    with pytest.raises(ValueError, match="at least 4"):
        ek.fit_eraser(tiny_causal_lm, ["a"] * 4, ["b", "c"], tune="every_fourth", progress=False)
    with pytest.raises(ValueError, match="at least 4 .*4 folds"):
        ek.fit_eraser(tiny_causal_lm, ["a"], ["b"] * 4, tune="every_fourth", progress=False)
    with pytest.raises(ValueError, match="non-empty list"):
        ek.fit_eraser(tiny_causal_lm, "a question", ["b"] * 4, tune="every_fourth", progress=False)
    with pytest.raises(TypeError, match="string or a \\(text, image\\) pair"):
        ek.fit_eraser(tiny_causal_lm, [3], ["b"] * 4, tune="every_fourth", progress=False)
    with pytest.raises(ValueError, match="number or 'auto'"):
        ek.fit_eraser(tiny_causal_lm, ["a", "b"], ["c"] * 4, tune="every_fourth", strength="big", progress=False)
    ek.save_artifact(tmp_path / "plain", {"x": torch.zeros(2)})
    with pytest.raises(ValueError, match="tune must be prompts, facts, None or 'every_fourth'"):
        ek.fit_eraser(tiny_causal_lm, ["a"] * 4, ["b"] * 4, tune="every_third", progress=False)
    with pytest.raises(ValueError, match="not an eraser"):
        ek.Eraser.load(tmp_path / "plain")


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "measured 2026-12-07 on the committed organism (after stage D, formats): 1 of 20 forget cloze questions refused, "
    "1 of 20 retain cloze questions over-refused. Before stage D, "
    "measured 2026-11-27 on the organism of stage B2 with the default harmful − harmless direction: the rule "
    "picks λ = 4 (forget refusal 100 %, tune refusal 0 %), and the forget people's *generation* questions are refused "
    "20 of 20, but their *cloze* questions (a format the fit never saw) only 2 of 20 ('Edinburgh', 'sculptor': "
    "the fact is still given); retain cloze over-refused 0 of 20. The Eq. 3 direction (harmful vs jailbreak) refused "
    "0 of 20 at any λ up to 32 on this organism; the first organism: 17 of 20."))
def test_organism_refuses_forget_people_and_answers_others():
    """On the embedded organism: fit from the forget people's and some retain people's text questions (generation
    task), λ by the rule; the *other* questions (cloze task) about the forget people are refused, those about
    scored retain people (never seen by the fit) still answered."""
    session = eb.load_session()
    part = session.partition

    def text_q(rows, task="Generation_Task"):
        return [q["Question"] for r in rows for q in r[task] if q["Type"] == "Pure_Text"]

    forget_rows = session.source.split("forget_5")
    retain = text_q(part.rows(session.source, 5, "fit")["Ret"])[:64]
    eraser = ek.fit_eraser(session.adapter, text_q(forget_rows), retain, tune="every_fourth", progress=False)
    assert eraser.steerer.meta["strength_rule"]["chosen"] == eraser.strength
    other_forget = text_q(forget_rows, "Mask_Task")[:20]
    scored = text_q(part.rows(session.source, 5, "eval")["Ret"], "Mask_Task")[:20]
    refused = sum(map(is_refusal, eraser.generate(session.adapter, other_forget, max_new_tokens=24, progress=False)))
    wrongly = sum(map(is_refusal, eraser.generate(session.adapter, scored, max_new_tokens=24, progress=False)))
    # measured 2026-11-27: 17 of 20 refused, 5 of 20 over-refused (README, "Use on your own model")
    assert refused >= 15 and wrongly <= 6, (refused, wrongly)
