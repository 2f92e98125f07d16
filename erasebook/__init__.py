"""erasebook: the research code behind the erasekit book (the notebooks in ``notebooks/``).

It imports erasekit (the method library) and never the reverse. The order of the work reads from its modules:
``world`` and ``organism`` (+ ``organism_data``, ``organism_formats``, ``format_checks``, ``quality``: the embedded
model organism, its synthetic MLLMU-Bench world and its bars), ``export`` (the world in the hub layout), ``session``
(one loaded model + world + held-out partition) over ``cache`` and ``paths``; the chapters' steps: ``pipeline``
(directions, attacks, steerers) → ``runs`` (one method scored per split) → ``recipes`` (the chapters' method
line-ups) → ``report`` (tables and text from them); per-chapter code: ``ablations``, ``separability``, ``safety``,
``asru_results``, ``over_refusal``, ``extraction`` / ``extraction_search`` / ``leakage`` (attacks), ``form_transfer``,
``efficiency``, ``paper`` (the paper's numbers), ``findings`` (the book's verdicts, by rule from the recorded
results), ``plots``; ``cli`` (the ``erasekit`` command that writes
``data/results/``).

Submodules load on first use: ``erasebook.pipeline`` etc., or ``eb.pipeline`` after ``import erasebook as eb``.
"""

from __future__ import annotations

import importlib
import time

__all__ = ["load_session", "Session", "STARTED"]

# When this process first imported erasebook: a chapter's start, for the run time its last cell reports
# (report.runtime_note).
STARTED = time.perf_counter()

_LAZY = {"load_session": "session", "Session": "session"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
