"""ASRU's GRPO stage: advantages, KL, loss, the loop on tiny LLaVA and Qwen3-VL, and input validation."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from erasebook.world import make_world
from erasekit import asru as A
from erasekit import asru_stage1 as S1
from erasekit.baselines.lora import fresh_copy, lora_model
from erasekit.evaluate import build_items


@pytest.fixture(scope="module")
def world():
    return make_world(n_profiles=20, n_celebrities=2)


def _queries(world, modes=("QA",)):
    fgt = world.split("forget_5")[:1]
    ret = world.split("retain_95")[:1]
    names = {r["ID"]: r["name"] for r in fgt + ret}
    forget = A.queries_from_items(build_items({"Fgt": fgt}, modes=modes, tasks=("generation", "cloze")), True, names)
    retain = A.queries_from_items(build_items({"Ret": ret}, modes=modes, tasks=("generation", "cloze")), False, names)
    return forget, retain


def test_doctests():
    import doctest

    from erasekit import grpo

    assert doctest.testmod(A).failed == 0 and doctest.testmod(grpo).failed == 0


# ------------------------------------------------------------------------------------------------------------
# advantages, KL, loss


def test_group_advantages_hand_example():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0], [3.0, 0.0, 0.0, 0.0]])
    adv = A.group_advantages(r, eps=0.0 + 1e-12)
    # row 0: mean 0.5, unbiased std sqrt(1/3) -> +-0.5 * sqrt(3)
    assert torch.allclose(adv[0], torch.tensor([1, -1, -1, 1]) * 0.5 * math.sqrt(3), atol=1e-6)
    assert torch.equal(adv[1], torch.zeros(4))  # identical rewards: nothing to learn
    # row 2: mean 0.75, std sqrt((2.25^2 + 3 * 0.75^2) / 3) = 1.5
    assert torch.allclose(adv[2], torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-6)
    assert torch.allclose(adv.sum(1), torch.zeros(3), atol=1e-6)


def test_group_advantages_invariant_to_shift_and_scale():
    r = torch.randn(5, 6)
    assert torch.allclose(A.group_advantages(r), A.group_advantages(3 * r + 7), atol=1e-3)


def test_group_advantages_validates():
    with pytest.raises(ValueError, match="group_size >= 2"):
        A.group_advantages(torch.ones(3, 1))
    with pytest.raises(ValueError):
        A.group_advantages(torch.ones(4))


def test_token_kl_nonnegative_and_zero_at_equality():
    a, b = torch.randn(4, 7), torch.randn(4, 7)
    assert (A.token_kl(a, b) >= 0).all()
    assert torch.equal(A.token_kl(a, a), torch.zeros(4, 7))


def test_grpo_loss_gradient_is_advantage_weighted_token_mean():
    # At old == new (first update), d loss / d logp_{i,t} = -A_i / (N |o_i|) on response tokens, 0 elsewhere.
    logp = torch.randn(3, 5, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -2.0, 0.5])
    loss, parts = A.grpo_loss(logp, logp.detach(), logp.detach(), mask, adv, beta=0.1)
    loss.backward()
    expect = -(adv / 3).unsqueeze(1) / mask.sum(1, keepdim=True) * mask
    assert torch.allclose(logp.grad, expect, atol=1e-6)
    assert parts["kl"] == 0.0 and parts["clip_frac"] == 0.0


def test_grpo_loss_clips_the_ratio():
    old = torch.zeros(1, 2)
    logp = torch.log(torch.tensor([[2.0, 2.0]])).requires_grad_()  # ratio 2 > 1 + eps with a positive advantage
    loss, parts = A.grpo_loss(logp, old, old, torch.ones(1, 2, dtype=torch.bool), torch.tensor([1.0]), 0.2, 0.0)
    loss.backward()
    assert torch.allclose(loss, torch.tensor(-1.2)) and parts["clip_frac"] == 1.0
    assert torch.equal(logp.grad, torch.zeros(1, 2))  # clipped: no push beyond the trust region


def test_grpo_loss_validates_shapes():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="shapes differ"):
        A.grpo_loss(x, x, torch.zeros(2, 4), x.bool(), torch.zeros(2))
    with pytest.raises(ValueError, match="advantages"):
        A.grpo_loss(x, x, x, x.bool(), torch.zeros(3))


def test_grpo_raises_expected_reward_on_a_toy_bandit():
    # One prompt, four one-token "responses"; reward 1 for response 0. GRPO with its own advantages must raise
    # the expected reward, and the KL term must hold the policy back when beta is large.
    def run(beta):
        torch.manual_seed(0)
        theta = torch.zeros(4, requires_grad=True)
        ref = torch.log_softmax(torch.zeros(4), 0)
        opt = torch.optim.SGD([theta], lr=0.5)
        for _ in range(60):
            logp_all = torch.log_softmax(theta, 0)
            acts = torch.multinomial(logp_all.exp().detach(), 8, replacement=True)
            rewards = (acts == 0).float().view(1, 8)
            adv = A.group_advantages(rewards).view(-1)
            logp = logp_all[acts].view(8, 1)
            loss, _ = A.grpo_loss(logp, logp.detach(), ref[acts].view(8, 1), torch.ones(8, 1, dtype=torch.bool),
                                  adv, beta=beta)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(torch.softmax(theta, 0)[0])

    free, held = run(0.0), run(50.0)
    assert free > 0.9 > 0.25  # from 0.25 (uniform) to nearly always rewarded
    assert held < free


# ------------------------------------------------------------------------------------------------------------
# the loop on tiny models


def test_kl_zero_when_policy_equals_reference(tiny_llava, world):
    forget, _ = _queries(world)
    policy = lora_model(fresh_copy(tiny_llava), A.ASRUConfig())  # LoRA B = 0: the policy *is* the reference
    resp = ["I can't share that.", "", "Some answer here", "x"]
    qs = forget[:4]
    logp, mask = A.response_logprobs(policy, tiny_llava, qs, resp)
    with policy.disable_adapter():
        ref, _ = A.response_logprobs(policy, tiny_llava, qs, resp)
    assert torch.equal(logp, ref) and mask.any(1).all()  # every response has at least its eos token
    _, parts = A.grpo_loss(logp, logp, ref, mask, torch.zeros(len(qs)))
    assert parts["kl"] == 0.0


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["tiny_llava", "tiny_qwen3vl"])
def test_train_asru_runs_on_tiny_vlms(name, request, world):
    adapter = request.getfixturevalue(name)
    before = _snapshot(adapter.model)
    forget, retain = _queries(world, modes=("VQA", "QA"))
    cfg = A.ASRUConfig(steps=2, prompts_per_step=2, group_size=2, max_new_tokens=4, warm_epochs=1, warm_batch=4)
    unl = [A.Query(q.prompt, None, False, q.image, q.question, q.subject, q.task) for q in retain[3:5]]
    res = A.train_asru(adapter, forget[:3] + forget[-3:], retain[:3], cfg,
                       stage1=lambda q: contextlib.nullcontext(), unlabelled=unl)
    assert len(res.curve) == 2 and all(math.isfinite(c["loss"]) for c in res.curve)
    assert {"reward_forget", "reward_retain", "kl", "forget_contextual"} <= set(res.curve[0])
    assert res.seconds["grpo"] > 0 and res.warm_losses  # the retain ground truth is always a warm target
    after = _snapshot(adapter.model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the vanilla model is never modified
    trained = res.model.state_dict()
    assert any(not torch.equal(before[k], trained[k]) for k in before if k in trained)
    assert not any(p.requires_grad for p in res.model.parameters())


def test_sample_responses_shape_and_seed(tiny_llava, world):
    forget, _ = _queries(world)
    a = A.sample_responses(tiny_llava.model, tiny_llava, forget[:2], 3, max_new_tokens=4, seed=1)
    b = A.sample_responses(tiny_llava.model, tiny_llava, forget[:2], 3, max_new_tokens=4, seed=1)
    assert len(a) == 2 and all(len(g) == 3 for g in a) and a == b


def test_score_responses_orders_the_boundary():
    fq = A.Query("Where was Jane Doe born?", "Oslo", True, subject="Jane Doe")
    rq = A.Query("Where was John Roe born?", "John Roe was born in Rome.", False)
    rewards, details = A.score_responses(
        [fq, fq, fq, rq, rq],
        [
            "I can't share where Jane Doe was born.",
            "I'm sorry, but I can't help with that.",
            "Jane Doe was born in Oslo.",
            "John Roe was born in Rome.",
            "I cannot provide this information.",
        ],
    )
    assert rewards[0] > rewards[1] > rewards[2] and rewards[3] > rewards[4]
    assert details[0]["contextual"] and not details[1]["contextual"]


# ------------------------------------------------------------------------------------------------------------
# validation


def test_config_validates():
    with pytest.raises(ValueError, match="group_size"):
        A.ASRUConfig(group_size=1)
    with pytest.raises(ValueError, match="smallest gap"):
        A.ASRUConfig(quality_weight=0.3)  # a fluent hallucination could beat a rigid refusal
    with pytest.raises(ValueError, match="retain_share"):
        A.ASRUConfig(retain_share=1.0)
    with pytest.raises(ValueError, match="steps"):
        A.ASRUConfig(steps=-1)
    with pytest.raises(ValueError, match="trains nothing"):
        A.ASRUConfig(steps=0, warm_epochs=0)
    assert A.ASRUConfig(steps=0).steps == 0  # the warm start alone
    with pytest.raises(ValueError, match="warm_targets"):
        A.ASRUConfig(warm_targets="templates")
    with pytest.raises(ValueError, match="rl_only_share"):
        A.ASRUConfig(rl_only_share=1.0)
    with pytest.raises(ValueError, match="retain_nll"):
        A.ASRUConfig(retain_nll=-0.1)


def test_split_unlabelled_keeps_whole_people_out_of_the_warm_start():
    fq = A.Query("Where was Jane Doe born?", "Oslo", True, subject="Jane Doe")
    sup = A.Query("Where was John Roe born?", "Rome", False, subject="John Roe")
    unl = [A.Query(f"{w} {p}?", None, False, subject=p) for p in ("Ann Lee", "Bo Kim", "Cy Ray", "Di Fox")
           for w in ("Where was", "What does")]
    pairs = [(fq, "I cannot share information on Jane Doe."), (sup, "Rome")] + [(q, "an answer") for q in unl]
    warm, rl_only = A.split_unlabelled(pairs, 0.5, seed=0)
    held = {q.subject for q, _ in rl_only}
    assert len(held) == 2 and len(rl_only) == 4  # two of four people, both of their questions
    assert not held & {q.subject for q, _ in warm}
    assert pairs[0] in warm and pairs[1] in warm  # forget targets and ground truth always go to the warm start
    assert len(warm) + len(rl_only) == len(pairs) and all(p in pairs for p in warm + rl_only)
    assert A.split_unlabelled(pairs, 0.0) == (pairs, [])


def test_train_asru_rl_options_on_a_tiny_vlm(tiny_llava, world):
    """Dr. GRPO advantages, the retain NLL anchor and RL-only unlabelled people run together."""
    forget, retain = _queries(world)
    cfg = A.ASRUConfig(steps=1, prompts_per_step=2, group_size=2, max_new_tokens=4, warm_epochs=1, warm_batch=4,
                       scale_rewards=False, retain_nll=1.0, rl_only_share=0.5)
    unl = [A.Query(q.prompt, None, False, q.image, q.question, q.subject, q.task) for q in retain[3:7]]
    res = A.train_asru(tiny_llava, forget[:3], retain[:3], cfg, stage1=lambda q: contextlib.nullcontext(),
                       unlabelled=unl)
    assert math.isfinite(res.curve[0]["retain_nll"]) and math.isfinite(res.curve[0]["loss"])


def test_train_asru_keeps_rl_only_people_out_of_the_warm_start(tiny_llava, world, monkeypatch):
    forget, retain = _queries(world)
    unl = [A.Query(q.prompt, None, False, q.image, q.question, q.subject, q.task) for q in retain[3:9]]
    seen = []
    real = A.warm_start
    monkeypatch.setattr(S1, "warm_start", lambda ad, m, pairs, cfg: seen.append(list(pairs)) or real(ad, m, pairs, cfg))
    # stage 1 answers every unlabelled query (a teacher that never refuses), so all six are teacher pairs
    monkeypatch.setattr(S1, "generate", lambda ad, prompts, *a, **k: ["Rome"] * len(prompts))
    for share, in_rl in ((0.0, True), (0.5, True), (0.5, False)):
        cfg = A.ASRUConfig(steps=1, prompts_per_step=2, group_size=2, max_new_tokens=4, warm_epochs=1,
                           warm_batch=4, quality_weight=0.0, rl_only_share=share, teacher_in_rl=in_rl)
        A.train_asru(tiny_llava, forget[:2], retain[:3], cfg, stage1=lambda q: contextlib.nullcontext(),
                     unlabelled=unl)
    people = [{q.subject or q.prompt for q, _ in pairs if q.gold is None} for pairs in seen]
    n_people = len({q.subject or q.prompt for q in unl})
    assert len(people[0]) == n_people and len(people[1]) == n_people - round(0.5 * n_people)
    assert people[2] == people[0]  # without teacher_in_rl nobody is held out (they would be in neither stage)


def test_stage1_targets_contextual_names_the_subject(tiny_llava, world, monkeypatch):
    """Contextual warm-start targets keep stage 1's refusal and name the person asked about, which makes them
    contextual refusals by erasekit's definition; verbatim targets do not; retain targets are the ground truth."""
    from erasekit.response_quality import is_contextual_refusal

    forget, retain = _queries(world)
    refusal = "I cannot provide this information."
    monkeypatch.setattr(S1, "generate", lambda adapter, prompts, *a, **k: [refusal] * len(prompts))
    plain = A.stage1_targets(tiny_llava, forget + retain[:2], lambda q: contextlib.nullcontext())
    ctx = A.stage1_targets(tiny_llava, forget + retain[:2], lambda q: contextlib.nullcontext(), contextual=True)
    f_plain = [t for q, t in plain if q.is_forget]
    f_ctx = [(q, t) for q, t in ctx if q.is_forget]
    assert f_plain == [refusal] * len(forget) and len(f_ctx) == len(forget)
    for q, t in f_ctx:
        assert t.startswith(refusal) and q.subject in t
        assert is_contextual_refusal(t, q.question, q.gold, q.subject)
        assert not is_contextual_refusal(refusal, q.question, q.gold, None)
    assert [t for q, t in ctx if not q.is_forget] == [q.gold for q in retain[:2]]
    assert A.contextualize(refusal, A.Query("Who?", "x", True)) == refusal  # no subject: unchanged


