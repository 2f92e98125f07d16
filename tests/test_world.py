"""The synthetic world: deterministic, in MLLMU-Bench's schema, splits nested and disjoint as in the benchmark."""

import numpy as np
import pytest

from erasebook import world as W


@pytest.fixture(scope="module")
def small():
    return W.make_world(n_profiles=40, n_celebrities=8, seed=3)


def test_deterministic(small):
    again = W.make_world(n_profiles=40, n_celebrities=8, seed=3)
    assert [p.attributes for p in small.people] == [p.attributes for p in again.people]
    assert small.forget_ids == again.forget_ids
    a, b = small.split("Test_Set")[0], again.split("Test_Set")[0]
    assert a["Generation_Task"] == b["Generation_Task"]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a["images"], b["images"]))
    other = W.make_world(n_profiles=40, n_celebrities=8, seed=4)
    assert [p.attributes for p in small.people] != [p.attributes for p in other.people]


def test_splits_nested_and_disjoint(small):
    ids = {s: {r["ID"] for r in small.split(s)} for s in W.SPLITS}
    assert ids["forget_5"] < ids["forget_10"] < ids["forget_15"] <= ids["Full_Set"]
    for f, r in ((5, 95), (10, 90), (15, 85)):
        assert ids[f"forget_{f}"].isdisjoint(ids[f"retain_{r}"])
        assert ids[f"forget_{f}"] | ids[f"retain_{r}"] == ids["Full_Set"]
    assert ids["Test_Set"] == ids["forget_15"]
    assert ids["Retain_Set"].isdisjoint(ids["Full_Set"])
    with pytest.raises(ValueError, match="unknown split"):
        small.split("forget_7x")


def test_schema_and_answers(small):
    row = small.split("Full_Set")[0]
    p = small.person(row["ID"])
    assert row["image"].mode == "RGB" and row["image"].size == (32, 32)
    for q in row["Classification_Task"]["Image_Textual_Questions"]:
        assert q["Options"][q["Correct_Answer"]] == p.attributes[q["Attribute"]]
        assert W.IMAGE_WHO in q["Question"]
    for q in row["Classification_Task"]["Pure_Text_Questions"]:
        assert p.name in q["Question"]
    for g in row["Generation_Task"]:
        assert p.attributes[g["Attribute"]] in g["Ground_Truth"]
    for m in row["Mask_Task"]:
        assert (
            W.BLANK in m["Question"]
            and "___" not in m["Question"]
            and m["Ground_Truth"] == p.attributes[m["Attribute"]]
        )


def test_test_set_uses_heldout_templates(small):
    train_q = {t for ts in W.QUESTIONS_TRAIN.values() for t in ts}
    test_q = {t for ts in W.QUESTIONS_TEST.values() for t in ts}
    assert not train_q & test_q
    row = small.split("Test_Set")[0]
    assert len(row["images"]) >= 2
    assert not np.array_equal(np.asarray(row["images"][0]), np.asarray(small.portrait(small.person(row["ID"]))))


def test_portraits_distinct():
    w = W.make_world(n_profiles=200, n_celebrities=50, seed=0)
    codes = [p.factors for p in w.people]
    # A distance-2 code: any two people differ in at least two visual factors.
    for i in range(0, len(codes), 7):
        for j in range(i + 1, len(codes)):
            assert sum(a != b for a, b in zip(codes[i], codes[j])) >= 2


def test_safety_heldout_phrasings_unseen(small):
    sp = W.safety_prompts(small)
    kinds = {s.kind for s in sp}
    assert kinds == {"harmful", "jailbreak", "harmless"}
    train = {s.prompt for s in sp if not s.heldout}
    assert not any(s.prompt in train for s in sp if s.heldout)
    assert all(s.response in W.REFUSALS for s in sp if s.kind == "harmful")


def test_natural_images_rgb_and_folder_errors(tmp_path):
    ims = W.natural_images(size=32)
    assert len(ims) >= 5 and all(im.mode == "RGB" and im.size == (32, 32) for im in ims.values())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        W.natural_images(folder=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no .jpg"):
        W.natural_images(folder=str(tmp_path))
