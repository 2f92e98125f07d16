"""erasebook.pipeline: every step runs on the tiny random LLaVA + a tiny world, hits its cache on the second call
(in-process and from disk), and misses when an input changes."""

from __future__ import annotations

import pytest
import torch

import erasebook as eb
import erasebook.pipeline as pl
import erasebook.report
import erasekit as ek
import erasekit.gates
import erasekit.nullspace
from erasebook import cache as ekcache
from erasebook import runs
from erasebook import separability as sep
from erasebook.session import load_session, model_key
from erasebook.world import make_world
from erasekit.strengths import TaskSteering


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ERASEKIT_CACHE", str(tmp_path / "cache"))
    ekcache._MEMO.clear()
    ekcache.STATS.clear()
    yield tmp_path / "cache"
    ekcache._MEMO.clear()


@pytest.fixture()
def default(tiny_llava, cache):
    return load_session(tiny_llava, make_world(20, 2, image_size=28))


def _forget_memo():
    """Drop the in-process memo (but keep loaded defaults) so the next call must read the disk cache."""
    ekcache._MEMO.clear()


def test_load_session_errors(tiny_llava, tmp_path):
    with pytest.raises(ValueError, match="data="):
        load_session(tiny_llava)
    with pytest.raises(FileNotFoundError, match="build-organism|does not exist"):
        load_session(tmp_path / "nope")


def test_model_key_stable_and_sensitive(tiny_llava):
    k = model_key(tiny_llava)
    assert k == model_key(tiny_llava)
    assert model_key("org/model-a") != model_key("org/model-b")


def test_refusal_direction_cached(default):
    r1 = pl.refusal_direction(default, n_pairs=4, filter=False, progress=False)
    assert ekcache.STATS["refusal_direction:miss"] == 1
    assert r1.layers == list(range(default.num_layers)) and r1.d == 32
    r2 = pl.refusal_direction(default, n_pairs=4, filter=False, progress=False)
    assert ekcache.STATS["refusal_direction:hit"] == 1 and r2 is r1
    _forget_memo()
    r3 = pl.refusal_direction(default, n_pairs=4, filter=False, progress=False)  # from disk
    assert ekcache.STATS["refusal_direction:hit"] == 2
    assert all(torch.equal(r1[l], r3[l]) for l in r1.layers)
    pl.refusal_direction(default, n_pairs=3, filter=False, progress=False)  # other data -> other key
    pl.refusal_direction(default, n_pairs=4, layers=[1], filter=False, progress=False)
    assert ekcache.STATS["refusal_direction:miss"] == 3


def test_filter_error_is_clear(default):
    # A random model neither refuses nor complies in a recognisable way.
    with pytest.raises(RuntimeError, match="filter=False"):
        pl.refusal_direction(default, n_pairs=3, filter=True, progress=False)


def test_pgd_and_multimodal_direction(default):
    kw = dict(steps=2, n_images=2, k=2, n_pairs=4, progress=False)
    adv = pl.adversarial_images(default, **kw)
    assert adv.images.shape == (2, 3, 28, 28) and adv.loss_history.shape == (2, 2)
    _, clean = pl.clean_images(default, 2)
    assert float((adv.images - clean).abs().max()) <= 16 / 255 + 1e-6
    assert 0 <= float(adv.images.min()) and float(adv.images.max()) <= 1
    _forget_memo()
    adv2 = pl.adversarial_images(default, **kw)
    assert ekcache.STATS["adversarial_images:hit"] == 1 and torch.equal(adv.images, adv2.images)
    adv3 = pl.adversarial_images(default, **{**kw, "eps": None})
    assert ekcache.STATS["adversarial_images:miss"] == 2 and adv3.meta["cache_key"] != adv.meta["cache_key"]

    m = pl.multimodal_direction(default, adv2, n_pairs=4, filter=False, progress=False)
    assert m.meta["kind"] == "multimodal" and m.d == 32
    pl.multimodal_direction(default, adv2, n_pairs=4, filter=False, progress=False)
    assert ekcache.STATS["multimodal_direction:hit"] == 1
    pl.multimodal_direction(default, adv3, n_pairs=4, filter=False, progress=False)  # other images -> miss
    assert ekcache.STATS["multimodal_direction:miss"] == 2


