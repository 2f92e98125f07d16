"""MLLMU-Bench evaluation as MLLMEraser runs it: the benchmark's items and prompts, generation, scored frames.

The items and prompts (both protocols, ``ZERO_SHOT`` and ``BENCHMARK``) are built in :mod:`erasekit.protocol`;
this module generates and scores them.

Response categories (every response) and the scoring rules other than the option-letter parse: see
:mod:`erasekit.scoring`; tables of the scored frames: :mod:`erasekit.tables`; the safety check:
:mod:`erasebook.safety`. Interventions: ``intervention`` is a factory of a context manager
(``lambda: steer(adapter, ops, mode="prefill")``) entered around every ``generate`` call, or a dict
``task -> factory | None`` for per-task strengths.

Example::

    df = evaluate(adapter, make_world(), forget_pct=5, method="Vanilla", retain_sample=50)
    df2 = evaluate(adapter, bench, 5, method="Ours", intervention={t: (lambda: steer(adapter, ops[t], "prefill"))
                                                                   for t in TASKS})
    print(render_table(results_table(pd.concat([df, df2]))))    # erasekit.tables
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from .protocol import (
    BENCHMARK,
    CLASSIFY_SUFFIX,
    GEN_CORRECT_ROUGE,
    GROUPS,
    MODES,
    TASKS,
    ZERO_SHOT,
    Item,
    Protocol,
    bench_response,
    benchmark_rows,
    build_items,
    format_options,
    parse_choice,
    sample_rows,
)
from .scoring import categorize, cloze_correct, rouge_l

__all__ = [
    "CLASSIFY_SUFFIX", "format_options", "TASKS", "MODES", "GROUPS", "GEN_CORRECT_ROUGE", "Protocol", "ZERO_SHOT",
    "BENCHMARK", "parse_choice", "bench_response", "Item", "sample_rows", "benchmark_rows", "build_items",
    "run_items", "evaluate",
]


# ----------------------------------------------------------------------------------------------------------
# generation
# ----------------------------------------------------------------------------------------------------------
def _image_key(image: Any) -> Any:
    if image is None:
        return None
    if hasattr(image, "tobytes") and hasattr(image, "size"):  # PIL: identical pixels -> one generation
        h = hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()
        return (image.mode, image.size, h)
    return ("id", id(image))  # tensors etc.: cache by identity only


def _images_of(it: Item) -> Any:
    """What ``adapter.encode`` gets for an item: its image list (None when empty), or its single image."""
    if it.images is not None:
        return list(it.images) or None
    return it.image


def _factory(intervention: Any, task: str) -> Callable[[], Any] | None:
    if isinstance(intervention, Mapping):
        if task not in intervention:
            raise KeyError(f"intervention dict has no entry for task {task!r} (give None for no intervention); "
                           f"keys: {sorted(intervention)}")
        return intervention[task]
    return intervention


def run_items(adapter: Any, items: Sequence[Item], intervention: Any = None, batch_size: int = 8,
              max_new_tokens: int = 50, progress: bool = True, cache: bool = True) -> list[str]:
    """Generate a response per item (greedy, via ``adapter.encode``/``adapter.generate``), in item order.

    Items are grouped by task (so a per-task intervention applies), identical (prompt, image pixels) pairs are
    generated once when ``cache`` (over all images of a multi-image prompt), and each batch holds prompts of similar
    length (less left padding). ``raw`` items (benchmark protocol) are encoded with ``chat="raw"`` and their image
    lists.
    ``intervention``: None, a context-manager factory, or ``{task: factory | None}``; entered around each
    ``generate`` call.
    """
    seen: dict[int, Any] = {}  # id(image) -> key: a shot portrait recurs in many prompts; hash it once

    def image_key(image: Any) -> Any:
        if id(image) not in seen:
            seen[id(image)] = _image_key(image)
        return seen[id(image)]

    def key(i: int, it: Item) -> Any:
        if not cache:
            return i
        ims = tuple(image_key(im) for im in it.images) if it.images is not None else image_key(it.image)
        return (it.task if isinstance(intervention, Mapping) else "", it.raw, it.prompt, ims)

    keys = [key(i, it) for i, it in enumerate(items)]
    todo: dict[Any, Item] = {}
    for k, it in zip(keys, items):
        todo.setdefault(k, it)
    by_task: dict[tuple[str, bool], list[Any]] = {}
    for k, it in todo.items():
        by_task.setdefault((it.task, it.raw), []).append(k)
    out: dict[Any, str] = {}
    bar = tqdm(total=len(todo), disable=not progress, desc="generate", unit="prompt")
    try:
        for (task, raw), task_keys in by_task.items():
            factory = _factory(intervention, task)
            task_keys.sort(key=lambda k: len(todo[k].prompt))
            for s in range(0, len(task_keys), batch_size):
                chunk = task_keys[s:s + batch_size]
                questions = [todo[k].prompt for k in chunk]
                images = [_images_of(todo[k]) for k in chunk]
                ims = None if all(i is None for i in images) else images
                ctx = factory() if factory is not None else contextlib.nullcontext()
                with ctx:
                    batch = adapter.encode(questions, images=ims, chat="raw") if raw else adapter.encode(
                        questions, images=ims)
                    answers = adapter.generate(batch, max_new_tokens=max_new_tokens)
                if len(answers) != len(chunk):
                    raise RuntimeError(f"adapter.generate returned {len(answers)} answers for {len(chunk)} prompts")
                out.update(zip(chunk, answers))
                bar.update(len(chunk))
    finally:
        bar.close()
    return [out[k] for k in keys]


def _score(it: Item, response: str, protocol: Protocol) -> tuple[float, bool]:
    bench = protocol.name == "benchmark"
    if it.task == "classification":
        # benchmark: eval.py also needs the letter to be an option key; the correct key is one, so equality suffices
        ok = parse_choice(response, protocol) == it.target
        return float(ok), ok
    if bench:
        response = bench_response(response)
    if it.task == "cloze":
        # eval.py: ground_truth.lower() in response.lower() (no strip of the ground truth)
        ok = it.target.lower() in response.lower() if bench else cloze_correct(it.target, response)
        return float(ok), ok
    score = rouge_l(it.target, response)  # RougeScorer(["rougeL"], use_stemmer=True).score(gt, pred) F, as eval.py
    ok = cloze_correct(it.answer, response) if it.answer else score >= GEN_CORRECT_ROUGE
    return score, ok


def evaluate(adapter: Any, source: Any, forget_pct: int = 5, *, groups: Sequence[str] = GROUPS,
             modes: Sequence[str] = MODES, tasks: Sequence[str] = TASKS, protocol: Protocol = ZERO_SHOT,
             intervention: Any = None, method: str | None = None, retain_sample: int | None = None,
             celeb_sample: int | None = None, seed: int = 0, batch_size: int = 8, max_new_tokens: int = 50,
             progress: bool = True, cache: bool = True) -> pd.DataFrame:
    """Score a model on MLLMU-Bench; one DataFrame row per (question, image).

    Args:
        adapter: anything with ``encode(questions, images=None|list)`` and ``generate(batch, max_new_tokens)``;
            the benchmark protocol calls ``encode(prompts, images, chat="raw")`` with a list of images per row.
        source: a World / :class:`erasekit.data.MLLMUBench` (has ``split``), or ``{group: rows}`` directly.
        intervention: None, a context-manager factory, or ``{task: factory | None}`` (per-task strength).
        method: label stored in a ``method`` column (rows of :func:`erasekit.tables.results_table`).
        retain_sample / celeb_sample: score a seeded sample of that many Ret / Cele profiles (speed).

    Returns:
        columns ``method, split, mode, task, id, attribute, image_index, question, prompt, response, target,
        score, correct, category``; ``split`` is the group (Fgt/Test/Ret/Cele). ``score``: 0/1 for
        classification and cloze, ROUGE-L F for generation.
    """
    if isinstance(source, Mapping):
        group_rows = {g: list(source[g]) for g in groups if g in source}
        pool = None
    else:
        group_rows = benchmark_rows(source, forget_pct, groups, retain_sample, celeb_sample, seed)
        pool = source.split("Full_Set") if protocol.name == "benchmark" else None
    items = build_items(group_rows, modes, tasks, protocol, shot_pool=pool)
    responses = run_items(adapter, items, intervention, batch_size, max_new_tokens, progress, cache)
    records = []
    for it, resp in zip(items, responses):
        score, ok = _score(it, resp, protocol)
        records.append({"method": method, "split": it.split, "mode": it.mode, "task": it.task, "id": it.id,
                        "attribute": it.attribute, "image_index": it.image_index, "question": it.question,
                        "prompt": it.prompt, "response": resp, "target": it.target, "score": score,
                        "correct": ok, "category": categorize(resp, ok)})
    cols = ["method", "split", "mode", "task", "id", "attribute", "image_index", "question", "prompt", "response",
            "target", "score", "correct", "category"]
    return pd.DataFrame.from_records(records, columns=cols)
