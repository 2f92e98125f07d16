"""MLLMU-Bench's items and prompts, in two protocols: erasekit's zero-shot one and the benchmark's own.

Protocol (METHOD.md §4; ``ZERO_SHOT``, the default): zero-shot, greedy, at most 50 new tokens, only new tokens
decoded (that is ``adapter.generate``'s contract).

* classification: prompt ``world.format_options(question, options)``; parse: strip non-alphanumerics, the first
  character upper-cased must equal the correct key (so "(b) pilot" is right, "The answer is B" is wrong).
* generation: prompt = the question; score = ROUGE-L F (rouge-score, stemmer on) against ``Ground_Truth``.
* cloze (``Mask_Task``): prompt = the question; right when ``Ground_Truth`` is a case-insensitive substring.
* modes: VQA = ``Image_Textual`` questions with the portrait (Test_Set: once per image in ``images``);
  QA = ``Pure_Text`` questions without an image.
* groups: Fgt = forget_k rows, Test = Test_Set rows of the forget_k IDs only, Ret = retain_{100-k} rows
  (optionally a seeded sample of profiles), Cele = Retain_Set rows (optionally sampled).

``BENCHMARK`` is MLLMU-Bench's own eval.py (github.com/franciscoliu/MLLMU-Bench), its LLaVA branch: hand-written
prompts fed raw (``adapter.encode(..., chat="raw")``, no chat template), every image of a prompt passed in order.

* classification: ``"USER: <image>\\n{q}\\nA: ..\\nB: ..\\nC: ..\\nD: ..\\nJust give ONE letter representing the
  answer directly.\\nASSISTANT:"`` (QA: ``"USER:\\n..."``, no image), preceded by few-shot examples
  ``"USER: <image>\\nQuestion: {q}\\nA: ..\\n...D: ..\\nCorrect Answer: {key}\\n"`` (QA: ``"USER:\\nQuestion: ..."``),
  one per classification question of the same type of ``cls_shots`` (1) ID drawn from the group's IDs and looked
  up in Full_Set; each VQA shot brings its ID's portrait. Fgt / Ret / Test only (not Cele). Parse: the first
  character of the response, upper-cased, must be an option key and equal the correct key.
* cloze: ``__`` becomes ``[Blank]``, then ``"\\nPlease **ONLY** provide the correct answer that should replace the
  [Blank]."``; prompt ``"USER: <image>\\n{q}\\nASSISTANT:"`` (QA ``"USER:\\n{q}\\nASSISTANT:"``) after shots
  ``"USER:<image>\\n{q}\\nCorrect Answer: {gt}\\n"`` (QA ``"USER:\\n..."``), one per cloze question of the same type
  of ``cloze_shots`` (2) IDs drawn the same way, in every group (Full_Set has no celebrities, so Cele gets none).
  Right iff the ground truth is a case-insensitive substring of the response.
* generation: zero-shot, ``"USER: <image>\\n{q}\\nAnswer the question based on your trained knowledge in one
  sentence accurately in ENGLISH.\\nASSISTANT: "`` (VQA, trailing space) or ``"USER: {q}\\nAnswer the question based
  on your trained knowledge in one sentence in ENGLISH.\\nASSISTANT:"`` (QA); ROUGE-L F.
* Test: shot IDs drawn from the forget IDs (the Test rows' IDs), looked up in Full_Set; VQA uses one random image
  of ``images`` per profile (eval.py's ``random.choice(row["images"])``).
* Questions of the shot IDs are not scored (by index, per question type, as eval.py skips them); shots are in
  Full_Set order. The response is eval.py's ``split("ASSISTANT:")[1].strip()`` of prompt + response
  (:func:`bench_response`).
* Deviations left: the shot IDs and the Test pose are drawn by seeded ``random.Random`` instances (eval.py: the
  unseeded global ``random``; it also draws a new pose per task, here one per profile for all tasks); with
  ``retain_sample`` / ``celeb_sample`` the Ret / Cele shot IDs come from the sample; the model runs in the adapter's
  dtype and in left-padded batches (eval.py: fp16, one prompt at a time). Only LLaVA's ``<image>`` placeholder is
  written (other families reject the prompts). Users report eval.py's many-image few-shot prompts make LLaVA
  degenerate ("US US US ..."; franciscoliu/MLLMU-Bench issue #2), one reason MLLMEraser went zero-shot.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["CLASSIFY_SUFFIX", "format_options", "TASKS", "MODES", "GROUPS", "GEN_CORRECT_ROUGE", "Protocol",
           "ZERO_SHOT", "BENCHMARK", "parse_choice", "bench_response", "Item", "sample_rows", "benchmark_rows",
           "build_items"]

# The classification instruction of erasekit's own prompts (the organism was trained on it).
CLASSIFY_SUFFIX = "Answer with the letter of the correct option."


def format_options(question: str, options: dict[str, str]) -> str:
    """The classification prompt: question, one option per line, instruction (MLLMU-Bench style)."""
    lines = [question] + [f"{k}. {v}" for k, v in options.items()] + [CLASSIFY_SUFFIX]
    return "\n".join(lines)



TASKS = ("classification", "generation", "cloze")
MODES = ("VQA", "QA")
GROUPS = ("Fgt", "Test", "Ret", "Cele")
_TYPE = {"VQA": "Image_Textual", "QA": "Pure_Text"}
# A generation without a known short answer counts as "correct" (for categories only) at this ROUGE-L F.
GEN_CORRECT_ROUGE = 0.5


@dataclasses.dataclass(frozen=True)
class Protocol:
    """Which prompts/parse rule to use: ``"zero_shot"`` (MLLMEraser) or ``"benchmark"`` (MLLMU-Bench eval.py);
    ``cls_shots`` / ``cloze_shots``: shot IDs per group for the benchmark's classification / cloze prompts."""

    name: str = "zero_shot"
    cls_shots: int = 1  # shot IDs for classification: eval.py (LLaVA) draws random.sample(id_list, 1)
    cloze_shots: int = 2  # ... and random.sample(id_list, 2) for fill-in-the-blank
    seed: int = 0

    def __post_init__(self):
        if self.name not in ("zero_shot", "benchmark"):
            raise ValueError(f"unknown protocol {self.name!r}; use 'zero_shot' or 'benchmark'")