def test_refusal_contrast_direction_is_harmful_minus_harmless(default):
    """erasekit's direction: mean over (harmful, ± image) − mean over (harmless, ± image), cached."""
    from erasebook.world import safety_prompts
    from erasekit.hooks import collect_activations

    d = pl.refusal_contrast_direction(default, n_images=2, layers=[0, 1], filter=False, progress=False)
    assert d.meta["kind"] == "refusal_contrast" and d.layers == [0, 1]
    pl.refusal_contrast_direction(default, n_images=2, layers=[0, 1], filter=False, progress=False)
    assert ekcache.STATS["refusal_contrast_direction:hit"] == 1
    sp = [x for x in safety_prompts(default.safety_world) if not x.heldout]
    _, clean = pl.clean_images(default, 2)
    means = []
    for kind in ("harmful", "harmless"):
        ps = [x.prompt for x in sp if x.kind == kind]
        a = collect_activations(default.adapter, ps, layers=[1], progress=False)[1]
        b = collect_activations(default.adapter, ps, [clean[i % 2] for i in range(len(ps))], layers=[1],
                                progress=False)[1]
        means.append(torch.cat([a, b]).double().mean(0))
    assert torch.allclose(d[1], means[0] - means[1], atol=1e-5)
    with pytest.raises(RuntimeError, match="filter=False"):  # a random model neither refuses nor answers
        pl.refusal_contrast_direction(default, n_images=2, layers=[1], filter=True, progress=False)


def test_activations_fit_steering_evaluate(default):
    acts = pl.forget_retain_activations(default, 5, retain_sample=2, celeb_sample=1, progress=False)
    # 1 forget profile, 2 retain + 1 celebrity; 4 attributes x 3 tasks of image+text questions each.
    assert acts.meta["n_forget"] == 12 and acts.meta["n_retain"] == 24 and acts.meta["n_celebrity"] == 12
    assert acts.forget[1].shape == (12, 32) and acts.retain[1].shape == (36, 32)
    pl.forget_retain_activations(default, 5, retain_sample=2, celeb_sample=1, progress=False)
    assert ekcache.STATS["query_activations:hit"] == 1
    acts3 = pl.forget_retain_activations(default, 5, retain_sample=3, celeb_sample=1, progress=False)
    assert acts3.key != acts.key and acts3.retain[1].shape[0] == 48

    direction = pl.refusal_direction(default, n_pairs=4, filter=False, progress=False)
    st = pl.input_aware_steerer(default, direction, acts, gamma=0.1, null_space=0.3)
    assert st.layers == list(range(1, default.num_layers))
    _forget_memo()
    st2 = pl.input_aware_steerer(default, direction, acts, gamma=0.1, null_space=0.3)
    assert ekcache.STATS["fit_steering:hit"] == 1 and torch.equal(st[1].gate, st2[1].gate)
    pl.input_aware_steerer(default, direction, acts, gamma=1.0, null_space=0.3)
    pl.input_aware_steerer(default, direction, acts3, gamma=0.1, null_space=0.3)
    assert ekcache.STATS["fit_steering:miss"] == 3
    mlp = pl.input_aware_steerer(default, direction, acts, null_space=0.3, kind="mlp", hidden=8, steps=3)
    assert mlp.meta["kind"] == "mlp"

    kw = dict(retain_sample=1, celeb_sample=1, modes=("VQA",), tasks=("classification",), max_new_tokens=2,
              progress=False)
    van = runs.evaluate_steering(default, 5, None, **kw)
    steering = TaskSteering(st2, strengths=0.5)
    ours = runs.evaluate_steering(default, 5, steering, **kw)
    assert set(van["split"]) == {"Fgt", "Test", "Ret", "Cele"} and len(van) == len(ours)
    assert set(ours["method"]) == {"Steered"}
    again = runs.evaluate_steering(default, 5, steering, method="Ours", **kw)
    assert ekcache.STATS["evaluate:hit"] == 1 and set(again["method"]) == {"Ours"}
    assert list(again["response"]) == list(ours["response"])
    runs.evaluate_steering(default, 5, TaskSteering(st2, strengths=1.0), **kw)
    runs.evaluate_steering(default, 5, TaskSteering(direction=direction, strengths=0.5), **kw)
    assert ekcache.STATS["evaluate:miss"] == 4
    table = runs.results(default, 5, {"Ours": steering}, **kw)
    assert list(table.index.get_level_values("method")) == ["Vanilla", "Ours"]


