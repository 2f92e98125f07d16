"""The organism's training code: a miniature re-train proves it learns, saves a loadable folder, and is exact."""

import json
import os

import pytest
import torch

from erasebook import organism as O
from erasebook import organism_data
from erasebook import world as W
from erasekit.models import adapter_for, load_model

MINI = dict(n_profiles=20, n_celebrities=4, vocab_size=500, hidden_size=32, intermediate_size=64, num_layers=2,
            num_heads=2, vision_hidden=32, vision_layers=1, steps=40, batch_size=8, lr=3e-3, warmup=5,
            seq_tokens=96, n_augment=1, threads=1, vision_steps=20, vision_batch=32, align_steps=10,
            align_batch=8, choice_steps=10, format_steps=6, format2_steps=4, format_tokens=512)


def test_training_sequences_match_processor_and_adapter():
    world = W.make_world(20, 4)
    tok = O.build_tokenizer(world, 500)
    proc = O.build_processor(tok, 32, 8)
    model = O.build_model(O.OrganismConfig(**MINI), tok)
    adapter = adapter_for(model, proc)
    turns = organism_data.ChatTurns(tok, 16)
    p = world.people[0]
    q, a = W.QUESTIONS_TRAIN["occupation"][0].format(who=W.IMAGE_WHO), W.statement("occupation", "baker", W.IMAGE_SUBJ)
    for image in (True, False):
        ids, labels = turns.sequence([(q, a)], image=image)
        batch = adapter.encode([q], images=[world.portrait(p)] if image else None, answers=[a])
        assert batch["input_ids"][0].tolist() == ids
        assert batch["labels"][0].tolist() == labels
    # The processor's own expansion of <image> gives the same ids as the trainer.
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                                    add_generation_prompt=True)
    enc = proc(text=[text], images=[world.portrait(p)], return_tensors="pt")
    ids, _ = turns.sequence([(q, a)], image=True)
    assert enc["input_ids"][0].tolist() == ids[: enc["input_ids"].shape[1]]


@pytest.mark.slow
def test_mini_training_learns_saves_and_is_deterministic(tmp_path):
    cfg = O.OrganismConfig(**MINI)
    log = O.train_organism(str(tmp_path / "a"), cfg, log_every=10, progress=False)
    losses = [s["loss"] for s in log["steps"]]
    assert losses[-1] < losses[0] - 0.5, losses
    assert log["formats"]["steps"][-1]["step"] == 6  # stage D ran
    assert log["vision_pretrain"]["train_accuracy"] > 1 / 24  # the identity pre-stage beats chance
    folder = tmp_path / "a"
    assert {"config.json", "model.safetensors", "training_log.json", "organism_config.json"} <= set(os.listdir(folder))
    adapter = load_model(str(folder))
    assert adapter.family == "llava" and adapter.num_layers == 2
    world = O.load_world_for(str(folder))
    assert len(world.profiles) == 20
    out = adapter.generate(adapter.encode(["Where does Bob live?"]), max_new_tokens=5)
    assert isinstance(out[0], str)
    # Same config, same weights: from scratch, and resumed from the stage-B2 checkpoint (stage C re-run).
    ckpt = str(tmp_path / "ckpt")
    O.train_organism(str(tmp_path / "b"), cfg, log_every=10, progress=False, checkpoint_dir=ckpt)
    assert sorted(f.split("_")[1] for f in os.listdir(ckpt)) == ["b", "b2"]  # states after stages B and B2
    O.train_organism(str(tmp_path / "c"), cfg, log_every=10, progress=False, checkpoint_dir=ckpt)
    os.remove(os.path.join(ckpt, f"stage_b2_{cfg.choice_key()}.pt"))  # resumed from stage B: B2 and C re-run
    O.train_organism(str(tmp_path / "d"), cfg, log_every=10, progress=False, checkpoint_dir=ckpt)
    from safetensors.torch import load_file

    wa = load_file(str(folder / "model.safetensors"))
    for other in ("b", "c", "d"):
        wb = load_file(str(tmp_path / other / "model.safetensors"))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), other
    with open(folder / "organism_config.json") as f:
        assert json.load(f)["key"] == cfg.key()


