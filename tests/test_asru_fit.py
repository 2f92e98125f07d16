"""ASRU's front door: fit_asru on any adapter returns a peft LoRA that loads with transformers + peft alone."""

from __future__ import annotations

import pytest
import torch

import erasekit as ek
from erasekit.asru_fit import lora_from_delta
from erasekit.forms import capital_facts, render, split_subjects

CFG = dict(steps=2, prompts_per_step=2, group_size=2, max_new_tokens=4, warm_epochs=1, warm_batch=4, lora_r=2,
           lora_alpha=2)


def _fit(adapter, **kw):
    facts = capital_facts()
    return ek.fit_asru(adapter, facts[:4], facts[4:12], cfg=ek.ASRUConfig(**CFG), forms=("question", "cloze"),
                       max_new_tokens=4, eraser_kwargs={"strength": 1.0, "read_at": "last", "forms": ("question",)},
                       progress=False, **kw)


@pytest.mark.parametrize("adapter_name", ["tiny_causal_lm", "tiny_qwen3vl", "organism_adapter"])
def test_fit_asru_returns_a_peft_lora_that_loads_without_erasekit(adapter_name, request, tmp_path):
    from peft import PeftModel

    a = request.getfixturevalue(adapter_name)
    before = {n: p.clone() for n, p in a.model.named_parameters()}
    fit = _fit(a)
    assert all(torch.equal(p, before[n]) for n, p in a.model.named_parameters())  # the user's model is untouched
    # float32 merges round W + ΔW: the floor of the relative error is ~eps * |W| / |ΔW|, not 0
    assert fit.report["lora_rank"] == 4 and fit.report["lora_rel_error"] < 1e-3
    facts = capital_facts()
    n = lambda fs: len(render(fs, ("question", "cloze")))  # noqa: E731
    # the eraser's rules tuned on every fourth retain subject: ASRU does not train on them
    trained, rule_only = split_subjects(facts[4:12])
    assert (fit.report["n_forget_queries"], fit.report["n_retain_queries"]) == (n(facts[:4]), n(trained))
    assert fit.report["n_rule_only_retain"] == len(rule_only) == 2
    fit.save(tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter_config.json").exists()
    # transformers + peft alone: the base model from its folder, the adapter from peft's
    base = type(a.model).from_pretrained(a.model_id, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "lora")).eval()
    batch = a.encode(["What is the capital of France?", "Name the capital of Peru."])
    with torch.no_grad():
        want = fit.result.model(**batch).logits
        got = loaded(**batch).logits
        vanilla = a.model(**batch).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(want, vanilla, atol=1e-4)  # training changed the model: the check can fail
    merged = loaded.merge_and_unload()  # mergeable the peft way
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, want, atol=1e-4, rtol=1e-4)


def test_fit_asru_warm_start_alone(tiny_causal_lm):
    """steps=0: no GRPO (no curve), the model is the warm start's: changed, and a LoRA of rank r holds it."""
    facts = capital_facts()
    fit = ek.fit_asru(tiny_causal_lm, facts[:4], facts[4:12], cfg=ek.ASRUConfig(**{**CFG, "steps": 0}),
                      forms=("question",), max_new_tokens=4, progress=False,
                      eraser_kwargs={"strength": 1.0, "read_at": "last", "forms": ("question",)})
    assert fit.result.curve == [] and fit.report["seconds"]["grpo"] < fit.report["seconds"]["warm_start"]
    batch = tiny_causal_lm.encode(["What is the capital of France?"])
    with torch.no_grad():
        assert not torch.allclose(fit.model(**batch).logits, tiny_causal_lm.model(**batch).logits, atol=1e-4)


def test_rule_held_out_keeps_the_rules_subjects_out_of_training():
    from erasekit.asru_fit import rule_held_out

    facts = capital_facts()[:8]
    kept, held = rule_held_out(facts, "every fourth retain subject")
    assert {f.subject for f in held} == {facts[3].subject, facts[7].subject} and len(kept) == 6
    prompts = [f"q{i}" for i in range(8)]
    assert rule_held_out(prompts, "every fourth retain prompt") == ([p for i, p in enumerate(prompts) if i % 4 != 3],
                                                                   ["q3", "q7"])
    assert rule_held_out(prompts, "given") == (prompts, []) and rule_held_out(prompts, None) == (prompts, [])


def test_lora_from_delta_is_exact_at_the_rank_and_refuses_other_changes(tiny_causal_lm):
    import copy

    from erasekit.baselines.lora import lora_targets

    base = tiny_causal_lm.model
    tuned = copy.deepcopy(base)
    targets = lora_targets(base)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in targets[:3]:
            w = tuned.get_submodule(t).weight
            w += torch.randn(w.shape[0], 3, generator=g) @ torch.randn(3, w.shape[1], generator=g)
    factors, err = lora_from_delta(base, tuned, targets, rank=3)
    assert set(factors) == set(targets[:3]) and err < 1e-6
    _, err2 = lora_from_delta(base, tuned, targets, rank=1)
    assert err2 > 0.1  # a rank-3 change is not rank 1: the error is measured, not assumed
    with torch.no_grad():
        next(p for n, p in tuned.named_parameters() if "norm" in n).add_(1.0)  # not a LoRA target
    with pytest.raises(RuntimeError, match="outside the LoRA targets"):
        lora_from_delta(base, tuned, targets, rank=3)


