"""erasekit.baselines on tiny LLaVA: data, loss signs/directions, retain terms, masks, pruning, vanilla untouched."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from erasebook.world import make_world
from erasekit import baselines as B
from erasekit.baselines import data as bdata
from erasekit.baselines import lora, losses, manu, mmunlearner

# Tiny random model: a large lr moves the forget NLL visibly within a few steps.
FAST = dict(lr=1e-2, batch_size=4, max_steps=4, progress=False, lora_vision=True)


@pytest.fixture(scope="module")
def world():
    return make_world(n_profiles=20, n_celebrities=2)


@pytest.fixture(scope="module")
def data(world):
    forget = B.build_examples(world.split("forget_5"))
    retain = B.build_examples(world.split("retain_95")[:3])
    return forget, retain


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _peft(adapter, seed=0):
    torch.manual_seed(seed)
    model = lora.lora_model(lora.fresh_copy(adapter), B.GAConfig(lora_vision=True))
    return model.eval()  # no LoRA dropout: gradients are reproducible


def test_build_examples(world):
    rows = world.split("forget_5")
    ex = B.build_examples(rows)
    row = rows[0]
    n_cls = sum(len(v) for v in row["Classification_Task"].values())
    assert len(ex) == len(rows) * (n_cls + len(row["Generation_Task"]) + len(row["Mask_Task"]))
    vqa = [e for e in ex if e.mode == "VQA"]
    assert vqa and all(e.image is not None for e in vqa)
    assert all(e.image is None for e in ex if e.mode == "QA")
    cls = next(e for e in ex if e.task == "classification")
    assert cls.answer in "ABCD" and cls.question.splitlines()[1].startswith("A. ")
    gen = next(e for e in ex if e.task == "generation" and e.mode == "QA")
    assert gen.answer == next(q["Ground_Truth"] for q in row["Generation_Task"] if q["Question"] == gen.question)
    assert {e.task for e in B.build_examples(rows, tasks=["cloze"])} == {"cloze"}
    with pytest.raises(ValueError):
        B.build_examples(rows, tasks=["vqa"])


def test_collate_labels_only_answer(tiny_llava, data):
    forget, _ = data
    batch = B.collate(tiny_llava, forget[:3])
    ids, labels = batch["input_ids"], batch["labels"]
    m = labels != -100
    assert torch.equal(ids[m], labels[m])
    eos = tiny_llava.tokenizer.eos_token_id
    assert (labels[:, -1] == eos).all()
    ans = tiny_llava.tokenizer.decode(ids[0][m[0]], skip_special_tokens=True)
    assert ans.strip() == forget[0].answer


def test_lora_targets_exclude_lm_head(tiny_llava):
    names = B.lora_targets(tiny_llava.model)
    assert "lm_head" not in names
    assert any("multi_modal_projector" in n for n in names) and any("language_model" in n for n in names)
    assert not any("vision_tower" in n for n in names)
    assert any("vision_tower" in n for n in B.lora_targets(tiny_llava.model, vision=True))


def test_ga_loss_sign_and_ga_diff_uses_retain(tiny_llava, data):
    forget, retain = data
    model = _peft(tiny_llava)
    fb = B.collate(tiny_llava, forget[:4])
    r1, r2 = B.collate(tiny_llava, retain[:4]), B.collate(tiny_llava, retain[4:8])
    loss, parts = B.unlearning_loss(model, "GA", fb)
    assert loss.item() == pytest.approx(-parts["forget_nll"]) and parts["forget_nll"] > 0
    # our NLL is the model's own token-mean loss
    ref = model(**fb).loss.item()
    assert parts["forget_nll"] == pytest.approx(ref, rel=1e-5)

    def grads(method, rb):
        model.zero_grad(set_to_none=True)
        B.unlearning_loss(model, method, fb, rb)[0].backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad and p.grad is not None])

    g_ga, g1, g2 = grads("GA", None), grads("GA_Diff", r1), grads("GA_Diff", r2)
    assert not torch.allclose(g1, g2)  # the retain batch matters
    model.zero_grad(set_to_none=True)
    losses.batch_nll(model, r1).backward()
    g_r = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad and p.grad is not None])
    torch.testing.assert_close(g1, g_ga + g_r, atol=1e-6, rtol=1e-5)  # GA_Diff = GA + retain NLL


def test_kl_zero_at_start_and_grows(tiny_llava, data):
    forget, retain = data
    model = _peft(tiny_llava)
    fb, rb = B.collate(tiny_llava, forget[:4]), B.collate(tiny_llava, retain[:4])
    _, parts = B.unlearning_loss(model, "KL_Min", fb, rb)
    assert abs(parts["kl"]) < 1e-6  # LoRA B = 0: current == vanilla
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    _, parts = B.unlearning_loss(model, "KL_Min", fb, rb)
    assert parts["kl"] > 1e-4


def test_npo_loss_at_start_is_2_over_beta_log2(tiny_llava, data):
    forget, _ = data
    model = _peft(tiny_llava)
    fb = B.collate(tiny_llava, forget[:4])
    for beta in (0.4, 0.9):
        loss, parts = B.unlearning_loss(model, "NPO", fb, beta=beta)
        assert loss.item() == pytest.approx(2 / beta * torch.log(torch.tensor(2.0)).item(), rel=1e-5)
        assert abs(parts["log_ratio"]) < 1e-4
    # an explicit reference: the vanilla model itself gives the same value
    loss_ref, _ = B.unlearning_loss(model, "NPO", fb, beta=0.5, reference=tiny_llava.model)
    assert loss_ref.item() == pytest.approx(4 * torch.log(torch.tensor(2.0)).item(), rel=1e-5)


@pytest.mark.parametrize("method", ["GA", "GA_Diff", "KL_Min", "NPO"])
def test_methods_raise_forget_nll_and_keep_vanilla(tiny_llava, data, method):
    forget, retain = data
    before = _state(tiny_llava.model)
    cfg = dataclasses.replace(B.CONFIGS[method](), **FAST)
    res = B.unlearn(tiny_llava, forget, retain, cfg)
    assert _same(before, _state(tiny_llava.model)), "vanilla weights changed"
    assert res.adapter.model is not tiny_llava.model
    assert not hasattr(res.adapter.model, "peft_config")  # merged into a plain transformers model
    assert res.steps == 4 and res.seconds > 0 and res.memory_kind == "rss_peak_increase"
    assert res.peak_memory_mb >= 0
    assert B.answer_nll(res.adapter, forget[:8]) > B.answer_nll(tiny_llava, forget[:8]) + 0.05
    if method in ("GA_Diff", "KL_Min"):
        assert all(("retain_nll" in h) or ("kl" in h) for h in res.history)


def test_deterministic(tiny_llava, data):
    forget, retain = data
    cfg = B.GADiffConfig(**{**FAST, "max_steps": 2})
    a = B.unlearn(tiny_llava, forget, retain, cfg)
    b = B.unlearn(tiny_llava, forget, retain, cfg)
    assert _same(_state(a.adapter.model), _state(b.adapter.model))
    assert a.history == b.history


def test_npo_oracle_reference(tiny_llava, data):
    forget, retain = data
    oracle = B.RetainFTConfig(lr=1e-2, batch_size=4, steps_per_epoch=2, progress=False)
    ft = B.retain_finetune(tiny_llava, retain, oracle)
    assert B.answer_nll(ft.adapter, retain[:8]) < B.answer_nll(tiny_llava, retain[:8])
    cfg = B.NPOConfig(**{**FAST, "max_steps": 2}, reference="oracle", oracle=oracle)
    before = _state(tiny_llava.model)
    res = B.unlearn(tiny_llava, forget, retain, cfg)
    assert res.info["reference"] == "oracle"
    # oracle != vanilla, so the first NPO loss differs from (2/beta) log 2
    assert res.history[0]["loss"] != pytest.approx(2 / cfg.beta * 0.6931471805599453, rel=1e-4)
    assert _same(before, _state(tiny_llava.model))


def test_mmunlearner_updates_only_masked_entries(tiny_llava, data):
    forget, retain = data
    before = _state(tiny_llava.model)
    cfg = B.MMUnlearnerConfig(lr=1e-2, batch_size=4, max_steps=3, progress=False, saliency_examples=8)
    res = B.unlearn(tiny_llava, forget, retain, cfg)
    assert _same(before, _state(tiny_llava.model))
    assert 0 < res.info["mask_density"] < 1
    # recompute the mask as unlearn did and check: outside it, weights are bit-identical; inside, some moved
    model = lora.fresh_copy(tiny_llava)
    params = mmunlearner.mmunlearner_scope(model, cfg.include_vision)
    for p in params.values():
        p.requires_grad_(True)
    f_train = [e for e in forget if e.mode == "VQA"]
    masks = B.mmunlearner_saliency(tiny_llava, model, bdata.subsample(f_train, 8, "0-sf"),
                                   bdata.subsample(retain, 8, "0-sr"), cfg)
    new = dict(res.adapter.model.named_parameters())
    moved = 0
    for name, p in tiny_llava.model.named_parameters():
        if name in masks:
            m = masks[name].bool()
            assert torch.equal(new[name][~m], p[~m]), name
            moved += int((new[name][m] != p[m]).sum())
        else:
            assert torch.equal(new[name], p), name  # norms, embeddings, lm_head untouched
    assert moved > 0
    assert B.answer_nll(res.adapter, f_train[:8]) > B.answer_nll(tiny_llava, f_train[:8])


def test_manu_prunes_exactly_the_chosen_neurons(tiny_llava, data):
    forget, retain = data
    before = _state(tiny_llava.model)
    # positive_only=False: exactly ceil(10 % of 64) = 7 neurons per layer and modality (union over modalities)
    cfg = B.MANUConfig(prune_fraction=0.1, max_examples=8, progress=False, positive_only=False)
    res = B.unlearn(tiny_llava, forget, retain, cfg)
    assert _same(before, _state(tiny_llava.model))
    pruned = res.info["pruned"]
    assert pruned and res.info["pruned_neurons"] == sum(len(v) for v in pruned.values())
    assert set(res.info["modalities"]) == {"VQA", "QA"}
    assert all(len(v) == 7 for n, v in pruned.items() if "vision_tower" in n)
    assert all(7 <= len(v) <= 14 for n, v in pruned.items() if "language_model" in n)
    assert len(pruned) == 4
    # weights: only the chosen rows (inputs) / columns (output) differ, and they are zero
    new = res.adapter.model
    mlps_old, mlps_new = manu.mlp_blocks(tiny_llava.model, True), manu.mlp_blocks(new, True)
    changed = {n for n, v in before.items() if not torch.equal(v, new.state_dict()[n])}
    expected = set()
    for name, (ins, out) in mlps_new.items():
        idx = pruned.get(name, [])
        keep = torch.ones(out.in_features, dtype=torch.bool)
        keep[idx] = False
        old_ins, old_out = mlps_old[name]
        assert torch.equal(out.weight[:, keep], old_out.weight[:, keep])
        assert (out.weight[:, ~keep] == 0).all()
        for a, b in zip(ins, old_ins):
            assert torch.equal(a.weight[keep], b.weight[keep]) and (a.weight[~keep] == 0).all()
        if idx:
            for mod_name, mod in new.named_modules():
                if mod is out or any(mod is a for a in ins):
                    expected |= {f"{mod_name}.weight"} | ({f"{mod_name}.bias"} if mod.bias is not None else set())
    assert changed <= expected
    # activations: the chosen neurons are exactly 0 on new inputs, the others are not all 0
    seen = {}
    hooks = [out.register_forward_pre_hook(lambda m, a, n=n: seen.__setitem__(n, a[0].detach()))
             for n, (_, out) in mlps_new.items()]
    try:
        with torch.no_grad():
            batch = B.collate(res.adapter, [e for e in retain if e.mode == "VQA"][:2])
            new(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        for h in hooks:
            h.remove()
    for name, idx in pruned.items():
        a = seen[name]
        assert (a[..., idx] == 0).all()
        keep = [i for i in range(a.shape[-1]) if i not in idx]
        assert (a[..., keep] != 0).any()


def test_manu_scores_positive_means_forget_heavier(tiny_llava, data):
    forget, _ = data
    # forget vs itself: every ratio is 1, every score 0 -> nothing is pruned
    scores = B.manu_scores(tiny_llava, forget, forget, B.MANUConfig(max_examples=100, progress=False))
    for per_layer in scores.values():
        for s in per_layer.values():
            assert s.abs().max() < 1e-9
    res = B.unlearn(tiny_llava, forget, forget, B.MANUConfig(max_examples=100, progress=False))
    assert res.info["pruned_neurons"] == 0


def test_sweep_and_pick(tiny_llava, data):
    forget, retain = data
    base = B.GAConfig(**{**FAST, "max_steps": 1})
    rows = B.sweep(tiny_llava, forget, retain, base, {"lr": [1e-3, 1e-2]}, eval_forget=forget[:4],
                   eval_retain=retain[:4])
    assert [r["method"] for r in rows] == ["Vanilla", "GA", "GA"] and rows[1]["lr"] == 1e-3
    assert {"forget_acc", "retain_acc", "forget_nll", "retain_nll"} <= rows[1].keys()
    fake = [{"method": "Vanilla", "forget_acc": 0.9, "retain_acc": 0.9},
            {"method": "GA", "lr": 1, "forget_acc": 0.1, "retain_acc": 0.5},
            {"method": "GA", "lr": 2, "forget_acc": 0.4, "retain_acc": 0.88},
            {"method": "GA", "lr": 3, "forget_acc": 0.6, "retain_acc": 0.9}]
    assert B.pick_config(fake, 0.05)["lr"] == 2
    assert B.pick_config(fake, 0.0)["lr"] == 3
    assert B.pick_config(fake[:2], 0.05) == {**fake[1], "within_budget": False}


@pytest.mark.parametrize("name", ["tiny_qwen25vl", "tiny_qwen3vl"])
def test_qwen_families(request, name, data):
    adapter = request.getfixturevalue(name)
    forget, retain = data
    before = _state(adapter.model)
    targets = B.lora_targets(adapter.model)
    assert any("merger" in t for t in targets) and not any(adapter.module_role(t) == "vision" for t in targets)
    res = B.unlearn(adapter, forget, retain, B.GADiffConfig(**{**FAST, "max_steps": 2}))
    assert B.answer_nll(res.adapter, forget[:4]) != B.answer_nll(adapter, forget[:4])
    pruned = B.unlearn(adapter, forget, retain, B.MANUConfig(max_examples=4, progress=False, positive_only=False))
    assert any(adapter.module_role(n) == "vision" for n in pruned.info["pruned"])
    assert any(adapter.module_role(n) == "language" for n in pruned.info["pruned"])
    assert _same(before, _state(adapter.model))


# Before the adapters held the family knowledge, one list of module-path keys and MLP child names served every family.
_SHARED_VISION = ("vision_tower", "vision_model", "visual.")
_SHARED_PROJECTOR = ("multi_modal_projector", "merger", "connector")
_SHARED_MLP_IN = ("gate_proj", "up_proj", "fc1", "linear_fc1")
_SHARED_MLP_OUT = ("down_proj", "fc2", "linear_fc2")


def _shared_role(name: str) -> str:
    if name == "lm_head" or name.endswith(".lm_head"):
        return "lm_head"
    if any(k in name for k in _SHARED_PROJECTOR):
        return "projector"
    return "vision" if any(k in name for k in _SHARED_VISION) else "language"


@pytest.mark.parametrize("name", ["tiny_llava", "tiny_qwen25vl", "tiny_qwen3vl", "tiny_causal_lm"])
def test_family_knowledge_finds_the_modules_the_shared_rule_found(request, name):
    adapter = request.getfixturevalue(name)
    model = adapter.model
    assert all(adapter.module_role(n) == _shared_role(n) for n, _ in model.named_modules())
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for vision in (False, True):
        roles = {"language", "projector"} | ({"vision"} if vision else set())
        targets = B.lora_targets(model, vision)
        assert targets == [n for n in linears if _shared_role(n) in roles]
        assert list(mmunlearner.mmunlearner_scope(model, vision)) == [f"{n}.weight" for n in targets]
        expected = {}
        for n, mod in model.named_modules():
            if _shared_role(n) == "projector" or (_shared_role(n) == "vision" and not vision):
                continue
            kids = dict(mod.named_children())
            outs = [k for k in _SHARED_MLP_OUT if isinstance(kids.get(k), nn.Linear)]
            ins = [k for k in _SHARED_MLP_IN if isinstance(kids.get(k), nn.Linear)]
            if len(outs) == 1 and ins:
                expected[n] = ([kids[k] for k in ins], kids[outs[0]])
        found = manu.mlp_blocks(model, vision)
        assert list(found) == list(expected) and found  # same blocks, same order
        for n, (ins, out) in found.items():
            assert out is expected[n][1] and len(ins) == len(expected[n][0])
            assert all(a is b for a, b in zip(ins, expected[n][0]))
    if adapter.is_multimodal:  # the vision tower's MLPs are found too
        assert set(manu.mlp_blocks(model, True)) > set(manu.mlp_blocks(model, False))


def test_organism_config_reads_the_sweep_choice(tmp_path, monkeypatch):
    import json

    f = tmp_path / "sweep.json"
    f.write_text(json.dumps({"methods": {"GA": {"chosen": {"lr": 1e-3, "epochs": 1}}}}))
    from erasebook import baseline_configs as bc

    assert bc.organism_choices(f) == {"GA": {"lr": 1e-3, "epochs": 1}}
    assert bc.organism_choices(tmp_path / "missing.json") == {}
    monkeypatch.setattr(bc, "sweep_file", lambda: f)
    cfg = bc.organism_config("GA", epochs=2)
    assert (cfg.lr, cfg.epochs) == (1e-3, 2)  # sweep choice, then the override
    assert bc.organism_config("NPO").lr == B.NPOConfig().lr  # no choice recorded: class default
    with pytest.raises(ValueError, match="unknown baseline"):
        bc.organism_config("SGD")
    monkeypatch.undo()
    monkeypatch.setenv("ERASEKIT_DATA", str(tmp_path))  # the sweep file follows ERASEKIT_DATA
    assert bc.sweep_file() == tmp_path / "results" / "baseline_sweep.json"


@pytest.mark.parametrize("method", ["GA", "MANU"])
def test_cached_weights_rebuild_the_trained_model(tiny_llava, data, method, tmp_path, monkeypatch):
    """erasebook.cache.cached_weights: one training per key; a hit rebuilds the same weights from the changed
    tensors alone (a merged LoRA, a pruned copy), with the training's summary, and leaves vanilla untouched."""
    from erasebook import cache

    monkeypatch.setenv("ERASEKIT_CACHE", str(tmp_path))
    forget, retain = data
    cfg = (dataclasses.replace(B.GAConfig(), **FAST) if method == "GA"
           else B.MANUConfig(max_examples=8, progress=False, positive_only=False))
    calls = []

    def train():
        calls.append(1)
        res = B.unlearn(tiny_llava, forget, retain, cfg)
        return res.adapter, res.summary()

    before = _state(tiny_llava.model)
    trained, s1 = cache.cached_weights("w", "k" * 64, train, tiny_llava, "tiny")
    again, s2 = cache.cached_weights("w", "k" * 64, train, tiny_llava, "tiny")
    assert calls == [1] and s1 == s2 and again.model is not trained.model
    assert _same(_state(trained.model), _state(again.model))
    assert not _same(before, _state(again.model)) and _same(before, _state(tiny_llava.model))
    stored = cache.load_artifact(cache.cache_path("w", "k" * 64))
    assert 0 < len(stored) < len(before)   # only what training changed
    assert not again.model.training and not any(p.requires_grad for p in again.model.parameters())