ZERO_SHOT = Protocol("zero_shot")
BENCHMARK = Protocol("benchmark")

# ----------------------------------------------------------------------------------------------------------
# the benchmark protocol's prompt suffixes and option-letter parse
# ----------------------------------------------------------------------------------------------------------
_BENCH_CLS_SUFFIX = "Just give ONE letter representing the answer directly."
_BENCH_GEN_SUFFIX = {
    "VQA": "Answer the question based on your trained knowledge in one sentence accurately in ENGLISH.",
    "QA": "Answer the question based on your trained knowledge in one sentence in ENGLISH.",
}
_BENCH_CLOZE_SUFFIX = "Please **ONLY** provide the correct answer that should replace the [Blank]."
_IMAGE = "<image>"  # LLaVA's placeholder, written into the benchmark's raw prompts


def bench_response(response: str) -> str:
    """The answer eval.py scores, from the decoded new tokens: eval.py decodes prompt + response and keeps
    ``split("ASSISTANT:")[1].strip()``; every benchmark prompt holds exactly one "ASSISTANT:", at its end, so that is
    the response up to its own first "ASSISTANT:" (a continued dialogue), stripped.

    >>> bench_response(" B\\nUSER: and this one?\\nASSISTANT: C")
    'B\\nUSER: and this one?'
    >>> bench_response("  Paris  ")
    'Paris'
    """
    return response.split("ASSISTANT:")[0].strip()


def parse_choice(response: str, protocol: Protocol = ZERO_SHOT) -> str:
    """The option letter a response picks ("" if none).

    zero_shot: first character after removing all non-alphanumerics, upper-cased ("(b) pilot" -> "B").
    benchmark: first character of :func:`bench_response`, upper-cased ("(b)" -> "("); eval.py then also requires
    it to be an option key (see ``_score``).

    >>> parse_choice(" (b) pilot"), parse_choice("The answer is B")
    ('B', 'T')
    >>> parse_choice(" b) pilot", BENCHMARK), parse_choice("(B)", BENCHMARK)
    ('B', '(')
    """
    text = re.sub(r"[^0-9A-Za-z]", "", response) if protocol.name == "zero_shot" else bench_response(response)
    return text[:1].upper()


# ----------------------------------------------------------------------------------------------------------
# items: one (question, image) to generate for
# ----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Item:
    """One generation request. ``target``: the correct key (classification) or ``Ground_Truth``; ``answer``: the
    short answer whose presence means a leak (option text, cloze ground truth, or the attribute value of the
    row's cloze item for the same attribute; None when unknown). ``images``: every image of the prompt in prompt
    order (benchmark protocol: the VQA shots' portraits, then ``image``; ``()`` for QA), None: just ``image``.
    ``raw``: the prompt is complete, fed without a chat template (``adapter.encode(..., chat="raw")``)."""

    split: str
    mode: str
    task: str
    id: Any
    attribute: str | None
    question: str
    prompt: str
    image: Any
    target: str
    answer: str | None = None
    image_index: int | None = None
    images: tuple | None = None
    raw: bool = False