def test_fit_asru_errors(tiny_causal_lm):
    with pytest.raises(ValueError, match="non-empty"):
        ek.fit_asru(tiny_causal_lm, [], ["a"])
    with pytest.raises(TypeError, match="ASRUConfig"):
        ek.fit_asru(tiny_causal_lm, ["a"], ["b"], cfg={"steps": 1})
    with pytest.raises(TypeError, match="Eraser"):
        ek.fit_asru(tiny_causal_lm, ["a"], ["b"], eraser="gate")


# ---------------------------------------------------------------------------------------------------------------
# stage 2 by TRL's GRPOTrainer (ASRUConfig(backend="trl"))


@pytest.mark.parametrize("adapter_name", ["tiny_causal_lm", "tiny_llava", "organism_adapter"])
def test_trl_prompts_tokenise_to_the_adapters_ids(adapter_name, request):
    """TRL tokenises plain-text prompts with ``tokenizer(text)``: the rendered prompts must give encode's ids."""
    from erasekit.asru_rollouts import Query
    from erasekit.asru_trl import trl_prompts

    a = request.getfixturevalue(adapter_name)
    qs = [Query("What is the capital of France?", "Paris", True), Query("Name the capital of Peru.", "Lima", False)]
    for q, text in zip(qs, trl_prompts(a, qs)):
        want = a.encode([q.prompt])["input_ids"][0].tolist()
        assert a.tokenizer(text=[text])["input_ids"][0] == want


def test_trl_schedule_is_the_loops():
    """The TRL dataset's order is the prompts erasekit's loop draws, step by step (same generator, same calls)."""
    import random

    from erasekit.asru_trl import step_schedule

    sched = step_schedule(10, 6, steps=5, prompts_per_step=8, retain_share=0.375, seed=3)
    rng = random.Random("3-grpo")
    forget, retain = list(range(10)), list(range(10, 16))
    assert sched == [rng.sample(forget, 5) + rng.sample(retain, 3) for _ in range(5)]
    assert all(len(set(s)) == 8 for s in sched)


@pytest.mark.parametrize("adapter_name", ["tiny_causal_lm", "organism_adapter"])
def test_fit_asru_with_trl_backend(adapter_name, request, tmp_path):
    """The whole of fit_asru with stage 2 run by TRL's GRPOTrainer: one curve entry per GRPO step, a LoRA that
    loads with peft alone and changes the model."""
    from peft import PeftModel

    a = request.getfixturevalue(adapter_name)
    facts = capital_facts()
    fit = ek.fit_asru(a, facts[:4], facts[4:12], cfg=ek.ASRUConfig(**CFG, backend="trl"),
                      forms=("question", "cloze"), max_new_tokens=4,
                      eraser_kwargs={"strength": 1.0, "read_at": "last", "forms": ("question",)}, progress=False)
    curve = fit.result.curve
    assert len(curve) == CFG["steps"] and all("reward" in c and "forget_refusal" in c for c in curve)
    fit.save(tmp_path / "lora")
    base = type(a.model).from_pretrained(a.model_id, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "lora")).eval()
    batch = a.encode(["What is the capital of France?"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, fit.result.model(**batch).logits, atol=1e-4, rtol=1e-4)


def test_trl_backend_refuses_what_it_cannot_do(tiny_causal_lm):
    from erasekit.asru_rollouts import Query
    from erasekit.asru_trl import trl_prompts

    with pytest.raises(ValueError, match="backend must be one of"):
        ek.ASRUConfig(backend="deepspeed")
    with pytest.raises(ValueError, match="text queries"):
        trl_prompts(tiny_causal_lm, [Query("Who is this?", "x", True, image=torch.rand(3, 8, 8))])


@pytest.mark.slow
@pytest.mark.heavy
def test_fit_asru_on_smollm2(smollm2_known, tmp_path):
    """fit_asru on a real pretrained LM (SmolLM2-135M-Instruct, skipped where it is not cached): capitals it knows,
    a short run; the LoRA loads with transformers + peft alone and gives the trained model's logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter, known = smollm2_known
    folder = adapter.model_id
    torch.manual_seed(0)
    fit = ek.fit_asru(adapter, known[:4], known[4:12], cfg=ek.ASRUConfig(**CFG), forms=("question",),
                      max_new_tokens=4, eraser_kwargs={"strength": 4.0, "forms": ("question",)}, progress=False)
    assert fit.report["n_rule_only_retain"] == len(split_subjects(known[4:12])[1]) >= 1
    assert fit.report["lora_rel_error"] < 1e-3
    fit.save(tmp_path / "lora")
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32),
                                       str(tmp_path / "lora")).eval()
    batch = adapter.encode([f"What is the capital of {known[0].subject}?"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, fit.result.model(**batch).logits, atol=1e-4, rtol=1e-4)
