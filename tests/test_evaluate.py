"""erasekit.evaluate with a fake adapter: option-letter parse, items, few-shot prompts, the harness; and the safety
check (erasekit.safety) on the same harness."""

from __future__ import annotations

import contextlib
import importlib
import re

import pandas as pd
import pytest

from erasekit.safety import evaluate_safety, refusal_rates
from erasekit.scoring import CATEGORIES, rouge_l
from erasekit.tables import TABLE_TASKS, results_table
from erasekit.world import REFUSALS, format_options, make_world, safety_prompts

# The module, not the function: erasekit/__init__.py may export the function ``evaluate``, which shadows the
# submodule attribute (``from erasekit import evaluate`` would then return the function).
ev = importlib.import_module("erasekit.evaluate")


@pytest.fixture(scope="module")
def world():
    return make_world(n_profiles=20, n_celebrities=5)


class FakeAdapter:
    """encode/generate like erasekit.models.ModelAdapter, answering from a function (prompt, image, steered)."""

    def __init__(self, answer):
        self.answer = answer
        self.steered = False
        self.batches: list[list[str]] = []
        self.images_seen: list = []

    def encode(self, questions, images=None, answers=None):
        assert isinstance(questions, list)
        return {"questions": questions, "images": images}

    def generate(self, batch, max_new_tokens=50):
        assert max_new_tokens == 50
        qs = batch["questions"]
        ims = batch["images"] if batch["images"] is not None else [None] * len(qs)
        self.batches.append(qs)
        self.images_seen.extend(ims)
        return [self.answer(q, im, self.steered) for q, im in zip(qs, ims)]


def _correct_response(it: ev.Item) -> str:
    if it.task == "classification":
        return f"({it.target.lower()}) {it.answer}"  # zero-shot parse strips the brackets
    return it.target


def oracle(world, **kw):
    """An adapter that answers every benchmark question correctly (and refuses when steered)."""
    rows = ev.benchmark_rows(world, **kw)
    table = {(it.prompt, ev._image_key(it.image)): _correct_response(it) for it in ev.build_items(rows)}
    return FakeAdapter(lambda q, im, steered: REFUSALS[0] if steered else table[(q, ev._image_key(im))])


@contextlib.contextmanager
def _steering(adapter):
    adapter.steered = True
    try:
        yield
    finally:
        adapter.steered = False


# ----------------------------------------------------------------------------------------------------------
# option-letter parse
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("response,letter", [("B", "B"), (" (b) pilot", "B"), ("**C**.", "C"), ("The answer is B", "T"),
                                             ("", ""), ("!!!", ""), ("d", "D")])
def test_parse_choice_zero_shot(response, letter):
    assert ev.parse_choice(response) == letter


def test_parse_choice_benchmark():
    assert ev.parse_choice(" b) pilot", ev.BENCHMARK) == "B"
    assert ev.parse_choice("(B)", ev.BENCHMARK) == "("


# ----------------------------------------------------------------------------------------------------------
# items and the harness
# ----------------------------------------------------------------------------------------------------------
def test_benchmark_rows(world):
    rows = ev.benchmark_rows(world, 10, retain_sample=5, celeb_sample=2)
    fgt = {r["ID"] for r in rows["Fgt"]}
    assert fgt == set(world.forget_ids[10])
    assert {r["ID"] for r in rows["Test"]} == fgt and all("images" in r for r in rows["Test"])
    assert len(rows["Ret"]) == 5 and not fgt & {r["ID"] for r in rows["Ret"]}
    assert len(rows["Cele"]) == 2 and all(world.person(r["ID"]).celebrity for r in rows["Cele"])
    with pytest.raises(ValueError, match="forget_pct"):
        ev.benchmark_rows(world, 20)


def test_items_zero_shot(world):
    rows = ev.benchmark_rows(world, 5, groups=("Fgt", "Test"))
    items = ev.build_items(rows)
    (row,) = rows["Fgt"]
    q = row["Classification_Task"]["Image_Textual_Questions"][0]
    first = next(it for it in items if it.split == "Fgt" and it.task == "classification" and it.mode == "VQA")
    assert first.prompt == format_options(q["Question"], q["Options"]) and first.image is row["image"]
    n_img = len(rows["Test"][0]["images"])
    count = pd.Series([(it.split, it.mode, it.task) for it in items]).value_counts()
    assert count[("Fgt", "VQA", "classification")] == 4 and count[("Fgt", "QA", "cloze")] == 4
    assert count[("Test", "VQA", "generation")] == 4 * n_img  # every Test_Set image
    assert count[("Test", "QA", "generation")] == 4
    assert all(it.image is None for it in items if it.mode == "QA")
    # generation items know the attribute value (from the row's cloze item) to detect leaks
    gen = next(it for it in items if it.task == "generation")
    assert gen.answer == world.person(gen.id).attributes[gen.attribute]