def test_steering_validation(default):
    direction = pl.refusal_direction(default, n_pairs=2, filter=False, progress=False)
    with pytest.raises(ValueError, match="exactly one"):
        TaskSteering()
    with pytest.raises(ValueError, match="tasks"):
        TaskSteering(direction=direction, strengths={"classification": 1.0})
    ops = TaskSteering(direction=direction, strengths=2.0, layers=[1]).operators("cloze", default.num_layers)
    h = torch.zeros(3, 32)
    assert list(ops) == [1] and torch.allclose(ops[1](h), 2 * direction[1].float().expand(3, -1))


def test_dense_eq12_matches_rank_one():
    from erasekit.nullspace import null_space_projector
    from erasekit.steering import fit_input_aware

    g = torch.Generator().manual_seed(0)
    H_f, H_r, d = (torch.randn(5, 16, generator=g, dtype=torch.float64),
                   torch.randn(8, 16, generator=g, dtype=torch.float64), torch.randn(16, generator=g,
                                                                                   dtype=torch.float64))
    P = null_space_projector(H_r, "exact")
    dense = ek.gates.dense_eq12(H_f, P.matrix(), d, gamma=0.1)
    assert torch.allclose(dense, fit_input_aware(H_f, H_r, d, 0.1, P).dense(), atol=1e-9)


def test_notebook_helpers(default):
    row = default.source.split("forget_5")[0]
    q = eb.report.profile_questions(row)
    assert set(q["task"]) == {"classification", "generation", "cloze"} and len(q) == 4 * 2 * 3
    assert ek.auc([2, 3], [0, 1]) == 1.0 and ek.auc([0], [0]) == 0.5 and ek.auc([0, 1], [1, 2]) == 0.125
    acts = pl.forget_retain_activations(default, 5, retain_sample=1, celeb_sample=1, progress=False)
    s = ek.nullspace.projector_summary(acts, "exact", layers=[1])
    assert s.loc[1, "k"] == 32 - s.loc[1, "rank(H_r)"] and s.loc[1, "retain energy kept (%)"] < 1e-6
    direction = pl.refusal_direction(default, n_pairs=2, filter=False, progress=False)
    st = pl.input_aware_steerer(default, direction, acts, gamma=0.1, null_space=0.3)
    ex = runs.example_generations(default, 5, TaskSteering(st, strengths=1.0), n=1, max_new_tokens=2)
    assert list(ex["group"]) == ["Fgt", "Test", "Ret", "Cele"][: len(ex)] and len(ex) >= 3
    assert (
        ek.generate(default.adapter, ["hi"], max_new_tokens=2)[0]
        == ek.generate(default.adapter, ["hi"], max_new_tokens=2)[0]
    )


def test_choose_strengths_rule(default, monkeypatch):
    """The λ rule on a controlled score table: lowest forget score within the retain budget, smallest λ on ties."""
    import pandas as pd

    scores = {  # λ -> (forget, retain) per task, on the 0-1 scale
        0.0: {"classification": (0.9, 0.9), "generation": (0.8, 0.8), "cloze": (0.5, 0.5)},
        0.5: {"classification": (0.5, 0.88), "generation": (0.6, 0.7), "cloze": (0.5, 0.5)},
        1.0: {"classification": (0.2, 0.86), "generation": (0.1, 0.6), "cloze": (0.5, 0.5)},
        2.0: {"classification": (0.0, 0.5), "generation": (0.0, 0.5), "cloze": (0.4, 0.5)},
    }
    seen = []

    def fake(d, rows, steering, method, **kw):
        lam = 0.0 if steering is None else steering.strengths
        seen.append((lam, sorted(rows)))
        recs = [{"split": sp, "task": t, "score": v[i]} for t, v in scores[lam].items()
                for i, sp in enumerate(("Fgt", "Ret"))]
        return pd.DataFrame(recs)

    monkeypatch.setattr(runs, "_evaluate_rows", fake)
    direction = pl.refusal_direction(default, n_pairs=2, filter=False, progress=False)
    chosen, table = runs.choose_strengths(default, lambda lam: TaskSteering(direction=direction, strengths=lam),
                                        grid=[2.0, 0.5, 1.0], n_retain=2)
    assert chosen == {"classification": 1.0, "generation": 0.5, "cloze": 2.0}
    assert [s[0] for s in seen] == [0.0, 0.5, 1.0, 2.0] and seen[0][1] == ["Fgt", "Ret"]
    assert table["chosen"].sum() == 3


