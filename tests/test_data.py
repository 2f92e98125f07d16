"""erasekit.data: World -> parquet -> rows round trip, and reading files in the real MLLMU-Bench schema."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from erasebook.export import write_world
from erasebook.world import make_world
from erasekit.data import SPLITS, MLLMUBench, load_split, split_files


@pytest.fixture(scope="module")
def world():
    return make_world(n_profiles=20, n_celebrities=5)


@pytest.fixture(scope="module")
def written(world, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    write_world(world, root)
    return root


def _same_rows(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert set(ra) == set(rb)
        for k in ra:
            if k == "image":
                assert np.array_equal(np.asarray(ra[k]), np.asarray(rb[k])) and rb[k].mode == "RGB"
            elif k == "images":
                assert len(ra[k]) == len(rb[k])
                assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(ra[k], rb[k]))
            else:
                assert ra[k] == rb[k], k


@pytest.mark.parametrize("split", SPLITS)
def test_round_trip(world, written, split):
    _same_rows(world.split(split), load_split(written, split))


def test_layout_and_bench(world, written):
    assert (written / "forget_5" / "train-00000-of-00001.parquet").is_file()
    assert [p.name for p in split_files(written, "Test_Set")] == ["train-00000-of-00002.parquet",
                                                                   "train-00001-of-00002.parquet"]
    # On disk, IDs are strings and images {bytes, path} structs, as in the hub files.
    schema = pq.read_schema(written / "forget_5" / "train-00000-of-00001.parquet")
    assert schema.field("ID").type == pa.string()
    assert schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    bench = MLLMUBench(written)
    assert dict(bench.forget_ids) == world.forget_ids


def test_missing_folder_and_split(tmp_path, written):
    with pytest.raises(FileNotFoundError, match="MLLMMU/MLLMU-Bench"):
        load_split(tmp_path / "nope", "forget_5")
    with pytest.raises(FileNotFoundError, match=r"forget_7/train-00000-of-0000N.parquet"):
        load_split(written, "forget_7")


# ----------------------------------------------------------------------------------------------------------
# a tiny fixture written with the hub dataset's own schema (dataset card field order, no World involved)
# ----------------------------------------------------------------------------------------------------------
_IMG = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_OPTS = pa.struct([(k, pa.string()) for k in "ABCD"])
_CLS_ITEM = pa.struct([("Correct_Answer", pa.string()), ("Options", _OPTS), ("Question", pa.string())])
_GEN_ITEM = pa.struct([("Ground_Truth", pa.string()), ("Question", pa.string()), ("Type", pa.string())])
_TASKS = [("Classification_Task", pa.struct([("Image_Textual_Questions", pa.list_(_CLS_ITEM)),
                                              ("Pure_Text_Questions", pa.list_(_CLS_ITEM))])),
          ("Generation_Task", pa.list_(_GEN_ITEM)), ("Mask_Task", pa.list_(_GEN_ITEM))]


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (4, 4), colour).save(buf, format="PNG")  # RGBA on purpose: the loader returns RGB
    return buf.getvalue()


def _real_record(pid: str):
    q = {"Correct_Answer": "B", "Options": {"A": "Nurse", "B": "Pilot", "C": "Chef", "D": "Judge"},
         "Question": "What is the profession of the person in the image?"}
    return {"ID": pid, "Directory": f"Fake_{pid}", "biography": "A pilot from Oslo.", "question": "q", "answer": "a",
            "Classification_Task": {"Image_Textual_Questions": [q], "Pure_Text_Questions": [q]},
            "Generation_Task": [{"Ground_Truth": "He is a pilot.", "Question": "What does he do?",
                                 "Type": "Image_Textual"}],
            "Mask_Task": [{"Ground_Truth": "pilot", "Question": "He works as a __.", "Type": "Pure_Text"}]}


def test_reads_real_schema(tmp_path):
    (tmp_path / "forget_5").mkdir()
    (tmp_path / "Test_Set").mkdir()
    schema = pa.schema([("image", _IMG), ("ID", pa.string()), ("Directory", pa.string()),
                        ("biography", pa.string()), ("question", pa.string()), ("answer", pa.string()), *_TASKS])
    rec = {"image": {"bytes": _png((255, 0, 0, 255)), "path": "0007.png"}, **_real_record("0007")}
    pq.write_table(pa.Table.from_pylist([rec], schema=schema), tmp_path / "forget_5" / "train-00000-of-00001.parquet")
    # Test_Set: a list of images; here task fields as JSON text and one image given by path only.
    Image.new("RGB", (4, 4), (0, 0, 255)).save(tmp_path / "Test_Set" / "0007_pose1_gen1.png")
    test_schema = pa.schema([("images", pa.list_(_IMG)), ("ID", pa.string()), ("biography", pa.string()),
                             *[(k, pa.string()) for k, _ in _TASKS]])
    real = _real_record("0007")
    test_rec = {"images": [{"bytes": _png((0, 255, 0, 255)), "path": None},
                           {"bytes": None, "path": "0007_pose1_gen1.png"}],
                "ID": "0007", "biography": real["biography"], **{k: json.dumps(real[k]) for k, _ in _TASKS}}
    pq.write_table(pa.Table.from_pylist([test_rec], schema=test_schema),
                   tmp_path / "Test_Set" / "train-00000-of-00001.parquet")

    bench = MLLMUBench(tmp_path)
    (row,) = bench.split("forget_5")
    assert row["ID"] == 7 and row["Directory"] == "Fake_0007"
    assert row["image"].mode == "RGB" and row["image"].getpixel((0, 0)) == (255, 0, 0)
    assert row["Classification_Task"] == real["Classification_Task"]
    assert row["Mask_Task"] == real["Mask_Task"] and row["Generation_Task"] == real["Generation_Task"]
    (trow,) = bench.split("Test_Set")
    assert [im.getpixel((0, 0)) for im in trow["images"]] == [(0, 255, 0), (0, 0, 255)]
    assert trow["Classification_Task"] == real["Classification_Task"]
    assert bench.forget_ids[5] == [7]
    with pytest.raises(FileNotFoundError, match="Retain_Set"):
        bench.split("Retain_Set")


def test_ft_data_reads_like_the_benchmark_preprocessing(world, written):
    """MLLMU-Bench's data_process/data_preprocess.py reads ft_Data with pandas: image bytes + JSON ``metadata``."""
    import io
    import json

    import pandas as pd
    from PIL import Image

    df = pd.read_parquet(split_files(written, "ft_Data")[0])
    assert len(df) == len(world.profiles)
    pairs = []
    for _, row in df.iterrows():
        Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")
        for qa in json.loads(row["metadata"]):
            assert qa["Question"] and qa["Answer"]
            pairs.append(qa)
    p = world.person(int(df.iloc[0]["ID"]))
    first = json.loads(df.iloc[0]["metadata"])
    assert any(v in qa["Answer"] for qa in first for v in p.attributes.values())
    assert len(pairs) == len(world.profiles) * len(first)