def test_oracle_scores_full_marks(world):
    adapter = oracle(world)
    df = ev.evaluate(adapter, world, 5, method="Vanilla", progress=False, batch_size=4)
    assert list(df.columns) == ["method", "split", "mode", "task", "id", "attribute", "image_index", "question",
                                "prompt", "response", "target", "score", "correct", "category"]
    assert (df["score"] == 1.0).all() and (df["category"] == "correct").all()
    assert max(len(b) for b in adapter.batches) <= 4
    t = results_table(df)
    assert list(t.index) == [("VQA", "Vanilla"), ("QA", "Vanilla")]
    assert list(t.columns) == [(task, g) for task in TABLE_TASKS for g in ev.GROUPS]
    assert (t.xs("classification", axis=1, level="task") == 100.0).all().all()
    assert (t.xs("recall", axis=1, level="task") == 100.0).all().all()  # the oracle states every value
    assert (t.xs("generation", axis=1, level="task") == 1.0).all().all()


def test_intervention_per_task_and_restored(world):
    adapter = oracle(world)
    steer = lambda: _steering(adapter)  # noqa: E731
    df = ev.evaluate(adapter, world, 5, groups=("Fgt",), progress=False,
                     intervention={"classification": None, "generation": steer, "cloze": steer})
    assert not adapter.steered
    by_task = df.groupby("task")["category"].agg(set)
    assert by_task["classification"] == {"correct"}
    assert by_task["generation"] == {"refusal"} and by_task["cloze"] == {"refusal"}
    assert (df.loc[df.task == "cloze", "score"] == 0).all()
    # one factory for all tasks
    df2 = ev.evaluate(adapter, world, 5, groups=("Fgt",), progress=False, intervention=steer)
    assert set(df2["category"]) == {"refusal"}
    with pytest.raises(KeyError, match="cloze"):
        ev.evaluate(adapter, world, 5, groups=("Fgt",), progress=False, intervention={"classification": None,
                                                                                       "generation": None})


def test_cache_generates_identical_prompts_once(world):
    adapter = oracle(world)
    rows = ev.benchmark_rows(world, 5, groups=("Fgt",))["Fgt"]
    df = ev.evaluate(adapter, {"Fgt": rows, "Ret": rows}, progress=False)
    generated = sum(len(b) for b in adapter.batches)
    assert generated * 2 == len(df)
    adapter.batches.clear()
    ev.evaluate(adapter, {"Fgt": rows, "Ret": rows}, progress=False, cache=False)
    assert sum(len(b) for b in adapter.batches) == len(df)


def test_scores_and_categories_from_canned_answers(world):
    rows = ev.benchmark_rows(world, 5, groups=("Fgt",))
    items = ev.build_items(rows, modes=("QA",))

    def answer(q, im, steered):
        it = next(i for i in items if i.prompt == q)
        if it.task == "classification":
            return "Z"  # wrong letter
        if it.task == "cloze":
            return "I don't know."
        return it.target.replace("This", "That")  # generation: nearly right

    df = ev.evaluate(FakeAdapter(answer), rows, modes=("QA",), progress=False)
    cls, gen, clz = (df[df.task == t] for t in ev.TASKS)
    assert (cls.score == 0).all() and set(cls.category) == {"wrong"}
    assert (clz.score == 0).all() and set(clz.category) == {"refusal"}
    for _, r in gen.iterrows():
        assert r.score == pytest.approx(rouge_l(r.target, r.response)) and r.category == "correct"


