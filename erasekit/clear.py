"""CLEAR (Dontsov et al., "CLEAR: Character Unlearning in Textual and Visual Modalities", ACL Findings 2025) read
from a local copy, as rows in MLLMU-Bench's schema, so the evaluation harness takes it as ``data``.

What the real dataset looks like (checked against public sources, 2025):

* Hub dataset ``therem/CLEAR`` (https://huggingface.co/datasets/therem/CLEAR, file tree and the dataset card's
  ``dataset_info``): one folder per config, each holding ``train-0000i-of-0000N.parquet`` (split "train"); the
  Hub's parquet-converter branch uses ``{config}/train/0000.parquet`` instead. 200 fictitious people (TOFU's
  authors), ~3,770 face images.
* ``full`` (3,768 rows), ``forget01`` / ``forget05`` / ``forget10`` (the images of 1 / 5 / 10 % of the people;
  35 and 188 rows for forget01 / forget05 on the card) and ``retain99`` / ``retain95`` / ``retain90``: features
  ``image`` (datasets ``Image`` -> parquet struct ``{bytes, path}``), ``caption`` (string: a description of the
  image), ``name`` (string: the person).
* ``forget01_perturbed`` / ``forget05_perturbed`` / ``forget10_perturbed`` (same rows as the plain forget configs)
  and ``retain_perturbed``: additionally ``paraphrased_caption`` (string), ``perturbed_captions`` and
  ``perturbed_names`` (lists of strings) for truth-ratio metrics and name multiple choice.
* ``forget01+tofu`` ... ``full+tofu``: the image rows (``image``, ``caption``; no ``name``) plus TOFU's text QA about
  the same authors (``question``, ``answer``; ``image`` null).
* ``real_faces`` (photos of real people) and ``real_world`` (real-world images): ``image``, ``answer``, ``options``
  (list of wrong answers) and, for real_world, ``question``.

Sources: the dataset card (features per config, row counts); the authors' code (github.com/somvy/multimodal_unlearning,
``mm/dataset.py`` and ``config/mm/eval.yaml``: captions are asked with a random image-description question, names
with the completion "The name of the person on the image is", real_faces/real_world with ``answer``/``options``);
and the CLEAR evaluation of KVW/MMUnlearner-style work (github.com/kyj93790/KVW, ``CLEAR/eval.py``: name multiple
choice from ``name`` + ``perturbed_names``, real_faces/real_world multiple choice from ``answer`` + ``options``).
The per-config feature lists of real_faces and real_world were read from code that uses them, not from their
card entries; the loader therefore treats ``question`` as optional there.

Mapping onto MLLMU-Bench rows (what :meth:`erasebook.world.World.split` and :class:`erasekit.data.MLLMUBench`
return), one row per CLEAR record -- CLEAR's unit is one image, so a person has one row per image, all with
``ID`` = the person's name:

* person images (``caption`` present): ``Generation_Task`` = [image description question -> ``caption``] (with
  ``Attribute: "name"`` when the caption contains the name, so the harness counts a response naming the person as a
  leak); ``Mask_Task`` = ["The name of the person on the image is ___." -> ``name``] (CLEAR's face-recognition
  prompt, judged by the cloze rule); ``Classification_Task.Image_Textual_Questions`` = [name multiple choice over
  ``name`` + ``perturbed_names``] when the row has ``perturbed_names`` (the ``*_perturbed`` configs), else none.
* real_faces / real_world (``answer`` and ``image``): multiple choice over ``answer`` + ``options`` and the same
  question open-ended (``Generation_Task``, judged by ROUGE-L). ``ID``: ``name``, else for real_faces the answer (the
  person), else a content hash.
* TOFU text QA (``question``, no image): ``Generation_Task`` = [``Pure_Text`` question -> ``answer``]; ``ID`` is a
  hash of the question (the rows do not name their author); ``image`` is None (VQA items: none).
* Options are keyed A, B, C, ... in a seeded order (answer position drawn per row). Raw CLEAR fields pass through.

What does not map: there are no ``Pure_Text`` classification or cloze items (CLEAR's text side is TOFU's open QA);
no ``biography``; no Test_Set (CLEAR has no held-out paraphrased questions or new images: ``split("Test_Set")`` is
empty, so the Test group has no rows); no 15 % forget ratio (CLEAR has 1, 5 and 10 %: evaluate CLEAR with
``forget_pct`` 5 or 10); the truth-ratio fields (``paraphrased_caption``, ``perturbed_captions``) only pass through;
``datasets.save_to_disk`` folders (arrow files, e.g. the two-fold validation copies some papers add) are not read.

Split names: MLLMU-Bench's names resolve to CLEAR configs (:data:`SPLIT_CONFIGS`): ``forget_k`` -> ``forget0k``
(the ``_perturbed`` twin when the folder has it, same rows plus the name options), ``retain_{100-k}`` ->
``retain{100-k}``, ``Full_Set`` -> ``full``, ``Retain_Set`` (the celebrity group) -> ``real_faces``, and
``retain_85`` -> ``retain90`` with one row (the first image) per person: :func:`erasekit.heldout.partition_profiles`
reads retain_85 as the pool of people retained at every forget ratio (for CLEAR, retain90) and needs each person
once, to give every person one role; its ``rows`` then take all images of a role's people from retain_{100-k}. The
celebrity pool (Retain_Set = real_faces) is used as is: it must hold one row per person (true of the synthetic copy
in the tests; not checked against the real files). Any CLEAR config name also works directly
(``split("real_world")``, ``split("retain_perturbed")``, ``split("forget05+tofu")``).

Example::

    bench = ClearBench("/data/CLEAR")                       # a local snapshot of the hub dataset
    df = evaluate(adapter, bench, 5, groups=("Fgt", "Ret", "Cele"), retain_sample=200)
    df_rw = evaluate(adapter, {"Cele": bench.split("real_world")}, groups=("Cele",))   # CLEAR's real-world set
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from .data import ForgetIds, decode_image, split_files
from .scoring import cloze_correct

__all__ = ["FORGET_PCTS", "SPLIT_CONFIGS", "NAME_QUESTION", "CAPTION_QUESTION", "NAME_CLOZE", "ClearBench",
           "clear_files", "clear_row", "load_config", "is_clear_folder"]

FORGET_PCTS = (1, 5, 10)
SPLIT_CONFIGS = {"Full_Set": "full", "forget_1": "forget01", "forget_5": "forget05", "forget_10": "forget10",
                 "retain_99": "retain99", "retain_95": "retain95", "retain_90": "retain90", "retain_85": "retain90",
                 "Retain_Set": "real_faces"}
# Questions of the mapped items. CLEAR's own code asks captions with one of nine image-description questions drawn
# at random; one fixed question keeps prompts (and the generation cache) deterministic.
NAME_QUESTION = "What is the name of the person in the image?"
CAPTION_QUESTION = "Describe the image in detail."
NAME_CLOZE = "The name of the person on the image is ___."
_KNOWN = ("full", "forget01", "forget05", "forget10", "retain99", "retain95", "retain90")


def clear_files(root: str | os.PathLike, config: str) -> list[Path]:
    """The parquet files of one CLEAR config: ``root/{config}/*.parquet``, ``root/{config}/train/*.parquet`` (the
    Hub's parquet-converter layout) or ``root/{config}.parquet``.

    Raises FileNotFoundError naming the expected layout when none exists.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"CLEAR folder {str(root)!r} does not exist; expected a local copy of the hub dataset "
                                f"therem/CLEAR with one folder per config (e.g. {', '.join(_KNOWN)}), each "
                                "holding train-0000i-of-0000N.parquet")
    for folder, name in ((root, config), (root / config, "train")):
        try:
            return split_files(folder, name)
        except FileNotFoundError:
            pass
    present = sorted(p.name for p in root.iterdir())
    raise FileNotFoundError(f"CLEAR config {config!r} not found under {str(root)!r}: expected "
                            f"{root / config}/train-00000-of-0000N.parquet (or {root / config}/train/*.parquet); "
                            f"the folder holds {present}")


def is_clear_folder(root: str | os.PathLike) -> bool:
    """Whether ``root`` looks like a local CLEAR copy (it holds the ``forget05`` config in a layout
    :func:`clear_files` reads), as opposed to an MLLMU-Bench folder."""
    try:
        clear_files(root, "forget05")
    except FileNotFoundError:
        return False
    return True


def _digest(*parts: Any) -> str:
    return hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=6).hexdigest()


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = json.loads(value) if value.lstrip().startswith("[") else [value]
    return [str(v) for v in value]


def _choice(question: str, answer: str, wrong: list[str], seed: int, key: str) -> dict[str, Any]:
    options = list(dict.fromkeys([answer] + [w for w in wrong if w != answer]))
    if len(options) > len(string.ascii_uppercase):
        raise ValueError(f"{len(options)} options for {question!r}: at most {len(string.ascii_uppercase)} are keyed")
    rng = random.Random(f"{seed}-clear-options-{key}")
    rest = options[1:]
    rng.shuffle(rest)
    rest.insert(rng.randint(0, len(rest)), answer)
    keys = dict(zip(string.ascii_uppercase, rest))
    return {"Question": question, "Options": keys, "Correct_Answer": string.ascii_uppercase[rest.index(answer)]}


def clear_row(rec: Mapping[str, Any], folder: str | os.PathLike = ".", config: str = "", seed: int = 0
              ) -> dict[str, Any]:
    """One CLEAR record (a parquet row as a dict) -> one MLLMU-Bench row dict (see the module docstring).

    ``folder``: where relative image paths are resolved; ``config``: the config it comes from (real_faces rows
    take their answer as ID); ``seed``: the option order.
    """
    row = dict(rec)
    image = rec.get("image")
    row["image"] = None if image is None else decode_image(image, Path(folder))
    name, caption = rec.get("name"), rec.get("caption")
    question, answer = rec.get("question"), rec.get("answer")
    cls: list[dict] = []
    gen: list[dict] = []
    mask: list[dict] = []
    if caption is not None and image is not None:
        item = {"Type": "Image_Textual", "Question": CAPTION_QUESTION, "Ground_Truth": caption}
        if name and cloze_correct(name, caption):
            item["Attribute"] = "name"
        gen.append(item)
        if name:
            mask.append({"Type": "Image_Textual", "Question": NAME_CLOZE, "Ground_Truth": name, "Attribute": "name"})
            wrong = _strings(rec.get("perturbed_names"))
            if wrong:
                cls.append(_choice(NAME_QUESTION, name, wrong, seed, _digest(name, caption)))
        row["ID"] = name if name else f"clear-{_digest(caption)}"
    elif answer is not None and image is not None:
        q = question or NAME_QUESTION
        wrong = _strings(rec.get("options"))
        if wrong:
            cls.append(_choice(q, answer, wrong, seed, _digest(q, answer)))
        gen.append({"Type": "Image_Textual", "Question": q, "Ground_Truth": answer})
        row["ID"] = name or (answer if config.startswith("real_faces") else f"clear-{_digest(q, answer)}")
    elif question is not None and answer is not None:
        gen.append({"Type": "Pure_Text", "Question": question, "Ground_Truth": answer})
        row["ID"] = f"tofu-{_digest(question)}"
    else:
        raise ValueError(f"cannot map a CLEAR record with fields {sorted(k for k, v in rec.items() if v is not None)}"
                         f" (config {config!r}): expected image + caption, image + answer, or question + answer")
    row.update({"Classification_Task": {"Image_Textual_Questions": cls, "Pure_Text_Questions": []},
                "Generation_Task": gen, "Mask_Task": mask})
    return row


def load_config(root: str | os.PathLike, config: str, seed: int = 0) -> list[dict[str, Any]]:
    """All rows of one CLEAR config folder as MLLMU-Bench row dicts (:func:`clear_row`), in file order."""
    rows = []
    for f in clear_files(root, config):
        for rec in pq.read_table(f).to_pylist():
            rows.append(clear_row(rec, f.parent, config, seed))
    return rows


class ClearBench:
    """A local CLEAR folder with the ``split(name)`` method of World / MLLMUBench (rows cached per config).

    Args:
        root: the folder (a snapshot of the hub dataset therem/CLEAR).
        prefer_perturbed: read ``forget0k_perturbed`` for ``forget_k`` when the folder has it (name options).
        seed: the order of multiple-choice options.

    ``forget_ids[k]`` (k in 1, 5, 10) lists the forget_k people, as World's does.
    """

    def __init__(self, root: str | os.PathLike, prefer_perturbed: bool = True, seed: int = 0):
        self.root = Path(root)
        self.prefer_perturbed = prefer_perturbed
        self.seed = seed
        clear_files(self.root, "forget05")  # fail early, with the expected layout in the message
        self._cache: dict[str, list[dict[str, Any]]] = {}

    def config_for(self, name: str) -> str | None:
        """The CLEAR config read for split ``name`` (None for Test_Set, which CLEAR does not have)."""
        if name == "Test_Set":
            return None
        if name in SPLIT_CONFIGS:
            config = SPLIT_CONFIGS[name]
        elif re.fullmatch(r"(forget|retain)_\d+", name):
            raise ValueError(f"CLEAR has no split {name!r}: its forget ratios are {FORGET_PCTS} % "
                             "(forget_1/5/10, retain_99/95/90)")
        else:
            config = name
        twin = f"{config}_perturbed"
        if self.prefer_perturbed and re.fullmatch(r"forget\d+", config) and (
                any((self.root / twin).glob("**/*.parquet")) or (self.root / f"{twin}.parquet").is_file()):
            return twin
        return config

    def split(self, name: str) -> list[dict[str, Any]]:
        """Rows of split ``name`` (an MLLMU-Bench split name or a CLEAR config name); ``retain_85``: one row (the
        first image) per person of retain90, the profile pool of :func:`erasekit.heldout.partition_profiles`."""
        config = self.config_for(name)
        if config is None:
            return []
        if name == "retain_85":
            first: dict[Any, dict[str, Any]] = {}
            for r in self.split(config):
                first.setdefault(r["ID"], r)
            return list(first.values())
        if config not in self._cache:
            self._cache[config] = load_config(self.root, config, self.seed)
        return self._cache[config]

    @property
    def forget_ids(self) -> Mapping[int, list]:
        """``{1|5|10: [names]}`` (each person once, in file order), read lazily."""
        return ForgetIds(self, FORGET_PCTS)

    def __repr__(self) -> str:
        return f"ClearBench({str(self.root)!r})"
