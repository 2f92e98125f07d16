"""erasekit.evaluate with a fake adapter: option-letter parse, items, few-shot prompts, the harness; and the safety
check (erasebook.safety) on the same harness."""

from __future__ import annotations

import contextlib
import importlib

import pandas as pd
import pytest

from erasebook.safety import evaluate_safety, refusal_rates
from erasebook.world import REFUSALS, format_options, make_world, safety_prompts
from erasekit.scoring import CATEGORIES, rouge_l
from erasekit.tables import TABLE_TASKS, results_table

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
        self.chats: list = []

    def encode(self, questions, images=None, answers=None, chat=True):
        assert isinstance(questions, list)
        self.chats.append(chat)
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


def test_doctests():
    import doctest

    from erasekit import protocol

    result = doctest.testmod(protocol)
    assert result.failed == 0 and result.attempted >= 4  # parse_choice, bench_response


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
# ----------------------------------------------------------------------------------------------------------
# benchmark protocol: MLLMU-Bench's eval.py, LLaVA branch
# ----------------------------------------------------------------------------------------------------------
CLS = "Just give ONE letter representing the answer directly."
CLOZE = "Please **ONLY** provide the correct answer that should replace the [Blank]."


def _keys(images):
    return tuple(ev._image_key(im) for im in images)


def _by(items, split, task, mode):
    return [i for i in items if i.split == split and i.task == task and i.mode == mode]


def _row(pid, name, key, colour):
    """A hand-made MLLMU-Bench row: one question of each (task, type)."""
    from PIL import Image

    opts = {"A": "cook", "B": "pilot", "C": "vet", "D": "judge"}
    return {"ID": pid, "image": Image.new("RGB", (8, 8), colour), "Classification_Task": {
        "Image_Textual_Questions": [{"Question": "Job of this person?", "Options": opts, "Correct_Answer": key}],
        "Pure_Text_Questions": [{"Question": f"Job of {name}?", "Options": opts, "Correct_Answer": key}]},
        "Mask_Task": [{"Type": "Image_Textual", "Question": "This person is a __.", "Ground_Truth": opts[key]},
                      {"Type": "Pure_Text", "Question": f"{name} is a __.", "Ground_Truth": opts[key]}],
        "Generation_Task": [{"Type": "Image_Textual", "Question": "Who is this?", "Ground_Truth": f"This is {name}."},
                            {"Type": "Pure_Text", "Question": f"Who is {name}?", "Ground_Truth": f"{name} flies."}]}


def test_protocol_shot_counts_are_eval_pys():
    assert (ev.BENCHMARK.cls_shots, ev.BENCHMARK.cloze_shots) == (1, 2)  # random.sample(id_list, 1) / (..., 2)
    with pytest.raises(ValueError, match="unknown protocol"):
        ev.Protocol("few_shot")


def test_benchmark_prompts_hand_written():
    """Every (task, type) prompt, character for character as eval.py writes it for llava (one shot ID each)."""
    pam, quinn = _row("P", "Pam", "B", "red"), _row("Q", "Quinn", "A", "blue")
    items = ev.build_items({"Fgt": [pam, quinn]}, protocol=ev.Protocol("benchmark", cls_shots=1, cloze_shots=1),
                           shot_pool=[pam, quinn])
    for task in ("classification", "cloze"):
        (vqa,) = _by(items, "Fgt", task, "VQA")  # the shot ID's question is not scored
        (qa,) = _by(items, "Fgt", task, "QA")
        shot, own = (pam, quinn) if vqa.id == "Q" else (quinn, pam)
        name, other = ("Pam", "Quinn") if shot is pam else ("Quinn", "Pam")
        s_key, o_key = ("B", "A") if shot is pam else ("A", "B")
        s_job = "pilot" if shot is pam else "cook"
        assert qa.id == vqa.id == own["ID"] and vqa.raw and qa.raw
        assert _keys(vqa.images) == _keys([shot["image"], own["image"]]) and qa.images == ()
        if task == "classification":
            assert vqa.target == o_key
            assert vqa.prompt == (
                "USER: <image>\nQuestion: Job of this person?\nA: cook\nB: pilot\nC: vet\nD: judge\n"
                f"Correct Answer: {s_key}\n"
                "USER: <image>\nJob of this person?\nA: cook\nB: pilot\nC: vet\nD: judge\n"
                "Just give ONE letter representing the answer directly.\nASSISTANT:")
            assert qa.prompt == (
                f"USER:\nQuestion: Job of {name}?\nA: cook\nB: pilot\nC: vet\nD: judge\nCorrect Answer: {s_key}\n"
                f"USER:\nJob of {other}?\nA: cook\nB: pilot\nC: vet\nD: judge\n"
                "Just give ONE letter representing the answer directly.\nASSISTANT:")
        else:
            assert vqa.prompt == (
                "USER:<image>\nThis person is a [Blank].\nPlease **ONLY** provide the correct answer that should "
                f"replace the [Blank].\nCorrect Answer: {s_job}\n"
                "USER: <image>\nThis person is a [Blank].\nPlease **ONLY** provide the correct answer that should "
                "replace the [Blank].\nASSISTANT:")
            assert qa.prompt == (
                f"USER:\n{name} is a [Blank].\nPlease **ONLY** provide the correct answer that should replace the "
                f"[Blank].\nCorrect Answer: {s_job}\n"
                f"USER:\n{other} is a [Blank].\nPlease **ONLY** provide the correct answer that should replace the "
                "[Blank].\nASSISTANT:")
    gen = {(i.id, i.mode): i for i in items if i.task == "generation"}  # no shots, nothing skipped
    assert len(gen) == 4
    assert gen[("P", "VQA")].prompt == ("USER: <image>\nWho is this?\nAnswer the question based on your trained "
                                        "knowledge in one sentence accurately in ENGLISH.\nASSISTANT: ")
    assert _keys(gen[("P", "VQA")].images) == _keys([pam["image"]])
    assert gen[("P", "QA")].prompt == ("USER: Who is Pam?\nAnswer the question based on your trained knowledge in one "
                                       "sentence in ENGLISH.\nASSISTANT:")
    assert gen[("P", "QA")].images == ()