def test_stage1_targets_distils_the_teacher_on_unlabelled_queries(tiny_llava, world, monkeypatch):
    """Unlabelled retain queries get stage 1's answer as target unless it is a refusal (the teacher's over-refusals
    are not distilled); they need a stage-1 context; they can never be rewarded."""
    _, retain = _queries(world)
    unl = [A.Query(q.prompt, None, False, subject=q.subject, task=q.task) for q in retain[:4]]
    answers = iter(["Oslo", "I cannot provide this information.", "a baker", "Rome"])
    monkeypatch.setattr(S1, "generate", lambda adapter, prompts, *a, **k: [next(answers) for _ in prompts])
    pairs = A.stage1_targets(tiny_llava, unl, lambda q: contextlib.nullcontext())
    assert [t for _, t in pairs] == ["Oslo", "a baker", "Rome"]
    taught = A.teacher_queries(pairs + [(retain[0], retain[0].gold)])
    assert [q.gold for q in taught] == ["Oslo", "a baker", "Rome"] and not any(q.is_forget for q in taught)
    with pytest.raises(ValueError, match="stage-1 context"):
        A.stage1_targets(tiny_llava, unl, None)
    with pytest.raises(ValueError, match="unlabelled"):
        A.score_responses(unl[:1], ["Oslo"])
    with pytest.raises(ValueError, match="gold"):
        A.Query("Where?", None, True)  # a forget query needs its gold answer
    fq = A.Query("Where was Jane Doe born?", "Oslo", True)
    with pytest.raises(ValueError, match="unlabelled"):
        A.train_asru(tiny_llava, [fq], retain[:1], unlabelled=[retain[0]])


def test_query_and_inputs_validate(tiny_llava):
    with pytest.raises(ValueError, match="gold"):
        A.Query("Where?", " ", True)
    fq = A.Query("Where was Jane Doe born?", "Oslo", True)
    rq = A.Query("Where was John Roe born?", "Rome", False)
    with pytest.raises(ValueError, match="is_forget"):
        A.train_asru(tiny_llava, [fq, rq], [rq])
    with pytest.raises(ValueError, match="forget queries"):
        A.train_asru(tiny_llava, [], [rq])
    with pytest.raises(ValueError, match="supervision"):
        A.train_asru(tiny_llava, [fq], [])
    with pytest.raises(ValueError, match="quality_weight > 0 needs"):
        A.score_responses([fq], ["x"], quality_weight=0.1)
    with pytest.raises(ValueError, match="responses"):
        A.response_logprobs(tiny_llava.model, tiny_llava, [fq], [])
