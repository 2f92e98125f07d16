"""The front door's λ rule by its fast route (only the answers that decide it) chooses the generating route's λ."""

from __future__ import annotations

import itertools

import pytest

import erasebook as eb
import erasekit as ek
import erasekit.eraser as E
import erasekit.strength_rule as SR
from erasekit.generation import generate
from erasekit.scoring import is_refusal


def test_tune_test_is_decided_only_when_every_possible_count_agrees():
    n, tol = 12, 0.1
    for a, b, c in itertools.product([(0, 0), (0, 3), (2, 5)], [(0, 0), (1, 4), (0, 6)], [(0, 0), (2, 3), (0, 6)]):
        got = SR._tune_ok(a, b, c, n, tol)
        truth = {(x + z) / n <= (x + y) / n + tol for x in range(a[0], a[1] + 1) for y in range(b[0], b[1] + 1)
                 for z in range(c[0], c[1] + 1)}
        assert got == (truth.pop() if len(truth) == 1 else None), (a, b, c)


def test_bad_strength_rule_says_what_to_do(tiny_causal_lm):
    with pytest.raises(ValueError, match="strength_rule must be one of"):
        ek.fit_eraser(tiny_causal_lm, ["a", "b", "c", "d"], ["e"] * 4, tune="every_fourth", strength_rule="scan",
                      progress=False)


@pytest.mark.parametrize("gate", ["default", "paper"])
def test_both_routes_agree_on_a_tiny_model(tiny_llava, gate):
    forget = [f"Where does Alice number {i} live?" for i in range(8)]
    retain = [f"Where does Bob number {i} live?" for i in range(12)]
    kw = dict(gate=gate, tune="every_fourth", strength_grid=(0.5, 4.0, 64.0), max_new_tokens=4,
              batch_size=3, progress=False)
    slow = ek.fit_eraser(tiny_llava, forget, retain, strength_rule="generate", **kw)
    fast = ek.fit_eraser(tiny_llava, forget, retain, **kw)
    assert fast.steerer.meta["strength_rule"]["route"] == "fast"
    assert fast.strength == slow.strength == slow.steerer.meta["strength_rule"]["chosen"]


def _organism_rule_inputs(n_people: int = 2):
    """The λ rule's inputs of a small organism fit (facts in every form), intercepted from fit_eraser."""
    from erasebook.form_transfer import organism_form_facts

    session = eb.load_session()
    facts = organism_form_facts(session)
    seen = {}

    def capture(adapter, steerer, read, forget, tune, **kw):
        seen.update(adapter=adapter, steerer=steerer, read=read, forget=forget, tune=tune)
        return {"chosen": 1.0}

    real, E.choose_strength = E.choose_strength, capture
    try:
        E.fit_eraser(session.adapter, facts["forget"][:8 * n_people], facts["retain"][:48],
                     tune=facts["tune"][:16], rule_prompts=32, progress=False)
    finally:
        E.choose_strength = real
    return seen


def test_fast_answers_are_the_generating_routes_answers():
    """Each (prompt, λ) row the fast route generates (several λ in one batch, padded to the generating route's
    length, gates read once) is judged as the generating route judges that prompt's answer at that λ."""
    inp = _organism_rule_inputs()
    adapter, steerer = inp["adapter"], inp["steerer"]
    texts, images = inp["forget"]
    ops = steerer.operators(1.0)
    P = SR._RulePrompts(adapter, texts, images, 8, ops)
    rows = P.chunks[1]
    lams = (8.0, 2.0, 0.0)
    for read, fast_ops in (("frozen", ops), ("steered", None)):  # steered: operators with a strength per row
        fast = P.refused(adapter, 1, rows * 3, [lam for lam in lams for _ in rows], steerer=steerer, read=read,
                         ops=fast_ops, max_new_tokens=16)
        slow = []
        for lam in lams:
            ctx = (lambda lam=lam, read=read: E.Eraser(steerer, lam, read).context(adapter)) if lam else None
            im = None if images is None else images[rows[0]:rows[-1] + 1]
            slow += [is_refusal(a) for a in generate(adapter, texts[rows[0]:rows[-1] + 1], im, context=ctx,
                                                     max_new_tokens=16, batch_size=8)]
        assert fast == slow, read
        assert read == "steered" or 0 < sum(slow) < len(slow)  # frozen: some refused, some not


def test_organism_both_routes_choose_the_same_strength():
    """Fit on the organism with both routes (facts in every form, the located gate, the default λ grid)."""
    from erasebook.form_transfer import organism_form_facts

    session = eb.load_session()
    facts = organism_form_facts(session)
    kw = dict(tune=facts["tune"][:16], rule_prompts=24, max_new_tokens=16, max_retain_refusal=0.15, progress=False)
    slow = ek.fit_eraser(session.adapter, facts["forget"][:16], facts["retain"][:48], strength_rule="generate", **kw)
    fast = ek.fit_eraser(session.adapter, facts["forget"][:16], facts["retain"][:48], **kw)
    rule = fast.steerer.meta["strength_rule"]
    assert rule["route"] == "fast" and fast.strength == rule["chosen"]
    assert fast.strength == slow.strength, (slow.steerer.meta["strength_rule"]["scores"], rule["scores"])
    # the fast route answered fewer rows than the generating route's (1 + 2 x grid) x prompts
    assert rule["rows_generated"] < (1 + 2 * len(E.STRENGTH_GRID)) * 24


@pytest.mark.slow
@pytest.mark.heavy
def test_smollm2_both_routes_choose_the_same_strength(smollm2_known):
    """SmolLM2-135M-Instruct (skipped where it is not cached): capitals it knows (of the first 16), two text forms,
    the λ rule of erasebook.form_transfer.FIT_KW_LM on 8 prompts a side; the rule's inputs from one fit, both routes
    on them."""
    from erasebook.form_transfer import FIT_KW_LM

    adapter, known = smollm2_known
    seen = {}

    def capture(adapter, steerer, read, forget, tune, **kw):
        seen.update(adapter=adapter, steerer=steerer, read=read, forget=forget, tune=tune, **kw)
        return {"chosen": 1.0}

    real, E.choose_strength = E.choose_strength, capture
    try:
        E.fit_eraser(adapter, known[:4], known[4:12], forms=("question", "cloze"),
                     batch_size=32, progress=False, **{**FIT_KW_LM, "rule_prompts": 8})
    finally:
        E.choose_strength = real
    seen.pop("route", None)
    chosen = {route: real(**seen, route=route)["chosen"] for route in E.STRENGTH_RULES}
    assert chosen["fast"] == chosen["generate"], chosen
