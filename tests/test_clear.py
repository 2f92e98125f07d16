"""erasekit.clear: a tiny synthetic copy of CLEAR in the hub dataset's layout and columns, read as MLLMU-Bench rows."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from erasekit import evaluate as ev
from erasekit.clear import NAME_CLOZE, NAME_QUESTION, ClearBench, clear_files, load_config

# therem/CLEAR's features (dataset card): image is a datasets Image, i.e. a {bytes, path} struct in parquet.
_IMG = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_STR, _STRS = pa.string(), pa.list_(pa.string())
_PLAIN = pa.schema([("image", _IMG), ("caption", _STR), ("name", _STR)])
_PERTURBED = pa.schema([("image", _IMG), ("caption", _STR), ("name", _STR), ("perturbed_captions", _STRS),
                        ("paraphrased_caption", _STR), ("perturbed_names", _STRS)])
_TOFU = pa.schema([("image", _IMG), ("caption", _STR), ("question", _STR), ("answer", _STR)])
_REAL_FACES = pa.schema([("image", _IMG), ("answer", _STR), ("options", _STRS)])
_REAL_WORLD = pa.schema([("image", _IMG), ("question", _STR), ("answer", _STR), ("options", _STRS)])

N_PEOPLE, IMAGES_EACH = 100, 2


def _png(k: int) -> dict:
    rng = np.random.default_rng(k)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": f"{k}.png"}


def _write(root: Path, config: str, schema: pa.Schema, records: list[dict], converter: bool = False) -> None:
    folder = root / config / "train" if converter else root / config
    folder.mkdir(parents=True, exist_ok=True)
    name = "0000.parquet" if converter else "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(records, schema=schema), folder / name)


def write_clear(root: Path, perturbed: bool = True, converter_layout: bool = False) -> dict:
    """A CLEAR-shaped folder: 100 people x 2 images; forget01/05/10 = the first 1/5/10 people, as in the hub's
    nested forget sets (2/10/20 of 200 people). Returns the names per config."""
    names = [f"Author{i:03d} Vale" for i in range(N_PEOPLE)]
    image_rows = [{"image": _png(i * IMAGES_EACH + k), "caption": f"{n} is reading in a sunny park (photo {k}).",
                   "name": n} for i, n in enumerate(names) for k in range(IMAGES_EACH)]
    people = {"full": names}
    for pct in (1, 5, 10):
        people[f"forget{pct:02d}"] = names[:pct]
        people[f"retain{100 - pct}"] = names[pct:]
    for config, who in people.items():
        _write(root, config, _PLAIN, [r for r in image_rows if r["name"] in who], converter_layout)

    def perturb(r):
        others = [n for n in names if n != r["name"]][:3]
        return {**r, "perturbed_captions": [r["caption"].replace("sunny", w) for w in ("rainy", "dark")],
                "paraphrased_caption": r["caption"].replace("reading", "seen reading"), "perturbed_names": others}

    if perturbed:
        for pct in (1, 5, 10):
            _write(root, f"forget{pct:02d}_perturbed", _PERTURBED,
                   [perturb(r) for r in image_rows if r["name"] in names[:pct]])
        _write(root, "retain_perturbed", _PERTURBED, [perturb(r) for r in image_rows if r["name"] in names[60:70]])
    tofu = [{"image": None, "caption": None, "question": f"What genre does {n} write?", "answer": f"{n} writes poetry."}
            for n in names[:5]]
    _write(root, "forget05+tofu", _TOFU,
           [{**r, "question": None, "answer": None} for r in image_rows if r["name"] in names[:5]] + tofu)
    celebs = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Marie Curie"]
    _write(root, "real_faces", _REAL_FACES, [{"image": _png(1000 + i), "answer": c,
                                              "options": [o for o in celebs if o != c]} for i, c in enumerate(celebs)])
    _write(root, "real_world", _REAL_WORLD, [
        {"image": _png(2000), "question": "Which city is this landmark in?", "answer": "Paris",
         "options": ["Rome", "Berlin", "Madrid"]},
        {"image": _png(2001), "question": "What animal is shown?", "answer": "Giraffe", "options": ["Zebra", "Lion"]}])
    return people


@pytest.fixture(scope="module")
def clear_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("CLEAR")
    write_clear(root)
    return root


@pytest.fixture(scope="module")
def bench(clear_root) -> ClearBench:
    return ClearBench(clear_root)


def test_reads_person_rows(bench, clear_root):
    rows = bench.split("forget_5")
    assert bench.config_for("forget_5") == "forget05_perturbed"
    assert len(rows) == 5 * IMAGES_EACH and [r["ID"] for r in rows[:2]] == ["Author000 Vale"] * 2
    raw = pq.read_table(clear_root / "forget05_perturbed" / "train-00000-of-00001.parquet").to_pylist()
    for row, rec in zip(rows, raw):
        assert row["image"].mode == "RGB"
        assert np.array_equal(np.asarray(row["image"]), np.asarray(Image.open(io.BytesIO(rec["image"]["bytes"]))))
        (gen,) = row["Generation_Task"]
        assert gen == {"Type": "Image_Textual", "Question": gen["Question"], "Ground_Truth": rec["caption"],
                       "Attribute": "name"}
        assert row["Mask_Task"] == [{"Type": "Image_Textual", "Question": NAME_CLOZE, "Ground_Truth": rec["name"],
                                     "Attribute": "name"}]
        (mc,) = row["Classification_Task"]["Image_Textual_Questions"]
        assert mc["Question"] == NAME_QUESTION and list(mc["Options"]) == ["A", "B", "C", "D"]
        assert mc["Options"][mc["Correct_Answer"]] == rec["name"]
        assert set(mc["Options"].values()) == {rec["name"], *rec["perturbed_names"]}
        assert row["Classification_Task"]["Pure_Text_Questions"] == []
        assert row["paraphrased_caption"] == rec["paraphrased_caption"]  # raw fields pass through
    # the answer is not always in the same place, and a reload gives the same order (seeded)
    assert len({r["Classification_Task"]["Image_Textual_Questions"][0]["Correct_Answer"] for r in rows}) > 1
    assert ClearBench(clear_root).split("forget_5")[3]["Classification_Task"] == rows[3]["Classification_Task"]


def test_splits_and_forget_ratios_resolve(bench):
    everyone = set(bench.forget_ids[1]) | {r["ID"] for r in bench.split("retain_99")}
    assert everyone == {r["ID"] for r in bench.split("Full_Set")} and len(everyone) == N_PEOPLE
    for pct in (1, 5, 10):
        forget = bench.forget_ids[pct]
        retain = {r["ID"] for r in bench.split(f"retain_{100 - pct}")}
        assert len(forget) / N_PEOPLE == pct / 100
        assert not set(forget) & retain and set(forget) | retain == everyone
    assert dict(bench.forget_ids).keys() == {1, 5, 10}
    assert bench.config_for("retain_85") == "retain90"  # "retain at every forget ratio" (erasekit.heldout)
    assert bench.config_for("Retain_Set") == "real_faces" and bench.split("Test_Set") == []
    with pytest.raises(ValueError, match=r"forget ratios are \(1, 5, 10\)"):
        bench.split("forget_15")
    with pytest.raises(KeyError):
        bench.forget_ids[15]


def test_build_items_accepts_the_rows(bench):
    rows = ev.benchmark_rows(bench, 5, retain_sample=6, seed=0)
    assert rows["Test"] == [] and len(rows["Ret"]) == 6 and len(rows["Cele"]) == 4
    items = ev.build_items(rows)
    count = {(it.split, it.task, it.mode): 0 for it in items}
    for it in items:
        count[(it.split, it.task, it.mode)] += 1
    assert count == {("Fgt", "classification", "VQA"): 10, ("Fgt", "generation", "VQA"): 10,
                     ("Fgt", "cloze", "VQA"): 10, ("Ret", "generation", "VQA"): 6, ("Ret", "cloze", "VQA"): 6,
                     ("Cele", "classification", "VQA"): 4, ("Cele", "generation", "VQA"): 4}
    cloze = next(it for it in items if it.task == "cloze")
    assert cloze.answer == cloze.target == cloze.id and cloze.image is not None
    gen = next(it for it in items if it.task == "generation" and it.split == "Fgt")
    assert gen.answer == gen.id  # a caption response naming the person counts as a leak
    bench_items = ev.build_items(rows, protocol=ev.BENCHMARK, shot_pool=bench.split("Full_Set"))
    assert any("[Blank]" in it.prompt for it in bench_items)


def test_evaluate_and_quality_table_run_on_clear(bench):
    from erasekit.response_quality import quality_table

    class Refuser:  # the adapter protocol evaluate uses
        def encode(self, questions, images=None):
            return {"questions": questions}

        def generate(self, batch, max_new_tokens=50):
            return ["I can't tell you the name of this person." for _ in batch["questions"]]

    df = ev.evaluate(Refuser(), bench, 5, groups=("Fgt", "Ret", "Cele"), retain_sample=4, method="refuser",
                     progress=False)
    assert set(df["split"]) == {"Fgt", "Ret", "Cele"} and not df["correct"].any()
    t = quality_table(df).set_index("split")
    assert t.loc["Fgt", "refusal"] == 100.0 and t.loc["Ret", "over_refusal"] == 100.0
    assert t.loc["Fgt", "rigid_refusal_share"] == 1.0


def test_other_configs(bench):
    tofu = bench.split("forget05+tofu")
    text = [r for r in tofu if r["image"] is None]
    assert len(tofu) == 15 and len(text) == 5
    assert all(r["ID"].startswith("tofu-") and r["Generation_Task"][0]["Type"] == "Pure_Text" for r in text)
    qa = ev.build_items({"Fgt": tofu}, modes=("QA",))
    assert len(qa) == 5 and all(it.task == "generation" and it.image is None for it in qa)
    faces = bench.split("real_faces")
    assert [r["ID"] for r in faces] == ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Marie Curie"]
    world = bench.split("real_world")
    (mc,) = world[1]["Classification_Task"]["Image_Textual_Questions"]
    assert mc["Question"] == "What animal is shown?" and len(mc["Options"]) == 3
    assert mc["Options"][mc["Correct_Answer"]] == "Giraffe" and world[1]["ID"].startswith("clear-")
    assert len(bench.split("retain_perturbed")) == 10 * IMAGES_EACH


def test_a_session_takes_it_as_data(bench, tiny_llava):
    from erasebook.session import load_session

    session = load_session(tiny_llava, bench)
    assert session.source is bench and session.world is None and session.partition is not None
    by_path = load_session(tiny_llava, bench.root)  # a folder in CLEAR's layout is recognised as CLEAR
    assert type(by_path.source).__name__ == "ClearBench" and by_path.source.root == bench.root


def test_partition_profiles_accepts_clear(bench):
    from erasekit.heldout import partition_profiles

    pool = bench.split("retain_85")  # one row per person retained at every ratio
    assert [r["ID"] for r in pool] == list(dict.fromkeys(r["ID"] for r in bench.split("retain_90")))
    part = partition_profiles(bench)  # what load_session does with data=ClearBench(...); checks roles are disjoint
    held = part.rows(bench, 5, "eval")
    assert {r["ID"] for r in held["Ret"]} == part.ids("eval")["Ret"] and len(held["Ret"]) == 20 * IMAGES_EACH
    assert not part.ids("eval")["Ret"] & set(bench.forget_ids[10])


def test_layouts_and_errors(tmp_path):
    root = tmp_path / "CLEAR"
    write_clear(root, perturbed=False, converter_layout=True)
    assert clear_files(root, "forget05") == [root / "forget05" / "train" / "0000.parquet"]
    bench = ClearBench(root)
    assert bench.config_for("forget_5") == "forget05"  # no perturbed twin: no name options
    rows = bench.split("forget_5")
    assert len(rows) == 10 and all(r["Classification_Task"]["Image_Textual_Questions"] == [] for r in rows)
    assert len(load_config(root, "full")) == N_PEOPLE * IMAGES_EACH
    with pytest.raises(FileNotFoundError, match="therem/CLEAR"):
        ClearBench(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"CLEAR config 'real_zoo' not found"):
        bench.split("real_zoo")
    bad = tmp_path / "bad"
    _write(bad, "forget05", pa.schema([("image", _IMG), ("label", _STR)]), [{"image": _png(0), "label": "x"}])
    with pytest.raises(ValueError, match="cannot map a CLEAR record"):
        ClearBench(bad).split("forget_5")