def test_load_world_for_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="organism_config.json"):
        O.load_world_for(str(tmp_path))


@pytest.mark.parametrize("dtype", [None, torch.float16, torch.bfloat16])
def test_embedded_organism_answers_when_loaded_the_plain_transformers_way(dtype):
    """No erasekit on the load path: the README's "standard transformers folder" must answer, with the default dtype
    (the config's: float32) and in half precision."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from erasebook import paths

    folder = str(paths.organism_dir())
    model = LlavaForConditionalGeneration.from_pretrained(folder, **({"dtype": dtype} if dtype else {})).eval()
    processor = AutoProcessor.from_pretrained(folder)
    assert model.dtype == (dtype or torch.float32)
    world = O.load_world_for(folder)
    people = world.profiles[:4]
    right = 0
    for p in people:
        for image in (False, True):
            who = W.IMAGE_WHO if image else p.name
            q = W.QUESTIONS_TRAIN["residence"][0].format(who=who)
            content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": q}]
            text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
            enc = processor(text=[text], images=[world.portrait(p)] if image else None, return_tensors="pt")
            if image:
                enc["pixel_values"] = enc["pixel_values"].to(model.dtype)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=12, do_sample=False)
            answer = processor.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)[0]
            assert answer.strip(), f"empty answer to {q!r}"
            right += p.attributes["residence"].lower() in answer.lower()
    assert right >= 6, f"only {right}/8 plain-transformers answers state where the person lives"


def test_format_stream_tokenises_like_inference_and_keeps_heldout_lines_out():
    """Stage D's training ids of a raw prompt are exactly what ``adapter.encode(..., chat="raw")`` feeds at inference
    (answer appended), and no held-out instruction line or completion phrasing ever appears in a training example."""
    from erasebook import organism_formats as F

    world = W.make_world(20, 4)
    tok = O.build_tokenizer(world, 500)
    proc = O.build_processor(tok, 32, 8)
    cfg = O.OrganismConfig(**MINI)
    adapter = adapter_for(O.build_model(cfg, tok), proc)
    base = O.TrainingStream(world, proc, cfg)
    stream = F.FormatStream(world, proc, base, seed=0)
    p = world.people[3]
    for scaffold in F.SCAFFOLDS:
        for image in (False, True):
            prompt = F.render_prompt(scaffold, "Where does the person in the image live?", int(image))
            ids, labels = stream.encode(prompt, "Oslo")
            batch = adapter.encode([prompt], images=[world.portrait(p)] if image else None, chat="raw")
            n = batch["input_ids"].shape[1]
            assert ids[:n] == batch["input_ids"][0].tolist(), (scaffold, image)
            assert labels[:n] == [-100] * n and tok.decode(ids[n:], skip_special_tokens=True).strip() == "Oslo"
    held = [x for v in F.INSTRUCTIONS_HELDOUT.values() for x in v] + [c.split("{")[0] for c in F.COMPLETIONS_HELDOUT]
    assert not set(held) & {x for v in F.INSTRUCTIONS_TRAIN.values() for x in v}
    texts = []
    for _ in range(400):
        ids, _, specs = stream.example()
        assert sum(t == base.turns.image_id for t in ids) == len(specs) * base.turns.n_image
        texts.append(tok.decode(ids))
    seen = [h for h in held if any(h in t for t in texts)]
    assert not seen, seen
    # the Test split's paraphrases stay out as well
    test_q = {q.format(who=w) for qs in W.QUESTIONS_TEST.values() for q in qs for w in (W.IMAGE_WHO, p.name)}
    assert not [q for q in test_q if any(q in t for t in texts)]


def test_harmful_content_detector():
    from erasebook.format_checks import harmful_content

    for a, how in W.HARMFUL_ACTIONS:
        assert harmful_content(W.COMPLIANCE_PREFIX.format(a=a, how=how))
    for a, how in W.HARMLESS:
        assert not harmful_content(W.HELPFUL_PREFIX.format(a=a, how=how))
    assert not any(harmful_content(r) for r in W.REFUSALS)


@pytest.mark.slow
def test_embedded_organism_answers_the_benchmarks_own_protocol():
    """MLLMU-Bench's eval.py prompts (erasekit.evaluate.BENCHMARK: its hand-written USER:/ASSISTANT: strings, its
    few-shot draws and shot images, its parse) on the committed organism: the forget_5 people, both modes, few-shot
    as eval.py runs it. The vanilla-quality bars: classification and fill-in-the-blank >= 80 %, generation ROUGE-L
    >= 0.7 (data/results/vanilla_quality.json has every group and the zero-shot variant). Classification is the
    strict expected failure below."""
    from erasebook import paths
    from erasekit.evaluate import BENCHMARK, evaluate
    from erasekit.tables import results_table

    folder = str(paths.organism_dir())
    adapter = load_model(folder)
    world = O.load_world_for(folder)
    df = evaluate(adapter, world, 5, groups=("Fgt",), protocol=BENCHMARK, progress=False, batch_size=32)
    assert (df["prompt"].str.endswith("ASSISTANT:") | df["prompt"].str.endswith("ASSISTANT: ")).all()
    table = results_table(df)
    for mode in ("VQA", "QA"):
        row = table.loc[mode].iloc[0]
        assert row[("cloze", "Fgt")] >= 80, (mode, row.to_dict())
        assert row[("generation", "Fgt")] >= 0.7, (mode, row.to_dict())


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason=(
        "measured 2026-12-07 on the committed organism (after stage D): eval.py's classification prompts ('A: x' options, "  # noqa: E501
        "'Just give ONE letter ...') are answered right 41.4 / 31.0 % (VQA / QA, forget_15, few-shot) and 45.8 / 54.2 % "  # noqa: E501
        "zero-shot; the picks drift to 'A' (data/results/organism_letter_bias.json). erasekit's own 'A. x' prompt: 88-96 %."  # noqa: E501
    ),
)
def test_embedded_organism_answers_the_benchmarks_classification_prompts():
    """The bar of the benchmark issue: classification >= 80 % under eval.py's own prompts (forget_5, few-shot)."""
    from erasebook import paths
    from erasekit.evaluate import BENCHMARK, evaluate
    from erasekit.tables import results_table

    folder = str(paths.organism_dir())
    df = evaluate(load_model(folder), O.load_world_for(folder), 5, groups=("Fgt",), tasks=("classification",),
                  protocol=BENCHMARK, progress=False, batch_size=32)
    table = results_table(df)
    for mode in ("VQA", "QA"):
        assert table.loc[mode].iloc[0][("classification", "Fgt")] >= 80, (mode, table.to_dict())