def test_scored_profiles_never_enter_a_fit_or_a_tuning_set(default):
    """Held out means held out: Ret/Cele scored profiles are disjoint from H_r, the tuning rows and the baselines'
    retain data; the Test split never enters H_f."""
    scored = pl.group_rows(default, 5, ("Ret", "Cele"), "eval")
    scored_ids = {r["ID"] for rs in scored.values() for r in rs}
    assert scored["Ret"] and scored["Cele"]
    acts = pl.forget_retain_activations(default, 5, progress=False)
    assert acts.meta["retain_ids"] and not scored_ids & set(acts.meta["retain_ids"])
    tune = runs.tuning_rows(default, 5)
    assert tune["Ret"] and not scored_ids & {r["ID"] for r in tune["Ret"]}
    assert not set(acts.meta["retain_ids"]) & {r["ID"] for r in tune["Ret"]}
    _, retain_examples = runs.baseline_data(default, 5)
    fit_rows = pl.group_rows(default, 5, ("Ret", "Cele"), "fit")
    assert not scored_ids & {r["ID"] for rs in fit_rows.values() for r in rs}
    assert len(retain_examples) > 0
    # H_f is exactly the forget split's questions (the Test split's rows never enter a fit)
    items = ek.evaluate.build_items({"Fgt": default.source.split("forget_5")}, modes=tuple(acts.meta["modes"]))
    assert acts.meta["n_forget"] == len(items) == acts.forget[1].shape[0]
    # the same profile keeps its role at every forget ratio
    for pct in (10, 15):
        ids = {r["ID"] for rs in pl.group_rows(default, pct, ("Ret", "Cele"), "eval").values() for r in rs}
        assert ids == scored_ids


def test_separability_and_norms():
    from erasekit.steering import InputAwareSteerer, fit_input_aware

    g = torch.Generator().manual_seed(0)
    d = torch.randn(8, generator=g, dtype=torch.float64)
    H_f = torch.randn(6, 8, generator=g, dtype=torch.float64) + 3
    H_r = torch.randn(5, 8, generator=g, dtype=torch.float64)
    st = InputAwareSteerer({1: fit_input_aware(H_f, H_r, d, 0.01, "exact")}, meta={})
    norms = sep.steering_norms(st, {1: H_f}, 2.0)
    expect = 2.0 * (H_f @ st[1].gate).abs() * d.norm()
    assert torch.allclose(norms[1].double(), expect, rtol=1e-5)
    table = sep.separability(st, {1: H_f}, {1: H_r}, 2.0)
    assert table.loc[1, "AUC"] == 1.0 and table.loc[1, "median retain"] < 1e-6  # H_r lies in P's kernel


def test_run_baseline_cached_with_summary(default):
    from erasekit.baselines import GAConfig

    kw = dict(retain_train=2, retain_sample=1, celeb_sample=1, modes=("VQA",), tasks=("classification",),
              max_new_tokens=2, progress=False)
    run = runs.run_baseline(default, 5, GAConfig(max_steps=2, progress=False), **kw)
    assert set(run.frame["method"]) == {"GA"} and run.summary["steps"] == 2 and run.summary["seconds"] > 0
    _forget_memo()
    again = runs.run_baseline(default, 5, GAConfig(max_steps=2, progress=False), **kw)
    assert ekcache.STATS["baseline:hit"] == 1 and again.summary == run.summary
    assert list(again.frame["response"]) == list(run.frame["response"])
    runs.run_baseline(default, 5, GAConfig(max_steps=3, progress=False), **kw)
    assert ekcache.STATS["baseline:miss"] == 2