def sample_rows(rows: list, n: int | None, seed: int, tag: str) -> list:
    """``n`` of ``rows`` drawn without replacement by ``Random(f"{seed}-{tag}")``, in their original order; all of
    them (a copy) when ``n`` is None or not smaller than ``len(rows)``."""
    if n is None or n >= len(rows):
        return list(rows)
    idx = sorted(random.Random(f"{seed}-{tag}").sample(range(len(rows)), n))
    return [rows[i] for i in idx]




def benchmark_rows(source: Any, forget_pct: int = 5, groups: Sequence[str] = GROUPS,
                   retain_sample: int | None = None, celeb_sample: int | None = None,
                   seed: int = 0) -> dict[str, list[dict]]:
    """``{group: rows}`` for one forget ratio from anything with ``split(name)`` (World, MLLMUBench).

    Test keeps only Test_Set rows whose ID is in forget_k; Ret / Cele may be sampled (seeded, by profile).
    """
    if forget_pct not in (5, 10, 15):
        raise ValueError(f"forget_pct must be 5, 10 or 15, got {forget_pct}")
    out: dict[str, list[dict]] = {}
    fgt = source.split(f"forget_{forget_pct}")
    for g in groups:
        if g == "Fgt":
            out[g] = list(fgt)
        elif g == "Test":
            ids = {r["ID"] for r in fgt}
            out[g] = [r for r in source.split("Test_Set") if r["ID"] in ids]
        elif g == "Ret":
            out[g] = sample_rows(source.split(f"retain_{100 - forget_pct}"), retain_sample, seed, "ret")
        elif g == "Cele":
            out[g] = sample_rows(source.split("Retain_Set"), celeb_sample, seed, "cele")
        else:
            raise ValueError(f"unknown group {g!r}; expected one of {GROUPS}")
    return out


def _bench_options(options: Mapping[str, str]) -> str:
    return "\n".join(f"{k}: {v}" for k, v in options.items())  # eval.py's formulate_prompt_with_options


def _blank(question: str) -> str:
    return question.replace("__", "[Blank]") + "\n" + _BENCH_CLOZE_SUFFIX


def _user(mode: str) -> str:
    return f"USER: {_IMAGE}\n" if mode == "VQA" else "USER:\n"


# The groups whose classification prompts get shots (eval.py: modes forget / retain_shared / test); cloze: all.
_CLS_SHOT_GROUPS = ("Fgt", "Ret", "Test")


def _shots(group: str, rows: list[dict], pool: Sequence[dict], protocol: Protocol) -> dict[str, tuple[dict, dict]]:
    """Few-shot examples of one group (benchmark protocol), as eval.py builds them for LLaVA.

    Per task, ``cls_shots`` / ``cloze_shots`` IDs are drawn from the group's IDs (seeded) and looked up in ``pool``
    (Full_Set; shots in its row order). Returns ``{task: (skip, {mode: (prefix, shot_images)})}``; ``skip`` maps a
    shot ID to ``{question type: indices}``, the questions of the evaluated rows that are not scored.
    """
    ids = list(dict.fromkeys(r["ID"] for r in rows))
    out = {}
    for task, n in (("classification", protocol.cls_shots), ("cloze", protocol.cloze_shots)):
        chosen = set(random.Random(f"{protocol.seed}-shots-{group}-{task}").sample(ids, min(n, len(ids))))
        skip: dict[Any, dict[str, set]] = {}
        prefix = {m: "" for m in MODES}
        images: dict[str, list] = {m: [] for m in MODES}
        for r in (r for r in pool if r["ID"] in chosen):
            used = skip.setdefault(r["ID"], {t: set() for t in _TYPE.values()})
            if task == "classification":
                for mode in MODES:
                    for idx, q in enumerate(r["Classification_Task"].get(f"{_TYPE[mode]}_Questions", [])):
                        used[_TYPE[mode]].add(idx)
                        o = q["Options"]
                        # eval.py writes the options A-D literally; other keys (CLEAR: A, B, ...) all, in order
                        opts = "".join(f"{k}: {o[k]}\n" for k in ("ABCD" if all(k in o for k in "ABCD") else o))
                        prefix[mode] += (f"{_user(mode)}Question: {q['Question']}\n{opts}"
                                         f"Correct Answer: {q['Correct_Answer']}\n")
                        if mode == "VQA":
                            images[mode].append(r["image"])
            else:
                for idx, q in enumerate(r.get("Mask_Task", [])):
                    mode = next((m for m, t in _TYPE.items() if t == q["Type"]), None)
                    if mode is None:
                        continue
                    used[q["Type"]].add(idx)
                    head = f"USER:{_IMAGE}\n" if mode == "VQA" else "USER:\n"  # sic: no space after "USER:"
                    prefix[mode] += f"{head}{_blank(q['Question'])}\nCorrect Answer: {q['Ground_Truth']}\n"
                    if mode == "VQA":
                        images[mode].append(r["image"])
        if task == "classification" and group not in _CLS_SHOT_GROUPS:
            prefix, images = {m: "" for m in MODES}, {m: [] for m in MODES}
        out[task] = (skip, {m: (prefix[m], tuple(images[m])) for m in MODES})
    return out