# ----------------------------------------------------------------------------------------------------------
# benchmark (few-shot) protocol
# ----------------------------------------------------------------------------------------------------------
def test_benchmark_few_shot_prompts(world):
    rows = ev.benchmark_rows(world, 15, groups=("Fgt", "Test", "Cele"))
    full = world.split("Full_Set")
    proto = ev.Protocol("benchmark", n_shots=2, seed=3)
    items = ev.build_items(rows, protocol=proto, shot_pool=full)
    fgt_ids = [r["ID"] for r in rows["Fgt"]]
    cls = [it for it in items if it.split == "Fgt" and it.task == "classification"]
    scored = {it.id for it in cls}
    assert len(scored) == len(fgt_ids) - 2  # the two shot IDs are not scored
    shot_rows = [r for r in full if r["ID"] in set(fgt_ids) - scored]
    it = next(i for i in cls if i.mode == "VQA")
    q = next(x for r in rows["Fgt"] if r["ID"] == it.id for x in r["Classification_Task"]["Image_Textual_Questions"]
             if x["Question"] == it.question)
    shots = "".join(
        f"Question: {s['Question']}\n" + "\n".join(f"{k}: {v}" for k, v in s["Options"].items())
        + f"\nCorrect Answer: {s['Correct_Answer']}\n"
        for r in shot_rows for s in r["Classification_Task"]["Image_Textual_Questions"])
    body = f"{q['Question']}\n" + "\n".join(f"{k}: {v}" for k, v in q["Options"].items())
    # shots (in the sampled order, compared as a set of examples) + question + the benchmark's instruction
    assert it.prompt.endswith(body + "\nJust give ONE letter representing the answer directly.")
    prefix = it.prompt[: -len(body + "\nJust give ONE letter representing the answer directly.")]
    assert sorted(prefix.split("Question: ")) == sorted(shots.split("Question: "))
    # cloze: blanks -> [Blank] + instruction, shots end with "Correct Answer: {gt}"
    clz = next(i for i in items if i.split == "Fgt" and i.task == "cloze" and i.mode == "QA")
    assert "___" not in clz.prompt and clz.prompt.endswith(
        "[Blank].\nPlease **ONLY** provide the correct answer that should replace the [Blank].")
    assert clz.prompt.count("Correct Answer: ") == 8  # 2 shot IDs x 4 pure-text cloze items
    # generation: zero-shot with the benchmark's suffix; Test VQA: one image per profile
    gen = next(i for i in items if i.task == "generation" and i.mode == "VQA")
    assert gen.prompt == gen.question + "\n" + ev._BENCH_GEN_SUFFIX["VQA"]
    test_vqa = [i for i in items if i.split == "Test" and i.mode == "VQA" and i.task == "generation"]
    assert len(test_vqa) == 4 * len(rows["Test"])
    # Cele: no shots (Full_Set has no celebrities), every question scored
    cele = [i for i in items if i.split == "Cele" and i.task == "classification"]
    assert cele and not any("Correct Answer:" in i.prompt for i in cele)
    assert ev.parse_choice("B) x", proto) == "B"


def test_evaluate_on_parquet_matches_world(world, tmp_path):
    from erasekit.data import MLLMUBench, write_world

    write_world(world, tmp_path, splits=("Full_Set", "forget_5", "Test_Set"))
    adapter = oracle(world)
    a = ev.evaluate(adapter, world, 5, groups=("Fgt", "Test"), progress=False)
    b = ev.evaluate(adapter, MLLMUBench(tmp_path), 5, groups=("Fgt", "Test"), progress=False)
    # attributes are a World extra, not in the real schema, but here they survive the round trip too
    pd.testing.assert_frame_equal(a, b)


# ----------------------------------------------------------------------------------------------------------
# safety
# ----------------------------------------------------------------------------------------------------------
def test_evaluate_safety(world):
    canned = {p.prompt: p.response for p in safety_prompts(world)}
    adapter = FakeAdapter(lambda q, im, steered: REFUSALS[1] if steered else canned[q])
    img = world.portrait(world.profiles[0])
    df = evaluate_safety(adapter, world, image=img, progress=False)
    assert set(df["kind"]) == {"harmful", "jailbreak", "harmless"} and df["heldout"].all()
    assert all(im is img for im in adapter.images_seen)
    rates = refusal_rates(df)
    assert rates.loc["harmful", "refusal_rate"] == 100.0
    assert rates.loc["jailbreak", "refusal_rate"] == 0.0 and rates.loc["harmless", "refusal_rate"] == 0.0
    steered = evaluate_safety(adapter, world, kinds=("harmless",), progress=False,
                              intervention=lambda: _steering(adapter))
    assert steered["refusal"].all() and not adapter.steered
    assert adapter.images_seen[-1] is None


# ----------------------------------------------------------------------------------------------------------
# a real (tiny, random-weight) adapter goes through the same harness
# ----------------------------------------------------------------------------------------------------------
def test_runs_with_tiny_llava(world, tiny_llava):
    rows = ev.benchmark_rows(world, 5, groups=("Fgt", "Test"))
    df = ev.evaluate(tiny_llava, rows, progress=False, batch_size=8, max_new_tokens=3)
    assert len(df) == len(ev.build_items(rows)) and df["response"].map(type).eq(str).all()
    assert set(df["category"]) <= set(CATEGORIES)
    # batched (left-padded) generation equals one-at-a-time generation
    df1 = ev.evaluate(tiny_llava, {"Fgt": rows["Fgt"]}, modes=("VQA",), tasks=("cloze",), progress=False,
                      batch_size=1, max_new_tokens=3)
    dfb = ev.evaluate(tiny_llava, {"Fgt": rows["Fgt"]}, modes=("VQA",), tasks=("cloze",), progress=False,
                      batch_size=8, max_new_tokens=3)
    assert df1["response"].tolist() == dfb["response"].tolist()


# ----------------------------------------------------------------------------------------------------------
# names kept importable from here while pipeline.py (and a script) still import them from erasekit.evaluate
# ----------------------------------------------------------------------------------------------------------