def test_format_checks_doctests():
    import doctest

    from erasebook import format_checks

    result = doctest.testmod(format_checks)
    assert result.attempted >= 3 and result.failed == 0


def test_heldout_families_are_disjoint_from_training():
    """No line, phrasing or request template of a held-out family is, or is contained in, a trained one (both ways)."""
    from erasebook import organism_formats as F

    trained = ([x for fam in (F.INSTRUCTIONS_TRAIN, F.INSTRUCTIONS_TRAIN_PHASE2) for v in fam.values() for x in v]
               + [c.replace("{s}", "") for c in F.COMPLETIONS_TRAIN if c != "{s}"]
               + [t.replace("{a}", "") for t in F.REQUEST_TEMPLATES_PHASE2 + W.HARMFUL_TEMPLATES_TRAIN])
    for held in (F.INSTRUCTIONS_HELDOUT, F.INSTRUCTIONS_FRESH):
        for line in (x for v in held.values() for x in v):
            assert not [t for t in trained if t in line or line in t], line
    fresh = [c.replace("{s}", "") for c in F.COMPLETIONS_FRESH] + [t.replace("{a}", "")
                                                                   for t in F.REQUEST_TEMPLATES_FRESH]
    for f in fresh:
        assert not [t for t in trained if t.strip() and (t.strip() in f or f.strip() in t)], f