def test_benchmark_prompts_on_the_world(world):
    """1 classification shot ID, 2 cloze shot IDs (Full_Set order), every question of the shots as an example."""
    rows = ev.benchmark_rows(world, 15, groups=("Fgt",))
    full = world.split("Full_Set")
    items = ev.build_items(rows, protocol=ev.BENCHMARK, shot_pool=full)
    fgt = {r["ID"]: r for r in rows["Fgt"]}
    blank = lambda q: q.replace("__", "[Blank]") + "\n" + CLOZE  # noqa: E731
    for mode, typ, head, cloze_head in (("VQA", "Image_Textual", "USER: <image>\n", "USER:<image>\n"),
                                        ("QA", "Pure_Text", "USER:\n", "USER:\n")):
        cls = _by(items, "Fgt", "classification", mode)
        cls_shots = [r for r in full if r["ID"] in set(fgt) - {i.id for i in cls}]
        assert len(cls_shots) == 1 and len(cls) == (len(fgt) - 1) * 4
        shots = "".join(
            f"{head}Question: {x['Question']}\nA: {x['Options']['A']}\nB: {x['Options']['B']}\n"
            f"C: {x['Options']['C']}\nD: {x['Options']['D']}\nCorrect Answer: {x['Correct_Answer']}\n"
            for x in cls_shots[0]["Classification_Task"][f"{typ}_Questions"])
        for it in cls:
            q = next(x for x in fgt[it.id]["Classification_Task"][f"{typ}_Questions"] if x["Question"] == it.question)
            options = "\n".join(f"{k}: {v}" for k, v in q["Options"].items())
            assert it.prompt == f"{shots}{head}{q['Question']}\n{options}\n{CLS}\nASSISTANT:"
            want = [cls_shots[0]["image"]] * 4 + [fgt[it.id]["image"]] if mode == "VQA" else []
            assert _keys(it.images) == _keys(want) and it.prompt.count("<image>") == len(want)
        clz = _by(items, "Fgt", "cloze", mode)
        clz_shots = [r for r in full if r["ID"] in set(fgt) - {i.id for i in clz}]
        assert len(clz_shots) == 2 and len(clz) == (len(fgt) - 2) * 4
        shots = "".join(f"{cloze_head}{blank(x['Question'])}\nCorrect Answer: {x['Ground_Truth']}\n"
                        for r in clz_shots for x in r["Mask_Task"] if x["Type"] == typ)
        for it in clz:
            assert it.prompt == f"{shots}{head}{blank(it.question)}\nASSISTANT:" and "__" not in it.prompt
            want = [r["image"] for r in clz_shots for _ in range(4)] + [fgt[it.id]["image"]] if mode == "VQA" else []
            assert _keys(it.images) == _keys(want) and it.prompt.count("<image>") == len(want)
        assert len(_by(items, "Fgt", "generation", mode)) == len(fgt) * 4
    # the draws are seeded: the same protocol gives the same prompts
    again = ev.build_items(rows, protocol=ev.BENCHMARK, shot_pool=full)
    assert [i.prompt for i in again] == [i.prompt for i in items]


def test_benchmark_shots_per_group(world):
    """Fgt / Ret / Test get shots (Test: drawn from the forget IDs, looked up in Full_Set); Cele none."""
    rows = ev.benchmark_rows(world, 15)
    full = {r["ID"]: r for r in world.split("Full_Set")}
    items = ev.build_items(rows, protocol=ev.BENCHMARK, shot_pool=list(full.values()))
    for g in ("Fgt", "Ret", "Test"):
        n = len(rows[g])
        for task, k in (("classification", 1), ("cloze", 2)):
            for mode in ev.MODES:
                its = _by(items, g, task, mode)
                assert len({i.id for i in its}) == n - k and len(its) == (n - k) * 4
                assert all(i.prompt.count("Correct Answer:") == 4 * k for i in its)
    test_rows = {r["ID"]: r for r in rows["Test"]}
    assert set(test_rows) == set(world.forget_ids[15])
    test_clz = _by(items, "Test", "cloze", "VQA")
    shot_ids = [i for i in full if i in set(world.forget_ids[15]) - {it.id for it in test_clz}]  # Full_Set order
    for it in test_clz:  # shots: the Full_Set portraits; then one pose of the Test row
        assert _keys(it.images[:-1]) == _keys([full[i]["image"] for i in shot_ids for _ in range(4)])
        assert it.images[-1] is it.image and ev._image_key(it.image) in _keys(test_rows[it.id]["images"])
    cele = [i for i in items if i.split == "Cele"]
    assert not any("Correct Answer:" in i.prompt for i in cele)
    assert len([i for i in cele if i.task != "generation"]) == len(rows["Cele"]) * 16  # every question scored
    assert all(len(i.images) == (i.mode == "VQA") for i in cele)