def test_steered_activations_move_only_with_steering(default):
    direction = pl.refusal_direction(default, n_pairs=2, filter=False, progress=False)
    before = sep.steered_activations(default, 5, None, 1, ("Fgt",), n=1, progress=False)
    again = sep.steered_activations(default, 5, None, 1, ("Fgt",), n=1, progress=False)
    after = sep.steered_activations(default, 5, TaskSteering(direction=direction, strengths=3.0), 1, ("Fgt",), n=1,
                                   progress=False)
    assert torch.equal(before["Fgt"], again["Fgt"]) and not torch.allclose(before["Fgt"], after["Fgt"])
    with pytest.raises(ValueError, match="out of range"):
        sep.steered_activations(default, 5, None, 99, ("Fgt",), n=1, progress=False)


def _same_steerer(a, b) -> bool:
    """The same layers, γ and gate kind, and every map's direction and gate equal up to float rounding: the front
    door collects H_r's activations in batches that mix retain and celebrity questions (the book's cache batches
    them apart), which moves the last bits where padding differs. On the organism's 5/10/15 % splits the batches
    coincide and the steerers are equal bit for bit (checked when this route landed)."""
    def close(x, y):
        return torch.allclose(x, y, rtol=1e-4, atol=1e-4 * float(y.abs().max()))

    keys = ("gate", "gamma", "gamma_scale", "null_space_dim", "n_forget", "n_retain")
    return a.layers == b.layers and all(
        torch.equal(a.maps[l].direction, b.maps[l].direction) and close(a.maps[l].gate, b.maps[l].gate)
        and all(a.maps[l].meta.get(k) == b.maps[l].meta.get(k) for k in keys) for l in a.layers)


def test_the_books_steerers_are_the_front_doors(default):
    """One route: chapter 05's two steerers come from ``ek.fit_eraser`` on the book's prompts
    (``pl.gate_prompts``) and equal the formulas on the book's cached activations; the harness steers with the
    eraser's hooks."""
    from erasekit.eraser import Eraser
    from erasekit.steering import fit_steerer
    from erasekit.tuning import GAMMA_GRID, LAYER_AUC_MARGIN, choose_gate

    modes = ("VQA", "QA")
    direction = pl.refusal_direction(default, n_pairs=4, filter=False, progress=False)
    acts = pl.forget_retain_activations(default, 5, modes=modes, progress=False)
    layers = list(range(1, default.num_layers))
    prompts = pl.gate_prompts(default, 5, modes)
    assert len(prompts["forget"]) == acts.forget[1].shape[0] and len(prompts["retain"]) == acts.retain[1].shape[0]
    assert prompts["retain_ids"] == acts.meta["retain_ids"]

    paper = pl.paper_steerer(default, direction, 5, fit_modes=modes, progress=False)
    assert _same_steerer(paper, fit_steerer(acts.forget, acts.retain, direction, 0.1, 0.3, layers=layers))
    # the same step and key as the general function at the paper's settings: that call reads it from the cache
    again = pl.input_aware_steerer(default, direction, acts, gamma=0.1, null_space=0.3)
    assert again.meta["cache_key"] == paper.meta["cache_key"] and ekcache.STATS["fit_steering:hit"] >= 1

    ours = pl.default_steerer(default, direction, 5, fit_modes=modes, progress=False)
    tune = pl.query_activations(default, 5, ("Ret",), modes=modes, role="tune", progress=False)["Ret"]
    ref = choose_gate(acts.forget, acts.retain, tune, direction, layers, GAMMA_GRID, 1.0, LAYER_AUC_MARGIN, 0.9)
    assert _same_steerer(ours, ref) and ours.meta["retain_ids"] == acts.meta["retain_ids"]

    eraser = Eraser(ours, 4.0, "frozen")
    steering = TaskSteering.from_eraser(eraser.at(2.0), {"classification": 2.0, "generation": 4.0, "cloze": 2.0})
    assert steering.read == "frozen" and steering.steerer is ours and eraser.at(2.0).strength == 2.0
    texts = [p for p, _ in prompts["forget"][:2]]
    ims = [im for _, im in prompts["forget"][:2]]
    from erasekit.generation import generate
    got = generate(default.adapter, texts, ims, context=steering.interventions(default.adapter)["generation"],
                   max_new_tokens=4, progress=False)
    assert got == eraser.generate(default.adapter, list(zip(texts, ims)), max_new_tokens=4, progress=False)