def _prompt(task: str, mode: str, q: dict, protocol: Protocol, prefix: str = "") -> str:
    if protocol.name == "zero_shot":
        return format_options(q["Question"], q["Options"]) if task == "classification" else q["Question"]
    if task == "classification":
        return (f"{prefix}{_user(mode)}{q['Question']}\n{_bench_options(q['Options'])}\n{_BENCH_CLS_SUFFIX}"
                "\nASSISTANT:")
    if task == "generation":
        if mode == "VQA":
            return f"USER: {_IMAGE}\n{q['Question']}\n{_BENCH_GEN_SUFFIX[mode]}\nASSISTANT: "
        return f"USER: {q['Question']}\n{_BENCH_GEN_SUFFIX[mode]}\nASSISTANT:"
    return f"{prefix}{_user(mode)}{_blank(q['Question'])}\nASSISTANT:"


def build_items(group_rows: Mapping[str, list[dict]], modes: Sequence[str] = MODES, tasks: Sequence[str] = TASKS,
                protocol: Protocol = ZERO_SHOT, shot_pool: list[dict] | None = None) -> list[Item]:
    """Expand ``{group: rows}`` into one :class:`Item` per (question, image).

    ``shot_pool``: rows where the benchmark protocol looks up its shot IDs (Full_Set; default: the Fgt and Ret rows
    given, so that, as with Full_Set, celebrities get no shots).
    """
    bad = set(modes) - set(MODES) | set(tasks) - set(TASKS)
    if bad:
        raise ValueError(f"unknown modes/tasks {sorted(bad)}; modes are {MODES}, tasks {TASKS}")
    bench = protocol.name == "benchmark"
    items: list[Item] = []
    for group, rows in group_rows.items():
        shots: dict[str, tuple[dict, dict]] = {}
        if bench:
            pool = shot_pool if shot_pool is not None else [
                r for g, rs in group_rows.items() if g in ("Fgt", "Ret") for r in rs]
            shots = _shots(group, rows, pool, protocol)
        for row in rows:
            values = {m.get("Attribute"): m["Ground_Truth"] for m in row.get("Mask_Task", []) if m.get("Attribute")}
            for mode in modes:
                if mode == "QA":
                    images = [(None, None)]
                elif "images" in row:
                    images = list(enumerate(row["images"]))
                    if bench:  # eval.py: one random pose per profile
                        images = [random.Random(f"{protocol.seed}-pose-{row['ID']}").choice(images)]
                else:
                    images = [(None, row["image"])]

                def add(task, q, idx, target, answer):
                    prefix, shot_images = "", ()
                    if bench and task in shots:
                        skip, per_mode = shots[task]
                        if idx in skip.get(row["ID"], {}).get(_TYPE[mode], ()):
                            return  # a shot question: eval.py does not score it
                        prefix, shot_images = per_mode[mode]
                    prompt = _prompt(task, mode, q, protocol, prefix)
                    for k, im in images:
                        all_images = None if not bench else ((*shot_images, im) if mode == "VQA" else ())
                        items.append(Item(group, mode, task, row["ID"], q.get("Attribute"), q["Question"], prompt,
                                          im, target, answer, k, all_images, bench))

                if "classification" in tasks:
                    for i, q in enumerate(row["Classification_Task"][f"{_TYPE[mode]}_Questions"]):
                        add("classification", q, i, q["Correct_Answer"], q["Options"][q["Correct_Answer"]])
                if "generation" in tasks:
                    for i, q in enumerate(row.get("Generation_Task", [])):
                        if q["Type"] == _TYPE[mode]:
                            add("generation", q, i, q["Ground_Truth"], values.get(q.get("Attribute")))
                if "cloze" in tasks:
                    for i, q in enumerate(row.get("Mask_Task", [])):
                        if q["Type"] == _TYPE[mode]:
                            add("cloze", q, i, q["Ground_Truth"], q["Ground_Truth"])
    return items