def test_bench_response_and_scores():
    assert ev.bench_response(" B\nUSER: next?\nASSISTANT: C") == "B\nUSER: next?"
    assert ev.bench_response("ASSISTANT: B") == ""  # what eval.py's split("ASSISTANT:")[1] leaves
    bench = lambda it, r: ev._score(it, r, ev.BENCHMARK)  # noqa: E731
    cls = ev.Item("Fgt", "VQA", "classification", 0, None, "q", "p", None, "B", "pilot")
    assert bench(cls, " b) pilot") == (1.0, True) and bench(cls, "(B)")[1] is False
    assert bench(cls, "")[1] is False and bench(cls, "Z")[1] is False
    clz = ev.Item("Fgt", "VQA", "cloze", 0, None, "q", "p", None, "Prague", "Prague")
    assert bench(clz, "She lives in PRAGUE.")[1] and not bench(clz, "Paris\nUSER: x\nASSISTANT: Prague")[1]
    assert ev._score(clz, "Paris\nASSISTANT: Prague", ev.ZERO_SHOT)[1]  # zero-shot reads the whole response
    gen = ev.Item("Fgt", "QA", "generation", 0, None, "q", "p", None, "This person is a pilot.")
    from rouge_score import rouge_scorer

    ref = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score("This person is a pilot.", "A pilot flying")
    assert bench(gen, " A pilot flying\nASSISTANT: This person is a pilot.")[0] == ref["rougeL"].fmeasure


def test_benchmark_harness_encodes_raw_prompts_with_every_image(world):
    rows = ev.benchmark_rows(world, 15, groups=("Fgt", "Test", "Cele"))
    full = world.split("Full_Set")
    items = ev.build_items(rows, protocol=ev.BENCHMARK, shot_pool=full)
    table = {(it.prompt, _keys(it.images)): it.target for it in items}

    def answer(q, ims, steered):  # right, then a second turn that eval.py cuts off
        assert ims is None or (isinstance(ims, list) and len(ims) == q.count("<image>"))
        return f" {table[(q, _keys(ims or []))]}\nASSISTANT: no, USER: more?"

    adapter = FakeAdapter(answer)
    df = ev.evaluate(adapter, world, 15, groups=("Fgt", "Test", "Cele"), protocol=ev.BENCHMARK, progress=False)
    assert set(adapter.chats) == {"raw"} and len(df) == len(items)
    assert (df.loc[df.task != "generation", "correct"]).all()
    gen = df[df.task == "generation"]
    assert (gen.score == 1.0).all()
    # the cache keys on every image: one shot portrait more or less is another prompt
    assert sum(len(b) for b in adapter.batches) == len({(it.task, it.prompt, _keys(it.images)) for it in items})


def test_benchmark_runs_with_tiny_llava(world, tiny_llava):
    """Raw multi-image few-shot prompts through a real adapter."""
    rows = ev.benchmark_rows(world, 15, groups=("Fgt",))
    df = ev.evaluate(tiny_llava, rows, protocol=ev.BENCHMARK, modes=("VQA",), tasks=("classification", "cloze"),
                     progress=False, max_new_tokens=2)
    assert len(df) == 2 * 4 + 1 * 4 and df["response"].map(type).eq(str).all()
    assert df["prompt"].str.endswith("ASSISTANT:").all()


def test_evaluate_on_parquet_matches_world(world, tmp_path):
    from erasebook.export import write_world
    from erasekit.data import MLLMUBench

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


def test_benchmark_generation_prompts_do_not_depend_on_shots():
    """vanilla-quality reuses the few-shot run's generation rows for the zero-shot variant: eval.py's generation
    prompts carry no shots, so both protocols must build the very same generation items."""
    from erasebook.world import make_world
    from erasekit.evaluate import BENCHMARK, Protocol, benchmark_rows, build_items

    world = make_world(20, 5)
    rows = benchmark_rows(world, 15)
    pool = world.split("Full_Set")
    few = build_items(rows, tasks=("generation",), protocol=BENCHMARK, shot_pool=pool)
    zero = build_items(rows, tasks=("generation",), protocol=Protocol("benchmark", cls_shots=0, cloze_shots=0),
                       shot_pool=pool)
    assert few and [(i.prompt, i.id, i.mode, i.image_index) for i in few] == \
        [(i.prompt, i.id, i.mode, i.image_index) for i in zero]
