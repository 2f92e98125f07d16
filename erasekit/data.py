"""MLLMU-Bench on disk: write a synthetic World in the benchmark's parquet layout, and read the real files.

What the real dataset looks like (checked against public sources, 2025):

* Hub dataset ``MLLMMU/MLLMU-Bench`` (https://huggingface.co/datasets/MLLMMU/MLLMU-Bench, file tree and viewer):
  one folder per config, each holding ``train-0000i-of-0000N.parquet`` shards (split "train"):
  ``Full_Set`` (500 rows), ``forget_5/10/15`` (25/50/75), ``retain_95/90/85`` (475/450/425), ``Test_Set``
  (500 rows, two shards of ~337 MB: it covers *all* profiles, evaluation filters it by the forget IDs),
  ``Retain_Set`` (153 real celebrities) and ``ft_Data`` (500 rows of fine-tuning QA, a JSON ``metadata`` column;
  not read here).
* Features (dataset card ``dataset_info``): ``image`` (datasets ``Image`` -> parquet struct ``{bytes, path}``),
  ``ID`` (string), ``Directory`` (string, some configs only), ``biography``, ``question``, ``answer`` (strings),
  ``Classification_Task`` struct{``Image_Textual_Questions``, ``Pure_Text_Questions``: list<struct{
  ``Correct_Answer``, ``Options`` struct{A, B, C, D}, ``Question``}>}, ``Generation_Task`` list<struct{
  ``Ground_Truth``, ``Question``, ``Type``}>, ``Mask_Task`` list<struct{``Ground_Truth``, ``Question``, ``Type``}>.
* Test_Set has ``images`` (a list of image structs, one per Arc2Face pose) instead of ``image``: the benchmark's
  eval.py (github.com/franciscoliu/MLLMU-Bench, mirrored in YokeYao/MLLMU-Bench ``eval.py``) reads
  ``random.choice(row["images"])["bytes"]`` and ``row["image"]["bytes"]``, ``row["Classification_Task"]`` as a
  dict, ``row["Mask_Task"]`` as a list, and concatenates every ``*.parquet`` of the Test_Set folder.

The loader also accepts nested task fields stored as JSON strings, image structs with only a ``path`` (relative
to the split folder or absolute), and ``{split}.parquet`` files directly under the root.

Row dicts (both directions) are exactly what :meth:`erasebook.world.World.split` returns:
``{"ID", "name"?, "biography", "image": PIL RGB | "images": [PIL RGB], "Classification_Task", "Generation_Task",
"Mask_Task", ...}``; columns the World does not have (``Directory``, ``question``, ``answer``) pass through.
``ID`` strings of digits become ``int`` (World IDs are ints; the real IDs are digit strings), others stay strings.
Keys that are null inside task items (pyarrow fills absent struct fields with null, e.g. the World's extra
``Attribute`` field) are dropped, so a real item has no ``Attribute`` key at all.

Example::

    bench = MLLMUBench("/data/MLLMU-Bench")                  # a local snapshot of the hub dataset
    rows = bench.split("forget_5")                           # list of row dicts, image as RGB PIL
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from .files import atomic_write

# MLLMU-Bench's splits (the hub dataset's folder names).
SPLITS = ("Full_Set", "forget_5", "forget_10", "forget_15", "retain_95", "retain_90", "retain_85", "Test_Set",
          "Retain_Set")

__all__ = ["SPLITS", "MLLMUBench", "ForgetIds", "write_rows", "load_split", "split_files",
           "decode_image"]

_NESTED = ("Classification_Task", "Generation_Task", "Mask_Task")


# ----------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------
def _encode_image(image: Image.Image, path: str) -> dict[str, Any]:
    # PNG is lossless, so a round trip returns the exact pixels (the real files hold PNG/JPEG bytes).
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": path}


def _to_record(row: dict[str, Any]) -> dict[str, Any]:
    rec = dict(row)
    rec["ID"] = str(row["ID"])  # the real schema stores IDs as strings
    if "image" in row:
        rec["image"] = _encode_image(row["image"], f"{row['ID']}.png")
    if "images" in row:
        # The real Test_Set names its portraits "{ID}_pose{k}_gen1.png".
        rec["images"] = [_encode_image(im, f"{row['ID']}_pose{k}_gen1.png") for k, im in enumerate(row["images"])]
    return rec


def write_rows(rows: list[dict[str, Any]], folder: str | os.PathLike, num_shards: int = 1) -> list[Path]:
    """Write row dicts (World.split format) as ``folder/train-0000i-of-0000N.parquet``; returns the file paths.

    Images become ``{bytes, path}`` structs (PNG), IDs strings, task fields nested structs/lists (real schema).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not rows:
        raise ValueError(f"no rows to write to {folder}")
    num_shards = max(1, min(num_shards, len(rows)))
    records = [_to_record(r) for r in rows]
    paths = []
    per = -(-len(records) // num_shards)
    for i in range(num_shards):
        path = folder / f"train-{i:05d}-of-{num_shards:05d}.parquet"
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(records[i * per:(i + 1) * per]), buf)
        atomic_write(path, buf.getvalue())  # a reader never sees half a shard
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------------
def split_files(root: str | os.PathLike, split: str) -> list[Path]:
    """The parquet files of one split: ``root/{split}/*.parquet`` (sorted) or ``root/{split}.parquet``.

    Raises FileNotFoundError naming the expected files when neither exists.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"MLLMU-Bench folder {str(root)!r} does not exist; expected a local copy of the hub dataset "
            f"MLLMMU/MLLMU-Bench with one folder per split ({', '.join(SPLITS)}), "
            "each holding train-0000i-of-0000N.parquet")
    folder = root / split
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files and (root / f"{split}.parquet").is_file():
        files = [root / f"{split}.parquet"]
    if not files:
        present = sorted(p.name for p in root.iterdir())
        raise FileNotFoundError(
            f"split {split!r} not found under {str(root)!r}: expected {folder}/train-00000-of-0000N.parquet "
            f"(or {root / (split + '.parquet')}); the folder holds {present}")
    return files


def decode_image(value: Any, folder: Path) -> Image.Image:
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict):
        if value.get("bytes"):
            return Image.open(io.BytesIO(value["bytes"])).convert("RGB")
        if value.get("path"):
            p = Path(value["path"])
            p = p if p.is_absolute() else folder / p
            return Image.open(p).convert("RGB")
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value)).convert("RGB")
    raise ValueError(f"cannot decode image value of type {type(value).__name__} (expected a {{bytes, path}} struct)")


def _drop_nulls(obj: Any) -> Any:
    # pyarrow unifies struct fields across items and fills absent ones with null: drop them again.
    if isinstance(obj, dict):
        return {k: _drop_nulls(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_nulls(v) for v in obj]
    return obj


def _nested(value: Any) -> Any:
    if isinstance(value, str):
        value = json.loads(value)  # some exports store the task fields as JSON text
    return _drop_nulls(value)


def _from_record(rec: dict[str, Any], folder: Path) -> dict[str, Any]:
    row = dict(rec)
    rid = rec.get("ID")
    if isinstance(rid, str) and re.fullmatch(r"\d+", rid):
        row["ID"] = int(rid)
    if rec.get("image") is not None:
        row["image"] = decode_image(rec["image"], folder)
    if rec.get("images") is not None:
        imgs = rec["images"]
        imgs = json.loads(imgs) if isinstance(imgs, str) else imgs
        row["images"] = [decode_image(v, folder) for v in imgs]
    for key in _NESTED:
        if rec.get(key) is not None:
            row[key] = _nested(rec[key])
    return row


def load_split(root: str | os.PathLike, split: str) -> list[dict[str, Any]]:
    """Read one split of a local MLLMU-Bench copy (real, or the book's synthetic world written in its layout) as row
    dicts.

    Example: ``rows = load_split("/data/MLLMU-Bench", "forget_5"); rows[0]["image"].size``
    """
    rows = []
    for f in split_files(root, split):
        for rec in pq.read_table(f).to_pylist():
            rows.append(_from_record(rec, f.parent))
    return rows


class MLLMUBench:
    """A local MLLMU-Bench folder with the same ``split(name)`` method as World (rows cached per split).

    ``forget_ids[k]`` lists the forget_k profile IDs, as World does, so evaluation code treats both alike.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        split_files(self.root, "forget_5")  # fail early, with the expected layout in the message
        self._cache: dict[str, list[dict[str, Any]]] = {}

    def split(self, name: str) -> list[dict[str, Any]]:
        if name not in self._cache:
            self._cache[name] = load_split(self.root, name)
        return self._cache[name]

    @property
    def forget_ids(self) -> Mapping[int, list]:
        """``{5|10|15: [IDs]}``, read lazily (a folder may hold only some forget splits)."""
        return ForgetIds(self, (5, 10, 15))

    def __repr__(self) -> str:
        return f"MLLMUBench({str(self.root)!r})"


class ForgetIds(Mapping):
    """``{pct: [IDs of the forget_pct split]}`` of a benchmark with ``split(name)``, each ID once in file order,
    read lazily on access (a folder may hold only some forget splits; CLEAR has one row per image)."""

    def __init__(self, bench: Any, pcts: tuple[int, ...]):
        self._bench, self._pcts = bench, tuple(pcts)

    def __getitem__(self, pct: int) -> list:
        if pct not in self._pcts:
            raise KeyError(pct)
        return list(dict.fromkeys(r["ID"] for r in self._bench.split(f"forget_{pct}")))

    def __iter__(self):
        return iter(self._pcts)

    def __len__(self) -> int:
        return len(self._pcts)
